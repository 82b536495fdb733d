"""Stripe: credits bought once per paid session, refunds taken once, whatever the deliveries do (I5).

The fake Stripe takes the payments and emits the events; the tests deliver them to the service as Stripe
would: twice, at once, in reverse order, with forged and stale signatures, across a crash.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from sqlalchemy import func, select

from service import failpoints, safeguards
from service.db.models import BillingTransaction, WebhookEvent
from service.failpoints import SimulatedCrash
from simulator.stripe import sign
from tests.support.api import Api, problem
from tests.support.lab import Lab


async def bought(lab: Lab, credits: int = 1000, asynchronous: bool = False) -> tuple[int, str]:
    shop_id = await lab.shop()
    checkout = await lab.checkout(shop_id, credits)
    lab.pay(checkout["session_id"], asynchronous=asynchronous)
    if asynchronous:
        await asyncio.sleep(0.3)  # the fake settles async payments a moment later
    return shop_id, checkout["session_id"]


async def deliver_each_twice_at_once(lab: Lab, events: list[dict[str, object]]) -> list[str]:
    return list(await asyncio.gather(*(lab.deliver_stripe(e) for e in events for _ in range(2))))


async def duplicate_racing_the_check(lab: Lab) -> int:
    """Two deliveries of one event, both past the duplicate check before either records it."""
    shop_id, _ = await bought(lab, 1000)
    [completed] = lab.stripe_events("checkout.session.completed")
    with failpoints.armed("webhook.after_duplicate_check", "sleep:0.3", count=2):
        await deliver_each_twice_at_once(lab, [completed])
    return shop_id


async def test_checkout_creates_a_session_once_per_idempotency_key(lab: Lab) -> None:
    shop_id = await lab.shop()
    first = await lab.checkout(shop_id, 1000, key="buy-1")
    again = await lab.checkout(shop_id, 1000, key="buy-1")
    other = await lab.checkout(shop_id, 1000, key="buy-2")
    assert first["session_id"] == again["session_id"] != other["session_id"]
    assert first["amount_cents"] == 8000
    assert first["url"].startswith(lab.simulator.base_url)


async def test_a_paid_session_is_credited_once_whatever_the_deliveries(lab: Lab) -> None:
    shop_id, _ = await bought(lab, 1000)
    [completed] = lab.stripe_events("checkout.session.completed")
    outcomes = await deliver_each_twice_at_once(lab, [completed, completed])
    assert sorted(outcomes) == ["already_granted", "duplicate", "duplicate", "granted"] or sorted(
        outcomes
    ) == [
        "duplicate",
        "duplicate",
        "duplicate",
        "granted",
    ]
    assert await lab.wallet(shop_id) == (1000, 0)
    await lab.assert_holds("I4", "I5")


async def test_async_payments_credit_once_in_either_order(lab: Lab) -> None:
    shop_id, _ = await bought(lab, 1000, asynchronous=True)
    events = lab.stripe_events()
    assert [e["type"] for e in events] == [
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
    ]
    assert events[0]["data"]["object"]["payment_status"] == "unpaid"
    for event in reversed(events):  # the success arrives before the completion
        await lab.deliver_stripe(event)
    await deliver_each_twice_at_once(lab, events)
    assert await lab.wallet(shop_id) == (1000, 0)
    await lab.assert_holds("I5")


async def test_a_failed_async_payment_marks_the_purchase_failed(lab: Lab) -> None:
    shop_id = await lab.shop()
    checkout = await lab.checkout(shop_id, 100)
    lab.pay(checkout["session_id"], asynchronous=True, succeed=False)
    await asyncio.sleep(0.3)
    for event in lab.stripe_events():
        await lab.deliver_stripe(event)
    async with lab.sessions() as session, session.begin():
        status = await session.scalar(select(BillingTransaction.status))
    assert status == "failed"
    assert await lab.wallet(shop_id) == (0, 0)


async def test_refunds_are_taken_once_each_even_before_their_purchase(lab: Lab) -> None:
    shop_id, session_id = await bought(lab, 1000)
    lab.refund(session_id, 2000)  # a quarter of 8000 cents
    lab.refund(session_id, 4000)  # then half
    completed = lab.stripe_events("checkout.session.completed")
    refunded = lab.stripe_events("charge.refunded")
    # Refund events first, twice and at once; the purchase last.
    assert await lab.deliver_stripe(refunded[0]) == "refund_waits_for_purchase"
    await deliver_each_twice_at_once(lab, refunded)
    assert await lab.wallet(shop_id) == (0, 0)
    assert await lab.deliver_stripe(completed[0]) == "granted"
    assert await lab.wallet(shop_id) == (1000 - 250 - 500, 0)
    await deliver_each_twice_at_once(lab, refunded + completed)
    assert await lab.wallet(shop_id) == (250, 0)
    await lab.assert_holds("I4", "I5")


async def test_a_refund_larger_than_what_is_left_is_a_flagged_shortfall_not_a_negative_balance(
    lab: Lab,
) -> None:
    shop_id, session_id = await bought(lab, 100)
    for event in lab.stripe_events():
        await lab.deliver_stripe(event)
    await lab.contacts(shop_id, 80)
    campaign_id = await lab.campaign(shop_id)
    await lab.enqueue(shop_id, campaign_id)  # 80 of the 100 credits reserved
    lab.refund(session_id)
    [refunded] = lab.stripe_events("charge.refunded")
    assert await lab.deliver_stripe(refunded) == "refunded"
    assert await lab.wallet(shop_id) == (80, 80)  # only the 20 available were taken
    async with lab.sessions() as session, session.begin():
        billing = await session.scalar(select(BillingTransaction))
        flagged = await session.scalar(
            select(WebhookEvent.flagged).where(WebhookEvent.event_type == "charge.refunded")
        )
    assert billing is not None
    assert (billing.status, billing.credits_refunded, billing.refund_shortfall) == ("refunded", 20, 80)
    assert flagged is True
    await lab.send_all(campaign_id)
    assert await lab.wallet(shop_id) == (0, 0)
    await lab.assert_holds("I4", "I5")


async def test_unknown_event_types_are_recorded_without_effect(lab: Lab) -> None:
    event = {"id": "evt_unknown_1", "type": "customer.created", "data": {"object": {"id": "cus_1"}}}
    assert await lab.deliver_stripe(event) == "ignored"
    assert await lab.deliver_stripe(event) == "duplicate"


async def test_a_crash_between_the_event_record_and_its_effect_is_applied_by_the_retry(lab: Lab) -> None:
    shop_id, _ = await bought(lab, 1000)
    [completed] = lab.stripe_events("checkout.session.completed")
    with failpoints.armed("webhook.after_event_recorded", "raise", count=1), pytest.raises(SimulatedCrash):
        await lab.deliver_stripe(completed)
    assert await lab.wallet(shop_id) == (0, 0)
    assert await lab.deliver_stripe(completed) == "granted"  # Stripe's retry
    assert await lab.wallet(shop_id) == (1000, 0)


async def test_duplicates_racing_each_other_credit_once(lab: Lab) -> None:
    shop_id = await duplicate_racing_the_check(lab)
    assert await lab.wallet(shop_id) == (1000, 0)
    await lab.assert_holds("I5")


async def test_without_replay_protection_duplicates_credit_twice(lab: Lab) -> None:
    unsafe = lab.unsafe(safeguards.WEBHOOK_EFFECT_ONCE)
    shop_id = await duplicate_racing_the_check(unsafe)
    balance, _ = await unsafe.wallet(shop_id)
    assert balance == 2000
    verdict = await unsafe.verdict()
    assert verdict["I5"].valid is False
    assert verdict["I5"].counts["payments_credited_more_than_once"] == 1


async def test_without_replay_protection_a_crash_loses_the_effect(lab: Lab) -> None:
    unsafe = lab.unsafe(safeguards.WEBHOOK_EFFECT_ONCE)
    shop_id, _ = await bought(unsafe, 1000)
    [completed] = unsafe.stripe_events("checkout.session.completed")
    with failpoints.armed("webhook.after_event_recorded", "raise", count=1), pytest.raises(SimulatedCrash):
        await unsafe.deliver_stripe(completed)
    assert await unsafe.deliver_stripe(completed) == "duplicate"  # stuck as "processing", never applied
    assert await unsafe.wallet(shop_id) == (0, 0)


# --- over HTTP, with the fake Stripe delivering ---------------------------------------------------------


@pytest.mark.webhooks_to_api
async def test_purchases_through_the_api_and_the_fake_stripe(api: Api, lab: Lab) -> None:
    client = api.as_shop()
    refused = await client.post("/api/billing/checkout", json={"credits": 7})
    assert refused.status_code == 422
    assert "100, 1000, 10000" in problem(refused)["detail"]
    checkout = (await client.post("/api/billing/checkout", json={"credits": 1000})).json()
    lab.pay(checkout["session_id"])
    lab.refund(checkout["session_id"], 800)
    assert lab.simulator.wait_for_deliveries()["acknowledged"] == 2
    assert (await client.get("/api/wallet")).json() == {"balance": 900, "reserved": 0, "available": 900}
    [purchase] = (await client.get("/api/billing/transactions")).json()["items"]
    assert (purchase["status"], purchase["credits_granted"], purchase["credits_refunded"]) == (
        "paid",
        1000,
        100,
    )
    await lab.assert_holds("I4", "I5")


@pytest.mark.webhooks_to_api
async def test_forged_and_stale_signatures_are_refused_and_nothing_is_recorded(api: Api, lab: Lab) -> None:
    await bought(lab, 1000)
    lab.simulator.wait_for_deliveries()
    event = dict(lab.stripe_events("checkout.session.completed")[0], id="evt_test_replayed")
    body = json.dumps(event).encode()
    secret = lab.settings.stripe_webhook_secret[0]
    client = api.anonymous()
    cases = {
        "no signature": {},
        "wrong secret": {"Stripe-Signature": sign("whsec_someone_else", body)},
        "stale": {"Stripe-Signature": sign(secret, body, int(time.time()) - 400)},
        "v0 only": {"Stripe-Signature": sign(secret, body).replace("v1=", "v0=")},
        "body altered": {"Stripe-Signature": sign(secret, body + b" ")},
    }
    for name, headers in cases.items():
        response = await client.post("/webhooks/stripe", content=body, headers=headers)
        assert response.status_code == 400, name
        assert problem(response)["type"].endswith("/invalid-signature"), name
    async with lab.sessions() as session, session.begin():
        recorded = await session.scalar(select(func.count()).select_from(WebhookEvent))
    assert recorded == 1  # the fake's own, properly signed delivery
    ok = await client.post("/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(secret, body)})
    assert ok.json() == {"status": "already_granted", "flagged": False}


@pytest.mark.webhooks_to_api
async def test_rotated_secrets_both_verify(lab: Lab, tmp_path: object) -> None:
    from tests.support.api import start_api

    rotating = lab.settings.with_overrides(
        stripe_webhook_secret=("whsec_new_one", lab.settings.stripe_webhook_secret[0])
    )
    process = start_api(rotating, lab.tmp / "rotating", port=lab.simulator.target_port)
    try:
        await bought(lab, 100)
        assert lab.simulator.wait_for_deliveries()["acknowledged"] == 1
        event = dict(lab.stripe_events()[0], id="evt_signed_with_new")
        body = json.dumps(event).encode()
        assert process.ready_url is not None
        response = httpx.post(
            process.ready_url.removesuffix("/health") + "/webhooks/stripe",
            content=body,
            headers={"Stripe-Signature": sign("whsec_new_one", body)},
        )
        assert response.status_code == 200
    finally:
        process.stop()

"""Shopify: customers and consent, uninstall, privacy topics; each applied once, stale ones ignored."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import JSON, String, Text, select

from service import safeguards
from service.db.models import Base, Contact, PrivacyRequest, Shop
from service.errors import Unauthorized
from service.shops import shop_for_request
from service.webhooks.shopify import hmac_of
from tests.support.api import Api
from tests.support.lab import Lab, shopify_time

PHONE = "+12025550143"
EMAIL = "ada@example.com"
# What Shopify's payloads say about the shop: checked against X-Shopify-Shop-Domain.
SHOP_NAMED = {"shop_id": 1, "shop_domain": "alpha.myshopify.com"}
UNINSTALLED = {"id": 1, "domain": "alpha.example.com", "myshopify_domain": "alpha.myshopify.com"}


def customer(
    customer_id: int = 42, consent: str = "subscribed", phone: str = PHONE, **extra: Any
) -> dict[str, Any]:
    return {
        "id": customer_id,
        "email": EMAIL,
        "phone": phone,
        "first_name": "Ada",
        "sms_marketing_consent": {"state": consent, "opt_in_level": "single_opt_in"},
        **extra,
    }


async def contact_row(lab: Lab, customer_id: int = 42) -> Contact | None:
    async with lab.sessions() as session, session.begin():
        return await session.scalar(select(Contact).where(Contact.shopify_customer_id == customer_id))


async def everything_in_the_database(lab: Lab) -> str:
    """Every text and JSON value of every table, as one string to search."""
    values: list[str] = []
    async with lab.sessions() as session, session.begin():
        for table in Base.metadata.sorted_tables:
            columns = [c for c in table.columns if isinstance(c.type, String | Text | JSON)]
            if columns:
                for row in await session.execute(select(*columns)):
                    values.extend(str(v) for v in row if v is not None)
    return "\n".join(values)


async def test_customers_become_contacts_once_and_stale_updates_change_nothing(lab: Lab) -> None:
    await lab.shop()
    # Nanosecond precision, as Shopify sends it: the first is the oldest.
    t1 = shopify_time(60).replace("Z", "001Z")
    t2, t3 = shopify_time(59), shopify_time(57.5)
    outcomes = await asyncio.gather(
        *(lab.deliver_shopify("customers/create", customer(), "evt-create", t1) for _ in range(3))
    )
    assert sorted(outcomes) == ["created", "duplicate", "duplicate"]
    assert (
        await lab.deliver_shopify("customers/update", customer(first_name="Ada L."), "evt-3", t3) == "updated"
    )
    # An older update, delivered late, would overwrite the newer state: it changes nothing.
    assert (
        await lab.deliver_shopify("customers/update", customer(consent="unsubscribed"), "evt-2", t2)
        == "stale"
    )
    contact = await contact_row(lab)
    assert contact is not None
    assert (contact.phone_e164, contact.first_name, contact.sms_consent) == (PHONE, "Ada L.", True)


async def test_a_withdrawn_consent_takes_the_contact_out_of_unsent_campaigns(lab: Lab) -> None:
    shop_id = await lab.shop(credits=100)
    phones = await lab.contacts(shop_id, 10)
    campaign_id = await lab.campaign(shop_id)
    await lab.enqueue(shop_id, campaign_id)
    assert await lab.wallet(shop_id) == (100, 10)
    # The customer behind one imported contact withdraws consent in Shopify.
    outcome = await lab.deliver_shopify(
        "customers/update", customer(7, consent="unsubscribed", phone=phones[3]), "evt-withdraw"
    )
    assert outcome == "consent_withdrawn:1"
    assert await lab.recipient_statuses(campaign_id) == {"pending": 9, "cancelled": 1}
    assert await lab.wallet(shop_id) == (100, 9)
    await lab.send_all(campaign_id)
    assert await lab.recipient_statuses(campaign_id) == {"sent": 9, "cancelled": 1}
    assert phones[3] not in {m["to"] for m in lab.accepted_messages()}
    await lab.assert_holds("I1", "I2", "I3", "I4")


async def test_uninstall_stops_sending_campaigns_releases_credits_and_refuses_sessions(lab: Lab) -> None:
    shop_id, campaign_id = await lab.sending_campaign(recipients=30, credits=100)
    assert await lab.deliver_shopify("app/uninstalled", UNINSTALLED, "evt-u") == ("uninstalled:1")
    campaign = await lab.campaign_row(campaign_id)
    assert (campaign.status, campaign.status_reason) == ("cancelled", "app_uninstalled")
    assert await lab.wallet(shop_id) == (100, 0)
    with pytest.raises(Unauthorized):
        await shop_for_request(lab.engine, "alpha.myshopify.com")
    # Customer webhooks for an uninstalled shop change nothing.
    assert await lab.deliver_shopify("customers/create", customer(), "evt-late") == "shop_inactive"
    await lab.assert_holds("I2", "I4")


async def export_requested_twice_at_once(lab: Lab) -> int:
    await lab.shop()
    await lab.deliver_shopify("customers/create", customer(), "evt-create")
    request = {**SHOP_NAMED, "customer": {"id": 42, "email": EMAIL}}
    await asyncio.gather(
        *(lab.deliver_shopify("customers/data_request", request, "evt-export") for _ in range(2))
    )
    async with lab.sessions() as session, session.begin():
        exports = list(
            await session.scalars(select(PrivacyRequest).where(PrivacyRequest.kind == "data_request"))
        )
    assert all(e.export and e.export["contacts"][0]["phone"] == PHONE for e in exports)
    return len(exports)


async def test_a_data_request_is_exported_once(lab: Lab) -> None:
    assert await export_requested_twice_at_once(lab) == 1


async def test_without_replay_protection_a_data_request_is_exported_twice(lab: Lab) -> None:
    unsafe = lab.unsafe(safeguards.WEBHOOK_EFFECT_ONCE)
    from service import failpoints

    with failpoints.armed("webhook.after_duplicate_check", "sleep:0.3", count=2):
        assert await export_requested_twice_at_once(unsafe) == 2


async def test_a_redacted_customer_leaves_no_phone_or_email_anywhere(lab: Lab) -> None:
    shop_id = await lab.shop(credits=100)
    await lab.deliver_shopify("customers/create", customer(), "evt-create")
    others = await lab.contacts(shop_id, 5)
    sent = await lab.campaign(shop_id)
    await lab.enqueue(shop_id, sent)
    await lab.send_all(sent)  # the customer's phone is now on a sent recipient row too
    waiting = await lab.campaign(shop_id)
    await lab.enqueue(shop_id, waiting)  # and on a pending one
    await lab.deliver_shopify(
        "customers/data_request",
        {**SHOP_NAMED, "customer": {"id": 42, "email": EMAIL, "phone": PHONE}},
        "evt-export",
    )
    assert PHONE in await everything_in_the_database(lab)
    outcome = await lab.deliver_shopify(
        "customers/redact",
        {**SHOP_NAMED, "customer": {"id": 42, "email": EMAIL, "phone": PHONE}, "orders_to_redact": []},
        "evt-r",
    )
    assert outcome == "redacted:1"
    stored = await everything_in_the_database(lab)
    for needle in (PHONE, PHONE[2:], EMAIL):
        assert needle not in stored
    assert others[0] in stored  # other customers are untouched
    assert await lab.recipient_statuses(waiting) == {"pending": 5, "cancelled": 1}
    balance_before, _ = await lab.wallet(shop_id)
    assert balance_before == 100 - 6  # the ledger keeps its amounts
    await lab.assert_holds("I4")


async def update_retried_past_its_redaction(lab: Lab) -> list[str]:
    """A consent change made before the erasure request, delivered (retried by Shopify) after it."""
    await lab.shop()
    early, erased, late = shopify_time(60), shopify_time(55), shopify_time(59)
    outcomes = [await lab.deliver_shopify("customers/create", customer(), "evt-create", early)]
    redaction = {**SHOP_NAMED, "customer": {"id": 42, "email": EMAIL, "phone": PHONE}, "orders_to_redact": []}
    outcomes.append(await lab.deliver_shopify("customers/redact", redaction, "evt-r", erased))
    outcomes.append(
        await lab.deliver_shopify("customers/update", customer(consent="unsubscribed"), "evt-u", late)
    )
    return outcomes


async def test_an_update_delivered_after_the_erasure_does_not_bring_the_customer_back(lab: Lab) -> None:
    assert await update_retried_past_its_redaction(lab) == ["created", "redacted:1", "customer_erased"]
    assert await contact_row(lab) is None
    stored = await everything_in_the_database(lab)
    assert PHONE not in stored
    assert EMAIL not in stored


async def test_without_the_tombstone_a_late_update_resurrects_the_erased_customer(lab: Lab) -> None:
    unsafe = lab.unsafe(safeguards.ERASURE_IS_FINAL)
    assert await update_retried_past_its_redaction(unsafe) == ["created", "redacted:1", "created"]
    assert PHONE in await everything_in_the_database(unsafe)


async def test_an_erasure_and_an_update_racing_never_leave_the_customer_behind(lab: Lab) -> None:
    await lab.shop()
    await lab.deliver_shopify("customers/create", customer(), "evt-create", shopify_time(60))
    redaction = {**SHOP_NAMED, "customer": {"id": 42, "email": EMAIL, "phone": PHONE}, "orders_to_redact": []}
    for round_ in range(5):
        await asyncio.gather(
            lab.deliver_shopify("customers/redact", redaction, f"evt-r{round_}", shopify_time(55)),
            lab.deliver_shopify(
                "customers/update",
                customer(first_name=f"A{round_}"),
                f"evt-u{round_}",
                shopify_time(59),
            ),
        )
        assert await contact_row(lab) is None


async def test_shop_redact_erases_every_customer_and_keeps_the_ledger(lab: Lab) -> None:
    shop_id = await lab.shop(credits=100)
    phones = await lab.contacts(shop_id, 5)
    campaign_id = await lab.campaign(shop_id)
    await lab.enqueue(shop_id, campaign_id)
    await lab.send_all(campaign_id)
    await lab.deliver_shopify("app/uninstalled", UNINSTALLED, "evt-u")
    assert (await lab.deliver_shopify("shop/redact", SHOP_NAMED, "e")) == ("shop_redacted:5")
    stored = await everything_in_the_database(lab)
    assert not any(phone in stored for phone in phones)
    assert await lab.wallet(shop_id) == (95, 0)
    async with lab.sessions() as session, session.begin():
        shop = await session.scalar(select(Shop).where(Shop.id == shop_id))
    assert shop is not None
    assert shop.redacted_at is not None


# --- over HTTP, delivered by the fake Shopify -------------------------------------------------------------


@pytest.mark.webhooks_to_api
async def test_the_fake_shopify_delivers_verified_webhooks_and_retries_failures(api: Api, lab: Lab) -> None:
    await lab.shop()
    trigger = {"shop": "alpha.myshopify.com", "topic": "customers/create", "payload": customer()}
    lab.simulator.control("POST", "/shopify/webhooks", json=trigger)
    assert lab.simulator.wait_for_deliveries()["acknowledged"] == 1
    assert await contact_row(lab) is not None
    # Forged HMAC: 401 and nothing recorded.
    body = b'{"id": 43, "phone": "+12025550144"}'
    forged = await api.anonymous().post(
        "/webhooks/shopify",
        content=body,
        headers={
            "X-Shopify-Topic": "customers/create",
            "X-Shopify-Shop-Domain": "alpha.myshopify.com",
            "X-Shopify-Event-Id": "evt-forged",
            "X-Shopify-Hmac-Sha256": hmac_of("not-the-secret", body),
        },
    )
    assert forged.status_code == 401
    assert await contact_row(lab, 43) is None
    # The service is down for a while: Shopify retries with the original payload until it answers.
    api.process.stop()
    lab.simulator.control(
        "POST", "/shopify/webhooks", json={**trigger, "payload": customer(44, phone="+12025550145")}
    )
    await asyncio.sleep(0.5)
    api.process.start()
    api.process.wait_ready()
    counters = lab.simulator.wait_for_deliveries(timeout=30)
    assert counters["acknowledged"] == 2
    assert counters["failed_attempts"] >= 1
    assert await contact_row(lab, 44) is not None


@pytest.mark.webhooks_to_api
async def test_customers_made_in_the_fake_shopify_admin_api_reach_the_service(api: Api, lab: Lab) -> None:
    import httpx

    await lab.shop()
    admin = f"{lab.simulator.base_url}/shopify/alpha.myshopify.com/admin/api/2025-07"
    token = {"X-Shopify-Access-Token": "shpat_lab"}
    assert httpx.post(f"{admin}/customers.json", json={"customer": {}}).status_code == 401
    created = httpx.post(f"{admin}/customers.json", json={"customer": customer()}, headers=token).json()[
        "customer"
    ]
    # The change's webhook, acknowledged by the service (not merely "nothing pending": it may have been
    # given up after its retries).
    assert lab.simulator.wait_for_deliveries()["acknowledged"] == 1
    contact = await contact_row(lab, created["id"])
    assert contact is not None
    assert contact.sms_consent is True
    withdrawn = {"customer": {"sms_marketing_consent": {"state": "unsubscribed"}}}
    response = httpx.put(f"{admin}/customers/{created['id']}.json", json=withdrawn, headers=token)
    assert response.status_code == 200
    assert lab.simulator.wait_for_deliveries()["acknowledged"] == 2
    contact = await contact_row(lab, created["id"])
    assert contact is not None
    assert contact.sms_consent is False
    assert httpx.put(f"{admin}/customers/1.json", json=withdrawn, headers=token).status_code == 404
    malformed = httpx.post(f"{admin}/customers.json", content=b"{oops", headers=token)
    assert (malformed.status_code, list(malformed.json())) == (400, ["errors"])  # Shopify's error shape

"""Enqueue: idempotent (safeguard 1, I6) and one transaction (safeguard 2, I4), on both backends.

Each safeguard's check is a plain function; the paired `..._without_safeguard_...` test runs the same
scenario in the lab's unsafe mode and shows the check then fails.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service import failpoints, safeguards
from service.campaigns.enqueue import EnqueueOutcome
from service.errors import (
    CampaignNotDraft,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InsufficientCredits,
    NoRecipients,
    ProblemError,
)
from service.failpoints import SimulatedCrash
from service.wallet.ledger import grant_credits
from tests.support.lab import Lab


async def _draft(lab: Lab, recipients: int = 30, credits: int = 100) -> tuple[int, int]:
    shop_id = await lab.shop(credits=credits)
    await lab.contacts(shop_id, recipients)
    return shop_id, await lab.campaign(shop_id)


# --- safeguard 1: same key, same response -----------------------------------------------------------


async def replay_with_same_key(lab: Lab, shop_id: int, campaign_id: int) -> list[Any]:
    outcomes: list[Any] = []
    for _ in range(3):
        try:
            outcomes.append(await lab.enqueue(shop_id, campaign_id, key="retry-after-timeout"))
        except ProblemError as exc:
            outcomes.append(exc)
    return outcomes


def check_same_key_same_response(outcomes: list[Any]) -> None:
    assert all(isinstance(o, EnqueueOutcome) for o in outcomes), outcomes
    first = outcomes[0]
    assert (first.status, first.replayed) == (202, False)
    for replay in outcomes[1:]:
        assert (replay.status, replay.body, replay.replayed) == (202, first.body, True)


async def test_same_key_replays_the_stored_response(lab: Lab) -> None:
    shop_id, campaign_id = await _draft(lab)
    check_same_key_same_response(await replay_with_same_key(lab, shop_id, campaign_id))
    assert await lab.recipient_statuses(campaign_id) == {"pending": 30}
    assert await lab.wallet(shop_id) == (100, 30)


async def test_without_enqueue_idempotency_a_retry_gets_another_answer(lab: Lab) -> None:
    unsafe = lab.unsafe(safeguards.ENQUEUE_IDEMPOTENCY)
    shop_id, campaign_id = await _draft(unsafe)
    with pytest.raises(AssertionError):
        check_same_key_same_response(await replay_with_same_key(unsafe, shop_id, campaign_id))


async def test_same_key_with_another_request_is_refused(lab: Lab) -> None:
    shop_id, campaign_id = await _draft(lab)
    other = await lab.campaign(shop_id)
    await lab.enqueue(shop_id, campaign_id, key="k")
    with pytest.raises(IdempotencyKeyReused):
        await lab.enqueue(shop_id, other, key="k")
    with pytest.raises(IdempotencyKeyReused):
        await lab.enqueue(shop_id, campaign_id, key="k", body={"note": "different"})
    assert (await lab.campaign_row(other)).status == "draft"


async def test_same_key_still_in_flight_is_a_conflict(lab: Lab) -> None:
    shop_id, campaign_id = await _draft(lab)
    with failpoints.armed("enqueue.after_key_claimed", "sleep:1.0", count=1):
        first = asyncio.create_task(lab.enqueue(shop_id, campaign_id, key="k"))
        await asyncio.sleep(0.3)
        with pytest.raises(IdempotencyKeyInFlight):
            await lab.enqueue(shop_id, campaign_id, key="k")
        assert (await first).status == 202
    assert (await lab.enqueue(shop_id, campaign_id, key="k")).replayed


async def test_a_key_abandoned_by_a_crash_is_taken_over_after_the_lock_timeout(lab: Lab) -> None:
    quick = lab.with_settings(enqueue_lock_timeout_seconds=0.5)
    shop_id, campaign_id = await _draft(quick)
    with failpoints.armed("enqueue.after_key_claimed", "raise", count=1), pytest.raises(SimulatedCrash):
        await quick.enqueue(shop_id, campaign_id, key="k")
    with pytest.raises(IdempotencyKeyInFlight):
        await quick.enqueue(shop_id, campaign_id, key="k")
    await asyncio.sleep(0.6)
    outcome = await quick.enqueue(shop_id, campaign_id, key="k")
    assert (outcome.status, outcome.replayed) == (202, False)
    assert (await quick.enqueue(shop_id, campaign_id, key="k")).replayed


async def test_two_concurrent_enqueues_one_winner(lab: Lab) -> None:
    shop_id, campaign_id = await _draft(lab)
    with failpoints.armed("enqueue.after_status_change", "sleep:0.3", count=1):
        results = await asyncio.gather(
            lab.enqueue(shop_id, campaign_id, key="a"),
            lab.enqueue(shop_id, campaign_id, key="b"),
            lab.enqueue(shop_id, campaign_id),
            return_exceptions=True,
        )
    winners = [r for r in results if isinstance(r, EnqueueOutcome)]
    losers = [r for r in results if not isinstance(r, EnqueueOutcome)]
    assert len(winners) == 1, results
    assert all(isinstance(r, CampaignNotDraft) for r in losers), losers
    assert await lab.recipient_statuses(campaign_id) == {"pending": 30}
    assert await lab.wallet(shop_id) == (100, 30)
    # A loser's key keeps its refusal: retried, it is answered the same 409, never a 202.
    for key, result in zip(("a", "b"), results, strict=False):
        if isinstance(result, CampaignNotDraft):
            with pytest.raises(CampaignNotDraft) as again:
                await lab.enqueue(shop_id, campaign_id, key=key)
            assert again.value.headers == {"Idempotent-Replayed": "true"}
    await lab.assert_holds("I4")


async def test_campaign_no_longer_a_draft_is_a_conflict(lab: Lab) -> None:
    shop_id, campaign_id = await _draft(lab)
    await lab.enqueue(shop_id, campaign_id, key="first")
    with pytest.raises(CampaignNotDraft):
        await lab.enqueue(shop_id, campaign_id, key="second")


async def test_campaign_without_consenting_contacts_is_refused_unchanged(lab: Lab) -> None:
    shop_id = await lab.shop(credits=10)
    await lab.contacts(shop_id, 5, consent=False)
    campaign_id = await lab.campaign(shop_id)
    with pytest.raises(NoRecipients):
        await lab.enqueue(shop_id, campaign_id, key="k")
    assert (await lab.campaign_row(campaign_id)).status == "draft"


# --- safeguard 2: all or nothing --------------------------------------------------------------------


async def enqueue_short_of_credits(lab: Lab) -> tuple[int, int]:
    shop_id, campaign_id = await _draft(lab, recipients=30, credits=10)
    with pytest.raises(InsufficientCredits) as refused:
        await lab.enqueue(shop_id, campaign_id, key="k")
    assert refused.value.extra == {"needed": 30, "available": 10}
    return shop_id, campaign_id


async def check_nothing_changed(lab: Lab, shop_id: int, campaign_id: int) -> None:
    assert (await lab.campaign_row(campaign_id)).status == "draft"
    assert await lab.recipient_statuses(campaign_id) == {}
    assert await lab.wallet(shop_id) == (10, 0)


async def test_insufficient_credits_is_402_with_nothing_changed(lab: Lab) -> None:
    shop_id, campaign_id = await enqueue_short_of_credits(lab)
    await check_nothing_changed(lab, shop_id, campaign_id)
    # The refusal is the key's answer: even after a top-up, a retry with the key gets the same 402 ...
    async with lab.sessions() as session:
        await grant_credits(session, shop_id=shop_id, amount=50, idempotency_key="top-up")
    with pytest.raises(InsufficientCredits) as again:
        await lab.enqueue(shop_id, campaign_id, key="k")
    assert again.value.extra == {"needed": 30, "available": 10}
    assert again.value.headers == {"Idempotent-Replayed": "true"}
    # ... and a new key is a new request.
    assert (await lab.enqueue(shop_id, campaign_id, key="k2")).status == 202


async def test_a_duplicate_racing_a_refused_request_gets_the_same_refusal(lab: Lab) -> None:
    """Found by the lab (I6): a duplicate of a refused request, retried after a top-up, got 202."""
    shop_id, campaign_id = await _draft(lab, recipients=30, credits=10)
    with failpoints.armed("enqueue.after_key_claimed", "sleep:0.3", count=1):
        first = asyncio.create_task(lab.enqueue(shop_id, campaign_id, key="k"))
        await asyncio.sleep(0.1)
        with pytest.raises(IdempotencyKeyInFlight):  # the duplicate, while the first still runs
            await lab.enqueue(shop_id, campaign_id, key="k")
        with pytest.raises(InsufficientCredits):
            await first
    async with lab.sessions() as session:
        await grant_credits(session, shop_id=shop_id, amount=50, idempotency_key="top-up")
    answers = await asyncio.gather(
        *(lab.enqueue(shop_id, campaign_id, key="k") for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(a, InsufficientCredits) for a in answers), answers
    assert (await lab.campaign_row(campaign_id)).status == "draft"


async def test_without_enqueue_transaction_a_402_leaves_a_half_enqueued_campaign(lab: Lab) -> None:
    unsafe = lab.unsafe(safeguards.ENQUEUE_TRANSACTION)
    shop_id, campaign_id = await enqueue_short_of_credits(unsafe)
    with pytest.raises(AssertionError):
        await check_nothing_changed(unsafe, shop_id, campaign_id)
    verdict = await unsafe.verdict()
    assert verdict["I4"].valid is False
    assert verdict["I4"].counts["enqueued_campaigns_without_reservation"] == 1


@pytest.mark.parametrize(
    "point", ["enqueue.after_status_change", "enqueue.after_recipients", "enqueue.before_commit"]
)
async def test_a_crash_inside_enqueue_leaves_nothing_behind(lab: Lab, point: str) -> None:
    shop_id, campaign_id = await _draft(lab, credits=100)
    with failpoints.armed(point, "raise", count=1), pytest.raises(SimulatedCrash):
        await lab.enqueue(shop_id, campaign_id)
    assert (await lab.campaign_row(campaign_id)).status == "draft"
    assert await lab.recipient_statuses(campaign_id) == {}
    assert await lab.wallet(shop_id) == (100, 0)
    assert (await lab.enqueue(shop_id, campaign_id)).status == 202
    await lab.assert_holds("I4")


async def test_without_enqueue_transaction_a_crash_leaves_a_campaign_without_reservation(lab: Lab) -> None:
    unsafe = lab.unsafe(safeguards.ENQUEUE_TRANSACTION)
    shop_id, campaign_id = await _draft(unsafe, credits=100)
    with failpoints.armed("enqueue.after_recipients", "raise", count=1), pytest.raises(SimulatedCrash):
        await unsafe.enqueue(shop_id, campaign_id)
    verdict = await unsafe.verdict()
    assert verdict["I4"].valid is False

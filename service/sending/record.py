"""Record send outcomes and debit for them (safeguard 5, invariant I3).

Marking rows `sent` with their provider message ids, the debit ledger entry, the reservation decrement
and the campaign counters commit in ONE transaction, and only for rows still `sending` under the same
attempt. So a crash can never leave "sent but not debited", and a worker that finishes after the
reconciler already resolved its rows (its lease expired during a slow response) debits nothing again.
The seed debited in a second transaction keyed by the provider's bulk id; the lab's unsafe variant does
the same, to show both failures.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, update
from sqlalchemy.ext.asyncio import AsyncSession

from service import failpoints, safeguards
from service.campaigns import progress
from service.db.models import CampaignRecipient, CampaignStatus, RecipientStatus, utcnow
from service.sending.claims import Claim
from service.settings import Settings
from service.wallet import ledger, reservations

_CHUNK = 1_000


@dataclass
class Outcomes:
    """What the provider did with each recipient of one claim."""

    accepted: dict[int, str] = field(default_factory=dict)  # recipient id -> provider message id
    rejected: dict[int, tuple[int | None, str]] = field(default_factory=dict)  # -> (error code, reason)
    not_sent: set[int] = field(default_factory=set)  # certainly never accepted: may be sent again
    unknown: set[int] = field(default_factory=set)  # fate unknown: stays `sending` for the reconciler
    bulk_ids: list[str] = field(default_factory=list)


@dataclass
class Recorded:
    sent: int = 0
    failed: int = 0
    back_to_pending: int = 0
    cancelled: int = 0
    debited_credits: int = 0
    campaign_status: str | None = None


def _chunks(ids: Iterable[int]) -> Iterable[list[int]]:
    ordered = sorted(ids)
    for start in range(0, len(ordered), _CHUNK):
        yield ordered[start : start + _CHUNK]


async def _move(
    session: AsyncSession, ids: Iterable[int], owned: Sequence[ColumnElement[bool]], **values: object
) -> list[int]:
    moved: list[int] = []
    for chunk in _chunks(ids):
        result = await session.execute(
            update(CampaignRecipient)
            .where(CampaignRecipient.id.in_(chunk), *owned)
            .values(**values)
            .returning(CampaignRecipient.id)
        )
        moved.extend(result.scalars())
    return moved


def _owned_by(claim: Claim) -> list[ColumnElement[bool]]:
    if claim.claimed:
        return [
            CampaignRecipient.status == RecipientStatus.SENDING,
            CampaignRecipient.attempt_id == claim.attempt_id,
        ]
    return [CampaignRecipient.status == RecipientStatus.PENDING]


async def _mark_sent(session: AsyncSession, claim: Claim, accepted: dict[int, str]) -> list[int]:
    now = utcnow()
    sent = await _move(
        session,
        accepted,
        _owned_by(claim),
        status=RecipientStatus.SENT,
        sent_at=now,
        lease_expires_at=None,
        status_updated_at=now,
    )
    if sent:
        await session.execute(
            update(CampaignRecipient),
            [{"id": rid, "provider_message_id": accepted[rid]} for rid in sent],
        )
    return sent


async def _mark_unsent(
    session: AsyncSession, claim: Claim, outcomes: Outcomes, result: Recorded, campaign_sending: bool
) -> None:
    """Rejections fail their rows and release their credits; certain non-sends go back to pending."""
    now = utcnow()
    failed = 0
    by_cause: dict[tuple[int | None, str], list[int]] = defaultdict(list)
    for rid, cause in outcomes.rejected.items():
        by_cause[cause].append(rid)
    for (code, reason), ids in by_cause.items():
        failed += len(
            await _move(
                session,
                ids,
                _owned_by(claim),
                status=RecipientStatus.FAILED,
                error_code=code,
                failure_reason=reason,
                lease_expires_at=None,
                status_updated_at=now,
            )
        )
    if outcomes.not_sent and claim.claimed:
        if campaign_sending:
            result.back_to_pending = len(
                await _move(
                    session,
                    outcomes.not_sent,
                    _owned_by(claim),
                    status=RecipientStatus.PENDING,
                    attempt_id=None,
                    lease_expires_at=None,
                    status_updated_at=now,
                )
            )
        else:
            result.cancelled = len(
                await _move(
                    session,
                    outcomes.not_sent,
                    _owned_by(claim),
                    status=RecipientStatus.CANCELLED,
                    failure_reason="campaign_stopped",
                    lease_expires_at=None,
                    status_updated_at=now,
                )
            )
    result.failed = failed
    unsent = failed + result.cancelled
    if unsent:
        await reservations.release_part(
            session, shop_id=claim.shop_id, campaign_id=claim.campaign_id, credits=unsent * claim.segments
        )


async def record_outcomes(
    session: AsyncSession, settings: Settings, claim: Claim, outcomes: Outcomes
) -> Recorded:
    """Write what happened to one claim. Own transaction(s); the session must not be in one."""
    if not safeguards.is_on(settings, safeguards.DEBIT_WITH_RESULT):
        return await _record_then_debit_separately(session, claim, outcomes)
    result = Recorded()
    async with session.begin():
        campaign = await progress.lock_campaign(session, claim.campaign_id)
        sending = campaign is not None and campaign.status == CampaignStatus.SENDING
        sent = await _mark_sent(session, claim, outcomes.accepted)
        await failpoints.hit("send.between_record_and_debit")
        if sent:
            credits = len(sent) * claim.segments
            # Key: one attempt debits a recipient at most once (the conditional update above), so the
            # smallest recipient id of this set names this debit uniquely and deterministically.
            await ledger.debit_sent_messages(
                session,
                shop_id=claim.shop_id,
                campaign_id=claim.campaign_id,
                messages=len(sent),
                credits=credits,
                idempotency_key=f"debit:{claim.attempt_id}:{min(sent)}",
            )
            result.sent, result.debited_credits = len(sent), credits
        await _mark_unsent(session, claim, outcomes, result, sending)
        await progress.add_outcomes(
            session, claim.campaign_id, sent=result.sent, failed=result.failed + result.cancelled
        )
        result.campaign_status = await progress.settle_if_finished(session, claim.campaign_id)
    return result


async def _record_then_debit_separately(session: AsyncSession, claim: Claim, outcomes: Outcomes) -> Recorded:
    """Unsafe variant (lab only), as the seed did it: record, commit, then debit what the response said."""
    result = Recorded()
    async with session.begin():
        campaign = await progress.lock_campaign(session, claim.campaign_id)
        sending = campaign is not None and campaign.status == CampaignStatus.SENDING
        sent = await _mark_sent(session, claim, outcomes.accepted)
        result.sent = len(sent)
        await _mark_unsent(session, claim, outcomes, result, sending)
        await progress.add_outcomes(
            session, claim.campaign_id, sent=result.sent, failed=result.failed + result.cancelled
        )
    await failpoints.hit("send.between_record_and_debit")
    accepted = len(outcomes.accepted)
    if accepted:
        key = (
            f"debit:bulk:{outcomes.bulk_ids[-1]}" if outcomes.bulk_ids else f"debit:lookup:{claim.attempt_id}"
        )
        async with session.begin():
            await progress.lock_campaign(session, claim.campaign_id)
            await ledger.debit_sent_messages(
                session,
                shop_id=claim.shop_id,
                campaign_id=claim.campaign_id,
                messages=accepted,
                credits=accepted * claim.segments,
                idempotency_key=key,
            )
            result.debited_credits = accepted * claim.segments
    async with session.begin():
        await progress.lock_campaign(session, claim.campaign_id)
        result.campaign_status = await progress.settle_if_finished(session, claim.campaign_id)
    return result

"""Record send outcomes and debit for them (safeguard 5, invariant I3).

Marking rows `sent` with their provider message ids, the debit ledger entry, the reservation decrement
and the campaign counters commit in ONE transaction, and only for rows still `sending` under the same
attempt. So a crash can never leave "sent but not debited", and a worker that finishes after the
reconciler already resolved its rows (its lease expired during a slow response) debits nothing again.
The seed debited in a second transaction keyed by the provider's bulk id; the lab's unsafe variant does
the same, to show both failures.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, TextClause, bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from service import failpoints, safeguards
from service.campaigns import progress
from service.db.dialect import dialect_name
from service.db.models import (
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    RecipientStatus,
    UTCDateTime,
    recipient_status_is,
    utcnow,
)
from service.metrics import CREDITS_DEBITED, MESSAGES_FAILED, MESSAGES_SENT
from service.sending import delivery_reports
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
    sent_ids: list[int] = field(default_factory=list)
    sent: int = 0
    failed: int = 0
    back_to_pending: int = 0
    cancelled: int = 0
    debited_credits: int = 0
    campaign_status: str | None = None
    failed_by_reason: dict[str, int] = field(default_factory=dict)

    def count(self) -> None:
        """Move the metrics by what this record committed (called after the commit, never before)."""
        if self.sent:
            MESSAGES_SENT.inc(self.sent)
        if self.debited_credits:
            CREDITS_DEBITED.inc(self.debited_credits)
        for reason, failed in self.failed_by_reason.items():
            MESSAGES_FAILED.labels(reason=reason).inc(failed)


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
            recipient_status_is(RecipientStatus.SENDING),
            CampaignRecipient.attempt_id == claim.attempt_id,
        ]
    return [recipient_status_is(RecipientStatus.PENDING)]


def _owned_sql(claimed: bool) -> str:
    if claimed:
        return "campaign_recipients.status = 'sending' AND campaign_recipients.attempt_id = :attempt"
    return "campaign_recipients.status = 'pending'"


_MARK_SENT_SET = (
    "UPDATE campaign_recipients SET status = 'sent', sent_at = :now, status_updated_at = :now, "
    "lease_expires_at = NULL, provider_message_id = "
)


@functools.lru_cache(maxsize=64)
def _mark_sent_by_join(rows: int, claimed: bool) -> TextClause:
    """SQLite: `UPDATE ... FROM (VALUES ...)` (since 3.33); its planner looks each id up by key."""
    values = ", ".join(f"(CAST(:i{n} AS BIGINT), CAST(:m{n} AS VARCHAR(64)))" for n in range(rows))
    return text(
        f"{_MARK_SENT_SET}v.column2 FROM (VALUES {values}) AS v "
        f"WHERE campaign_recipients.id = v.column1 AND {_owned_sql(claimed)} RETURNING campaign_recipients.id"
    ).bindparams(bindparam("now", type_=UTCDateTime()))


@functools.lru_cache(maxsize=2)
def _mark_sent_by_arrays(claimed: bool) -> TextClause:
    """PostgreSQL: the rows found by primary key (`id = ANY`), each one's message id picked from a
    parallel array. One statement text for any chunk size, and no join for the planner to get wrong:
    the VALUES join's plan rested on the estimate for `status = 'sending' AND attempt_id = ...`, which
    without fresh statistics is one row, so PostgreSQL scanned the whole table and compared every
    sending row with every VALUES row (35 ms per 500 messages at 200,000 recipient rows, 2.6 ms by key).
    """
    return text(
        f"{_MARK_SENT_SET}(CAST(:message_ids AS VARCHAR(64)[]))"
        "[array_position(CAST(:ids AS BIGINT[]), campaign_recipients.id)] "
        f"WHERE campaign_recipients.id = ANY(CAST(:ids AS BIGINT[])) AND {_owned_sql(claimed)} "
        "RETURNING campaign_recipients.id"
    ).bindparams(bindparam("now", type_=UTCDateTime()))


async def _mark_sent(session: AsyncSession, claim: Claim, accepted: dict[int, str]) -> list[int]:
    """sending -> sent with its message id, for the rows this attempt still owns, in one statement per chunk.

    Every row gets its own message id and its ownership checked in the same statement; RETURNING says
    exactly which rows this attempt may debit.
    """
    by_arrays = dialect_name(session) == "postgresql"
    sent: list[int] = []
    for chunk in _chunks(accepted):
        params: dict[str, object] = {"now": utcnow(), "attempt": claim.attempt_id}
        if by_arrays:
            params["ids"] = chunk
            params["message_ids"] = [accepted[rid] for rid in chunk]
            statement = _mark_sent_by_arrays(claim.claimed)
        else:
            for n, rid in enumerate(chunk):
                params[f"i{n}"] = rid
                params[f"m{n}"] = accepted[rid]
            statement = _mark_sent_by_join(len(chunk), claim.claimed)
        result = await session.execute(statement, params)
        sent.extend(result.scalars())
    return sent


async def _move_unsent(
    session: AsyncSession, claim: Claim, outcomes: Outcomes, result: Recorded, campaign_sending: bool
) -> list[int]:
    """Rejections fail their rows; certain non-sends go back to pending. Returns the rows sent back."""
    now = utcnow()
    by_cause: dict[tuple[int | None, str], list[int]] = defaultdict(list)
    for rid, cause in outcomes.rejected.items():
        by_cause[cause].append(rid)
    for (code, reason), ids in by_cause.items():
        failed = len(
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
        result.failed += failed
        if failed:
            result.failed_by_reason[reason] = result.failed_by_reason.get(reason, 0) + failed
    if not (outcomes.not_sent and claim.claimed):
        return []
    if not campaign_sending:
        result.cancelled += len(await _cancel(session, outcomes.not_sent, _owned_by(claim)))
        return []
    pending = await _move(
        session,
        outcomes.not_sent,
        _owned_by(claim),
        status=RecipientStatus.PENDING,
        attempt_id=None,
        lease_expires_at=None,
        status_updated_at=now,
    )
    result.back_to_pending = len(pending)
    return pending


async def _cancel(
    session: AsyncSession, ids: Iterable[int], owned: Sequence[ColumnElement[bool]]
) -> list[int]:
    return await _move(
        session,
        ids,
        owned,
        status=RecipientStatus.CANCELLED,
        failure_reason="campaign_stopped",
        lease_expires_at=None,
        status_updated_at=utcnow(),
    )


async def _recipient_changes(
    session: AsyncSession, claim: Claim, outcomes: Outcomes, result: Recorded
) -> list[int]:
    """Every recipient-row change of the claim. Returns the ids sent back to pending.

    These rows belong to this attempt alone (no other writer touches a `sending` row of this attempt but
    the reconciler, through this same function), so this runs before the campaign row is locked and
    concurrent batches of one campaign do their heaviest statement in parallel.
    """
    status = await session.scalar(select(Campaign.status).where(Campaign.id == claim.campaign_id))
    result.sent_ids = await _mark_sent(session, claim, outcomes.accepted)
    result.sent = len(result.sent_ids)
    return await _move_unsent(session, claim, outcomes, result, status == CampaignStatus.SENDING)


async def _cancel_if_stopped(
    session: AsyncSession, campaign_status: str | None, back_to_pending: list[int], result: Recorded
) -> int:
    """Correct for a cancel that committed while the rows were being written: nothing goes back to
    pending in a stopped campaign. Under the campaign lock; returns how many rows it cancelled."""
    if not back_to_pending or campaign_status == CampaignStatus.SENDING:
        return 0
    cancelled = len(await _cancel(session, back_to_pending, [recipient_status_is(RecipientStatus.PENDING)]))
    result.cancelled += cancelled
    result.back_to_pending -= cancelled
    return cancelled


async def _release_unsent(session: AsyncSession, claim: Claim, result: Recorded) -> None:
    unsent = result.failed + result.cancelled
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
        back_to_pending = await _recipient_changes(session, claim, outcomes, result)
        await failpoints.hit("send.between_record_and_debit")
        # Looked for before the campaign is locked: a report kept after this look waits for the
        # reconciler's pass, as one kept after the apply below always did.
        reports_kept = bool(result.sent_ids) and await delivery_reports.any_kept(session, claim.campaign_id)
        # From here to the commit every batch of the campaign waits for this one: the campaign row, then
        # its reservation, then the wallet (the order every writer takes), in as few round trips as can be.
        known = await progress.lock_and_add_outcomes(
            session, claim.campaign_id, sent=result.sent, failed=result.failed + result.cancelled
        )
        status = known.status if known else None
        cancelled = await _cancel_if_stopped(session, status, back_to_pending, result)
        if cancelled:
            await progress.add_outcomes(session, claim.campaign_id, failed=cancelled)
            known = None  # settling re-reads the row
        if result.sent_ids:
            credits = result.sent * claim.segments
            # Key: one attempt debits a recipient at most once (the conditional update), so the smallest
            # recipient id of this set names this debit uniquely and deterministically.
            await ledger.debit_sent_messages(
                session,
                shop_id=claim.shop_id,
                campaign_id=claim.campaign_id,
                messages=result.sent,
                credits=credits,
                idempotency_key=f"debit:{claim.attempt_id}:{min(result.sent_ids)}",
            )
            result.debited_credits = credits
        await _release_unsent(session, claim, result)
        if reports_kept:
            # Delivery reports that beat this record are applied now that their message ids exist.
            await delivery_reports.apply_pending(session, settings, claim.campaign_id)
        result.campaign_status = await progress.settle_if_finished(session, claim.campaign_id, known)
    result.count()
    return result


async def _record_then_debit_separately(session: AsyncSession, claim: Claim, outcomes: Outcomes) -> Recorded:
    """Unsafe variant (lab only), as the seed did it: record, commit, then debit what the response said."""
    result = Recorded()
    async with session.begin():
        back_to_pending = await _recipient_changes(session, claim, outcomes, result)
        campaign = await progress.lock_campaign(session, claim.campaign_id)
        await _cancel_if_stopped(session, campaign.status if campaign else None, back_to_pending, result)
        await _release_unsent(session, claim, result)
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
    result.count()
    return result

"""Delivery reports (safeguard 7, invariant I7): statuses only move forward, and none is ever lost.

Mitto reports `Sent`/`Buffered` (intermediate) and then one of `Delivered`, `Undeliverable`, `Expired`,
`Rejected`, `Failed` (final). A recipient's status moves `sent -> delivered | undelivered | expired`
once, by a conditional update from `sent`; an intermediate report only notes the provider's status while
nothing final has arrived. So a late or duplicated report cannot move a message backwards.

A report can arrive before the worker recorded the message id (the provider's callback can beat its own
HTTP answer). Such a report is kept in `pending_delivery_reports` and applied when the worker records the
id (in the same transaction), or by the reconciler if the two raced. A report about a reference this
service never sent is recorded and flagged, never silently dropped.

Both ways a report arrives go through `apply_reports`: one report inside its own `apply_once`
transaction, or many at once in the API's group commit (`webhooks/report_batcher.py`, which only groups
and commits). The rule lives here once: one statement (`_advance_statement`), one choice of which report
of a message counts (`_choose`), one `is_on(DELIVERY_REPORTS_FORWARD_ONLY)` decision per call.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from service import safeguards
from service.db.apply_once import EffectResult
from service.db.models import CampaignRecipient, PendingDeliveryReport, RecipientStatus, UTCDateTime, utcnow
from service.sending.references import parse_reference
from service.settings import Settings

FINAL_STATUSES: dict[str, RecipientStatus] = {
    "Delivered": RecipientStatus.DELIVERED,
    "Undeliverable": RecipientStatus.UNDELIVERED,
    "Rejected": RecipientStatus.UNDELIVERED,
    "Failed": RecipientStatus.UNDELIVERED,
    "Expired": RecipientStatus.EXPIRED,
}
INTERMEDIATE_STATUSES = ("Sent", "Buffered")
KNOWN_STATUSES = (*INTERMEDIATE_STATUSES, *FINAL_STATUSES)


@dataclass(frozen=True)
class DeliveryReport:
    message_id: str
    reference: str
    status: str
    error_code: int | None
    reported_at: datetime | None


_RECIPIENTS = cast(Table, CampaignRecipient.__table__)
_BY_MESSAGE_ID = select(_RECIPIENTS.c.id).where(_RECIPIENTS.c.provider_message_id == bindparam("message_id"))
_CHUNK = 200  # reports per statement: 4 bind parameters each, well inside both backends' limits


def rank(report: DeliveryReport) -> int:
    """How far a report moves a message: a final status beats an intermediate one."""
    return 2 if report.status in FINAL_STATUSES else 1


@functools.cache
def _advance_statement(rows: int, forward_only: bool, by_recipient_id: bool) -> Any:
    """THE statement that moves messages by their reports (the only one): `UPDATE ... FROM (VALUES ...)`,
    one row per message, keyed by provider message id (a report as it comes) or by recipient id (a kept
    report, or one whose row is already locked). Built once per shape: this is the webhooks' hot path.

    Forward-only: only a `sent` row moves, to the report's final status if it has one; an intermediate
    report only notes the provider's status. Unsafe variant (lab only): the report is the truth, whatever
    came before it, and an intermediate report puts the message back to `sent`.
    """
    key, cast_key = ("id", "BIGINT") if by_recipient_id else ("provider_message_id", "VARCHAR(64)")
    values = ", ".join(
        f"(CAST(:k{n} AS {cast_key}), CAST(:p{n} AS VARCHAR(32)), "
        f"CAST(:s{n} AS VARCHAR(16)), CAST(:e{n} AS INTEGER))"
        for n in range(rows)
    )
    sent = RecipientStatus.SENT.value
    new_status = (
        "COALESCE(v.column3, campaign_recipients.status)"
        if forward_only
        else f"COALESCE(v.column3, '{sent}')"
    )
    only_sent = f" AND campaign_recipients.status = '{sent}'" if forward_only else ""
    return text(
        "UPDATE campaign_recipients SET provider_status = v.column2, "  # noqa: S608 - placeholders only
        f"status = {new_status}, "
        "error_code = COALESCE(v.column4, campaign_recipients.error_code), status_updated_at = :now "
        f"FROM (VALUES {values}) AS v WHERE campaign_recipients.{key} = v.column1{only_sent} "
        f"RETURNING campaign_recipients.{key}"
    ).bindparams(bindparam("now", type_=UTCDateTime()))


async def _advance(
    session: AsyncSession,
    moves: list[tuple[Any, DeliveryReport]],
    forward_only: bool,
    by_recipient_id: bool = False,
) -> set[Any]:
    """Apply one report per key (message ids, or recipient ids); the keys whose row moved."""
    moved: set[Any] = set()
    for start in range(0, len(moves), _CHUNK):
        chunk = moves[start : start + _CHUNK]
        params: dict[str, Any] = {"now": utcnow()}
        for n, (key, report) in enumerate(chunk):
            final = FINAL_STATUSES.get(report.status)
            params.update(
                {
                    f"k{n}": key,
                    f"p{n}": report.status,
                    f"s{n}": final.value if final else None,
                    f"e{n}": report.error_code if final else None,
                }
            )
        statement = _advance_statement(len(chunk), forward_only, by_recipient_id)
        moved.update((await session.execute(statement, params)).scalars())
    return moved


def _choose(reports: list[DeliveryReport], forward_only: bool) -> dict[str, int]:
    """Which report of each message to apply (message id -> index). Forward-only: the most advanced, the
    first among equals (a second final is superseded). Unsafe: the last to arrive, as if each overwrote."""
    chosen: dict[str, int] = {}
    for index, report in enumerate(reports):
        current = chosen.get(report.message_id)
        if current is None or not forward_only or rank(report) > rank(reports[current]):
            chosen[report.message_id] = index
    return chosen


async def apply_reports(
    session: AsyncSession, settings: Settings, reports: list[DeliveryReport]
) -> list[EffectResult]:
    """The effect of delivery reports never applied before, one outcome each, in order. Caller's
    transaction: the webhook's (`apply_once`) for one report, the batcher's for many.

    The common case is one statement for all: each recorded message moves by its report. What did not
    move (superseded, early, or racing the worker's record) is decided row by row with the row locked."""
    forward_only = safeguards.is_on(settings, safeguards.DELIVERY_REPORTS_FORWARD_ONLY)
    outcomes: list[EffectResult | None] = [None] * len(reports)
    chosen = _choose(reports, forward_only)
    moved = await _advance(session, [(m, reports[i]) for m, i in chosen.items()], forward_only)
    for message_id, index in chosen.items():
        if message_id in moved:
            outcomes[index] = EffectResult("applied")
    if not forward_only:  # unsafe: a report overwritten by a later one of the same batch was applied
        for index, report in enumerate(reports):
            if outcomes[index] is None and chosen[report.message_id] != index and report.message_id in moved:
                outcomes[index] = EffectResult("applied")
    # In ascending recipient id: the order the worker's record locks them in.
    leftovers = sorted(
        (i for i, o in enumerate(outcomes) if o is None), key=lambda i: _lock_order(reports[i])
    )
    for index in leftovers:
        outcomes[index] = await settle_unmoved(session, reports[index], forward_only)
    return [outcome or EffectResult("superseded") for outcome in outcomes]


async def apply_report(session: AsyncSession, settings: Settings, report: DeliveryReport) -> EffectResult:
    """The effect of one delivery report (inside the webhook's replay-protected transaction)."""
    [outcome] = await apply_reports(session, settings, [report])
    return outcome


_LOCK_REFERENCED = (
    select(_RECIPIENTS.c.id, _RECIPIENTS.c.provider_message_id)
    .where(
        _RECIPIENTS.c.id == bindparam("recipient_id"), _RECIPIENTS.c.campaign_id == bindparam("campaign_id")
    )
    .with_for_update()
)


async def settle_unmoved(session: AsyncSession, report: DeliveryReport, forward_only: bool) -> EffectResult:
    """A report the one-statement update did not move: already superseded, early, or racing the record.

    Under READ COMMITTED every statement sees a newer snapshot, so "the update moved nothing, then a lookup
    found the message" proves nothing: the worker's record can commit between the two, and the report
    would be called superseded and lost (the lab's I7 caught exactly that on PostgreSQL). So the recipient
    row the reference names is locked first (`FOR UPDATE` waits for a record in flight and then reads the
    committed row; SQLite's single writer gives the same order). With the row held, the answer is final:
    it carries this message id, and the update is tried again (applied, or truly superseded); or it has
    no message id yet, and the report is kept, which the worker's record (blocked on this row until we
    commit) will see and apply. Callers lock in ascending recipient id, as the worker's record does.
    """
    parsed = parse_reference(report.reference)
    if parsed is not None:
        campaign_id, recipient_id = parsed
        row = (
            await session.execute(
                _LOCK_REFERENCED, {"recipient_id": recipient_id, "campaign_id": campaign_id}
            )
        ).first()
        if row is not None and row.provider_message_id == report.message_id:
            moved = await _advance(session, [(row.id, report)], forward_only, by_recipient_id=True)
            return EffectResult("applied" if moved else "superseded")
        if row is not None and row.provider_message_id is None:
            if not forward_only:
                return EffectResult("dropped_unknown_message")  # unsafe variant (lab only)
            session.add(
                PendingDeliveryReport(
                    campaign_id=campaign_id,
                    recipient_id=recipient_id,
                    provider_message_id=report.message_id,
                    provider_status=report.status,
                    error_code=report.error_code,
                    reported_at=report.reported_at,
                    received_at=utcnow(),
                )
            )
            return EffectResult("deferred_until_recorded")
    # The reference names no row of ours carrying this message (or names none at all).
    if await _advance(session, [(report.message_id, report)], forward_only):
        return EffectResult("applied")
    if (await session.execute(_BY_MESSAGE_ID, {"message_id": report.message_id})).scalar() is not None:
        return EffectResult("superseded")
    return EffectResult("unmatched", flagged=True)


def _lock_order(report: DeliveryReport) -> int:
    """The lock order of `settle_unmoved`: the recipient id its reference names (unparsable ones last)."""
    parsed = parse_reference(report.reference)
    return parsed[1] if parsed is not None else 2**63


async def any_kept(session: AsyncSession, campaign_id: int) -> bool:
    """Whether the campaign has kept reports at all (almost never): one indexed look, before a recorded
    batch locks the campaign, so that `apply_pending`'s join runs only when it can find something."""
    found = await session.scalar(
        select(PendingDeliveryReport.id).where(PendingDeliveryReport.campaign_id == campaign_id).limit(1)
    )
    return found is not None


async def apply_pending(session: AsyncSession, settings: Settings, campaign_id: int) -> int:
    """Apply the campaign's kept reports whose message id is now recorded. Caller's transaction."""
    pending = list(
        await session.execute(
            select(PendingDeliveryReport, CampaignRecipient.provider_message_id)
            .join(CampaignRecipient, CampaignRecipient.id == PendingDeliveryReport.recipient_id)
            .where(
                PendingDeliveryReport.campaign_id == campaign_id,
                CampaignRecipient.provider_message_id.is_not(None),
            )
            .order_by(PendingDeliveryReport.id)
        )
    )
    # A kept report about another acceptance of this recipient stays kept, for an operator.
    kept = [k for k, recorded_message_id in pending if k.provider_message_id == recorded_message_id]
    if not kept:
        return 0
    forward_only = safeguards.is_on(settings, safeguards.DELIVERY_REPORTS_FORWARD_ONLY)
    reports = [
        DeliveryReport(k.provider_message_id, "", k.provider_status, k.error_code, k.reported_at)
        for k in kept
    ]
    recipient_of = {k.provider_message_id: k.recipient_id for k in kept}
    chosen = _choose(reports, forward_only)
    moves = [(recipient_of[m], reports[i]) for m, i in chosen.items()]
    await _advance(session, moves, forward_only, by_recipient_id=True)
    await session.execute(
        delete(PendingDeliveryReport).where(PendingDeliveryReport.id.in_([k.id for k in kept]))
    )
    return len(kept)


async def campaigns_with_pending_reports(session: AsyncSession) -> list[int]:
    return list(await session.scalars(select(PendingDeliveryReport.campaign_id).distinct()))

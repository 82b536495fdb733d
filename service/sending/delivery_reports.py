"""Delivery reports (safeguard 7, invariant I7): statuses only move forward, and none is ever lost.

Mitto reports `Sent`/`Buffered` (intermediate) and then one of `Delivered`, `Undeliverable`, `Expired`,
`Rejected`, `Failed` (final). A recipient's status moves `sent -> delivered | undelivered | expired`
once, by a conditional update from `sent`; an intermediate report only notes the provider's status while
nothing final has arrived. So a late or duplicated report cannot move a message backwards.

A report can arrive before the worker recorded the message id (the provider's callback can beat its own
HTTP answer). Such a report is kept in `pending_delivery_reports` and applied when the worker records the
id (in the same transaction), or by the reconciler if the two raced. A report about a reference this
service never sent is recorded and flagged, never silently dropped.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service import safeguards
from service.db.models import CampaignRecipient, PendingDeliveryReport, RecipientStatus, utcnow
from service.sending.references import parse_reference
from service.settings import Settings
from service.webhooks.replay import EffectResult

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


@functools.cache
def _move_statement(final: bool, forward_only: bool, by_message_id: bool = False) -> Any:
    """The conditional update for one kind of report, built once (this is the webhook's hot path)."""
    values: dict[str, Any] = {
        "provider_status": bindparam("provider_status"),
        "status_updated_at": bindparam("now", type_=_RECIPIENTS.c.status_updated_at.type),
    }
    if final:
        values.update(status=bindparam("new_status"), error_code=bindparam("error_code"))
    elif not forward_only:
        # Unsafe variant (lab only): the report is the truth, whatever came before it.
        values["status"] = RecipientStatus.SENT.value
    key = _RECIPIENTS.c.provider_message_id if by_message_id else _RECIPIENTS.c.id
    statement = update(_RECIPIENTS).where(key == bindparam("message_id" if by_message_id else "recipient_id"))
    if forward_only:
        statement = statement.where(_RECIPIENTS.c.status == RecipientStatus.SENT.value)
    return statement.values(values).returning(_RECIPIENTS.c.id)


async def apply_to_recipient(
    session: AsyncSession, settings: Settings, recipient_id: int, report: DeliveryReport
) -> bool:
    """Move one recipient forward by a report; False if it was already past it. Caller's transaction."""
    forward_only = safeguards.is_on(settings, safeguards.DELIVERY_REPORTS_FORWARD_ONLY)
    return await _move_one(session, report, forward_only, recipient_id=recipient_id)


async def _move_one(
    session: AsyncSession, report: DeliveryReport, forward_only: bool, *, recipient_id: int | None = None
) -> bool:
    final = FINAL_STATUSES.get(report.status)
    params: dict[str, Any] = {"provider_status": report.status, "now": utcnow()}
    if recipient_id is None:
        params["message_id"] = report.message_id
    else:
        params["recipient_id"] = recipient_id
    if final is not None:
        params.update(new_status=final.value, error_code=report.error_code)
    statement = _move_statement(final is not None, forward_only, by_message_id=recipient_id is None)
    return (await session.execute(statement, params)).scalar() is not None


async def apply_report(session: AsyncSession, settings: Settings, report: DeliveryReport) -> EffectResult:
    """The effect of one delivery report (inside the webhook's replay-protected transaction)."""
    forward_only = safeguards.is_on(settings, safeguards.DELIVERY_REPORTS_FORWARD_ONLY)
    # The common case in one statement: the message is recorded and moves forward.
    if await _move_one(session, report, forward_only):
        return EffectResult("applied")
    return await settle_unmoved(session, report, forward_only=forward_only)


_LOCK_REFERENCED = (
    select(_RECIPIENTS.c.id, _RECIPIENTS.c.provider_message_id)
    .where(
        _RECIPIENTS.c.id == bindparam("recipient_id"), _RECIPIENTS.c.campaign_id == bindparam("campaign_id")
    )
    .with_for_update()
)


async def settle_unmoved(
    session: AsyncSession, report: DeliveryReport, *, forward_only: bool
) -> EffectResult:
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
            moved = await _move_one(session, report, forward_only, recipient_id=row.id)
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
    if await _move_one(session, report, forward_only):
        return EffectResult("applied")
    if (await session.execute(_BY_MESSAGE_ID, {"message_id": report.message_id})).scalar() is not None:
        return EffectResult("superseded")
    return EffectResult("unmatched", flagged=True)


def reference_order(report: DeliveryReport) -> int:
    """The lock order of `settle_unmoved`: the recipient id its reference names (unparsable ones last)."""
    parsed = parse_reference(report.reference)
    return parsed[1] if parsed is not None else 2**63


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
    applied: list[int] = []
    for kept, recorded_message_id in pending:
        if kept.provider_message_id != recorded_message_id:
            continue  # a report about another acceptance of this recipient: stays kept, for an operator
        report = DeliveryReport(
            kept.provider_message_id, "", kept.provider_status, kept.error_code, kept.reported_at
        )
        await apply_to_recipient(session, settings, kept.recipient_id, report)
        applied.append(kept.id)
    if applied:
        await session.execute(delete(PendingDeliveryReport).where(PendingDeliveryReport.id.in_(applied)))
    return len(applied)


async def campaigns_with_pending_reports(session: AsyncSession) -> list[int]:
    return list(await session.scalars(select(PendingDeliveryReport.campaign_id).distinct()))

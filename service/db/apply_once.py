"""Apply once: the exactly-once building block (safeguard 6, `webhook_effect_once`, invariant I5).

Every effect that an outside event causes (a Stripe payment, a Shopify customer change or erasure, a Mitto
delivery report) is applied through here. The event record (unique per provider and event id) and its
effect commit in ONE transaction. The effect runs first and the record, with the outcome, last (`INSERT
... ON CONFLICT DO NOTHING`); if the record already exists the whole transaction rolls back, effect
included:
- a duplicate delivery rolls back and answers 2xx with no effect;
- two concurrent deliveries of one event: the second blocks on the first's row locks or on its uncommitted
  index entry, then finds the record and rolls back (PostgreSQL), or simply runs after it (SQLite);
- a delivery that crashes half-way rolls back effect and record together, so the provider's retry
  applies it; nothing is ever left "processing".
(Recording last saves the statement that would otherwise write the outcome: this is the webhooks' hot
path. The price is that a duplicate does its effect's work before rolling it back.)
And each effect writes under a key of its business object (`effect_key`: `purchase:{session}`,
`refund:{re_...}`), so two *different* events about one payment (completed, then
async_payment_succeeded) still credit once.

Domain modules (billing, contacts, privacy, shops, sending) describe their effects with `EffectResult`
and key them with `effect_key`; the webhook handlers (`service/webhooks/`) and the delivery-report batcher
call `apply_once` / `record_statement`. Nothing here knows HTTP or any one provider.

The lab's unsafe variant is the seed's unwired replay service: check for the event, record it, apply the
effect and mark it processed as separate steps, and apply effects under a key of the delivery alone.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service import failpoints, safeguards
from service.db.dialect import dialect_insert, dialect_name, insert_ignoring_conflicts
from service.db.models import WebhookEvent, utcnow
from service.settings import Settings

DUPLICATE = "duplicate"


@dataclass
class IncomingEvent:
    provider: str
    event_id: str
    event_type: str
    shop_id: int | None = None
    subject: str | None = None
    payload: dict[str, Any] | None = None
    triggered_at: datetime | None = None


@dataclass
class EffectResult:
    outcome: str = "applied"
    flagged: bool = False
    keep_payload: bool = True  # False: the event is recorded without its body (it names an erased person)


Effect = Callable[[AsyncSession], Awaitable[EffectResult]]


def effect_key(settings: Settings, business_key: str) -> str:
    """The idempotency key an effect writes under: its business object's, or (unsafe) this delivery's."""
    if safeguards.is_on(settings, safeguards.WEBHOOK_EFFECT_ONCE):
        return business_key
    return f"{business_key}:delivery:{uuid.uuid4().hex}"


_EVENTS = cast(Table, WebhookEvent.__table__)
EVENT_COLUMNS = (
    "provider",
    "event_id",
    "event_type",
    "shop_id",
    "subject",
    "payload",
    "triggered_at",
    "received_at",
    "outcome",
    "flagged",
)


@functools.cache
def record_statement(dialect: str, returning: str = "id") -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING `returning`, built once: every delivery takes this path.
    Executed with many rows (the report batcher), RETURNING names the events never seen before."""
    return (
        dialect_insert(dialect)(_EVENTS)
        .values({name: bindparam(name, type_=_EVENTS.c[name].type) for name in EVENT_COLUMNS})
        .on_conflict_do_nothing(index_elements=["provider", "event_id"])
        .returning(_EVENTS.c[returning])
    )


def event_values(event: IncomingEvent, result: EffectResult | None) -> dict[str, Any]:
    return {
        "provider": event.provider,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "shop_id": event.shop_id,
        "subject": event.subject,
        "payload": event.payload if result is None or result.keep_payload else None,
        "triggered_at": event.triggered_at,
        "received_at": utcnow(),
        "outcome": result.outcome if result else "processing",
        "flagged": result.flagged if result else False,
    }


async def apply_once(
    session: AsyncSession, settings: Settings, event: IncomingEvent, effect: Effect
) -> EffectResult:
    """Record the event and apply its effect in one transaction, or do nothing if it was seen before."""
    if not safeguards.is_on(settings, safeguards.WEBHOOK_EFFECT_ONCE):
        return await _check_record_apply_separately(session, event, effect)
    transaction = await session.begin()
    try:
        result = await effect(session)
        await failpoints.hit("webhook.after_effect")
        recorded = await session.execute(record_statement(dialect_name(session)), event_values(event, result))
        if recorded.scalar() is None:
            await transaction.rollback()  # seen before: this delivery's effect goes with it
            return EffectResult(DUPLICATE)
        # The unique insert is both the check and the record: no gap between them to race into.
        await failpoints.hit("webhook.after_duplicate_check")
        await failpoints.hit("webhook.after_event_recorded")
        await transaction.commit()
    except BaseException:
        if transaction.is_active:
            await transaction.rollback()
        raise
    return result


async def _check_record_apply_separately(
    session: AsyncSession, event: IncomingEvent, effect: Effect
) -> EffectResult:
    """Unsafe variant (lab only): read-then-write dedupe, and every step commits on its own."""
    async with session.begin():
        seen = await session.scalar(
            select(WebhookEvent.id).where(
                WebhookEvent.provider == event.provider, WebhookEvent.event_id == event.event_id
            )
        )
    if seen is not None:
        return EffectResult(DUPLICATE)
    await failpoints.hit("webhook.after_duplicate_check")
    async with session.begin():
        await session.execute(
            insert_ignoring_conflicts(session, WebhookEvent, ["provider", "event_id"]).values(
                **event_values(event, None)
            )
        )
    await failpoints.hit("webhook.after_event_recorded")
    async with session.begin():
        result = await effect(session)
    await failpoints.hit("webhook.after_effect")
    async with session.begin():
        await session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.provider == event.provider, WebhookEvent.event_id == event.event_id)
            .values(outcome=result.outcome, flagged=result.flagged)
        )
    return result

"""One mechanism for every provider's webhooks to take effect exactly once (safeguard 6, invariant I5).

The event record (unique per provider and event id) and its effect commit in ONE transaction:
- a duplicate delivery finds the record and answers 2xx with no effect;
- two concurrent deliveries of one event race on the unique index: one applies, the other waits for it
  and then finds the record (PostgreSQL), or simply runs after it (SQLite);
- a delivery that crashes half-way rolls back record and effect together, so the provider's retry
  applies it; nothing is ever left "processing".
And each effect writes under a key of its business object (`purchase:{session}`, `refund:{re_...}`), so
two *different* events about one payment (completed, then async_payment_succeeded) still credit once.

The lab's unsafe variant is the seed's unwired replay service: check for the event, record it, apply the
effect and mark it processed as separate steps, and apply effects under a key of the delivery alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service import failpoints, safeguards
from service.db.dialect import insert_ignoring_conflicts
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


Effect = Callable[[AsyncSession], Awaitable[EffectResult]]


def effect_key(settings: Settings, business_key: str) -> str:
    """The idempotency key an effect writes under: its business object's, or (unsafe) this delivery's."""
    if safeguards.is_on(settings, safeguards.WEBHOOK_EFFECT_ONCE):
        return business_key
    return f"{business_key}:delivery:{uuid.uuid4().hex}"


def _values(event: IncomingEvent, result: EffectResult | None) -> dict[str, Any]:
    return {
        "provider": event.provider,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "shop_id": event.shop_id,
        "subject": event.subject,
        "payload": event.payload,
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
    async with session.begin():
        event_row = await session.scalar(
            insert_ignoring_conflicts(session, WebhookEvent, ["provider", "event_id"])
            .values(**_values(event, None))
            .returning(WebhookEvent.id)
        )
        if event_row is None:
            return EffectResult(DUPLICATE)
        # Here the unique insert is both the check and the record: no gap between them to race into.
        await failpoints.hit("webhook.after_duplicate_check")
        await failpoints.hit("webhook.after_event_recorded")
        result = await effect(session)
        await failpoints.hit("webhook.after_effect")
        await session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == event_row)
            .values(outcome=result.outcome, flagged=result.flagged)
        )
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
                **_values(event, None)
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

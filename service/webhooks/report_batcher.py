"""Group commit for delivery reports: many reports, one transaction, each still recorded and applied once.

Delivery reports are the busiest webhook (two or more per message sent). One transaction per report costs
four statements and a commit; under load that, not the database, limits the service. So the API process
batches them opportunistically: a report waits while the previous batch is being written, then goes in
the next one, with whatever arrived meanwhile. At low load a batch is a single report and nothing waits.

This module only groups and commits. Each batch is one transaction with the guarantees of
`apply_once.apply_once` for every report in it (safeguard 6):
1. `INSERT` every report's event (unique per provider and event id) `ON CONFLICT DO NOTHING RETURNING`:
   the returned ids are the reports never seen before; the others are duplicates, with no effect;
2. the new ones take effect through `delivery_reports.apply_reports`, the same rule (safeguard 7) a
   single report goes through;
3. outcomes other than `applied` are written back; then COMMIT.
A request is answered only after its batch committed; if the batch fails, every request in it fails
with a 5xx and the provider's retry brings the report again. Used only while `webhook_effect_once` is on:
its unsafe variant has no unique record to batch on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import failpoints
from service.db.apply_once import DUPLICATE, EffectResult, IncomingEvent, event_values, record_statement
from service.db.dialect import dialect_name
from service.db.models import WebhookEvent
from service.sending import delivery_reports
from service.sending.delivery_reports import DeliveryReport
from service.settings import Settings

MAX_BATCH = 500
_EVENTS = cast(Table, WebhookEvent.__table__)


@dataclass
class _Submitted:
    report: DeliveryReport
    event: IncomingEvent
    done: asyncio.Future[EffectResult]


class DeliveryReportBatcher:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings
        self._waiting: list[_Submitted] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, report: DeliveryReport, event: IncomingEvent) -> EffectResult:
        done: asyncio.Future[EffectResult] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Submitted(report, event, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches())
        return await done

    async def _write_batches(self) -> None:
        while self._waiting:
            await asyncio.sleep(0)  # let reports already on their way join this batch
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                async with self.sessions() as session:
                    outcomes = await apply_batch(session, self.settings, [(s.report, s.event) for s in batch])
            except BaseException as exc:
                for submitted in batch:
                    if not submitted.done.done():
                        submitted.done.set_exception(
                            exc if isinstance(exc, Exception) else RuntimeError(str(exc))
                        )
                if not isinstance(exc, Exception):
                    raise
                continue
            for submitted, outcome in zip(batch, outcomes, strict=True):
                if not submitted.done.done():
                    submitted.done.set_result(outcome)


_SET_OUTCOME = (
    update(_EVENTS)
    .where(_EVENTS.c.provider == "mitto", _EVENTS.c.event_id == bindparam("key"))
    .values(outcome=bindparam("new_outcome"), flagged=bindparam("new_flagged"))
)


async def apply_batch(
    session: AsyncSession, settings: Settings, items: list[tuple[DeliveryReport, IncomingEvent]]
) -> list[EffectResult]:
    """Record and apply a batch of reports in one transaction; one outcome per item, in order."""
    outcomes: list[EffectResult] = [EffectResult(DUPLICATE)] * len(items)
    first_of: dict[str, int] = {}  # the same delivery twice in one batch: the second is a duplicate
    for index, (_, event) in enumerate(items):
        first_of.setdefault(event.event_id, index)
    async with session.begin():
        # In event-id order: two processes whose batches overlap take the index entries in one order.
        firsts = sorted((items[i][1] for i in first_of.values()), key=lambda e: e.event_id)
        recorded = await session.execute(
            record_statement(dialect_name(session), "event_id"),
            [event_values(e, EffectResult()) for e in firsts],
        )
        new = set(recorded.scalars())
        indexes = [index for event_id, index in first_of.items() if event_id in new]
        applied = await delivery_reports.apply_reports(session, settings, [items[i][0] for i in indexes])
        rewrites: list[dict[str, Any]] = []
        for index, outcome in zip(indexes, applied, strict=True):
            outcomes[index] = outcome
            if outcome.outcome != "applied" or outcome.flagged:
                rewrites.append(
                    {
                        "key": items[index][1].event_id,
                        "new_outcome": outcome.outcome,
                        "new_flagged": outcome.flagged,
                    }
                )
        if rewrites:
            await session.execute(_SET_OUTCOME, rewrites)
        await failpoints.hit("webhook.after_effect")
    return outcomes

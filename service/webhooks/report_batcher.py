"""Group commit for delivery reports: many reports, one transaction, each still recorded and applied once.

Delivery reports are the busiest webhook (two or more per message sent). One transaction per report costs
four statements and a commit; under load that, not the database, limits the service. So the API process
batches them opportunistically: a report waits while the previous batch is being written, then goes in
the next one, with whatever arrived meanwhile. At low load a batch is a single report and nothing waits.

Each batch is one transaction, with the same guarantees as `replay.apply_once` for every report in it:
1. `INSERT` every report's event (unique per provider and event id) `ON CONFLICT DO NOTHING RETURNING`:
   the returned ids are the reports never seen before; the others are duplicates, with no effect;
2. for the new ones, one forward-only `UPDATE ... FROM (VALUES ...)` (safeguard 7) moves each recorded
   message's status; reports for messages not recorded yet are kept in `pending_delivery_reports`;
   reports for references never sent are flagged;
3. outcomes other than `applied` are written back; then COMMIT.
A request is answered only after its batch committed; if the batch fails, every request in it fails
with a 5xx and the provider's retry brings the report again.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import failpoints
from service.db.dialect import dialect_name
from service.db.models import (
    RecipientStatus,
    UTCDateTime,
    WebhookEvent,
    utcnow,
)
from service.sending import delivery_reports
from service.sending.delivery_reports import FINAL_STATUSES, DeliveryReport
from service.webhooks.replay import DUPLICATE, EffectResult, IncomingEvent, event_values, record_statement

MAX_BATCH = 500
_EVENTS = cast(Table, WebhookEvent.__table__)


@dataclass
class _Submitted:
    report: DeliveryReport
    event: IncomingEvent
    done: asyncio.Future[EffectResult]


class DeliveryReportBatcher:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
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
                    outcomes = await apply_batch(session, [(s.report, s.event) for s in batch])
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


@functools.cache
def _advance_statement(rows: int) -> Any:
    """Forward-only: each recorded `sent` message takes its report's status, in one statement."""
    values = ", ".join(
        f"(CAST(:m{n} AS VARCHAR(64)), CAST(:p{n} AS VARCHAR(32)), "
        f"CAST(:s{n} AS VARCHAR(16)), CAST(:e{n} AS INTEGER))"
        for n in range(rows)
    )
    return text(
        "UPDATE campaign_recipients SET provider_status = v.column2, "  # noqa: S608 - placeholders only
        "status = COALESCE(v.column3, campaign_recipients.status), "
        "error_code = COALESCE(v.column4, campaign_recipients.error_code), status_updated_at = :now "
        f"FROM (VALUES {values}) AS v WHERE campaign_recipients.provider_message_id = v.column1 "
        f"AND campaign_recipients.status = '{RecipientStatus.SENT.value}' "
        "RETURNING campaign_recipients.provider_message_id"
    ).bindparams(bindparam("now", type_=UTCDateTime()))


_SET_OUTCOME = (
    update(_EVENTS)
    .where(_EVENTS.c.provider == "mitto", _EVENTS.c.event_id == bindparam("key"))
    .values(outcome=bindparam("new_outcome"), flagged=bindparam("new_flagged"))
)


def _rank(report: DeliveryReport) -> int:
    return 2 if report.status in FINAL_STATUSES else 1


async def apply_batch(
    session: AsyncSession, items: list[tuple[DeliveryReport, IncomingEvent]]
) -> list[EffectResult]:
    """Record and apply a batch of reports in one transaction; one outcome per item, in order."""
    outcomes: list[EffectResult | None] = [None] * len(items)
    first_of: dict[str, int] = {}
    for index, (_, event) in enumerate(items):
        if event.event_id in first_of:
            outcomes[index] = EffectResult(DUPLICATE)  # the same delivery twice in one batch
        else:
            first_of[event.event_id] = index
    async with session.begin():
        # In event-id order: two processes whose batches overlap take the index entries in one order.
        firsts = sorted((items[i][1] for i in first_of.values()), key=lambda e: e.event_id)
        recorded = await session.execute(
            record_statement(dialect_name(session), "event_id"),
            [event_values(e, EffectResult()) for e in firsts],
        )
        new = set(recorded.scalars())
        for event_id, index in first_of.items():
            if event_id not in new:
                outcomes[index] = EffectResult(DUPLICATE)
        await _apply_new(session, items, [first_of[e] for e in first_of if e in new], outcomes)
        await failpoints.hit("webhook.after_effect")
    return [outcome or EffectResult(DUPLICATE) for outcome in outcomes]


async def _apply_new(
    session: AsyncSession,
    items: list[tuple[DeliveryReport, IncomingEvent]],
    indexes: list[int],
    outcomes: list[EffectResult | None],
) -> None:
    # One report per message: the most advanced (a final over an intermediate; the first final).
    best: dict[str, int] = {}
    for index in indexes:
        report = items[index][0]
        current = best.get(report.message_id)
        if current is None or _rank(report) > _rank(items[current][0]):
            best[report.message_id] = index
    moved: set[str] = set()
    chosen = list(best.values())
    for start in range(0, len(chosen), 200):
        chunk = chosen[start : start + 200]
        params: dict[str, Any] = {"now": utcnow()}
        for n, index in enumerate(chunk):
            report = items[index][0]
            final = FINAL_STATUSES.get(report.status)
            params.update(
                {
                    f"m{n}": report.message_id,
                    f"p{n}": report.status,
                    f"s{n}": final.value if final else None,
                    f"e{n}": report.error_code if final else None,
                }
            )
        result = await session.execute(_advance_statement(len(chunk)), params)
        moved.update(result.scalars())
    chosen_indexes = set(chosen)
    for index in indexes:
        if index in chosen_indexes and items[index][0].message_id in moved:
            outcomes[index] = EffectResult("applied")
    # The rest were superseded, came early, or raced the worker's record: decided with their rows locked,
    # in ascending recipient id (the order the worker's record takes them).
    leftovers = sorted(
        (i for i in indexes if outcomes[i] is None),
        key=lambda i: delivery_reports.reference_order(items[i][0]),
    )
    for index in leftovers:
        outcome = await delivery_reports.settle_unmoved(session, items[index][0], forward_only=True)
        outcomes[index] = outcome
        await session.execute(
            _SET_OUTCOME,
            {"key": items[index][1].event_id, "new_outcome": outcome.outcome, "new_flagged": outcome.flagged},
        )

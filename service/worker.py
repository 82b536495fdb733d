"""SAQ worker: the job functions (thin shells around domain code) and the worker's life cycle.

Jobs:
- `send_batch(campaign_id, batch_no, request_id)`: key `send:{campaign}:{batch}`; see `sending.batch`.
- `reconcile()`: a SAQ cron job, unique across workers; see `reconcile.reconciler`.
Every job is idempotent, because SAQ can run a job twice (an aborted job may still finish; a swept job
is retried) and can lose jobs (Redis restarted empty): the database, not the queue, decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from saq import CronJob, Worker
from saq.queue.redis import RedisQueue
from saq.types import PartialTimersDict

from service import deployment, logs, stack_dumps
from service.metrics import JOB_FAILURES, RECONCILE_ACTIONS
from service.queue import RECONCILE, SEND_BATCH, requeue_orphaned_jobs
from service.reconcile.reconciler import reconcile_once
from service.runtime import Runtime
from service.sending.batch import send_batch as send_batch_domain
from service.settings import Settings

log = logs.get_logger(__name__)


async def send_batch(
    ctx: dict[str, Any], *, campaign_id: int, batch_no: int, request_id: str | None = None
) -> Any:
    runtime: Runtime = ctx["runtime"]
    logs.bind_request_id(request_id)
    try:
        async with runtime.sessions() as session:
            report = await send_batch_domain(
                session, runtime.settings, runtime.mitto, campaign_id=campaign_id, batch_no=batch_no
            )
    except BaseException:
        JOB_FAILURES.labels(function=SEND_BATCH).inc()
        raise
    return report.as_dict()


async def reconcile(ctx: dict[str, Any]) -> Any:
    runtime: Runtime = ctx["runtime"]
    logs.bind_request_id(None)
    try:
        report = await reconcile_once(runtime.sessions, runtime.settings, runtime.mitto, runtime.queue)
    except BaseException:
        JOB_FAILURES.labels(function=RECONCILE).inc()
        raise
    for action, count in report.actions().items():
        RECONCILE_ACTIONS.labels(action=action).inc(count)
    return report.as_dict()


async def watch_for_orphaned_jobs(queue: RedisQueue, period_s: float, stopping: asyncio.Event) -> None:
    """Every heartbeat period, requeue jobs whose worker died (see `queue.requeue_orphaned_jobs`), until
    `stopping` is set.

    A dead worker is seen once its liveness entry expires (a heartbeat plus one second after its last
    renewal), then at this loop's next turn: its jobs wait up to twice the heartbeat plus a second. The
    reconcile cron is one of them when a worker dies mid-pass, and no pass runs until it is put back: at
    5 s, a quick run's reconciler sat 6 to 7 s twice behind killed workers.

    The loop ends on `stopping`, not only on cancellation: a benchmark's worker hung at SIGTERM for good
    with this task "cancelling" yet asleep again (the cancel had reached it inside a Redis call, which
    did not pass it on), and the worker's shutdown waiting for it."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=period_s)
        if stopping.is_set():
            return
        try:
            requeued = await requeue_orphaned_jobs(queue)
        except Exception as exc:  # noqa: BLE001 - Redis may be down; try again next period
            log.warning("orphan_watch_failed", error=type(exc).__name__)
            continue
        if requeued:
            log.warning("orphaned_jobs_requeued", jobs=requeued)


# How long a stopping worker waits for its orphan watch to end (it ends within a Redis call's time).
WATCH_STOP_SECONDS = 5.0


def sweep_interval(settings: Settings) -> int:
    """How often SAQ sweeps its active list: about once per send lease, between 1 and 30 seconds.

    A job can be lost in transit: moved to Redis's active list by a dequeue whose answer never reached
    the worker (a reset connection). It then sits there, marked queued, holding its key, so the
    reconciler's re-enqueue of the same batch is a no-op until a sweep hands it back. Sweeping once per
    lease bounds that delay like a lease bounds a claim. A sweep racing a dequeue can run a job twice;
    the claims make that harmless.
    """
    return max(1, min(30, round(settings.send_lease_seconds)))


def cron_for_interval(seconds: float) -> str:
    """A croniter expression firing about every `seconds` (seconds-field form below a minute)."""
    whole = max(1, round(seconds))
    if whole < 60:
        return f"* * * * * */{whole}"
    if whole < 3600:
        return f"*/{max(1, whole // 60)} * * * *"
    return f"0 */{max(1, whole // 3600)} * * *"


class PromptlyStoppingWorker(Worker[Any]):
    """A SAQ worker whose SIGTERM waits only for the jobs it is running.

    SAQ's stop waits its grace period for every task, including its upkeep loops (which sleep up to
    the sweep interval) and the loops blocked waiting for a job: an idle worker always took the whole
    grace period to stop. Here the upkeep loops are cancelled at once, and an idle loop gives up its
    wait within `IDLE_POLL_SECONDS`; a running job still gets the grace period, and a job cut short is
    safe anyway (claims and leases decide, not the queue).
    """

    IDLE_POLL_SECONDS = 1.0

    async def upkeep(self) -> list[asyncio.Task[None]]:
        self._upkeep_tasks = await super().upkeep()
        return self._upkeep_tasks

    async def stop(self) -> None:
        for task in getattr(self, "_upkeep_tasks", []):
            task.cancel()
        await super().stop()


def build_worker(runtime: Runtime, concurrency: int) -> Worker[Any]:
    settings = runtime.settings

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["runtime"] = runtime
        ctx["watch_stopping"] = asyncio.Event()
        ctx["watchdog"] = asyncio.create_task(
            watch_for_orphaned_jobs(runtime.queue, settings.worker_heartbeat_seconds, ctx["watch_stopping"])
        )
        log.info("worker_started", pid=os.getpid(), concurrency=concurrency, queue=settings.queue_name)
        deployment.announce(settings, "worker")

    async def shutdown(ctx: dict[str, Any]) -> None:
        watchdog = ctx.get("watchdog")
        if watchdog:
            ctx["watch_stopping"].set()
            watchdog.cancel()  # to cut a Redis call short; the loop ends on the event if the cancel is lost
            _done, still_running = await asyncio.wait({watchdog}, timeout=WATCH_STOP_SECONDS)
            if still_running:
                log.warning("orphan_watch_did_not_stop", waited_s=WATCH_STOP_SECONDS)

    return PromptlyStoppingWorker(
        runtime.queue,
        functions=[send_batch],
        cron_jobs=[
            CronJob(
                reconcile,
                cron=cron_for_interval(settings.reconcile_interval_seconds),
                unique=True,
                timeout=max(60, int(settings.send_lease_seconds) * 2),
                retries=1,
            )
        ],
        concurrency=concurrency,
        startup=startup,
        shutdown=shutdown,
        timers=PartialTimersDict(
            worker_info=settings.worker_heartbeat_seconds, sweep=sweep_interval(settings), schedule=1, abort=1
        ),
        shutdown_grace_period_s=5,
        dequeue_timeout=PromptlyStoppingWorker.IDLE_POLL_SECONDS,
        metadata={"pid": os.getpid()},
    )


async def run_worker(settings: Settings, redis_url: str, concurrency: int) -> None:
    stack_dumps.install()
    runtime = Runtime.build(settings, redis_url, role="worker")
    await runtime.start()
    worker = build_worker(runtime, concurrency)
    try:
        await worker.start()
    finally:
        await runtime.close()


def main(settings: Settings, redis_url: str, concurrency: int) -> None:
    asyncio.run(run_worker(settings, redis_url, concurrency))

"""The job queue (SAQ on Redis): job names, deterministic keys, and enqueueing after commit.

The queue is a delivery mechanism, never the source of truth. SAQ drops an enqueue whose key is already
queued or running, which makes `send:{campaign}:{batch}` a natural dedupe; but jobs can be lost (Redis
restarted empty, a worker killed mid-job), so the reconciler re-enqueues from the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from saq.job import Status
from saq.queue.redis import RedisQueue

from service.settings import Settings

SEND_BATCH = "send_batch"
RECONCILE = "reconcile"


def create_queue(settings: Settings, redis_url: str) -> RedisQueue:
    return RedisQueue.from_url(redis_url, name=settings.queue_name)


def send_job_key(campaign_id: int, batch_no: int) -> str:
    return f"send:{campaign_id}:{batch_no}"


def send_job_timeout(settings: Settings) -> int:
    # A job may outlive its lease only by a margin: past the lease, the reconciler owns the rows.
    return int(settings.send_lease_seconds) + 30


async def enqueue_send_batches(
    queue: RedisQueue,
    settings: Settings,
    campaign_id: int,
    batch_nos: Iterable[int],
    request_id: str | None,
    replace_orphans: bool = False,
) -> int:
    """Queue one job per batch; returns how many were queued (the rest were already queued or running).

    With `replace_orphans` (the reconciler), a job that holds a batch's key but belongs to a worker whose
    heartbeat is gone (SIGKILLed, OOM-killed) is aborted and queued afresh, instead of waiting for SAQ to
    notice its timeout. Wrongly judging a live job orphaned costs nothing but a wasted run: the claim, not
    the queue, decides who sends.
    """
    semaphore = asyncio.Semaphore(16)
    live_workers: set[str] | None = None

    async def enqueue(batch_no: int) -> bool:
        job = await queue.enqueue(
            SEND_BATCH,
            key=send_job_key(campaign_id, batch_no),
            timeout=send_job_timeout(settings),
            retries=3,
            retry_delay=1.0,
            retry_backoff=True,
            ttl=600,
            campaign_id=campaign_id,
            batch_no=batch_no,
            request_id=request_id,
        )
        return job is not None

    async def one(batch_no: int) -> bool:
        nonlocal live_workers
        async with semaphore:
            if await enqueue(batch_no):
                return True
            if not replace_orphans:
                return False
            holder = await queue.job(send_job_key(campaign_id, batch_no))
            if holder is None or holder.status not in (Status.ACTIVE, Status.ABORTING):
                return False
            if live_workers is None:
                live_workers = set((await queue.info())["workers"])
            if holder.worker_id in live_workers:
                return False
            await queue.abort(holder, "orphaned: its worker is gone")
            await queue.finish_abort(holder)
            return await enqueue(batch_no)

    results = await asyncio.gather(*(one(b) for b in batch_nos))
    return sum(results)

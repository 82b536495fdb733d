"""The job queue (SAQ on Redis): job names, deterministic keys, and enqueueing after commit.

The queue is a delivery mechanism, never the source of truth. SAQ drops an enqueue whose key is already
queued or running, which makes `send:{campaign}:{batch}` a natural dedupe; but jobs can be lost (Redis
restarted empty, a worker killed mid-job), so the reconciler re-enqueues from the database.
"""

from __future__ import annotations

import asyncio
import time
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
    queue: RedisQueue, settings: Settings, campaign_id: int, batch_nos: Iterable[int], request_id: str | None
) -> int:
    """Queue one job per batch; returns how many were new (the rest were already queued or running)."""
    semaphore = asyncio.Semaphore(16)

    async def one(batch_no: int) -> bool:
        async with semaphore:
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

    results = await asyncio.gather(*(one(b) for b in batch_nos))
    return sum(results)


async def requeue_orphaned_jobs(queue: RedisQueue, unclaimed_grace_seconds: float = 10.0) -> list[str]:
    """Put back on the queue every job left "active" by a worker whose heartbeat is gone.

    A SIGKILLed worker leaves its jobs active, and SAQ drops any enqueue with the same key until its own
    sweep notices the job's timeout, a minute or more later. That would block the reconcile cron job
    itself (key `cron:reconcile`), and with it the healing of everything else. Every worker runs this
    every few seconds; a short Redis lock keeps two workers from requeueing the same job. Requeueing a
    job that was in fact alive costs only a wasted run: the database claim decides who sends.
    """
    info = await queue.info(jobs=True, offset=0, limit=10_000)
    live = set(info["workers"])
    now_ms = time.time() * 1000
    requeued: list[str] = []
    for entry in info["jobs"]:
        if entry.get("status") not in (Status.ACTIVE, Status.ABORTING):
            continue
        owner = entry.get("worker_id")
        if owner in live:
            continue
        if owner is None and now_ms - float(entry.get("touched") or now_ms) < unclaimed_grace_seconds * 1000:
            continue  # just dequeued by a live worker that has not stamped it yet
        key = str(entry["key"])
        # One worker requeues each orphaning of a job: the lock names the attempt that was orphaned, so
        # the same key orphaned again by its next taker (the reconcile cron's key never changes) is put
        # back at once, not after the lock expires.
        attempt = entry.get("attempts", 0)
        if not await queue.redis.set(f"smslab:orphan:{queue.name}:{key}:{attempt}", 1, nx=True, ex=30):
            continue
        job = await queue.job(key)
        if job is None or job.status not in (Status.ACTIVE, Status.ABORTING) or job.worker_id in live:
            continue
        await queue.retry(job, f"orphaned: worker {job.worker_id} is gone")
        requeued.append(key)
    return requeued

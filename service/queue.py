"""The job queue (SAQ on Redis): job names, deterministic keys, and enqueueing after commit.

The queue is a delivery mechanism, never the source of truth. SAQ drops an enqueue whose key is already
queued or running, which makes `send:{campaign}:{batch}` a natural dedupe; but jobs can be lost (Redis
restarted empty, a worker killed mid-job), so the reconciler re-enqueues from the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

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

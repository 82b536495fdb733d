"""After the chaos: heal every fault, then wait until the pipeline has nothing left in flight.

The checkers judge the end state, so the run must first reach one: with the faults gone and no service
process left with failpoints, every campaign should finish and every webhook be delivered within the
scenario's `quiescence_s`. Whether it did, and what was still in flight if not, goes to run.json; I2
reads it (and I3 and I7 say `unknown` rather than `invalid` about a run that never settled).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chaos.environment import Services
from chaos.processes import ManagedProcess, stop_all
from chaos.proxy import Proxy
from service.db.models import (
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    PendingDeliveryReport,
    RecipientStatus,
)
from service.db.session import read_only
from service.embedded_redis import EmbeddedRedis

# How often settling looks: three counts on the database and one question to the simulator, each a
# millisecond or two; at 0.5 s a settled run waited 0.25 s on average for nothing.
SETTLE_POLL_S = 0.2


async def heal(services: Services, proxies: Mapping[str, Proxy], redis: EmbeddedRedis | None) -> None:
    """Toxics removed, proxies enabled, Redis back, the simulator's faults cleared, and every service
    process that carried failpoints (or is down) restarted without them."""
    for proxy in proxies.values():
        proxy.clear()
        proxy.enable()
    if redis is not None and (redis.process is None or redis.process.poll() is not None):
        await asyncio.to_thread(redis.start)
    async with httpx.AsyncClient(base_url=services.simulator_url, timeout=10) as sim:
        (await sim.delete("/control/faults")).raise_for_status()
    # The service keeps its configuration (safeguards switched off stay off), but no process is left
    # with a failpoint that would stop it from healing. A process without failpoints is left running:
    # restarting it heals nothing (the service must recover from Redis restarts, cut links and its
    # peers' deaths by itself, and a run that does not settle says so), and while the API restarts the
    # providers' webhooks fail and back off, so settling would then wait on their retries.
    restart = processes_to_restart(services.service)
    await asyncio.to_thread(stop_all, restart, 8.0)
    for process in restart:
        process.env = {**process.env, "SMSLAB_FAILPOINTS": ""}
        process.start()
    for process in restart:
        await asyncio.to_thread(process.wait_ready, 60)


def processes_to_restart(processes: list[ManagedProcess]) -> list[ManagedProcess]:
    """What healing restarts: a process started with failpoints, or one that is down."""
    return [p for p in processes if p.env.get("SMSLAB_FAILPOINTS") or not p.alive]


async def settle(
    sessions: async_sessionmaker[AsyncSession],
    services: Services,
    bound_s: float,
    on_progress: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Wait, up to `bound_s`, until no campaign is sending, no recipient is pending or sending, every
    provider webhook is delivered and no applicable delivery report is parked; run.json's `quiescence`."""
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=services.simulator_url, timeout=5) as sim:
        while True:
            async with sessions() as session, session.begin():
                # Read-only: a deferred BEGIN on SQLite. The poll must neither queue behind the service's
                # writers (a BEGIN IMMEDIATE here once starved for the whole busy timeout and failed the
                # run) nor hold the write lock the pipeline needs to settle.
                await read_only(session)
                sending = await session.scalar(
                    select(func.count())
                    .select_from(Campaign)
                    .where(Campaign.status == CampaignStatus.SENDING)
                )
                unsettled = await session.scalar(
                    select(func.count())
                    .select_from(CampaignRecipient)
                    .where(CampaignRecipient.status.in_([RecipientStatus.PENDING, RecipientStatus.SENDING]))
                )
                # Reports kept because they came before their message id was recorded, whose id is
                # recorded now: they must be applied before the run counts as settled. (A report for an
                # id never recorded, e.g. a double send's, waits forever.)
                parked = await session.scalar(
                    select(func.count())
                    .select_from(PendingDeliveryReport)
                    .join(
                        CampaignRecipient,
                        CampaignRecipient.provider_message_id == PendingDeliveryReport.provider_message_id,
                    )
                )
            pending = (await sim.get("/control/deliveries")).json()["pending"]
            elapsed = time.monotonic() - started
            on_progress({"elapsed_s": round(elapsed, 1), "unsettled": unsettled, "deliveries": pending})
            if not sending and not unsettled and not pending and not parked:
                return {"reached": True, "settled_after_s": round(elapsed, 2), "bound_s": bound_s}
            if elapsed > bound_s:
                return {
                    "reached": False,
                    "settled_after_s": -1,
                    "bound_s": bound_s,
                    "still_sending_campaigns": sending,
                    "still_unsettled_recipients": unsettled,
                    "deliveries_pending": pending,
                    "delivery_reports_parked": parked,
                }
            for process in services.service:
                if not process.alive:
                    process.start()  # a process that died while settling is restarted
            await asyncio.sleep(SETTLE_POLL_S)

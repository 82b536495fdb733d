"""`GET /metrics`: the Prometheus exposition, with the shared state read at scrape time.

Public like `/health` (load balancers and Prometheus call it), unless `SMSLAB_METRICS_TOKEN` is set:
then it wants `Authorization: Bearer <that token>`. It can also be served on a port of its own
(`SMSLAB_METRICS_PORT`), away from the merchants' traffic.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from saq.queue.redis import RedisQueue
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.models import Campaign, CampaignStatus, CreditLedgerEntry, Wallet, utcnow
from service.db.session import READ_ONLY_OPTIONS
from service.errors import Unauthorized
from service.http import problems
from service.metrics import STUCK_AFTER, render
from service.settings import Settings

READ_TIMEOUT_S = 2.0


async def shared_state(engine: AsyncEngine, queue: RedisQueue) -> dict[str, Any]:
    """Queue depth from Redis, stuck campaigns and reserved credits from the database: each read
    bounded in time, and left out (not guessed) if its store does not answer."""
    started = time.perf_counter()
    values: dict[str, Any] = {}

    async def queue_depth() -> None:
        values["queue"] = {kind: await queue.count(kind) for kind in ("queued", "active", "incomplete")}

    async def database() -> None:
        async with engine.connect() as connection:
            await connection.execution_options(**READ_ONLY_OPTIONS)  # never behind SQLite's writer
            values["stuck_campaigns"] = (
                await connection.execute(
                    select(func.count())
                    .select_from(Campaign)
                    .where(
                        Campaign.status == CampaignStatus.SENDING,
                        Campaign.last_activity_at < utcnow() - STUCK_AFTER,
                    )
                )
            ).scalar_one()
            values["credits_reserved"] = int(
                (await connection.execute(select(func.coalesce(func.sum(Wallet.reserved), 0)))).scalar_one()
            )
            ledger_sum = (
                select(func.coalesce(func.sum(CreditLedgerEntry.amount), 0))
                .where(CreditLedgerEntry.shop_id == Wallet.shop_id)
                .scalar_subquery()
            )
            values["wallets_out_of_balance"] = (
                await connection.execute(
                    select(func.count()).select_from(Wallet).where(Wallet.balance != ledger_sum)
                )
            ).scalar_one()

    for read in (queue_depth(), database()):
        try:
            await asyncio.wait_for(read, READ_TIMEOUT_S)
        except Exception:  # noqa: BLE001, S112 - a store that does not answer leaves its gauges out
            continue
    values["scrape_seconds"] = round(time.perf_counter() - started, 4)
    return values


class MetricsController(Controller):
    path = "/metrics"
    tags = ["health"]

    @get(
        "/",
        summary="Prometheus metrics: counters of every process of this host, and shared state",
        media_type="text/plain",
        responses=problems(401, s401="SMSLAB_METRICS_TOKEN is set and the bearer token is not it"),
    )
    async def metrics(
        self,
        request: Request[Any, Any, Any],
        engine: NamedDependency[AsyncEngine],
        queue: NamedDependency[RedisQueue],
        settings: NamedDependency[Settings],
    ) -> Response[bytes]:
        if settings.metrics_token:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode("utf-8", "replace"), settings.metrics_token.encode()):
                raise Unauthorized("/metrics wants the bearer token SMSLAB_METRICS_TOKEN names")
        body, content_type = render(await shared_state(engine, queue))
        return Response(body, media_type=content_type)

"""Health: `/health` says the process is alive; `/health/full` checks everything the pipeline needs.

`/health/full` answers 200 only when the database answers and is migrated, Redis answers, and at least
one worker's heartbeat is fresh (SAQ workers refresh theirs every few seconds). Otherwise 503, with each
check's outcome, so a load balancer and an operator read the same thing.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from saq.queue.redis import RedisQueue
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.session import READ_ONLY_OPTIONS
from service.deployment import unsafe_mode
from service.settings import Settings

CHECK_TIMEOUT_SECONDS = 2.0


async def _timed(check: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
        result.setdefault("ok", True)
    except Exception as exc:  # noqa: BLE001 - a failed check is a result, not an error
        result = {"ok": False, "error": type(exc).__name__}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


class Liveness(msgspec.Struct):
    status: str


class HealthReport(msgspec.Struct):
    """`ok` only if every check is; each check says `ok`, its latency, and what it found or the error."""

    status: str
    checks: dict[str, dict[str, Any]]
    env: str = "development"
    unsafe_lab_mode: dict[str, Any] = msgspec.field(default_factory=dict)  # empty unless switched on


async def full_report(
    engine: NamedDependency[AsyncEngine], queue: NamedDependency[RedisQueue]
) -> HealthReport:
    async def database() -> dict[str, Any]:
        async with engine.connect() as connection:
            # Read-only (SQLite: a deferred BEGIN): a BEGIN IMMEDIATE queued behind a busy writer, and
            # wait_for's timeout could not cut it short (closing the connection waits for the driver's
            # thread), so the check took up to the 30 s busy timeout instead of answering in 2 s.
            await connection.execution_options(**READ_ONLY_OPTIONS)
            revision = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        return {"ok": revision is not None, "revision": revision}

    async def redis() -> dict[str, Any]:
        pong = await queue.redis.ping()
        return {"ok": bool(pong)}

    info: dict[str, Any] = {}

    async def queue_check() -> dict[str, Any]:
        info.update(await queue.info())
        return {
            "queued": info.get("queued"),
            "active": info.get("active"),
            "scheduled": info.get("scheduled"),
        }

    checks = dict(
        zip(
            ("database", "redis", "queue"),
            await asyncio.gather(_timed(database), _timed(redis), _timed(queue_check)),
            strict=True,
        )
    )
    workers = info.get("workers") or {}
    checks["workers"] = {"ok": bool(workers), "alive": len(workers)}
    return HealthReport("ok" if all(c["ok"] for c in checks.values()) else "degraded", checks)


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get("/", summary="Liveness: the API process answers (X-Process-Id: which process)")
    async def live(self) -> Response[Liveness]:
        # The process id lets whoever started the API on a port it chose check that the answer is this
        # process's, not another that took the port first (`chaos.processes.ManagedProcess.wait_ready`).
        return Response(Liveness("ok"), headers={"X-Process-Id": str(os.getpid())})

    @get(
        "/full",
        summary="Readiness: database, Redis, queue and worker heartbeat",
        responses={
            503: ResponseSpec(
                HealthReport, description="A check failed: the report says which", generate_examples=False
            )
        },
    )
    async def full(
        self,
        engine: NamedDependency[AsyncEngine],
        queue: NamedDependency[RedisQueue],
        settings: NamedDependency[Settings],
    ) -> Response[HealthReport]:
        report = await full_report(engine, queue)
        report.env, report.unsafe_lab_mode = settings.env, unsafe_mode(settings)
        return Response(content=report, status_code=200 if report.status == "ok" else 503)

"""Webhook benchmark: Mitto delivery reports absorbed per second over HTTP, replay protection on.

    python -m bench.webhooks --reports 20000 --concurrency 64 --backend postgresql

A fresh database holds N sent messages. The API runs as its own process(es) (`--api-workers`), and a
load generator posts one `Delivered` report per message to `/webhooks/mitto/dlr?token=...`, with C
requests in flight. Each report is verified, recorded as an event (unique per provider and event id) and
applied, in one transaction. Reported: reports/s, p50 and p99 latency, and, measured the same way in the
same run against the same process, `GET /health` (no database): the HTTP stack's own ceiling, as a
ratio. Afterwards every recipient must be `delivered` and every report recorded exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from bench.common import (
    ROOT,
    bench_settings,
    cpu_seconds_by_component,
    fresh_database,
    load_shop,
    ratio,
    redis_url,
)
from bench.loadgen import request_bytes, run_load
from chaos.processes import ManagedProcess
from service.campaigns.drafts import create_campaign
from service.campaigns.enqueue import enqueue_campaign
from service.db.models import CampaignRecipient, WebhookEvent
from service.embedded_redis import free_port
from service.settings import settings_as_env


async def mark_all_sent(loaded: Any, settings: Any) -> list[tuple[str, str]]:
    """Enqueue a campaign to every contact and record each recipient as sent with a message id."""
    async with loaded.sessions() as session:
        campaign = await create_campaign(session, loaded.shop_id, "bench", "Benchmark message")
        await enqueue_campaign(
            session, settings, shop_id=loaded.shop_id, campaign_id=campaign.id, idempotency_key=None
        )
    async with loaded.engine.connect() as connection:
        await connection.execute(
            text(
                "UPDATE campaign_recipients SET status = 'sent', "
                "provider_message_id = 'bench-' || CAST(id AS VARCHAR(20)) WHERE campaign_id = :c"
            ),
            {"c": campaign.id},
        )
        await connection.commit()
        rows = await connection.execute(
            select(CampaignRecipient.provider_message_id, CampaignRecipient.id, CampaignRecipient.campaign_id)
        )
        return [(str(mid), f"c{cid}-r{rid}") for mid, rid, cid in rows]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="smslab-bench-webhooks-") as tmp_name:
        tmp = Path(tmp_name)
        async with fresh_database(backend, tmp) as (database_url, schema), redis_url(tmp) as redis:
            settings = bench_settings(database_url, schema, redis, "http://127.0.0.1:9/mitto", tmp)
            loaded = await load_shop(settings, args.reports, credits=args.reports * 2)
            messages = await mark_all_sent(loaded, settings)
            port = free_port()
            api = ManagedProcess(
                "api",
                [
                    sys.executable,
                    "-m",
                    "chaos.cli",
                    "api",
                    "--port",
                    str(port),
                    "--workers",
                    str(args.api_workers),
                ],
                tmp / "api.log",
                settings_as_env(settings),
                ready_url=f"http://127.0.0.1:{port}/health",
                cwd=ROOT,
            )
            api.start()
            api.wait_ready()
            try:
                host = f"127.0.0.1:{port}"
                health = request_bytes("GET", "/health", host)
                await run_load("127.0.0.1", port, [health] * 500, args.concurrency)  # warm-up
                health_run = await run_load("127.0.0.1", port, [health] * len(messages), args.concurrency)
                url = f"/webhooks/mitto/dlr?token={settings.mitto_dlr_token}"
                reports = [
                    request_bytes(
                        "POST",
                        url,
                        host,
                        (
                            f'{{"messageId":"{mid}","reference":"{ref}","status":"Delivered",'
                            f'"errorCode":null,"timestamp":"2026-11-28T12:00:00Z"}}'
                        ).encode(),
                    )
                    for mid, ref in messages
                ]
                cpu_before = cpu_seconds_by_component()
                dlr_run = await run_load("127.0.0.1", port, reports, args.concurrency)
                cpu_after = cpu_seconds_by_component()
            finally:
                api.stop()
            async with loaded.sessions() as session, session.begin():
                delivered = await session.scalar(
                    select(func.count())
                    .select_from(CampaignRecipient)
                    .where(CampaignRecipient.status == "delivered")
                )
                events = await session.scalar(select(func.count()).select_from(WebhookEvent))
            await loaded.engine.dispose()
    return {
        "backend": backend,
        "reports": len(messages),
        "dlr_rate": len(messages) / dlr_run.seconds,
        "dlr_p50": statistics.median(dlr_run.latencies_ms),
        "dlr_p99": percentile(dlr_run.latencies_ms, 0.99),
        "health_rate": len(messages) / health_run.seconds,
        "health_p50": statistics.median(health_run.latencies_ms),
        "cpu": {k: cpu_after.get(k, 0.0) - cpu_before.get(k, 0.0) for k in cpu_after},
        "failures": sum(n for status, n in dlr_run.statuses.items() if status >= 300),
        "delivered": delivered,
        "events": events,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reports", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--api-workers", type=int, default=1, help="API processes (uvicorn workers)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="postgresql")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    rows = [asyncio.run(bench(backend, args)) for backend in backends]
    print(
        f"\nwebhooks: {args.reports} delivery reports, {args.concurrency} in flight, {args.api_workers} API process(es)"
    )
    print(
        f"{'backend':<11} {'reports/s':>10} {'p50 ms':>8} {'p99 ms':>8}   {'GET /health/s':>13} {'p50 ms':>7} {'ratio':>6}   check"
    )
    for r in rows:
        ok = r["failures"] == 0 and r["delivered"] == r["reports"] == r["events"]
        print(
            f"{r['backend']:<11} {r['dlr_rate']:>10.0f} {r['dlr_p50']:>8.1f} {r['dlr_p99']:>8.1f}"
            f"   {r['health_rate']:>13.0f} {r['health_p50']:>7.1f} {ratio(r['dlr_rate'], r['health_rate']):>6}"
            f"   {'every report applied once' if ok else 'MISMATCH: ' + str(r)}"
        )
    print("\nCPU seconds used while the reports were absorbed (2 cores = 2 CPU-seconds per wall second):")
    for r in rows:
        wall = r["reports"] / r["dlr_rate"]
        parts = ", ".join(
            f"{k} {v:.1f}" for k, v in sorted(r["cpu"].items(), key=lambda kv: -kv[1]) if v >= 0.05
        )
        print(f"  {r['backend']:<11} wall {wall:.1f}s: {parts}")


if __name__ == "__main__":
    main()

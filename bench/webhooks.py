"""Webhook benchmark: Mitto delivery reports absorbed per second over HTTP, replay protection on.

    python -m bench.webhooks --reports 20000 --concurrency 64 --backend postgresql

A fresh database holds N sent messages. The API runs as its own process(es) (`--api-workers`), and a
load generator posts one `Delivered` report per message to `/webhooks/mitto/dlr?token=...`, with C
requests in flight. Each report is verified, recorded as an event (unique per provider and event id) and
applied, in one transaction. Reported: reports/s, p50 and p99 latency, and, measured the same way in the
same run against the same process, `GET /health` (no database): the HTTP stack's own ceiling, as a
ratio. Afterwards every recipient must be `delivered` and every report recorded exactly once.

Two load generators take turns against the same API process (`--clients lean,aiohttp`, `--rounds`
turns each in ABBA order, each posting an equal share of the reports after a warm-up on a tenth of
them): the lean hand-written client and aiohttp's, each with the CPU it spent per request in this
process (`resource.getrusage`).

`--api-stacks httptools/uvloop,h11/asyncio` runs the whole benchmark once per HTTP parser and event loop
of the API (`smslab api --http --loop`), in ABBA order with `--stack-rounds`: what the C parser and loop
installed with the service buy, side by side.
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
from bench.loadgen import CLIENTS, Call, LoadResult, interleaved, merge, percentile, run_calls
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


async def bench(backend: str, args: argparse.Namespace, stack: str = "auto/auto") -> dict[str, Any]:
    http, loop = stack.split("/")
    clients = [c for c in args.clients.split(",") if c]
    order = interleaved(clients, args.rounds)
    with tempfile.TemporaryDirectory(prefix="smslab-bench-webhooks-") as tmp_name:
        tmp = Path(tmp_name)
        async with fresh_database(backend, tmp) as (database_url, schema), redis_url(tmp) as redis:
            settings = bench_settings(database_url, schema, redis, "http://127.0.0.1:9/mitto", tmp)
            if args.max_in_flight is not None:
                settings = settings.with_overrides(api_max_in_flight=args.max_in_flight)
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
                    "--http",
                    http,
                    "--loop",
                    loop,
                ],
                tmp / "api.log",
                settings_as_env(settings),
                ready_url=f"http://127.0.0.1:{port}/health",
                cwd=ROOT,
            )
            api.start()
            api.wait_ready()
            health: dict[str, list[LoadResult]] = {c: [] for c in clients}
            dlr: dict[str, list[LoadResult]] = {c: [] for c in clients}
            service_cpu: dict[str, dict[str, float]] = {c: {} for c in clients}
            try:
                health_call = Call("GET", "/health")
                for client in clients:  # warm-up
                    await run_calls(client, "127.0.0.1", port, [health_call] * 500, args.concurrency)
                for client in order:  # the same number of requests per turn, the clients taking turns
                    health[client].append(
                        await run_calls(
                            client,
                            "127.0.0.1",
                            port,
                            [health_call] * (len(messages) // len(order)),
                            args.concurrency,
                        )
                    )
                url = f"/webhooks/mitto/dlr?token={settings.mitto_dlr_token}"
                reports = [
                    Call(
                        "POST",
                        url,
                        (
                            f'{{"messageId":"{mid}","reference":"{ref}","status":"Delivered",'
                            f'"errorCode":null,"timestamp":"2026-11-28T12:00:00Z"}}'
                        ).encode(),
                    )
                    for mid, ref in messages
                ]
                # Warm-up on the report path too (those reports are applied, not counted), then the
                # same number of reports per turn; each report is posted exactly once.
                warm, reports = reports[: len(reports) // 10], reports[len(reports) // 10 :]
                for number, client in enumerate(clients):
                    part = warm[number :: len(clients)]
                    await run_calls(client, "127.0.0.1", port, part, args.concurrency)
                share = len(reports) // len(order)
                chunks = [reports[i * share : (i + 1) * share] for i in range(len(order))]
                chunks[-1] += reports[len(order) * share :]
                for client, chunk in zip(order, chunks, strict=True):
                    before = cpu_seconds_by_component()
                    dlr[client].append(await run_calls(client, "127.0.0.1", port, chunk, args.concurrency))
                    after = cpu_seconds_by_component()
                    for component in ("api", "postgresql"):
                        spent = after.get(component, 0.0) - before.get(component, 0.0)
                        service_cpu[client][component] = service_cpu[client].get(component, 0.0) + spent
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
    rows = []
    for client in clients:
        reported, checked = merge(dlr[client]), merge(health[client])
        rows.append(
            {
                "client": client,
                "reports": reported.requests,
                "dlr_rate": reported.requests / reported.seconds,
                "dlr_p50": statistics.median(reported.latencies_ms),
                "dlr_p99": percentile(reported.latencies_ms, 0.99),
                "client_cpu_us": 1e6 * reported.cpu_seconds / reported.requests,
                "health_rate": checked.requests / checked.seconds,
                "health_p50": statistics.median(checked.latencies_ms),
                "health_cpu_us": 1e6 * checked.cpu_seconds / checked.requests,
                "seconds": reported.seconds,
                "client_cpu": reported.cpu_seconds,
                "cpu": service_cpu[client],
                "failures": sum(n for status, n in reported.statuses.items() if status >= 300),
            }
        )
    return {
        "backend": backend if stack == "auto/auto" else f"{backend} {stack}",
        "reports": len(messages),
        "rows": rows,
        "delivered": delivered,
        "events": events,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reports", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--max-in-flight", type=int, default=None, help="SMSLAB_API_MAX_IN_FLIGHT (default: the service's)"
    )
    parser.add_argument("--api-workers", type=int, default=1, help="API processes (uvicorn workers)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="postgresql")
    parser.add_argument(
        "--clients", default="lean,aiohttp", help=f"load generators, side by side: {','.join(CLIENTS)}"
    )
    parser.add_argument("--rounds", type=int, default=4, help="turns each client takes, in ABBA order")
    parser.add_argument(
        "--api-stacks",
        default="auto/auto",
        help="the API's HTTP parser/event loop, side by side, each its own run in ABBA order: "
        "e.g. httptools/uvloop,h11/asyncio (`smslab api --http --loop`)",
    )
    parser.add_argument("--stack-rounds", type=int, default=1, help="runs each stack takes, in ABBA order")
    args = parser.parse_args()
    if not set(args.clients.split(",")) <= set(CLIENTS):
        parser.error(f"--clients: a comma-separated list of {', '.join(CLIENTS)}")
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    stacks = interleaved(args.api_stacks.split(","), args.stack_rounds)
    if any(stack.count("/") != 1 for stack in stacks):
        parser.error("--api-stacks: a comma-separated list of HTTP/LOOP, e.g. httptools/uvloop,h11/asyncio")
    results = [asyncio.run(bench(backend, args, stack)) for backend in backends for stack in stacks]
    print(
        f"\nwebhooks: {args.reports} delivery reports, {args.concurrency} in flight, "
        f"{args.api_workers} API process(es); clients taking turns, {args.rounds} rounds"
    )
    print(
        f"{'backend':<11} {'client':<8} {'reports/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'client CPU/req':>15}"
        f"   {'GET /health/s':>13} {'p50 ms':>7} {'CPU/req':>8} {'ratio':>6}   check"
    )
    for result in results:
        ok = result["delivered"] == result["reports"] == result["events"]
        for r in result["rows"]:
            verdict = "every report applied once" if ok and r["failures"] == 0 else "MISMATCH: " + str(result)
            print(
                f"{result['backend']:<11} {r['client']:<8} {r['dlr_rate']:>10.0f} {r['dlr_p50']:>8.1f}"
                f" {r['dlr_p99']:>8.1f} {r['client_cpu_us']:>12.0f} us   {r['health_rate']:>13.0f}"
                f" {r['health_p50']:>7.1f} {r['health_cpu_us']:>5.0f} us {ratio(r['dlr_rate'], r['health_rate']):>6}"
                f"   {verdict}"
            )
        by_client = {r["client"]: r for r in result["rows"]}
        if "lean" in by_client and "aiohttp" in by_client:
            lean, other = by_client["lean"], by_client["aiohttp"]
            print(
                f"{'':<11} aiohttp / lean: reports/s {ratio(other['dlr_rate'], lean['dlr_rate'])}, "
                f"client CPU per report {ratio(other['client_cpu_us'], lean['client_cpu_us'])}, "
                f"GET /health/s {ratio(other['health_rate'], lean['health_rate'])}"
            )
    print("\nCPU seconds used while the reports were absorbed (2 cores = 2 CPU-seconds per wall second):")
    for result in results:
        for r in result["rows"]:
            parts = ", ".join(
                f"{k} {v:.1f}" for k, v in sorted(r["cpu"].items(), key=lambda kv: -kv[1]) if v >= 0.05
            )
            print(
                f"  {result['backend']:<11} {r['client']:<8} wall {r['seconds']:.1f}s: {parts}, "
                f"load generator {r['client_cpu']:.1f}"
            )


if __name__ == "__main__":
    main()

"""`/metrics` scrape time with a loaded database: what Prometheus's scrape costs the API.

    python -m bench.metrics_scrape --recipients 100000 --backend both

A fresh database holds a shop with N contacts and a campaign enqueued to all of them (N recipient rows,
a live reservation), and ledger entries; the API runs in multiprocess mode (`SMSLAB_METRICS_DIR`) with a
worker beside it, so the scrape merges several processes' files as in production. `/metrics` is then
scraped `--scrapes` times, one after another (as Prometheus does), after a warm-up: p50, p99 and max
wall time, beside `GET /health` measured the same way in the same run (the HTTP stack's own floor).
Target: the scrape under 100 ms with 100,000 recipients.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, bench_settings, fresh_database, load_shop, redis_url
from bench.loadgen import percentile
from chaos.processes import ManagedProcess
from service.campaigns.drafts import create_campaign
from service.campaigns.enqueue import enqueue_campaign
from service.embedded_redis import free_port
from service.metrics import prepare_directory
from service.settings import settings_as_env


async def timed(client: httpx.AsyncClient, path: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        (await client.get(path)).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return times


async def bench(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="smslab-bench-metrics-") as tmp_name:
        tmp = Path(tmp_name)
        async with fresh_database(backend, tmp) as (database_url, schema), redis_url(tmp) as redis:
            metrics_dir = tmp / "metrics"
            prepare_directory(str(metrics_dir))
            settings = bench_settings(
                database_url, schema, redis, "http://127.0.0.1:9/mitto", tmp, metrics_dir=metrics_dir
            )
            loaded = await load_shop(settings, args.recipients, credits=args.recipients * 2)
            async with loaded.sessions() as session:
                campaign = await create_campaign(session, loaded.shop_id, "bench", "Benchmark message")
                await enqueue_campaign(
                    session, settings, shop_id=loaded.shop_id, campaign_id=campaign.id, idempotency_key=None
                )
            await loaded.engine.dispose()
            port = free_port()
            env = settings_as_env(settings)
            api = ManagedProcess(
                "api",
                [sys.executable, "-m", "chaos.cli", "api", "--port", str(port)],
                tmp / "api.log",
                env,
                ready_url=f"http://127.0.0.1:{port}/health",
                cwd=ROOT,
            )
            # A worker writes its own metric files (it sends nothing: Mitto is unreachable, and that is
            # fine, its failures are counted too).
            worker = ManagedProcess(
                "worker", [sys.executable, "-m", "chaos.cli", "worker"], tmp / "worker.log", env, cwd=ROOT
            )
            api.start()
            worker.start()
            api.wait_ready()
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                    await timed(client, "/metrics", 10)
                    await timed(client, "/health", 10)
                    scrapes = await timed(client, "/metrics", args.scrapes)
                    health = await timed(client, "/health", args.scrapes)
                    body = (await client.get("/metrics")).text
                files = len(list(metrics_dir.glob("*.db")))
            finally:
                worker.stop()
                api.stop()
    return {
        "backend": backend,
        "scrape": scrapes,
        "health": health,
        "lines": body.count("\n"),
        "bytes": len(body),
        "files": files,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = [asyncio.run(bench(backend, args)) for backend in backends]
    print(
        f"\n/metrics scrape, {args.recipients} recipients in the database, {args.scrapes} scrapes one after another"
    )
    print(f"{'backend':<11} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}   {'/health p50':>11}   exposition")
    for r in results:
        scrape = r["scrape"]
        verdict = "meets" if percentile(scrape, 0.99) < 100 else "MISSES"
        print(
            f"{r['backend']:<11} {statistics.median(scrape):>7.1f} {percentile(scrape, 0.99):>7.1f} "
            f"{max(scrape):>7.1f}   {statistics.median(r['health']):>8.1f} ms   {r['lines']} lines, "
            f"{r['bytes']} bytes from {r['files']} process files   ({verdict} the target: p99 < 100 ms)"
        )


if __name__ == "__main__":
    main()

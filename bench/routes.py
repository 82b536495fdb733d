"""What each merchant route costs one API process, beside `GET /health` on the same process, and
optionally beside another checkout of the service in the same run.

    python -m bench.routes --backend postgresql
    python -m bench.routes --backend both --trees /tmp/base,.      # an older tree beside this one

One shop with ten consenting contacts; one API process per tree (`python -m service api`, started in
that tree, so it imports that tree's service), rate limits on with a budget no request reaches (every
request pays its check). Each route is driven by the lean load generator (`bench/loadgen.py`) with
`--concurrency` requests in flight, the trees taking turns in ABBA order (`--rounds`), the same number of
requests per turn. For each route and tree: requests/s, p50/p99, and the CPU the API process spent per
request (from /proc, over its turns), with that CPU as a multiple of the same process's `GET /health`:
the HTTP stack's floor. With two trees, the last column is this tree's CPU per request over the first's.

Routes: `health`, `wallet`, `campaign` (one campaign's detail), `campaigns` (a page of 20), `create` (a
draft), `enqueue` (a draft of ten recipients, a fresh key each: queues one send job), `import` (ten
contacts upserted again). Delivery reports are `bench/webhooks.py`'s. `--py-spy DIR` samples the API
through each route's first measured turn (py-spy on PATH or beside this interpreter).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.common import ROOT, bench_phones, bench_settings, fresh_database, load_shop, process_cpu_seconds
from bench.common import redis_url as bench_redis_url
from bench.loadgen import Call, LoadResult, interleaved, merge, percentile, run_calls
from chaos.processes import ManagedProcess
from service.auth import issue_session_token
from service.campaigns.drafts import create_campaign
from service.campaigns.enqueue import enqueue_campaign
from service.embedded_redis import free_port
from service.rate_limits import UNREACHABLE_LIMITS
from service.settings import Settings, settings_as_env

SHOP = "bench.myshopify.com"
ROUTES = ("health", "wallet", "campaign", "campaigns", "create", "enqueue", "import")
DRAFTS_PER_REQUEST = {"enqueue"}  # routes whose every request consumes a draft of its own


@dataclass
class Tree:
    name: str
    path: Path
    process: ManagedProcess | None = None
    port: int = 0


def start_api(tree: Tree, settings: Settings, log: Path) -> None:
    tree.port = free_port()
    tree.process = ManagedProcess(
        f"api-{tree.name}",
        [sys.executable, "-m", "service", "api", "--port", str(tree.port)],
        log,
        settings_as_env(settings),
        ready_url=f"http://127.0.0.1:{tree.port}/health",
        cwd=tree.path,
    )
    tree.process.start()
    tree.process.wait_ready()


async def drafts(loaded: Any, count: int) -> list[int]:
    ids = []
    async with loaded.sessions() as session:
        for _ in range(count):
            ids.append((await create_campaign(session, loaded.shop_id, "bench", "A benchmark message")).id)
    return ids


def calls_for(
    route: str, settings: Settings, count: int, campaign: int, spare_drafts: list[int]
) -> list[Call]:
    auth = ("Authorization", f"Bearer {issue_session_token(settings, SHOP)}")
    if route == "health":
        return [Call("GET", "/health")] * count
    if route == "wallet":
        return [Call("GET", "/api/wallet", headers=(auth,))] * count
    if route == "campaign":
        return [Call("GET", f"/api/campaigns/{campaign}", headers=(auth,))] * count
    if route == "campaigns":
        return [Call("GET", "/api/campaigns?limit=20", headers=(auth,))] * count
    if route == "create":
        body = json.dumps({"name": "bench", "body": "A benchmark message"}).encode()
        return [Call("POST", "/api/campaigns", body, headers=(auth,))] * count
    if route == "import":
        rows = [{"phone": phone, "sms_consent": True} for phone in bench_phones(10)]
        return [
            Call("POST", "/api/contacts", json.dumps({"contacts": rows}).encode(), headers=(auth,))
        ] * count
    if route == "enqueue":
        taken, spare_drafts[:] = spare_drafts[:count], spare_drafts[count:]
        return [
            Call(
                "POST",
                f"/api/campaigns/{draft}/enqueue",
                headers=(auth, ("Idempotency-Key", uuid.uuid4().hex)),
            )
            for draft in taken
        ]
    raise ValueError(f"unknown route {route!r}; known: {', '.join(ROUTES)}")


async def bench(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    trees = [
        Tree(Path(p).resolve().name if p != "." else "this", Path(p).resolve()) for p in args.trees.split(",")
    ]
    if len({t.name for t in trees}) < len(trees):
        for number, tree in enumerate(trees):
            tree.name = f"{number}:{tree.name}"
    routes = [r for r in args.routes.split(",") if r]
    order = interleaved([t.name for t in trees], args.rounds)
    with tempfile.TemporaryDirectory(prefix="smslab-bench-routes-") as tmp_name:
        tmp = Path(tmp_name)
        async with fresh_database(backend, tmp) as (database_url, schema), bench_redis_url(tmp) as redis:
            settings = bench_settings(
                database_url, schema, redis, "http://127.0.0.1:9/mitto", tmp, rate_limits=UNREACHABLE_LIMITS
            )
            loaded = await load_shop(settings, contacts=10, credits=10**9)
            (campaign,) = await drafts(loaded, 1)
            async with loaded.sessions() as session:
                await enqueue_campaign(
                    session, settings, shop_id=loaded.shop_id, campaign_id=campaign, idempotency_key=None
                )
            warm = max(1, args.requests // 10)
            needed = (warm + args.requests * args.rounds) * len(trees) if "enqueue" in routes else 0
            spare = await drafts(loaded, needed)
            await loaded.engine.dispose()
            results: dict[tuple[str, str], list[LoadResult]] = {}
            cpu: dict[tuple[str, str], float] = {}
            try:
                for number, tree in enumerate(trees):
                    start_api(tree, settings, tmp / f"api-{number}.log")
                for route in routes:
                    for tree in trees:  # warm-up, not counted
                        await run_calls(
                            "lean",
                            "127.0.0.1",
                            tree.port,
                            calls_for(route, settings, warm, campaign, spare),
                            16,
                        )
                    for name in order:
                        tree = next(t for t in trees if t.name == name)
                        assert tree.process is not None
                        assert tree.process.pid is not None
                        calls = calls_for(route, settings, args.requests, campaign, spare)
                        profile = profiling(args.py_spy, backend, route, tree, results.get((route, name)))
                        before = process_cpu_seconds(tree.process.pid)
                        result = await run_calls("lean", "127.0.0.1", tree.port, calls, args.concurrency)
                        spent = process_cpu_seconds(tree.process.pid) - before
                        if profile is not None:
                            profile.send_signal(signal.SIGINT)  # py-spy writes what it sampled, then exits
                            profile.wait(timeout=30)
                        results.setdefault((route, name), []).append(result)
                        cpu[(route, name)] = cpu.get((route, name), 0.0) + spent
            finally:
                for tree in trees:
                    if tree.process is not None:
                        tree.process.stop()
                await forget_queue(redis, settings.queue_name)
    rows = []
    for route in routes:
        for tree in trees:
            merged = merge(results[(route, tree.name)])
            rows.append(
                {
                    "route": route,
                    "tree": tree.name,
                    "rate": merged.requests / merged.seconds,
                    "p50": statistics.median(merged.latencies_ms),
                    "p99": percentile(merged.latencies_ms, 0.99),
                    "cpu_ms": 1000 * cpu[(route, tree.name)] / merged.requests,
                    "statuses": dict(sorted(merged.statuses.items())),
                }
            )
    return {"backend": backend, "trees": [t.name for t in trees], "rows": rows}


def profiling(
    folder: str, backend: str, route: str, tree: Tree, earlier: list[LoadResult] | None
) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the API process through the route's first measured turn on this tree
    (`--py-spy DIR`: raw stacks, one file per backend, route and tree, for flame graphs or grep)."""
    if not folder or earlier:
        return None
    assert tree.process is not None
    Path(folder).mkdir(parents=True, exist_ok=True)
    out = Path(folder) / f"{backend}-{route}-{tree.name.replace(':', '-')}.txt"
    spy_path = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [spy_path, "record", "-r", "250", "-f", "raw", "-o", str(out), "-p", str(tree.process.pid)]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached before the turn starts
    return spy


async def forget_queue(redis: str, queue_name: str) -> None:
    """The send jobs the enqueue route queued (no worker runs here): out of the shared Redis."""
    client = aioredis.from_url(redis)
    try:
        async for key in client.scan_iter(match=f"*{queue_name}*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()


def report(result: dict[str, Any]) -> None:
    rows, trees = result["rows"], result["trees"]
    health = {r["tree"]: r["cpu_ms"] for r in rows if r["route"] == "health"}
    first = {(r["route"]): r["cpu_ms"] for r in rows if r["tree"] == trees[0]}
    print(
        f"\n{result['backend']}: one API process per tree"
        + (f", trees side by side: {', '.join(trees)}" if len(trees) > 1 else "")
    )
    print(
        f"{'route':<10} {'tree':<12} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'API CPU ms':>10} "
        f"{'x /health':>9} {'x ' + trees[0]:>10}   statuses"
    )
    for row in rows:
        against_health = row["cpu_ms"] / health[row["tree"]] if health.get(row["tree"]) else float("nan")
        against_first = row["cpu_ms"] / first[row["route"]] if len(trees) > 1 else float("nan")
        print(
            f"{row['route']:<10} {row['tree']:<12} {row['rate']:>7.0f} {row['p50']:>7.1f} {row['p99']:>7.1f} "
            f"{row['cpu_ms']:>10.3f} {against_health:>9.2f} {against_first:>10.2f}   {row['statuses']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="postgresql")
    parser.add_argument("--requests", type=int, default=2000, help="requests per route per turn")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="turns each tree takes per route, ABBA order")
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--trees", default=str(ROOT), help="checkouts of the service, comma-separated")
    parser.add_argument("--py-spy", default="", metavar="DIR", help="py-spy each route's first turn into DIR")
    args = parser.parse_args()
    for backend in ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]:
        report(asyncio.run(bench(backend, args)))


if __name__ == "__main__":
    main()

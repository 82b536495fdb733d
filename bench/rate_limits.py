"""Rate-limit benchmark: what the tenant limits cost a request, and what a refusal costs.

    python -m bench.rate_limits --requests 4000 --concurrency 32 --backend sqlite

Three API processes on one database and one Redis, measured in turns (ABCCBA... order, the same number
of requests per turn, after a warm-up), all on `GET /api/wallet` (class `general`, one shop lookup and
one wallet read):
- `limits on`: safeguard 9 on, a budget no request reaches (every request pays the Redis check and is
  served): the limiter's cost;
- `limits off`: the same route with the safeguard switched off (the lab's unsafe mode);
- `refused`: a budget of one request an hour, so every request is answered 429 before the database is
  asked: what a flood's refusals cost the service.
Target: `limits on` serves at least 90% of the requests/s of `limits off`. Figures are ratios from one
run, side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    bench_settings,
    cpu_seconds_by_component,
    fresh_database,
    load_shop,
    process_cpu_seconds,
    ratio,
    redis_url,
)
from bench.loadgen import Call, LoadResult, interleaved, merge, percentile, run_calls
from chaos.processes import ManagedProcess
from service.auth import issue_session_token
from service.embedded_redis import free_port
from service.safeguards import TENANT_RATE_LIMITS
from service.settings import Settings, settings_as_env

SHOP = "bench.myshopify.com"
VARIANTS = ("limits on", "limits off", "refused")


def start_api(settings: Settings, log: Path) -> tuple[ManagedProcess, int]:
    port = free_port()
    process = ManagedProcess(
        "api",
        [sys.executable, "-m", "chaos.cli", "api", "--port", str(port)],
        log,
        settings_as_env(settings),
        ready_url=f"http://127.0.0.1:{port}/health",
        cwd=ROOT,
    )
    process.start()
    process.wait_ready()
    return process, port


async def bench(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    order = interleaved(list(VARIANTS), args.rounds)
    with tempfile.TemporaryDirectory(prefix="smslab-bench-limits-") as tmp_name:
        tmp = Path(tmp_name)
        async with fresh_database(backend, tmp) as (database_url, schema), redis_url(tmp) as redis:
            base = bench_settings(database_url, schema, redis, "http://127.0.0.1:9/mitto", tmp)
            loaded = await load_shop(base, contacts=10, credits=1000)
            await loaded.engine.dispose()
            variants = {
                "limits on": base.with_overrides(rate_limits="general=1000000/second"),
                "limits off": base.with_overrides(
                    lab_allow_unsafe=True, safeguards_off=frozenset({TENANT_RATE_LIMITS})
                ),
                "refused": base.with_overrides(rate_limits="general=1/hour"),
            }
            processes = {
                name: start_api(s, tmp / f"api-{i}.log") for i, (name, s) in enumerate(variants.items())
            }
            results: dict[str, list[LoadResult]] = {name: [] for name in VARIANTS}
            # CPU seconds spent during each variant's turns: its API process, and the machine's
            # PostgreSQL and Redis (shared by the turns in order, so each turn's delta is its own).
            cpu: dict[str, dict[str, float]] = {name: {} for name in VARIANTS}
            try:

                def calls(count: int) -> list[Call]:
                    # A fresh token per turn: tokens live a minute (service.auth).
                    token = issue_session_token(base, SHOP)
                    return [
                        Call("GET", "/api/wallet", headers=(("Authorization", f"Bearer {token}"),))
                    ] * count

                for name in VARIANTS:  # warm-up (and the refused variant's one allowed request)
                    await run_calls("lean", "127.0.0.1", processes[name][1], calls(300), args.concurrency)
                for name in order:
                    process, port = processes[name]
                    assert process.pid is not None
                    api_before, others_before = process_cpu_seconds(process.pid), cpu_seconds_by_component()
                    results[name].append(
                        await run_calls("lean", "127.0.0.1", port, calls(args.requests), args.concurrency)
                    )
                    others_after = cpu_seconds_by_component()
                    spent = cpu[name]
                    spent["api"] = spent.get("api", 0.0) + process_cpu_seconds(process.pid) - api_before
                    for component in ("postgresql", "redis"):
                        delta = others_after.get(component, 0.0) - others_before.get(component, 0.0)
                        spent[component] = spent.get(component, 0.0) + delta
            finally:
                for process, _port in processes.values():
                    process.stop()
    rows = {}
    for name in VARIANTS:
        merged = merge(results[name])
        rows[name] = {
            "rate": merged.requests / merged.seconds,
            "p50": statistics.median(merged.latencies_ms),
            "p99": percentile(merged.latencies_ms, 0.99),
            "statuses": dict(sorted(merged.statuses.items())),
            "cpu_ms_per_request": {
                component: seconds * 1000 / merged.requests for component, seconds in cpu[name].items()
            },
        }
    return {"backend": backend, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=4000, help="requests per turn")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4, help="turns each variant takes, in ABC CBA order")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="sqlite")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = [asyncio.run(bench(backend, args)) for backend in backends]
    print(
        f"\nrate limits: GET /api/wallet, {args.requests} requests per turn, {args.rounds} turns each, "
        f"{args.concurrency} in flight, one API process per variant"
    )
    print(
        f"{'backend':<11} {'variant':<11} {'requests/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'API cpu ms':>10} {'db cpu ms':>9} {'redis cpu ms':>12}   statuses"
    )
    for result in results:
        rows = result["rows"]
        for name, row in rows.items():
            cpu = row["cpu_ms_per_request"]
            print(
                f"{result['backend']:<11} {name:<11} {row['rate']:>10.0f} {row['p50']:>8.1f} {row['p99']:>8.1f} "
                f"{cpu['api']:>10.3f} {cpu['postgresql']:>9.3f} {cpu['redis']:>12.3f}   {row['statuses']}"
            )
        on, off, refused = rows["limits on"], rows["limits off"], rows["refused"]
        share = on["rate"] / off["rate"]
        print(
            f"{'':<11} limits on / off: requests/s {ratio(on['rate'], off['rate'])} "
            f"({'meets' if share >= 0.9 else 'MISSES'} the target of >= 0.90), p99 {ratio(on['p99'], off['p99'])}; "
            f"a refusal costs {ratio(off['rate'], refused['rate'])} the time of a served request"
        )


if __name__ == "__main__":
    main()

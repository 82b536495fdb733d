"""Pipeline benchmark: enqueue time and end-to-end messages per second, beside the database's own bound.

    python bench/pipeline.py --recipients 100000 --workers 2 --backend both

For each backend, in one run: a fresh database with N consenting contacts; the service's enqueue of a
campaign to all of them (one transaction: status, INSERT ... SELECT of N recipients, reservation); then
W worker processes claim -> send to the fake Mitto -> record -> debit until the campaign completes.
Beside each figure, the same rows written by bare SQL (no API, no queue, no provider, one connection):
the database's own bound, and the ratio service / bound (enqueue: best of --repeat alternating runs).
Last, the fake Mitto alone, to show it is not the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from bench.common import (
    ROOT,
    Loaded,
    base_url,
    bench_phones,
    bench_settings,
    cpu_seconds_by_component,
    fresh_database,
    load_shop,
    peak_rss_mb,
    ratio,
    redis_url,
    start_simulator,
)
from service.campaigns.drafts import create_campaign
from service.campaigns.enqueue import enqueue_campaign
from service.db.models import utcnow
from service.queue import create_queue, enqueue_send_batches
from service.settings import Settings, settings_as_env


async def measure_enqueue(loaded: Loaded, settings: Settings) -> tuple[int, float]:
    async with loaded.sessions() as session:
        campaign = await create_campaign(session, loaded.shop_id, "bench", "Benchmark message")
        started = time.perf_counter()
        outcome = await enqueue_campaign(
            session,
            settings,
            shop_id=loaded.shop_id,
            campaign_id=campaign.id,
            idempotency_key=f"bench-{campaign.id}",
        )
        return campaign.id, time.perf_counter() - started + 0 * outcome.status


async def bare_enqueue(loaded: Loaded, batch_size: int) -> tuple[int, float]:
    """The same rows by hand: status update, INSERT ... SELECT, reservation, wallet."""
    async with loaded.sessions() as session:
        campaign = await create_campaign(session, loaded.shop_id, "bare", "Benchmark message")
    async with loaded.engine.connect() as connection:
        started = time.perf_counter()
        await connection.execute(
            text("UPDATE campaigns SET status = 'sending' WHERE id = :c"), {"c": campaign.id}
        )
        inserted = await connection.execute(
            text(
                "INSERT INTO campaign_recipients (campaign_id, shop_id, contact_id, phone_e164, batch_no, status, "
                "attempts) SELECT :c, :s, id, phone_e164, (row_number() OVER (ORDER BY id) - 1) / :bs, 'pending', 0 "
                "FROM contacts WHERE shop_id = :s AND sms_consent"
            ),
            {"c": campaign.id, "s": loaded.shop_id, "bs": batch_size},
        )
        count = inserted.rowcount
        await connection.execute(
            text(
                "UPDATE wallets SET reserved = reserved + :n WHERE shop_id = :s AND balance - reserved >= :n"
            ),
            {"n": count, "s": loaded.shop_id},
        )
        await connection.execute(
            text(
                "INSERT INTO credit_reservations (shop_id, campaign_id, reservation_key, amount, remaining, status, "
                "expires_at, created_at, updated_at) VALUES (:s, :c, :k, :n, :n, 'active', :t, :t, :t)"
            ),
            {
                "s": loaded.shop_id,
                "c": campaign.id,
                "k": f"bare:{campaign.id}",
                "n": count,
                "t": _now(loaded),
            },
        )
        await connection.commit()
        return campaign.id, time.perf_counter() - started


def _now(loaded: Loaded) -> Any:
    now = utcnow()
    return now.replace(tzinfo=None) if loaded.engine.dialect.name == "sqlite" else now


def _bare_mark_sent(is_pg: bool, ids: list[int], attempt: str, now: Any) -> tuple[Any, dict[str, Any]]:
    """The record's statement in the service's own shape for each backend (service/sending/record.py):
    PostgreSQL finds the rows by key with parallel arrays, SQLite joins a VALUES list."""
    params: dict[str, Any] = {"t": now, "a": attempt}
    owned = "AND status = 'sending' AND attempt_id = :a RETURNING campaign_recipients.id"
    if is_pg:
        params |= {"ids": ids, "m": [f"bare-{attempt}-{i}" for i in ids]}
        return text(
            "UPDATE campaign_recipients SET status = 'sent', sent_at = :t, lease_expires_at = NULL, "
            "provider_message_id = (CAST(:m AS VARCHAR(64)[]))[array_position(CAST(:ids AS BIGINT[]), id)] "
            f"WHERE id = ANY(CAST(:ids AS BIGINT[])) {owned}"
        ), params
    values = ", ".join(f"({int(i)}, 'bare-{attempt}-{int(i)}')" for i in ids)
    return text(
        "UPDATE campaign_recipients SET status = 'sent', provider_message_id = v.column2, sent_at = :t, "
        f"lease_expires_at = NULL FROM (VALUES {values}) AS v WHERE campaign_recipients.id = v.column1 {owned}"
    ), params


async def bare_send(loaded: Loaded, campaign_id: int, batches: int) -> float:
    """Per batch, the pipeline's own statements in its two transactions (claim; record + debit)."""
    is_pg = loaded.engine.dialect.name == "postgresql"
    started = time.perf_counter()
    async with loaded.engine.connect() as connection:
        for batch_no in range(batches):
            attempt = str(uuid.uuid4())
            now = _now(loaded)
            claimed = await connection.execute(
                text(
                    "UPDATE campaign_recipients SET status = 'sending', attempt_id = :a, lease_expires_at = :t, "
                    "claimed_at = :t, attempts = attempts + 1 "
                    "WHERE campaign_id = :c AND batch_no = :b AND status = 'pending' RETURNING id, phone_e164"
                ),
                {"a": attempt, "t": now, "c": campaign_id, "b": batch_no},
            )
            ids = [row[0] for row in claimed]
            await connection.commit()
            if is_pg:
                await connection.execute(
                    text("SELECT id FROM campaigns WHERE id = :c FOR UPDATE"), {"c": campaign_id}
                )
            sent = await connection.execute(*_bare_mark_sent(is_pg, ids, attempt, now))
            sent_ids = [row[0] for row in sent]
            await connection.execute(
                text(
                    "INSERT INTO credit_ledger (shop_id, amount, kind, idempotency_key, campaign_id, messages, "
                    "created_at) VALUES (:s, :a, 'debit', :k, :c, :n, :t)"
                ),
                {
                    "s": loaded.shop_id,
                    "a": -len(sent_ids),
                    "k": f"bare:{attempt}",
                    "c": campaign_id,
                    "n": len(sent_ids),
                    "t": now,
                },
            )
            await connection.execute(
                text("UPDATE credit_reservations SET remaining = remaining - :n WHERE campaign_id = :c"),
                {"n": len(sent_ids), "c": campaign_id},
            )
            await connection.execute(
                text(
                    "UPDATE wallets SET balance = balance - :n, reserved = reserved - :n WHERE shop_id = :s"
                ),
                {"n": len(sent_ids), "s": loaded.shop_id},
            )
            await connection.execute(
                text("UPDATE campaigns SET sent_count = sent_count + :n WHERE id = :c"),
                {"n": len(sent_ids), "c": campaign_id},
            )
            await connection.commit()
    return time.perf_counter() - started


def report_key(settings: Settings) -> str:
    """How the reports below name a backend: its URL's scheme (`postgresql+asyncpg`)."""
    return settings.database_url.split(":")[0]


CPU_REPORT: dict[str, tuple[float, dict[str, float]]] = {}
# Peak resident memory (MB) of each kind of process over a backend's run: a campaign of any size must
# go through without a process that holds all its recipients.
MEMORY_REPORT: dict[str, dict[str, float]] = {}


async def measure_send(
    loaded: Loaded,
    settings: Settings,
    campaign_id: int,
    batches: int,
    workers: int,
    concurrency: int,
    tmp: Path,
) -> float:
    env = {**os.environ, **settings_as_env(settings)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "chaos.cli", "worker", "--concurrency", str(concurrency)],
            env=env,
            cwd=ROOT,
            stdout=(tmp / f"worker-{i}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for i in range(workers)
    ]
    queue = create_queue(settings, str(settings.redis_url))
    await queue.connect()
    try:
        deadline = time.monotonic() + 30
        while len((await queue.info())["workers"]) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            await asyncio.sleep(0.1)
        cpu_before = cpu_seconds_by_component()
        started = time.perf_counter()
        await enqueue_send_batches(queue, settings, campaign_id, range(batches), None)
        while True:
            async with loaded.engine.connect() as connection:
                status = (
                    await connection.execute(
                        text("SELECT status FROM campaigns WHERE id = :c"), {"c": campaign_id}
                    )
                ).scalar()
            if status != "sending":
                elapsed = time.perf_counter() - started
                cpu_after = cpu_seconds_by_component()
                used = {k: cpu_after.get(k, 0.0) - cpu_before.get(k, 0.0) for k in cpu_after}
                CPU_REPORT[report_key(settings)] = (elapsed, used)
                return elapsed
            await asyncio.sleep(0.1)
    finally:
        await queue.disconnect()
        MEMORY_REPORT.setdefault(report_key(settings), {})["worker (largest)"] = max(
            (peak_rss_mb(p.pid) for p in processes if p.poll() is None), default=0.0
        )
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(15)


def add_send_latency(simulator_url: str, spread: str) -> None:
    """A real provider's bulk call takes tens to hundreds of milliseconds; the fake answers at once unless
    told. `spread`: `MS` fixed or `MIN-MAX` uniform, on every bulk send (the simulator's latency fault)."""
    low, _, high = spread.partition("-")
    params = {"min_ms": float(low), "max_ms": float(high)} if high else {"ms": float(low)}
    rule = {"target": "mitto.send", "kind": "latency", "params": params}
    httpx.post(f"{simulator_url}/control/faults", json=rule, timeout=5).raise_for_status()


def driver_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def fake_mitto_alone(base_url: str, messages: int, concurrency: int) -> float:
    phones = bench_phones(min(messages, 500))
    payload = {
        "messages": [
            {"from": "Bench", "to": p, "text": "Benchmark message", "reference": f"alone-{i}"}
            for i, p in enumerate(phones)
        ]
    }
    bulks = max(1, messages // len(phones))
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, headers={"X-Mitto-API-Key": "lab-mitto-key"}, timeout=60
    ) as client:

        async def one() -> None:
            async with semaphore:
                response = await client.post("/mitto/api/v1.1/Messages/sendmessagesbulk", json=payload)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(bulks)))
        return bulks * len(phones) / (time.perf_counter() - started)


async def stop_campaign(loaded: Loaded, campaign_id: int) -> None:
    """Park a measured campaign so nothing sends it (no worker runs during the enqueue measurements)."""
    async with loaded.engine.connect() as connection:
        await connection.execute(
            text("UPDATE campaigns SET status = 'cancelled' WHERE id = :c"), {"c": campaign_id}
        )
        await connection.commit()


async def bench_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    batches = -(-args.recipients // args.batch_size)
    with tempfile.TemporaryDirectory(prefix=f"smslab-bench-{backend}-") as tmp_name:
        tmp = Path(tmp_name)
        async with redis_url(tmp) as redis:
            simulator = start_simulator(tmp / "simulator")
            mitto_url = f"{base_url(simulator)}/mitto"
            try:
                # Enqueue, service and bare SQL alternately on one database (best of each), then the
                # bare SQL send bound on the last bare campaign.
                async with fresh_database(backend, tmp / "enqueue") as (database_url, schema):
                    settings = bench_settings(database_url, schema, redis, mitto_url, tmp / "enqueue")
                    loaded = await load_shop(settings, args.recipients, credits=args.recipients * 10)
                    enqueue_times, bare_times, bare_send_times = [], [], []
                    for _ in range(args.repeat):
                        campaign_id, seconds = await measure_enqueue(loaded, settings)
                        enqueue_times.append(seconds)
                        await stop_campaign(loaded, campaign_id)
                        bare_campaign, seconds = await bare_enqueue(loaded, args.batch_size)
                        bare_times.append(seconds)
                        # The bound, best of --repeat: each run's commits wait on the WAL flush, whose
                        # latency on this machine swings from run to run; the best is the database's.
                        bare_send_times.append(await bare_send(loaded, bare_campaign, batches))
                    bare_send_seconds = min(bare_send_times)
                    await loaded.engine.dispose()
                # The whole pipeline with worker processes, on a fresh database.
                async with fresh_database(backend, tmp / "send") as (database_url, schema):
                    settings = bench_settings(
                        database_url,
                        schema,
                        redis,
                        mitto_url,
                        tmp / "send",
                        batch_size=args.batch_size,
                        send_lease_seconds=120.0,
                        mitto_timeout_seconds=30.0,
                    )
                    loaded = await load_shop(settings, args.recipients, credits=args.recipients * 3)
                    campaign_id, _ = await measure_enqueue(loaded, settings)
                    if args.mitto_latency_ms:
                        add_send_latency(base_url(simulator), args.mitto_latency_ms)
                    send_seconds = await measure_send(
                        loaded, settings, campaign_id, batches, args.workers, args.concurrency, tmp
                    )
                    await loaded.engine.dispose()
                    # The fake alone, below, is measured without the delay.
                    httpx.delete(f"{base_url(simulator)}/control/faults", timeout=5).raise_for_status()
                if simulator.pid is not None:
                    MEMORY_REPORT.setdefault(report_key(settings), {})["simulator (the provider's state)"] = (
                        peak_rss_mb(simulator.pid)
                    )
                alone = await fake_mitto_alone(
                    base_url(simulator), args.recipients, args.workers * args.concurrency
                )
            finally:
                simulator.stop()
    return {
        "backend": backend,
        "enqueue_s": min(enqueue_times),
        "bare_enqueue_s": min(bare_times),
        "send_mps": args.recipients / send_seconds,
        "bare_send_mps": args.recipients / bare_send_seconds,
        "mitto_alone_mps": alone,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=10, help="jobs per worker process")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument(
        "--repeat", type=int, default=3, help="enqueue measurements of each kind (best is kept)"
    )
    parser.add_argument(
        "--mitto-latency-ms",
        default="",
        help="delay the fake Mitto's bulk send during the send phase: MS or MIN-MAX (e.g. 50-300)",
    )
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    rows = [asyncio.run(bench_backend(backend, args)) for backend in backends]
    print(
        f"\npipeline: {args.recipients} recipients, batches of {args.batch_size}, {args.workers} worker processes x {args.concurrency}"
        + (f", bulk send delayed {args.mitto_latency_ms} ms" if args.mitto_latency_ms else "")
    )
    print(
        f"{'backend':<11} {'enqueue':>9} {'bare SQL':>9} {'ratio':>6}   {'send msg/s':>10} {'bare SQL':>9} {'ratio':>6}   {'fake Mitto alone':>16}"
    )
    for r in rows:
        print(
            f"{r['backend']:<11} {r['enqueue_s']:>8.2f}s {r['bare_enqueue_s']:>8.2f}s {ratio(r['enqueue_s'], r['bare_enqueue_s']):>6}"
            f"   {r['send_mps']:>10.0f} {r['bare_send_mps']:>9.0f} {ratio(r['send_mps'], r['bare_send_mps']):>6}"
            f"   {r['mitto_alone_mps']:>16.0f}"
        )
    print("\nCPU seconds used during the send phase (2 cores = 2 CPU-seconds per second of wall time):")
    for backend, (elapsed, used) in CPU_REPORT.items():
        parts = ", ".join(
            f"{name} {seconds:.1f}" for name, seconds in sorted(used.items(), key=lambda kv: -kv[1])
        )
        print(f"  {backend:<22} wall {elapsed:.1f}s: {parts}")
    print("\nPeak resident memory (MB) of each process, over the whole run:")
    for backend, peaks in MEMORY_REPORT.items():
        parts = ", ".join(f"{name} {mb:.0f}" for name, mb in peaks.items())
        print(f"  {backend:<22} {parts}, this driver (enqueue) {driver_peak_mb():.0f}")


if __name__ == "__main__":
    main()

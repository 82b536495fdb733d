"""Shared set-up for the benchmarks: a fresh database per backend, Redis, the simulator, a loaded shop."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from chaos.processes import ManagedProcess
from service.contacts.upsert import upsert_contacts
from service.db import migrate
from service.db.session import create_engine, create_sessionmaker
from service.embedded_redis import EmbeddedRedis, free_port, ping
from service.settings import Settings, validate
from service.shops import install_shop
from service.wallet.ledger import grant_credits

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("SMSLAB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SMSLAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def bench_phones(count: int) -> list[str]:
    # Valid E.164 for the fake Mitto; the benchmark skips libphonenumber's (slow) validation.
    return [f"+1{2015550000 + i}" for i in range(count)]


@asynccontextmanager
async def redis_url(tmp: Path) -> AsyncIterator[str]:
    if ping(REDIS_URL):
        yield REDIS_URL
        return
    embedded = EmbeddedRedis(tmp / "redis")
    try:
        yield embedded.start()
    finally:
        embedded.stop()


@asynccontextmanager
async def fresh_database(backend: str, tmp: Path) -> AsyncIterator[tuple[str, str | None]]:
    tmp.mkdir(parents=True, exist_ok=True)
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp / 'bench.db'}", None
        return
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    # Every bench process connects as `{schema}-{role}` (bench_settings), so the clean-up below ends this
    # benchmark's leftover connections and nobody else's.
    plain = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(plain)
    await connection.execute(f'CREATE SCHEMA "{schema}"')
    await connection.close()
    try:
        yield POSTGRES_URL, schema
    finally:
        connection = await asyncpg.connect(plain)
        await connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND starts_with(application_name, $1)",
            f"{schema}-",
        )
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await connection.close()


def start_simulator(data_dir: Path) -> ManagedProcess:
    port = free_port()
    process = ManagedProcess(
        "simulator",
        [sys.executable, "-m", "simulator", "--port", str(port), "--data-dir", str(data_dir)],
        data_dir / "simulator.log",
        ready_url=f"http://127.0.0.1:{port}/control/health",
        cwd=ROOT,
    )
    process.start()
    process.wait_ready(15)
    return process


def base_url(process: ManagedProcess) -> str:
    assert process.ready_url
    return process.ready_url.removesuffix("/control/health")


def bench_settings(
    database_url: str, schema: str | None, redis: str, mitto_url: str, tmp: Path, **extra: object
) -> Settings:
    return validate(
        Settings(
            var_dir=tmp / "var",
            database_url=database_url,
            database_schema=schema,
            database_application_name=schema or "smslab-bench",
            redis_url=redis,
            queue_name=f"bench-{uuid.uuid4().hex[:8]}",
            mitto_base_url=mitto_url,
            log_level="warning",
            log_format="json",
            **extra,  # type: ignore[arg-type]
        )
    )


@dataclass
class Loaded:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    shop_id: int


async def load_shop(settings: Settings, contacts: int, credits: int) -> Loaded:
    await migrate.upgrade_async(settings)
    engine = create_engine(settings, "bench")
    sessions = create_sessionmaker(engine)
    async with sessions() as session:
        shop = await install_shop(session, "bench.myshopify.com")
        await grant_credits(session, shop_id=shop.id, amount=credits, idempotency_key="bench")
        phones = bench_phones(contacts)
        for start in range(0, contacts, 10_000):
            rows = [{"phone_e164": p, "sms_consent": True} for p in phones[start : start + 10_000]]
            await upsert_contacts(session, shop.id, rows)
    return Loaded(engine, sessions, shop.id)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """A live process's peak resident memory so far (Linux /proc: VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds_by_component() -> dict[str, float]:
    """CPU seconds used so far by each kind of process on this machine (Linux /proc), for attribution."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if "chaos.cli worker" in cmdline or "-m service worker" in cmdline:
            name = "workers"
        elif "chaos.cli api" in cmdline or "-m service api" in cmdline or "multiprocessing" in cmdline:
            name = "api"
        elif "-m simulator" in cmdline:
            name = "simulator"
        elif "postgres" in cmdline:
            name = "postgresql"
        elif "redis-server" in cmdline:
            name = "redis"
        elif "bench." in cmdline:
            name = "benchmark driver"
        else:
            continue
        totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return totals

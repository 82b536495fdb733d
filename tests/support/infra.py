"""Real infrastructure for tests: a fresh database per test on each backend, Redis, the simulator process.

- SQLite: a file in the test's temp dir.
- PostgreSQL: a fresh schema in SMSLAB_TEST_POSTGRES_URL (default: the machine's `test` database),
  dropped afterwards. Without a reachable PostgreSQL the PostgreSQL cases are skipped with the reason,
  unless SMSLAB_TEST_REQUIRE_POSTGRES=1 (CI), where they fail instead. `SMSLAB_TEST_POSTGRES_URL=
  testcontainers` starts a throwaway PostgreSQL in Docker for the session (users with Docker only;
  without it the run stops at once with one line).
- Redis: SMSLAB_TEST_REDIS_URL (default the machine's 127.0.0.1:6379), else an embedded redis-server;
  each test gets its own queue name and deletes only its own keys.
- The simulator: a real `python -m simulator` process per test, with its own ledgers.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis

from chaos.processes import ManagedProcess
from service.embedded_redis import EmbeddedRedis, free_port, ping


def _postgres_url() -> str:
    given = os.environ.get("SMSLAB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    if given != "testcontainers":
        return given
    import atexit

    from chaos.throwaway_postgres import NoDocker, throwaway_postgres

    container = throwaway_postgres()
    try:
        url = container.__enter__()
    except NoDocker as exc:
        sys.stderr.write(f"SMSLAB_TEST_POSTGRES_URL=testcontainers: {exc}\n")
        raise SystemExit(2) from None
    atexit.register(container.__exit__, None, None, None)
    os.environ["SMSLAB_TEST_POSTGRES_URL"] = url  # xdist's workers, started after this, share it
    return url


POSTGRES_URL = _postgres_url()
REDIS_URL = os.environ.get("SMSLAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_POSTGRES = os.environ.get("SMSLAB_TEST_REQUIRE_POSTGRES", "") in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parents[2]


def plain_postgres_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


_postgres_ok: bool | None = None


async def postgres_available() -> bool:
    global _postgres_ok
    if _postgres_ok is None:
        try:
            connection = await asyncpg.connect(plain_postgres_url(POSTGRES_URL), timeout=3)
        except (OSError, asyncpg.PostgresError):
            _postgres_ok = False
        else:
            await connection.close()
            _postgres_ok = True
    return _postgres_ok


async def postgres_or_skip() -> None:
    """A PostgreSQL half of a test without a server: skipped, or failed where PostgreSQL is required
    (SMSLAB_TEST_REQUIRE_POSTGRES, as CI runs the suite)."""
    if not await postgres_available():
        if REQUIRE_POSTGRES:
            pytest.fail(
                f"PostgreSQL required (SMSLAB_TEST_REQUIRE_POSTGRES) but not reachable at {POSTGRES_URL}"
            )
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}")


async def create_schema() -> str:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(plain_postgres_url(POSTGRES_URL))
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await connection.close()
    return schema


async def drop_schema(schema: str) -> None:
    connection = await asyncpg.connect(plain_postgres_url(POSTGRES_URL))
    try:
        # The service's pools may still hold connections; end them so DROP does not wait.
        await connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND query LIKE $1",
            f"%{schema}%",
        )
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


class RedisForTests:
    """The machine's Redis if it answers, else one embedded redis-server for the whole session."""

    def __init__(self, tmp_dir: Path) -> None:
        self._embedded: EmbeddedRedis | None = None
        if ping(REDIS_URL):
            self.url = REDIS_URL
        else:
            self._embedded = EmbeddedRedis(tmp_dir / "redis")
            self.url = self._embedded.start()

    def delete_queue(self, queue_name: str) -> None:
        client = redis.Redis.from_url(self.url)
        try:
            for pattern in (f"saq:{queue_name}:*", f"saq:job:{queue_name}:*"):
                keys = list(client.scan_iter(match=pattern, count=1000))
                if keys:
                    client.delete(*keys)
        finally:
            client.close()

    def close(self) -> None:
        if self._embedded:
            self._embedded.stop()


@dataclass
class SimulatorProcess:
    """The fake providers as a real process (`python -m simulator`), with a client for its control API."""

    data_dir: Path
    seed: int = 7
    port: int = 0
    target_port: int | None = None  # where its webhooks go (the test's API), if anywhere
    dlr_final: str = "Delivered=1"
    scenario: Path | None = None  # a scenario file; then seed and reports come from it
    extra_args: tuple[str, ...] = ()  # further `python -m simulator` options
    process: ManagedProcess | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mitto_url(self) -> str:
        return f"{self.base_url}/mitto"

    def start(self) -> None:
        self.port = self.port or free_port()
        argv = [sys.executable, "-m", "simulator", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        if self.scenario is not None:
            argv += ["--scenario", str(self.scenario)]
        else:
            argv += ["--seed", str(self.seed), "--dlr-final", self.dlr_final, "--dlr-delay-ms", "30"]
        if self.target_port:
            argv += ["--target", f"http://127.0.0.1:{self.target_port}"]
        argv += list(self.extra_args)
        self.process = ManagedProcess(
            "simulator",
            argv,
            self.data_dir / "simulator.log",
            ready_url=f"{self.base_url}/control/health",
            cwd=ROOT,
        )
        self.process.start()
        self.process.wait_ready(15)

    def stop(self) -> None:
        if self.process:
            self.process.stop(5)

    def kill(self) -> None:
        if self.process:
            self.process.kill()

    def add_fault(self, **rule: Any) -> dict[str, Any]:
        response = httpx.post(f"{self.base_url}/control/faults", json=rule, timeout=5)
        response.raise_for_status()
        return dict(response.json()["faults"][0])

    def clear_faults(self) -> None:
        httpx.delete(f"{self.base_url}/control/faults", timeout=5).raise_for_status()

    def counters(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.base_url}/control/counters", timeout=5).json())

    def control(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.base_url}/control{path}", timeout=10, **kwargs)
        response.raise_for_status()
        return response.json()

    def wait_for_deliveries(self, timeout: float = 20.0) -> dict[str, Any]:
        """Until every outbound webhook was acknowledged or given up (nothing pending); the counters then.

        The simulator counts a webhook as pending from the moment the call that fires it answers (an
        Admin API change, a control trigger, a payment), so this cannot return before a webhook caused
        earlier was even scheduled. Past `timeout` it fails, naming what is still pending, rather than
        return as if everything had arrived. A webhook that was given up is not pending either: assert
        `acknowledged` for the ones the test needs to have arrived."""
        deadline = time.monotonic() + timeout
        while True:
            counters = dict(self.control("GET", "/deliveries"))
            if counters["pending"] == 0:
                return counters
            if time.monotonic() > deadline:
                raise AssertionError(f"webhooks still pending after {timeout:.0f} s: {counters}")
            time.sleep(0.05)

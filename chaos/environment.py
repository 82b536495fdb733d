"""A run's environment: its folder, Redis, database, proxies, the service's settings and its processes.

Everything a run sets up before the first client call and takes down after the snapshot lives here, apart
from the phases that use it (`chaos/harness.py`). Each set-up step records what it created on the
`Environment`, and `stop` and `drop_database` undo exactly that, so a run that fails half-way still
leaves no process, proxy, queue or schema behind.

The service reaches the database, Redis and the providers through the lab's TCP proxies, so the nemesis
can put toxics on those links; the simulator reaches the service directly (its own faults cover that
direction). The lab's own reads (migrations, settling, the snapshot) go to the database directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import asyncpg
import redis as redis_client
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chaos.processes import ManagedProcess, overran_stops, provider_secrets, service_argv, stop_all
from chaos.proxy import Proxy
from chaos.scenario import Scenario
from service.db import migrate
from service.db.session import create_engine, create_sessionmaker
from service.embedded_redis import EmbeddedRedis, free_port
from service.settings import Settings, settings_as_env, validate

ROOT = Path(__file__).resolve().parents[1]


class LabError(RuntimeError):
    """The lab could not run the scenario (not a verdict about the service)."""


def project_commit(root: Path = ROOT) -> str:
    """The commit the run's code is at, `-dirty` if a tracked file differs from it. Untracked files (run
    folders, logs, caches) are not code that ran, so they do not count: a fresh clone's run is clean."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return "unknown"
    commit = out.stdout.strip() if out.returncode == 0 else ""
    if not commit:
        return "unknown"  # not a git checkout (an installed copy), or one without a commit yet
    return commit + ("-dirty" if dirty.stdout.strip() else "")


def _netloc(url: SplitResult, host: str, port: int) -> str:
    """The URL's user and password, at another host and port."""
    credentials = url.netloc.rpartition("@")[0]
    return f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"


def postgres_dsn(database_url: str) -> str:
    """A PostgreSQL URL as the service reads it, in the form asyncpg connects to."""
    return validate(Settings(database_url=database_url)).database_url.replace(
        "postgresql+asyncpg://", "postgresql://"
    )


@dataclass(frozen=True)
class RunFolder:
    """`runs/<time>-<scenario>-s<seed>-<suffix>/`: everything a verdict rests on, and `latest` beside it."""

    out_dir: Path
    run_id: str
    path: Path

    @classmethod
    def new(cls, out_dir: Path, scenario: str, seed: int) -> RunFolder:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        run_id = f"{stamp}-{scenario}-s{seed}-{uuid.uuid4().hex[:4]}"
        return cls(out_dir, run_id, (out_dir / run_id).resolve())

    def create(self) -> None:
        for sub in ("logs", "simulator", "database"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    def link_latest(self) -> None:
        latest = self.out_dir / "latest"
        with contextlib.suppress(OSError):
            if latest.is_symlink() or latest.exists():
                latest.unlink()
            latest.symlink_to(self.path.name)


@dataclass
class Services:
    """The run's processes: the fake providers, the API and the workers, and where to reach them."""

    api: ManagedProcess
    workers: list[ManagedProcess]
    simulator: ManagedProcess
    api_url: str
    simulator_url: str

    @property
    def all(self) -> list[ManagedProcess]:
        return [self.simulator, self.api, *self.workers]

    @property
    def service(self) -> list[ManagedProcess]:
        """The service's own processes (what the nemesis kills and the supervisor restarts)."""
        return [self.api, *self.workers]

    def start(self, ready_timeout: float = 60.0) -> None:
        for process in self.all:
            process.start()
        for process in self.all:
            process.wait_ready(ready_timeout)


def retry_horizon_s(scenario: Scenario) -> float:
    """How long the providers keep retrying a webhook: past the chaos phase and the whole settle bound
    (with a margin), as a real provider's hours or days outlast any restart; or only their compressed
    schedules, where the scenario wants to see them give up (`simulator.providers_give_up`)."""
    if scenario.simulator.providers_give_up:
        return 0.0
    return scenario.workload.duration_s + scenario.quiescence_s + 30.0


class Environment:
    """One run's infrastructure, set up step by step and taken down whatever step it reached."""

    def __init__(self, folder: RunFolder, scenario: Scenario, seed: int, database_url: str | None) -> None:
        self.folder = folder
        self.scenario = scenario
        self.seed = seed
        self.given_database_url = database_url  # None: a SQLite file in the run folder
        # This run's connections, and only this run's, carry this name (a fault that cuts "the service's
        # connections" must never touch another run's or another test's on a shared database).
        self.database_application_name = f"smslab-lab-{uuid.uuid4().hex[:12]}"
        self.redis: EmbeddedRedis | None = None  # the lab's own redis-server, if it runs one
        self.redis_url: str | None = None
        self.database_url: str | None = None  # as the lab reaches it (directly)
        self.schema: str | None = None  # PostgreSQL: the run's own schema
        self.proxies: dict[str, Proxy] = {}
        self.services: Services | None = None
        self._simulator_port = 0

    # --- set-up ------------------------------------------------------------------------------------
    def start_redis(self) -> str:
        """The lab's own redis-server, or the one SMSLAB_REDIS_URL names if the scenario never restarts
        Redis (the run then uses a queue of its own in it). Returns which, for run.json."""
        given = os.environ.get("SMSLAB_REDIS_URL")
        restarts = any(rule.action == "restart_redis" for rule in self.scenario.nemesis)
        if given and not restarts:
            self.redis_url = given
            return "given"
        self.redis = EmbeddedRedis(self.folder.path / "redis")
        self.redis_url = self.redis.start()
        return "embedded"

    async def create_database(self) -> str:
        """A SQLite file in the run folder, or a fresh schema in the given PostgreSQL. Returns the backend."""
        url = self.given_database_url
        if url is None:
            if self.scenario.backend == "postgresql":
                raise LabError(
                    f"scenario {self.scenario.name} needs PostgreSQL: give --database postgresql://..."
                )
            self.database_url = f"sqlite+aiosqlite:///{self.folder.path / 'service.db'}"
            return "sqlite"
        try:
            settings = validate(Settings(database_url=url))
        except ValueError as exc:
            raise LabError(str(exc)) from None
        if not settings.is_postgres:
            raise LabError(
                "--database takes a PostgreSQL URL (each run gets a fresh schema in it); "
                "without it a run uses a fresh SQLite file in its run folder"
            )
        schema = f"lab_{self.folder.run_id.replace('-', '_')}"[:60]
        plain = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
        try:
            connection = await asyncpg.connect(plain, timeout=5)
        except (OSError, asyncpg.PostgresError) as exc:
            raise LabError(f"cannot reach the database: {exc}") from None
        try:
            await connection.execute(f'CREATE SCHEMA "{schema}"')
        finally:
            await connection.close()
        self.database_url, self.schema = settings.database_url, schema
        return "postgresql"

    async def configure(self) -> Settings:
        """The proxies started, and the service's settings for this run (reaching everything through them)."""
        assert self.redis_url is not None
        assert self.database_url is not None
        database_url, schema, seed, proxies = self.database_url, self.schema, self.seed, self.proxies
        # Only what the nemesis puts a toxic on goes through a proxy: every byte through one is copied
        # twice in this process, and under load (everything the service says to PostgreSQL and Redis)
        # the proxies alone took a quarter of a core and put their latency on every round trip.
        wanted = self.scenario.proxied
        target = urlsplit(self.redis_url)
        if "redis" in wanted:
            proxies["redis"] = Proxy("redis", target.hostname or "127.0.0.1", target.port or 6379, seed)
        self._simulator_port = free_port()
        providers_port = self._simulator_port
        if "providers" in wanted:
            proxies["providers"] = Proxy("providers", "127.0.0.1", self._simulator_port, seed)
        service_db = database_url
        if schema is not None and "db" in wanted:
            url = make_url(database_url)
            proxies["db"] = Proxy("db", url.host or "127.0.0.1", url.port or 5432, seed)
        for proxy in proxies.values():
            await proxy.start()
        if "providers" in proxies:
            providers_port = proxies["providers"].port
        if "db" in proxies:
            service_db = (
                make_url(database_url)
                .set(host="127.0.0.1", port=proxies["db"].port)
                .render_as_string(hide_password=False)
            )
        redis_url = self.redis_url
        if "redis" in proxies:
            redis_url = urlunsplit(
                target._replace(netloc=_netloc(target, "127.0.0.1", proxies["redis"].port))
            )
        services = self.scenario.services
        unsafe = bool(services.safeguards_off or services.worker_failpoints or services.api_failpoints)
        return validate(
            Settings(
                var_dir=self.folder.path / "var",
                database_url=service_db,
                database_schema=schema,
                database_application_name=self.database_application_name,
                redis_url=redis_url,
                queue_name=f"lab-{self.folder.run_id}",
                mitto_base_url=f"http://127.0.0.1:{providers_port}/mitto",
                stripe_api_base=f"http://127.0.0.1:{providers_port}/stripe",
                mitto_timeout_seconds=services.mitto_timeout_s,
                batch_size=services.batch_size,
                send_lease_seconds=services.lease_s,
                reconcile_interval_seconds=services.reconcile_interval_s,
                unresolved_send_policy=services.unresolved_policy,
                unresolved_give_up_seconds=services.unresolved_give_up_s,
                env="lab",
                metrics_dir=self.folder.path / "metrics",
                rate_limits=services.rate_limits,
                log_format="json",
                log_sql=services.log_sql,
                lab_allow_unsafe=unsafe,
                safeguards_off=frozenset(services.safeguards_off),
                failpoint_seed=seed,
                api_max_in_flight=services.api_max_in_flight,
                api_admission_wait_seconds=services.api_admission_wait_s,
            )
        )

    def direct(self, settings: Settings) -> Settings:
        """The same settings, reaching the database directly (migrations, the lab's own reads)."""
        assert self.database_url is not None
        return settings.with_overrides(database_url=self.database_url)

    async def migrate(self, settings: Settings) -> None:
        await migrate.upgrade_async(self.direct(settings))

    @contextlib.asynccontextmanager
    async def lab_sessions(self, settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
        """Sessions on the database for the lab's own reads, on a connection named as the nemesis spares."""
        engine = create_engine(self.direct(settings), "harness", pool_size=1)
        try:
            yield create_sessionmaker(engine)
        finally:
            await engine.dispose()

    def processes(self, settings: Settings) -> Services:
        """The simulator, the API and the workers, configured for this run (not started)."""
        scenario = self.scenario
        logs = self.folder.path / "logs"
        env = settings_as_env(settings)
        api_port = free_port()
        simulator = ManagedProcess(
            "simulator",
            [
                sys.executable,
                "-m",
                "simulator",
                "--port",
                str(self._simulator_port),
                "--data-dir",
                str(self.folder.path / "simulator"),
                "--seed",
                str(self.seed),
                "--target",
                f"http://127.0.0.1:{api_port}",
                "--dlr-delay-ms",
                str(scenario.simulator.dlr_delay_ms),
                "--dlr-final",
                scenario.simulator.dlr_final,
                "--retry-horizon",
                str(retry_horizon_s(scenario)),
            ],
            logs / "simulator.log",
            provider_secrets(settings),
            ready_url=f"http://127.0.0.1:{self._simulator_port}/control/health",
            cwd=ROOT,
        )
        api = ManagedProcess(
            "api",
            service_argv("api", "--port", str(api_port), "--workers", str(scenario.services.api_workers)),
            logs / "api.log",
            {**env, "SMSLAB_FAILPOINTS": scenario.services.api_failpoints},
            ready_url=f"http://127.0.0.1:{api_port}/health",
            cwd=ROOT,
        )
        workers = [
            ManagedProcess(
                f"worker-{i}",
                service_argv("worker", "--concurrency", str(scenario.services.worker_concurrency)),
                logs / f"worker-{i}.log",
                {**env, "SMSLAB_FAILPOINTS": scenario.services.worker_failpoints},
                cwd=ROOT,
            )
            for i in range(scenario.services.workers)
        ]
        self.services = Services(
            api,
            workers,
            simulator,
            api_url=f"http://127.0.0.1:{api_port}",
            simulator_url=f"http://127.0.0.1:{self._simulator_port}",
        )
        return self.services

    def describe(self, settings: Settings) -> dict[str, Any]:
        """For run.json: the lab's own secrets (I8 looks for them in the logs), and the database used."""
        assert self.database_url is not None
        return {
            "secrets": [
                settings.mitto_api_key,
                settings.mitto_dlr_token,
                settings.shopify_api_secret,
                settings.stripe_secret_key,
                *settings.stripe_webhook_secret,
            ],
            "database": make_url(self.database_url).render_as_string(hide_password=True),
            "database_schema": self.schema,
        }

    # --- teardown ----------------------------------------------------------------------------------
    def stops_overran(self) -> dict[str, int]:
        """Service and simulator processes that had to be killed at a stop (heal's or the last)."""
        return overran_stops(self.services.all) if self.services is not None else {}

    async def stop(self) -> None:
        """Every process, every proxy, and the run's Redis (or its queue in a given one)."""
        if self.services is not None:
            await asyncio.to_thread(stop_all, self.services.all)
        for proxy in self.proxies.values():
            await proxy.stop()
        if self.redis is not None:
            self.redis.stop()
        elif self.redis_url is not None:
            await asyncio.to_thread(self._forget_queue, self.redis_url)

    def _forget_queue(self, redis_url: str) -> None:
        """In a Redis the run shares with others, remove what its queue left behind."""
        client = redis_client.Redis.from_url(redis_url)
        try:
            keys = list(client.scan_iter(match=f"saq:*lab-{self.folder.run_id}*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        except redis_client.RedisError:
            pass  # leftovers expire or are harmless; the verdict does not depend on them
        finally:
            client.close()

    async def drop_database(self) -> None:
        """The run's PostgreSQL schema, if it made one (the run folder keeps the snapshot)."""
        if self.schema is None:
            return
        assert self.given_database_url is not None
        connection = await asyncpg.connect(postgres_dsn(self.given_database_url))
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await connection.close()

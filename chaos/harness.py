"""`smslab run`: one scenario, end to end, as real processes under faults, then the verdict.

Phases: prepare (run folder, Redis, database, proxies, migrations) -> start (simulator, API, workers) ->
world (shops, contacts, customers, credits, through the providers) -> chaos (clients and nemesis
together, for the scenario's duration) -> heal (faults cleared, every service process restarted
without failpoints) -> settle (wait, up to the scenario's bound, until nothing is in flight) -> check
(database saved into the run folder, every invariant checked from the folder alone).

The service reaches the database, Redis and the providers through the lab's TCP proxies, so the nemesis
can put toxics on those links; the simulator reaches the service directly (its own faults cover that
direction).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import asyncpg
import httpx
import redis as redis_client
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from chaos.checker.run import MANIFEST, check_run
from chaos.checker.snapshot_io import save_snapshot
from chaos.history import History
from chaos.nemesis import Nemesis, NemesisEvent, plan, save_plan
from chaos.processes import ManagedProcess, ProcessFailed, smslab_argv, stop_all
from chaos.proxy import Proxy, Toxic
from chaos.scenario import Scenario
from chaos.workload import Workload
from service.db import migrate
from service.db.models import (
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    PendingDeliveryReport,
    RecipientStatus,
)
from service.db.session import create_engine, create_sessionmaker
from service.embedded_redis import EmbeddedRedis, free_port
from service.settings import Settings, settings_as_env, validate

ROOT = Path(__file__).resolve().parents[1]


def _netloc(url: SplitResult, host: str, port: int) -> str:
    """The URL's user and password, at another host and port."""
    credentials = url.netloc.rpartition("@")[0]
    return f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"


class LabError(RuntimeError):
    """The lab could not run the scenario (not a verdict about the service)."""


@dataclass
class RunOptions:
    scenario: Scenario
    seed: int
    out_dir: Path
    database_url: str | None = None  # None: a SQLite file in the run folder
    plan: list[NemesisEvent] | None = None  # a replay's plan
    on_progress: Callable[[dict[str, Any]], None] | None = None
    keep_database: bool = False  # keep the PostgreSQL schema (the run folder has the snapshot anyway)


@dataclass
class _Services:
    api: ManagedProcess
    workers: list[ManagedProcess]
    simulator: ManagedProcess

    @property
    def all(self) -> list[ManagedProcess]:
        return [self.simulator, self.api, *self.workers]


def project_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=False
        )
    except OSError:
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    return commit + ("-dirty" if dirty.stdout.strip() else "")


@dataclass
class LabRun:
    options: RunOptions
    run_dir: Path = field(init=False)
    progress: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        scenario = self.options.scenario
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        self.run_id = f"{stamp}-{scenario.name}-s{self.options.seed}-{uuid.uuid4().hex[:4]}"
        self.run_dir = (self.options.out_dir / self.run_id).resolve()
        self.progress = {"phase": "prepare", "run": self.run_id, "faults": 0, "ops": {}, "campaigns": 0}
        self.phase_seconds: dict[str, float] = {}
        self._phase_started = time.monotonic()
        self._timed_phase = "prepare"
        self._held_down: set[str] = set()  # processes the nemesis killed and will restart itself
        # This run's connections, and only this run's, carry this name (a fault that cuts "the service's
        # connections" must never touch another run's or another test's on a shared database).
        self.database_application_name = f"smslab-lab-{uuid.uuid4().hex[:12]}"

    def _phase(self, phase: str, **extra: Any) -> None:
        self._time_phase(phase)
        self.progress.update(phase=phase, **extra)
        if self.options.on_progress:
            self.options.on_progress(dict(self.progress))

    def _time_phase(self, phase: str) -> None:
        """How long each phase took goes to run.json: where a slow run spent its time."""
        if phase != self._timed_phase:
            now = time.monotonic()
            self.phase_seconds[self._timed_phase] = round(now - self._phase_started, 2)
            self._timed_phase, self._phase_started = phase, now

    # --- the run ---------------------------------------------------------------------------------
    async def execute(self) -> dict[str, Any]:
        scenario, seed = self.options.scenario, self.options.seed
        for sub in ("logs", "simulator", "database"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        if scenario.seed != seed:
            scenario = scenario.with_seed(seed)
        header = (
            f"# scenario {scenario.name} as run: seed {seed}, commit {project_commit()}, "
            f"{datetime.now(UTC).isoformat()}\n# `smslab replay` on this run folder runs it again.\n"
        )
        (self.run_dir / "scenario.toml").write_text(header + scenario.as_toml())
        events = self.options.plan if self.options.plan is not None else plan(scenario, seed)
        save_plan(events, self.run_dir / "nemesis.plan.json")
        manifest: dict[str, Any] = {
            "run_id": self.run_id,
            "scenario": scenario.name,
            "seed": seed,
            "commit": project_commit(),
            "started_at": datetime.now(UTC).isoformat(),
            "replayed_plan": self.options.plan is not None,
            "safeguards_off": list(scenario.services.safeguards_off),
        }
        redis, redis_url = self._redis(manifest)
        proxies: dict[str, Proxy] = {}
        services: _Services | None = None
        schema: str | None = None
        try:
            database_url, schema = await self._database(manifest)
            settings = await self._settings(database_url, schema, redis_url, proxies, seed)
            await migrate.upgrade_async(self._direct(settings, database_url))
            services = self._services(settings)
            self._phase("start")
            for process in services.all:
                process.start()
            for process in services.all:
                process.wait_ready(60)
            history = History(self.run_dir / "history.jsonl")
            workload = Workload(
                scenario, settings, self._api_url(services), self._simulator_url(services), history
            )
            self._phase("world")
            await workload.setup()
            manifest["phones"] = sorted(
                {p for shop in workload.world for p in shop.phones}
                | {c.phone for shop in workload.world for c in shop.customers}
            )
            verdict_inputs = await self._chaos(
                scenario, seed, events, services, proxies, redis, workload, history
            )
            manifest.update(verdict_inputs)
            self._phase("heal")
            await self._heal(services, proxies, redis)
            self._phase("settle")
            manifest["quiescence"] = await self._settle(settings, database_url, services)
            self._phase("snapshot")
            engine = create_engine(self._direct(settings, database_url), "harness", pool_size=1)
            try:
                async with create_sessionmaker(engine)() as session:
                    await save_snapshot(session, self.run_dir / "database")
            finally:
                await engine.dispose()
            history.close()
            manifest["secrets"] = [
                settings.mitto_api_key,
                settings.mitto_dlr_token,
                settings.shopify_api_secret,
                settings.stripe_secret_key,
                *settings.stripe_webhook_secret,
            ]
            manifest["database"] = make_url(database_url).render_as_string(hide_password=True)
            manifest["database_schema"] = schema
        finally:
            self._time_phase("stop")
            if services is not None:
                await asyncio.to_thread(stop_all, services.all)
            for proxy in proxies.values():
                await proxy.stop()
            if redis is not None:
                redis.stop()
            else:
                await asyncio.to_thread(self._forget_queue, redis_url)
            manifest["finished_at"] = datetime.now(UTC).isoformat()
            self._time_phase("check")
            manifest["phase_seconds"] = dict(self.phase_seconds)
            (self.run_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
            self._link_latest()
            if schema is not None and not self.options.keep_database:
                await self._drop_schema(schema)
        self._phase("check")
        verdict = check_run(self.run_dir)
        self._phase("done", valid=verdict["valid"])
        return verdict

    def _forget_queue(self, redis_url: str) -> None:
        """In a Redis the run shares with others, remove what its queue left behind."""
        client = redis_client.Redis.from_url(redis_url)
        try:
            keys = list(client.scan_iter(match=f"saq:*lab-{self.run_id}*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        except redis_client.RedisError:
            pass  # leftovers expire or are harmless; the verdict does not depend on them
        finally:
            client.close()

    def _link_latest(self) -> None:
        latest = self.options.out_dir / "latest"
        with contextlib.suppress(OSError):
            if latest.is_symlink() or latest.exists():
                latest.unlink()
            latest.symlink_to(self.run_dir.name)

    # --- infrastructure --------------------------------------------------------------------------
    def _redis(self, manifest: dict[str, Any]) -> tuple[EmbeddedRedis | None, str]:
        """The lab's own redis-server, or the one SMSLAB_REDIS_URL names if the scenario never restarts
        Redis (the run then uses a queue of its own in it)."""
        given = os.environ.get("SMSLAB_REDIS_URL")
        restarts = any(rule.action == "restart_redis" for rule in self.options.scenario.nemesis)
        if given and not restarts:
            manifest["redis"] = "given"
            return None, given
        manifest["redis"] = "embedded"
        redis = EmbeddedRedis(self.run_dir / "redis")
        return redis, redis.start()

    async def _database(self, manifest: dict[str, Any]) -> tuple[str, str | None]:
        url = self.options.database_url
        if url is None:
            if self.options.scenario.backend == "postgresql":
                raise LabError(
                    f"scenario {self.options.scenario.name} needs PostgreSQL: give --database postgresql://..."
                )
            manifest["backend"] = "sqlite"
            return f"sqlite+aiosqlite:///{self.run_dir / 'service.db'}", None
        try:
            settings = validate(Settings(database_url=url))
        except ValueError as exc:
            raise LabError(str(exc)) from None
        if not settings.is_postgres:
            raise LabError(
                "--database takes a PostgreSQL URL (each run gets a fresh schema in it); "
                "without it a run uses a fresh SQLite file in its run folder"
            )
        schema = f"lab_{self.run_id.replace('-', '_')}"[:60]
        plain = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
        try:
            connection = await asyncpg.connect(plain, timeout=5)
        except (OSError, asyncpg.PostgresError) as exc:
            raise LabError(f"cannot reach the database: {exc}") from None
        try:
            await connection.execute(f'CREATE SCHEMA "{schema}"')
        finally:
            await connection.close()
        manifest["backend"] = "postgresql"
        return settings.database_url, schema

    def _direct(self, settings: Settings, database_url: str) -> Settings:
        """The same settings, reaching the database directly (migrations, the harness's own reads)."""
        return settings.with_overrides(database_url=database_url)

    async def _settings(
        self, database_url: str, schema: str | None, redis_url: str, proxies: dict[str, Proxy], seed: int
    ) -> Settings:
        scenario = self.options.scenario
        target = urlsplit(redis_url)
        proxies["redis"] = Proxy("redis", target.hostname or "127.0.0.1", target.port or 6379, seed)
        self._simulator_port = free_port()
        proxies["providers"] = Proxy("providers", "127.0.0.1", self._simulator_port, seed)
        service_db = database_url
        if schema is not None:
            url = make_url(database_url)
            proxies["db"] = Proxy("db", url.host or "127.0.0.1", url.port or 5432, seed)
        for proxy in proxies.values():
            await proxy.start()
        if "db" in proxies:
            service_db = (
                make_url(database_url)
                .set(host="127.0.0.1", port=proxies["db"].port)
                .render_as_string(hide_password=False)
            )
        services = scenario.services
        unsafe = bool(services.safeguards_off or services.worker_failpoints or services.api_failpoints)
        return validate(
            Settings(
                var_dir=self.run_dir / "var",
                database_url=service_db,
                database_schema=schema,
                database_application_name=self.database_application_name,
                redis_url=urlunsplit(
                    target._replace(netloc=_netloc(target, "127.0.0.1", proxies["redis"].port))
                ),
                queue_name=f"lab-{self.run_id}",
                mitto_base_url=f"http://127.0.0.1:{proxies['providers'].port}/mitto",
                stripe_api_base=f"http://127.0.0.1:{proxies['providers'].port}/stripe",
                mitto_timeout_seconds=services.mitto_timeout_s,
                batch_size=services.batch_size,
                send_lease_seconds=services.lease_s,
                reconcile_interval_seconds=services.reconcile_interval_s,
                unresolved_send_policy=services.unresolved_policy,
                unresolved_give_up_seconds=services.unresolved_give_up_s,
                log_format="json",
                log_sql=services.log_sql,
                lab_allow_unsafe=unsafe,
                safeguards_off=frozenset(services.safeguards_off),
                failpoint_seed=seed,
            )
        )

    def _services(self, settings: Settings) -> _Services:
        scenario = self.options.scenario
        logs = self.run_dir / "logs"
        env = settings_as_env(settings)
        api_port = free_port()
        self._api_port = api_port
        simulator = ManagedProcess(
            "simulator",
            [
                sys.executable,
                "-m",
                "simulator",
                "--port",
                str(self._simulator_port),
                "--data-dir",
                str(self.run_dir / "simulator"),
                "--seed",
                str(self.options.seed),
                "--target",
                f"http://127.0.0.1:{api_port}",
                "--dlr-delay-ms",
                str(scenario.simulator.dlr_delay_ms),
                "--dlr-final",
                scenario.simulator.dlr_final,
                "--stripe-webhook-secret",
                settings.stripe_webhook_secret[0],
            ],
            logs / "simulator.log",
            {"SMSLAB_MITTO_DLR_TOKEN": settings.mitto_dlr_token},
            ready_url=f"http://127.0.0.1:{self._simulator_port}/control/health",
            cwd=ROOT,
        )
        api = ManagedProcess(
            "api",
            smslab_argv("api", "--port", str(api_port), "--workers", str(scenario.services.api_workers)),
            logs / "api.log",
            {**env, "SMSLAB_FAILPOINTS": scenario.services.api_failpoints},
            ready_url=f"http://127.0.0.1:{api_port}/health",
            cwd=ROOT,
        )
        workers = [
            ManagedProcess(
                f"worker-{i}",
                smslab_argv("worker", "--concurrency", str(scenario.services.worker_concurrency)),
                logs / f"worker-{i}.log",
                {**env, "SMSLAB_FAILPOINTS": scenario.services.worker_failpoints},
                cwd=ROOT,
            )
            for i in range(scenario.services.workers)
        ]
        return _Services(api, workers, simulator)

    def _api_url(self, services: _Services) -> str:
        return f"http://127.0.0.1:{self._api_port}"

    def _simulator_url(self, services: _Services) -> str:
        return f"http://127.0.0.1:{self._simulator_port}"

    # --- chaos ------------------------------------------------------------------------------------
    async def _chaos(
        self,
        scenario: Scenario,
        seed: int,
        events: list[NemesisEvent],
        services: _Services,
        proxies: dict[str, Proxy],
        redis: EmbeddedRedis | None,
        workload: Workload,
        history: History,
    ) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self._simulator_url(services), timeout=10) as sim:
            if scenario.simulator.faults:
                (await sim.post("/control/faults", json=list(scenario.simulator.faults))).raise_for_status()
        nemesis = Nemesis(events, self._actions(services, proxies, redis), self.run_dir / "nemesis.jsonl")
        stop = asyncio.Event()
        started = time.monotonic()
        deadline = started + scenario.workload.duration_s
        self._phase("chaos", duration_s=scenario.workload.duration_s)
        nemesis_task = asyncio.create_task(nemesis.run(started, stop))
        reporter = asyncio.create_task(self._report_chaos(started, nemesis, workload, history))
        supervisor = asyncio.create_task(self._supervise(services, nemesis, started))
        try:
            await workload.run(deadline, seed)
        finally:
            stop.set()
            await nemesis_task
            reporter.cancel()
            supervisor.cancel()
            await asyncio.gather(reporter, supervisor, return_exceptions=True)
            nemesis.close()
        return {"faults_injected": nemesis.injected, "operations": dict(history.counts)}

    async def _supervise(self, services: _Services, nemesis: Nemesis, started: float) -> None:
        """Restart a service process that died on its own (a failpoint's SIGKILL), as systemd would.

        A process the nemesis killed is left down for the plan's hold time; the nemesis restarts it.
        """
        while True:
            for process in [services.api, *services.workers]:
                if process.alive or process.name in self._held_down:
                    continue
                code = process.returncode
                process.start()
                nemesis.record(
                    started, "crash", process.name, f"exited {code}; restarted as pid {process.pid}"
                )
            await asyncio.sleep(0.25)

    async def _report_chaos(
        self, started: float, nemesis: Nemesis, workload: Workload, history: History
    ) -> None:
        while True:
            self._phase(
                "chaos",
                elapsed_s=round(time.monotonic() - started, 1),
                faults=nemesis.injected,
                ops=dict(history.counts),
                campaigns=workload.campaigns_enqueued,
            )
            await asyncio.sleep(0.5)

    def _actions(
        self, services: _Services, proxies: dict[str, Proxy], redis: EmbeddedRedis | None
    ) -> dict[str, tuple[Any, Any]]:
        workers = {p.name: p for p in services.workers}

        async def kill(event: NemesisEvent) -> str:
            process = services.api if event.target == "api" else workers[event.target]
            self._held_down.add(process.name)
            pid = process.pid
            process.kill()
            return f"SIGKILL pid {pid}"

        async def restart(event: NemesisEvent) -> str:
            process = services.api if event.target == "api" else workers[event.target]
            self._held_down.discard(process.name)
            if process.alive:
                return f"already restarted as pid {process.pid}"
            process.start()
            await asyncio.to_thread(process.wait_ready, 60)
            return f"restarted as pid {process.pid}"

        async def kill_redis(event: NemesisEvent) -> str:
            assert redis is not None  # a scenario that restarts Redis always gets the lab's own
            redis.kill()
            return "SIGKILL redis-server: every queued job lost"

        async def start_redis(event: NemesisEvent) -> str:
            assert redis is not None
            await asyncio.to_thread(redis.start)
            return f"redis-server up again on port {redis.port}, empty"

        async def cut(event: NemesisEvent) -> str:
            return await self._terminate_backends()

        async def add_toxic(event: NemesisEvent) -> str:
            toxic = Toxic.parse(event.params["toxic"])
            proxies[event.target].add(toxic)
            return f"{toxic.type} on {event.target} ({toxic.stream})"

        async def remove_toxic(event: NemesisEvent) -> str:
            proxies[event.target].remove(Toxic.parse(event.params["toxic"]).name)
            return "removed"

        return {
            "kill_worker": (kill, restart),
            "kill_api": (kill, restart),
            "restart_redis": (kill_redis, start_redis),
            "cut_db_connections": (cut, None),
            "toxic": (add_toxic, remove_toxic),
        }

    async def _drop_schema(self, schema: str) -> None:
        assert self.options.database_url is not None
        plain = validate(Settings(database_url=self.options.database_url)).database_url
        connection = await asyncpg.connect(plain.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()

    async def _terminate_backends(self) -> str:
        url = self.options.database_url
        if url is None:
            return "skipped: not PostgreSQL"
        plain = validate(Settings(database_url=url)).database_url.replace(
            "postgresql+asyncpg://", "postgresql://"
        )
        name = self.database_application_name
        connection = await asyncpg.connect(plain, server_settings={"application_name": f"{name}-nemesis"})
        try:
            # The service processes of this run only: not the harness's own reads, not anyone else's.
            count = await connection.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND starts_with(application_name, $1) "
                "AND application_name <> ALL($2::text[]) AND pid <> pg_backend_pid()",
                f"{name}-",
                [f"{name}-harness", f"{name}-nemesis"],
            )
        finally:
            await connection.close()
        return f"terminated {count} service connections"

    # --- heal and settle -------------------------------------------------------------------------
    async def _heal(
        self, services: _Services, proxies: dict[str, Proxy], redis: EmbeddedRedis | None
    ) -> None:
        for proxy in proxies.values():
            proxy.clear()
            proxy.enable()
        if redis is not None and (redis.process is None or redis.process.poll() is not None):
            await asyncio.to_thread(redis.start)
        async with httpx.AsyncClient(base_url=self._simulator_url(services), timeout=10) as sim:
            (await sim.delete("/control/faults")).raise_for_status()
        # The service keeps its configuration (safeguards switched off stay off), but no process is
        # left with a failpoint that would stop it from healing.
        service_processes = [services.api, *services.workers]
        await asyncio.to_thread(stop_all, service_processes, 8.0)
        for process in service_processes:
            process.env = {**process.env, "SMSLAB_FAILPOINTS": ""}
            process.start()
        for process in [services.api, *services.workers]:
            await asyncio.to_thread(process.wait_ready, 60)

    async def _settle(self, settings: Settings, database_url: str, services: _Services) -> dict[str, Any]:
        bound = self.options.scenario.quiescence_s
        started = time.monotonic()
        engine = create_engine(self._direct(settings, database_url), "harness", pool_size=1)
        try:
            sessions = create_sessionmaker(engine)
            async with httpx.AsyncClient(base_url=self._simulator_url(services), timeout=5) as sim:
                while True:
                    async with sessions() as session, session.begin():
                        sending = await session.scalar(
                            select(func.count())
                            .select_from(Campaign)
                            .where(Campaign.status == CampaignStatus.SENDING)
                        )
                        unsettled = await session.scalar(
                            select(func.count())
                            .select_from(CampaignRecipient)
                            .where(
                                CampaignRecipient.status.in_(
                                    [RecipientStatus.PENDING, RecipientStatus.SENDING]
                                )
                            )
                        )
                        # Reports kept because they came before their message id was recorded, whose
                        # id is recorded now: they must be applied before the run counts as settled.
                        # (A report for an id never recorded, e.g. a double send's, waits forever.)
                        parked = await session.scalar(
                            select(func.count())
                            .select_from(PendingDeliveryReport)
                            .join(
                                CampaignRecipient,
                                CampaignRecipient.provider_message_id
                                == PendingDeliveryReport.provider_message_id,
                            )
                        )
                    pending = (await sim.get("/control/deliveries")).json()["pending"]
                    elapsed = time.monotonic() - started
                    self._phase(
                        "settle", elapsed_s=round(elapsed, 1), unsettled=unsettled, deliveries=pending
                    )
                    if not sending and not unsettled and not pending and not parked:
                        return {"reached": True, "settled_after_s": round(elapsed, 2), "bound_s": bound}
                    if elapsed > bound:
                        return {
                            "reached": False,
                            "settled_after_s": -1,
                            "bound_s": bound,
                            "still_sending_campaigns": sending,
                            "still_unsettled_recipients": unsettled,
                            "deliveries_pending": pending,
                            "delivery_reports_parked": parked,
                        }
                    for process in [services.api, *services.workers]:
                        if not process.alive:
                            process.start()  # a process that died while settling is restarted
                    await asyncio.sleep(0.5)
        finally:
            await engine.dispose()


def run_scenario(options: RunOptions) -> tuple[Path, dict[str, Any]]:
    lab = LabRun(options)
    try:
        verdict = asyncio.run(lab.execute())
    except ProcessFailed as exc:
        raise LabError(f"a lab process failed to start: {exc}") from None
    return lab.run_dir, verdict

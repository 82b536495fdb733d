"""`smslab run`: one scenario, end to end, as real processes under faults, then the verdict.

This module is the order of the phases and what each hands the next; the phases' work is elsewhere:
prepare (run folder, Redis, database, proxies, migrations: `chaos/environment.py`) -> start (simulator,
API, workers) -> world (shops, contacts, customers, credits, through the providers: `chaos/workload.py`)
-> chaos (clients and nemesis together, for the scenario's duration: `chaos/nemesis.py` and
`chaos/nemesis_actions.py`) -> heal and settle (faults cleared, every service process that carried
failpoints restarted without them, then a wait, up to the scenario's bound, until nothing is in
flight: `chaos/settle.py`) -> snapshot -> stop -> check (database saved into the run folder, every
invariant checked from the folder alone: `chaos/checker/`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from chaos.checker.coverage import COUNTERS, FAULT_RULES
from chaos.checker.run import MANIFEST, check_run
from chaos.checker.snapshot_io import save_snapshot
from chaos.environment import Environment, LabError, RunFolder, Services, project_commit
from chaos.history import History
from chaos.metrics_scrape import MetricsScraper
from chaos.nemesis import Nemesis, NemesisEvent, plan, save_plan
from chaos.nemesis_actions import NemesisActions
from chaos.processes import ProcessFailed
from chaos.scenario import Scenario
from chaos.settle import heal, settle
from chaos.workload import Workload
from service import safeguards
from service.rate_limits import parse_limits
from service.settings import Settings

__all__ = ["LabError", "LabRun", "RunOptions", "project_commit", "run_scenario"]


@dataclass
class RunOptions:
    scenario: Scenario
    seed: int
    out_dir: Path
    database_url: str | None = None  # None: a SQLite file in the run folder
    plan: list[NemesisEvent] | None = None  # a replay's plan
    on_progress: Callable[[dict[str, Any]], None] | None = None
    keep_database: bool = False  # keep the PostgreSQL schema (the run folder has the snapshot anyway)


def isolation(scenario: Scenario, settings: Settings) -> dict[str, Any]:
    """What I9 judges by: the scenario's latency bound, its noisy tenant, the service's limits (the
    budget is the budget whether or not the safeguard enforces it) and whether they were enforced."""
    return {
        "latency_bound_s": scenario.latency_bound_s,
        "noisy_clients": scenario.workload.noisy.clients,
        "rate_limits": {name: limit.as_dict() for name, limit in parse_limits(settings.rate_limits).items()},
        "limits_on": safeguards.is_on(settings, safeguards.TENANT_RATE_LIMITS),
    }


@dataclass
class LabRun:
    options: RunOptions
    run_dir: Path = field(init=False)
    progress: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        options = self.options
        self.folder = RunFolder.new(options.out_dir, options.scenario.name, options.seed)
        self.run_id, self.run_dir = self.folder.run_id, self.folder.path
        self.environment = Environment(self.folder, options.scenario, options.seed, options.database_url)
        self.progress = {"phase": "prepare", "run": self.run_id, "faults": 0, "ops": {}, "campaigns": 0}
        self.phase_seconds: dict[str, float] = {}
        self._phase_started = time.monotonic()
        self._timed_phase = "prepare"

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
        scenario, events, manifest = self._prepare()
        env = self.environment
        manifest["redis"] = env.start_redis()
        try:
            manifest["backend"] = await env.create_database()
            settings = await env.configure()
            manifest["isolation"] = isolation(scenario, settings)
            await env.migrate(settings)
            services = env.processes(settings)
            self._phase("start")
            services.start()
            scraper = MetricsScraper(services.api_url, self.run_dir)
            scraper.start()
            history = History(self.run_dir / "history.jsonl")
            workload = Workload(scenario, settings, services.api_url, services.simulator_url, history)
            self._phase("world")
            await workload.setup()
            manifest["phones"] = workload.phones()
            manifest["names"] = workload.names()
            manifest.update(self._after_world(workload, services, settings))
            manifest.update(await self._chaos(scenario, events, services, workload, history))
            self._phase("heal")
            await heal(services, env.proxies, env.redis)
            self._phase("settle")
            manifest["quiescence"] = await self._settle(scenario, settings, services)
            await scraper.stop()
            manifest["metrics_scrapes"] = scraper.scrapes
            self._phase("snapshot")
            async with env.lab_sessions(settings) as sessions, sessions() as session:
                await save_snapshot(session, self.run_dir / "database")
            history.close()
            manifest.update(env.describe(settings))
        finally:
            await self._stop(manifest)
        self._phase("check")
        verdict = check_run(self.run_dir)
        self._phase("done", valid=verdict["valid"])
        return verdict

    def _after_world(self, workload: Workload, services: Services, settings: Settings) -> dict[str, Any]:
        """What the run adds to run.json once the world is set up (`smslab load`: its world file)."""
        return {}

    def _prepare(self) -> tuple[Scenario, list[NemesisEvent], dict[str, Any]]:
        """The run folder with the scenario as run and its fault plan; the start of run.json."""
        scenario, seed = self.options.scenario, self.options.seed
        self.folder.create()
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
        return scenario, events, manifest

    async def _chaos(
        self,
        scenario: Scenario,
        events: list[NemesisEvent],
        services: Services,
        workload: Workload,
        history: History,
    ) -> dict[str, Any]:
        """The workload, the nemesis and the supervisor together, for the workload's duration."""
        async with httpx.AsyncClient(base_url=services.simulator_url, timeout=10) as sim:
            if scenario.simulator.faults:
                (await sim.post("/control/faults", json=list(scenario.simulator.faults))).raise_for_status()
        env = self.environment
        actions = NemesisActions(
            services, env.proxies, env.redis, env.given_database_url, env.database_application_name
        )
        nemesis = Nemesis(events, actions.table(), self.run_dir / "nemesis.jsonl")
        stop = asyncio.Event()
        started = time.monotonic()
        deadline = started + scenario.workload.duration_s
        self._phase("chaos", duration_s=scenario.workload.duration_s)
        nemesis_task = asyncio.create_task(nemesis.run(started, stop))
        reporter = asyncio.create_task(self._report_chaos(started, nemesis, workload, history))
        supervisor = asyncio.create_task(actions.supervise(nemesis, started))
        chaos_started_at = time.time()
        try:
            await self._drive(scenario, services, workload, history, deadline)
        finally:
            achieved = time.monotonic() - started
            stop.set()
            await nemesis_task
            reporter.cancel()
            supervisor.cancel()
            await asyncio.gather(reporter, supervisor, return_exceptions=True)
            nemesis.close()
        provider_faults = await self._save_fault_counts(services)
        return {
            "chaos": {
                "planned_s": scenario.workload.duration_s,
                "achieved_s": round(achieved, 2),
                "started_at": chaos_started_at,
            },
            "clock": {"history_started_at": history.started_at, "chaos_started_at": chaos_started_at},
            "faults_injected": {"nemesis": nemesis.injected, "provider": provider_faults},
            "operations": dict(history.counts),
        }

    async def _drive(
        self, scenario: Scenario, services: Services, workload: Workload, history: History, deadline: float
    ) -> None:
        """The workload itself: the lab's own clients until the deadline (`smslab load`: Locust)."""
        await workload.run(deadline, self.options.seed)

    def _chaos_figures(self, workload: Workload) -> dict[str, Any]:
        """What the progress line shows while the chaos runs, beside the time and the faults."""
        return {"campaigns": workload.campaigns_enqueued}

    async def _save_fault_counts(self, services: Services) -> int:
        """The simulator's fault rules with how often each fired, and the requests each endpoint saw, as
        they stand when the chaos ends (healing clears them): what the verdict's coverage is made of."""
        simulator_dir = self.run_dir / "simulator"
        async with httpx.AsyncClient(base_url=services.simulator_url, timeout=10) as sim:
            rules = (await sim.get("/control/faults")).json()["faults"]
            counters = (await sim.get("/control/counters")).json()
        (simulator_dir / FAULT_RULES).write_text(json.dumps(rules, indent=1))
        (simulator_dir / COUNTERS).write_text(json.dumps(counters, indent=1))
        return sum(int(rule.get("fired", 0)) for rule in rules)

    async def _report_chaos(
        self, started: float, nemesis: Nemesis, workload: Workload, history: History
    ) -> None:
        while True:
            self._phase(
                "chaos",
                elapsed_s=round(time.monotonic() - started, 1),
                faults=nemesis.injected,
                ops=dict(history.counts),
                **self._chaos_figures(workload),
            )
            await asyncio.sleep(0.5)

    async def _settle(self, scenario: Scenario, settings: Settings, services: Services) -> dict[str, Any]:
        async with self.environment.lab_sessions(settings) as sessions:
            return await settle(
                sessions, services, scenario.quiescence_s, lambda extra: self._phase("settle", **extra)
            )

    async def _stop(self, manifest: dict[str, Any]) -> None:
        """Everything the environment started stopped, run.json written, and the schema dropped."""
        self._time_phase("stop")
        await self.environment.stop()
        overran = self.environment.stops_overran()
        if overran:
            # a process that would not stop on SIGTERM: killed, its stacks written to its log first
            manifest["stops_overran"] = overran
        manifest["finished_at"] = datetime.now(UTC).isoformat()
        self._time_phase("check")
        manifest["phase_seconds"] = dict(self.phase_seconds)
        (self.run_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
        self.folder.link_latest()
        if not self.options.keep_database:
            await self.environment.drop_database()


def run_scenario(options: RunOptions, kind: type[LabRun] = LabRun) -> tuple[Path, dict[str, Any]]:
    lab = kind(options)
    try:
        verdict = asyncio.run(lab.execute())
    except ProcessFailed as exc:
        raise LabError(f"a lab process failed to start: {exc}") from None
    return lab.run_dir, verdict

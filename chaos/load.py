"""`smslab load`: a lab run whose workload is Locust, headless, as a process of its own.

Everything else is `smslab run`'s (`chaos/harness.py`): the processes, the world set up through the
providers, the nemesis from the seed, heal, settle, snapshot, check. Only the chaos phase's driver
changes: the harness writes the world (`world.json`: shops, their contacts and customers, paid
sessions, the lab's provider secrets), starts `locust -f loadtests/locustfile.py` with the scenario's
`[load]` table as its options, and waits for it while the nemesis runs; its progress line reads Locust's
own per-second figures (`load_stats_history.csv`). Afterwards each Locust process's history of API calls
(`load_history/locust-<pid>.jsonl`) is merged into `history.jsonl`, in time order with one index
sequence, so I6 and I9 judge a load run as any other; the gate (`chaos/load_gate.py`) is judged with the
invariants by `chaos.checker.run.check_run`, from `load_stats.csv` and the scenario as run.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from chaos.checker.load_run import HISTORY_DIR
from chaos.client import Client
from chaos.environment import ROOT, Services
from chaos.harness import LabRun, isolation
from chaos.history import History
from chaos.nemesis import NemesisEvent
from chaos.operations import CreateCampaign, Enqueue
from chaos.processes import ManagedProcess
from chaos.scenario import LoadPlan, Scenario, ScenarioError
from chaos.workload import NOISY_SHOP, Workload, valid_phones
from service.settings import Settings

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
STAGES_FILE = ROOT / "loadtests" / "stages.py"
WORLD = "world.json"
NOISY_USER = "NoisyTenantUser"
LOCUST_LOG = (
    "locust.log"  # the load generator's log: beside logs/, which holds the service's (I8 reads those)
)
GATE_FILE = "load_gate.json"
STATS_HISTORY = "load_stats_history.csv"
NOISY_PHONES = 100  # the noisy tenant's import: the same rows each time
STOP_TIMEOUT_S = 10  # Locust's `-s`: how long a user may finish its task once the time is up


def for_load(
    scenario: Scenario,
    users: int | None = None,
    spawn_rate: float | None = None,
    duration_s: float | None = None,
    processes: int | None = None,
) -> Scenario:
    """The scenario with the command line's overrides of its `[load]` table, and its chaos phase (the
    nemesis's timeline) as long as Locust runs."""
    changes: dict[str, Any] = {}
    if users is not None:
        changes["users"] = users
    if spawn_rate is not None:
        changes["spawn_rate"] = spawn_rate
    if processes is not None:
        changes["processes"] = processes
    if duration_s is not None:
        if scenario.load.stages:
            raise ScenarioError("--duration: the scenario's [load] has stages, whose durations decide it")
        changes["duration_s"] = duration_s
    if users is not None and scenario.load.stages:
        raise ScenarioError("--users: the scenario's [load] has stages, whose user counts decide it")
    changed = scenario.with_changes({"load": changes}) if changes else scenario
    return changed.with_changes({"workload": {"duration_s": changed.load.total_s}})


def world_document(
    workload: Workload, settings: Settings, api_url: str, simulator_url: str, noisy_phones: list[str]
) -> dict[str, Any]:
    """What the locustfile acts on: `world.json`. Holds the lab's provider secrets, as the lab's own
    clients do; never write one for a production service."""
    return {
        "api_url": api_url,
        "simulator_url": simulator_url,
        "credit_package": min(dict(settings.credit_packages)),
        "shops": [
            {
                "domain": shop.domain,
                "phones": shop.phones,
                "customers": [
                    {"id": c.id, "phone": c.phone, "email": c.email, "first_name": c.first_name}
                    for c in shop.customers
                ],
                "paid_sessions": [session for session, _amount in shop.paid_sessions],
            }
            for shop in workload.world
        ],
        "noisy": {"shop": NOISY_SHOP, "phones": noisy_phones},
        "secrets": {
            "shopify_api_key": settings.shopify_api_key,
            "shopify_api_secret": settings.shopify_api_secret,
            "mitto_dlr_token": settings.mitto_dlr_token,
            "stripe_webhook_secret": settings.stripe_webhook_secret[0],
        },
    }


def locust_argv(plan: LoadPlan, run_dir: Path, api_url: str) -> list[str]:
    """Locust headless, with the scenario's `[load]` as its options, writing into the run folder."""
    thresholds = plan.thresholds
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        f"{LOCUSTFILE},{STAGES_FILE}" if plan.stages else str(LOCUSTFILE),
        "--headless",
        "--host",
        api_url,
        "--csv",
        str(run_dir / "load"),
        "--csv-full-history",
        "--html",
        str(run_dir / "load_report.html"),
        "--json-file",
        str(run_dir / "load_stats"),
        "--exit-code-on-error",
        "1",
        "-s",
        str(STOP_TIMEOUT_S),
        "--world",
        str(run_dir / WORLD),
        "--history-dir",
        str(run_dir / HISTORY_DIR),
        "--weights",
        ",".join(f"{name}={weight:g}" for name, weight in plan.weights.items()),
        "--think",
        f"{plan.think_s[0]:g},{plan.think_s[1]:g}",
        "--max-failure-ratio",
        f"{thresholds.max_failure_ratio:g}",
        "--max-unreachable-ratio",
        f"{thresholds.max_unreachable_ratio:g}",
        "--max-shed-ratio",
        f"{thresholds.max_shed_ratio:g}",
        "--p95-ms",
        f"{thresholds.p95_ms:g}",
        "--p99-ms",
        f"{thresholds.p99_ms:g}",
        "--min-rps",
        f"{thresholds.min_rps:g}",
        "--gate-file",
        str(run_dir / GATE_FILE),
    ]
    if plan.stages:
        argv += ["--stages", json.dumps([asdict(stage) for stage in plan.stages])]
    else:
        argv += ["-u", str(plan.users), "-r", f"{plan.spawn_rate:g}", "-t", f"{plan.duration_s:g}s"]
    if plan.processes:
        argv += ["--processes", str(plan.processes)]
    return argv + list(plan.weights)


def merge_histories(directory: Path, into: Path, started_at: float, first_index: int = 0) -> Counter[str]:
    """Every Locust process's history, in time order, appended to `history.jsonl` with one index
    sequence (each completion's `op` renumbered with it) and `time` counted from the run's history
    start; returns the counts by `f:type`, as `History.counts`."""
    entries: list[tuple[float, int, int, dict[str, Any]]] = []
    for number, path in enumerate(sorted(directory.glob("locust-*.jsonl"))):
        for line_no, line in enumerate(path.read_text().splitlines()):
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut short by a killed process
            entries.append((float(entry["wall"]), number, line_no, entry))
    entries.sort(key=lambda item: item[:3])
    renumbered: dict[tuple[int, int], int] = {}
    counts: Counter[str] = Counter()
    with into.open("a") as out:
        for index, (wall, number, _line, entry) in enumerate(entries, start=first_index):
            renumbered[(number, int(entry["index"]))] = index
            merged: dict[str, Any] = {
                "index": index,
                "time": round(wall - started_at, 6),
                "process": entry["process"],
                "type": entry["type"],
                "f": entry["f"],
                "value": entry["value"],
            }
            if entry["type"] != "invoke":
                op = renumbered.get((number, int(entry.get("op", -1))))
                if op is None:
                    continue  # its invocation was lost: nothing to pair it with
                merged["op"] = op
                counts[f"{entry['f']}:{entry['type']}"] += 1
            out.write(json.dumps(merged) + "\n")
    return counts


def latest_figures(path: Path) -> dict[str, Any]:
    """Locust's latest aggregated second (`load_stats_history.csv`): users, requests/s, failures."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            tail = handle.read().decode(errors="replace").splitlines()
            handle.seek(0)
            header = handle.readline().decode().strip().split(",")
    except OSError:
        return {}
    for line in reversed(tail):
        cells = line.split(",")
        if len(cells) == len(header) and ",Aggregated," in f",{line},":
            row = dict(zip(header, cells, strict=True))
            try:
                return {
                    "users": int(float(row["User Count"])),
                    "rps": float(row["Requests/s"]),
                    "requests": int(float(row["Total Request Count"])),
                    "failures": int(float(row["Total Failure Count"])),
                }
            except (KeyError, ValueError):
                return {}
    return {}


class LoadRun(LabRun):
    """`smslab run`'s phases, with Locust driving the chaos phase."""

    locust: ManagedProcess | None = None
    locust_exit: int | None = None

    def _after_world(self, workload: Workload, services: Services, settings: Settings) -> dict[str, Any]:
        scenario = self.options.scenario
        w = scenario.workload
        noisy_phones = valid_phones(NOISY_PHONES, w.shops * (w.contacts_per_shop + w.customers_per_shop))
        document = world_document(workload, settings, services.api_url, services.simulator_url, noisy_phones)
        (self.run_dir / WORLD).write_text(json.dumps(document, indent=1))
        # I9 judges Locust's noisy tenant as the lab's own: a run whose NoisyTenantUser left nothing in
        # the history is unknown there, not "not exercised".
        judged = isolation(scenario, settings)
        judged["noisy_clients"] = int(NOISY_USER in scenario.load.weights)
        return {"phones": sorted({*workload.phones(), *noisy_phones}), "isolation": judged}

    async def _drive(
        self, scenario: Scenario, services: Services, workload: Workload, history: History, deadline: float
    ) -> None:
        plan = scenario.load
        if plan.warmup_campaigns:
            await self._warm_up(plan.warmup_campaigns, services, workload, history)
        argv = locust_argv(plan, self.run_dir, services.api_url)
        (self.run_dir / "locust.argv.json").write_text(json.dumps(argv, indent=1))
        self.locust = ManagedProcess("locust", argv, self.run_dir / LOCUST_LOG, cwd=ROOT)
        self.locust.start()
        assert self.locust.process is not None
        # Locust stops by itself; past its time, its stop timeout and a margin it is stopped.
        limit = plan.total_s + STOP_TIMEOUT_S + 60
        try:
            await asyncio.to_thread(self.locust.process.wait, limit)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if self.locust.alive:
                await asyncio.to_thread(self.locust.stop, 10.0)
        self.locust_exit = self.locust.returncode
        counts = merge_histories(
            self.run_dir / HISTORY_DIR, history.path, history.started_at, history.next_index
        )
        history.counts.update(counts)

    async def _warm_up(
        self, campaigns: int, services: Services, workload: Workload, history: History
    ) -> None:
        """Campaigns enqueued by the lab's own client (recorded in the history), so that a storm of
        delivery reports has real messages to replay."""
        async with (
            httpx.AsyncClient(base_url=services.api_url, timeout=10) as api,
            httpx.AsyncClient(base_url=services.simulator_url, timeout=10) as sim,
        ):
            client = Client("warmup", api, sim, history, workload.tokens)
            for shop in workload.world:
                for _ in range(campaigns):
                    created = await client.perform(CreateCampaign(shop.domain))
                    if created.ok and isinstance(created.body, dict):
                        key = f"warmup-{uuid.uuid4()}"
                        await client.perform(Enqueue(shop.domain, int(created.body["id"]), key))

    def _chaos_figures(self, workload: Workload) -> dict[str, Any]:
        return {"load": latest_figures(self.run_dir / STATS_HISTORY)}

    async def execute(self) -> dict[str, Any]:
        try:
            return await super().execute()
        finally:
            if self.locust is not None and self.locust.alive:
                self.locust.kill()

    async def _chaos(
        self,
        scenario: Scenario,
        events: list[NemesisEvent],
        services: Services,
        workload: Workload,
        history: History,
    ) -> dict[str, Any]:
        """The chaos phase as `smslab run` has it, and what Locust was asked to do and how it ended."""
        result = await super()._chaos(scenario, events, services, workload, history)
        plan = scenario.load
        result["load"] = {
            "locust_exit_code": self.locust_exit,
            "argv": "locust.argv.json",
            "users": plan.users,
            "spawn_rate": plan.spawn_rate,
            "duration_s": plan.total_s,
            "processes": plan.processes,
            "stages": [asdict(stage) for stage in plan.stages],
            "user_classes": plan.weights,
            "thresholds": asdict(plan.thresholds),
        }
        return result

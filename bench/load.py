"""How the service answers Locust as users grow, beside Locust's own ceiling, and where the CPU goes.

    python -m bench.load                                    # load_quick's users, SQLite
    python -m bench.load --users 10,25,50,100,200 --duration 15 --database postgresql://...

One lab run of a load scenario (`load_quick` by default) without its nemesis (a measurement, not a fault
test: the invariants are still checked at the end), whose chaos phase runs Locust once per user count,
`--duration` seconds each, and right after each the same number of users with the same pause against
`GET /health` (`bench/locust_health.py`): Locust's own ceiling on this machine at that user count, so each
figure is also a ratio. During each step the CPU seconds of each component (the API's processes, the
workers, the simulator, Redis, PostgreSQL's backends for this run, Locust's processes) are read from
/proc (psutil) before and after, and shown per wall second: two cores give at most 2.0.

Prints, for each user count: the API's requests/s (the calls to the fake providers' control API left
out), p50/p95/p99 over every API request class, failures, the ceiling and the ratio, the CPU by
component; then the request classes of the step with the highest throughput; the load average before and
after (the machine may be shared), the verdict. Everything is also in `bench_load.json` in the run folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from chaos.checker.load_run import HISTORY_DIR
from chaos.environment import ROOT, Services
from chaos.harness import RunOptions
from chaos.history import History
from chaos.load import LOCUST_LOG, STOP_TIMEOUT_S, WORLD, LoadRun, for_load, locust_argv, merge_histories
from chaos.load_gate import SHED_JSON, STATS_CSV, StatRow, rows_from_csv, shed_from_json
from chaos.processes import ManagedProcess
from chaos.scenario import Scenario, load_scenario, parse_scenario
from chaos.workload import Workload

HEALTH_LOCUSTFILE = ROOT / "bench" / "locust_health.py"
SIMULATOR_PREFIX = "sim "  # Locust rows of calls to the fake providers' control API, not the service's


@dataclass
class Step:
    users: int
    api: dict[str, Any] = field(default_factory=dict)
    classes: list[dict[str, Any]] = field(default_factory=list)
    ceiling: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0


def _tree(pid: int | None) -> list[psutil.Process]:
    if not pid:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _cpu(processes: list[psutil.Process]) -> dict[int, float]:
    seconds = {}
    for process in processes:
        try:
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
        except psutil.Error:
            continue
    return seconds


def _postgres_processes() -> list[psutil.Process]:
    """PostgreSQL's processes: every backend of the server, this run's and anyone else's on a shared
    machine (a backend's title does not name its application), so the figure is an upper bound."""
    found = []
    for process in psutil.process_iter(["name"]):
        if (process.info.get("name") or "").startswith("postgres"):
            found.append(process)
    return found


class Sampler:
    """CPU seconds by component over one step: every process of each component's tree, read at the
    start and every half second (a process that exits meanwhile, Locust itself at the end, keeps its last
    reading; one that came meanwhile counts from zero)."""

    def __init__(self, components: dict[str, Any]) -> None:
        self.components = components  # name -> a callable giving its processes now
        self.before: dict[str, dict[int, float]] = {}
        self.latest: dict[str, dict[int, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.used: dict[str, float] = {}

    def _read(self) -> None:
        for name, find in self.components.items():
            self.latest.setdefault(name, {}).update(_cpu(find()))

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._read()

    def start(self) -> None:
        self.before = {name: _cpu(find()) for name, find in self.components.items()}
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self, wall_s: float) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._read()
        used = {}
        for name in self.components:
            start = self.before.get(name, {})
            seconds = sum(max(0.0, s - start.get(pid, 0.0)) for pid, s in self.latest.get(name, {}).items())
            used[name] = round(seconds / wall_s, 2)
        self.used = used
        return used


def summarize(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The API's figures from a Locust `_stats.csv`: requests/s over the API's request classes, the
    request-weighted worst percentiles (Locust's aggregate minus the simulator's rows is not in the file:
    p50 is the aggregate's, p95 and p99 the highest class's among those with at least 1 % of requests),
    failures; and each class."""
    rows, total = rows_from_csv(path)
    shed = shed_from_json(path.parent / SHED_JSON)
    api = [r for r in rows if not r.name.startswith(SIMULATOR_PREFIX)]
    requests = sum(r.requests for r in api)
    busy = [r for r in api if r.requests >= 0.01 * max(1, requests)]

    def worst(attribute: str) -> float:
        return max((getattr(r, attribute) for r in busy), default=0.0)

    figures = {
        "rps": round(sum(r.rps for r in api), 1),
        "requests": requests,
        "failures": sum(r.failures for r in api),
        # 503 overloaded answers (successes in Locust's table): served is the rest
        "shed": sum(shed.values()),
        "served_rps": round(
            sum(r.rps * (1 - shed.get(r.request_class, 0) / max(1, r.requests)) for r in api), 1
        ),
        "p50_ms": total.p50_ms if total else 0.0,
        "p95_ms": total.p95_ms if total else 0.0,
        "p99_ms": total.p99_ms if total else 0.0,
        "worst_class_p99_ms": worst("p99_ms"),
    }
    classes = [_class(r) for r in sorted(api, key=lambda r: -r.requests)]
    return figures, classes


def _class(row: StatRow) -> dict[str, Any]:
    return {
        "request_class": row.request_class,
        "requests": row.requests,
        "failures": row.failures,
        "rps": round(row.rps, 1),
        "p50_ms": row.p50_ms,
        "p95_ms": row.p95_ms,
        "p99_ms": row.p99_ms,
    }


class BenchRun(LoadRun):
    """`smslab load`'s run, its chaos phase one Locust run per user count, each followed by the ceiling."""

    user_counts: tuple[int, ...] = ()
    step_s: float = 15.0
    think: tuple[float, float] | None = None
    steps: list[Step]

    async def _drive(
        self, scenario: Scenario, services: Services, workload: Workload, history: History, deadline: float
    ) -> None:
        self.steps = []
        plan = scenario.load
        think = self.think or plan.think_s
        components = self._components(services)
        for users in self.user_counts:
            step = Step(users)
            folder = self.run_dir / f"bench-u{users}"
            folder.mkdir()
            stepped = for_load(scenario, users=users, spawn_rate=users, duration_s=self.step_s).load
            argv = self._argv(locust_argv(stepped, folder, services.api_url), think)
            sampler = Sampler({**components, "locust": lambda: _tree(self._locust_pid)})
            step.wall_s, exit_code = await self._locust(argv, folder, sampler, step)
            step.api, step.classes = summarize(folder / STATS_CSV)
            self.locust_exit = exit_code
            ceiling_argv = [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(HEALTH_LOCUSTFILE),
                "--headless",
                "--host",
                services.api_url,
                "-u",
                str(users),
                "-r",
                str(users),
                "-t",
                f"{self.step_s:g}s",
                "--csv",
                str(folder / "ceiling"),
                "--think",
                f"{think[0]:g},{think[1]:g}",
                "-s",
                "2",
            ]
            ceiling_sampler = Sampler({"api": components["api"], "locust": lambda: _tree(self._locust_pid)})
            await self._locust(ceiling_argv, folder, ceiling_sampler, None)
            ceiling, _classes = summarize(folder / "ceiling_stats.csv")
            step.ceiling = {
                "rps": ceiling["rps"],
                "p50_ms": ceiling["p50_ms"],
                "p99_ms": ceiling["p99_ms"],
                "cpu": ceiling_sampler.used,
            }
            self.steps.append(step)
            print(_line(step), file=sys.stderr, flush=True)
        last = self.run_dir / f"bench-u{self.user_counts[-1]}"
        for name in ("load_stats.csv", "load_failures.csv", "load_stats_history.csv", "load_exceptions.csv"):
            if (last / name).exists():
                shutil.copy(last / name, self.run_dir / name)
        counts = merge_histories(
            self.run_dir / HISTORY_DIR, history.path, history.started_at, history.next_index
        )
        history.counts.update(counts)

    _locust_pid: int | None = None

    def _argv(self, argv: list[str], think: tuple[float, float]) -> list[str]:
        """`locust_argv` for a step folder, with the run's world, history folder and the pause."""
        replaced = {
            "--world": str(self.run_dir / WORLD),
            "--history-dir": str(self.run_dir / HISTORY_DIR),
            "--think": f"{think[0]:g},{think[1]:g}",
        }
        out = list(argv)
        for option, value in replaced.items():
            out[out.index(option) + 1] = value
        return out

    async def _locust(
        self, argv: list[str], folder: Path, sampler: Sampler, step: Step | None
    ) -> tuple[float, int | None]:
        process = ManagedProcess("locust", argv, folder / LOCUST_LOG, cwd=ROOT)
        process.start()
        assert process.process is not None
        self._locust_pid = process.pid
        await asyncio.sleep(0.5)  # its processes forked (`--processes`)
        sampler.start()
        started = time.monotonic()
        try:
            await asyncio.to_thread(process.process.wait, self.step_s + STOP_TIMEOUT_S + 60)
        except subprocess.TimeoutExpired:
            process.kill()
        wall = time.monotonic() - started
        used = sampler.stop(wall)
        if step is not None:
            step.cpu = used
        return round(wall, 2), process.returncode

    def _components(self, services: Services) -> dict[str, Any]:
        env = self.environment
        found: dict[str, Any] = {
            "api": lambda: _tree(services.api.pid),
            "workers": lambda: [p for w in services.workers for p in _tree(w.pid)],
            "simulator": lambda: _tree(services.simulator.pid),
            "redis": lambda: _tree(env.redis.process.pid if env.redis and env.redis.process else None),
        }
        if env.given_database_url:
            found["postgresql (all)"] = _postgres_processes
        return found


def _line(step: Step) -> str:
    api, ceiling = step.api, step.ceiling
    ratio = api["rps"] / ceiling["rps"] if ceiling.get("rps") else 0.0
    cpu = ", ".join(f"{name} {value:.2f}" for name, value in step.cpu.items())
    per_request = 1000 * step.cpu.get("api", 0) / api["rps"] if api["rps"] else 0.0
    health_cpu = ceiling.get("cpu", {}).get("api", 0)
    per_health = 1000 * health_cpu / ceiling["rps"] if ceiling.get("rps") else 0.0
    cpu += f"  |  API CPU per request {per_request:.1f} ms (/health {per_health:.1f} ms)"
    return (
        f"{step.users:>4} users: {api['rps']:>7.1f} API req/s  p50 {api['p50_ms']:>5.0f}  p95 "
        f"{api['p95_ms']:>5.0f}  p99 {api['p99_ms']:>5.0f} ms  failures {api['failures']:>4}  "
        f"shed {api['shed']:>5} (served {api['served_rps']:.1f}/s)  |  "
        f"/health {ceiling.get('rps', 0):>7.1f}/s  ratio {ratio:.2f}x  |  CPU/s: {cpu}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", default="load_quick")
    parser.add_argument("--users", default="10,25,50,100", help="user counts, one step each")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per step (and per ceiling)")
    parser.add_argument("--think", default="", help="LOW,HIGH: the users' pause (default: the scenario's)")
    parser.add_argument("--database", default=None, help="a PostgreSQL URL (default: SQLite)")
    parser.add_argument("--api-workers", type=int, default=0, help="API processes (default: the scenario's)")
    parser.add_argument("--locust-processes", type=int, default=0, help="Locust worker processes")
    parser.add_argument(
        "--max-in-flight", type=int, default=None, help="SMSLAB_API_MAX_IN_FLIGHT (0: no cap)"
    )
    parser.add_argument(
        "--admission-wait", type=float, default=None, help="SMSLAB_API_ADMISSION_WAIT_SECONDS"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    counts = tuple(int(n) for n in args.users.split(","))
    scenario = load_scenario(args.scenario)
    changes: dict[str, Any] = {"load": {"processes": args.locust_processes}}
    services: dict[str, Any] = {}
    if args.api_workers:
        services["api_workers"] = args.api_workers
    if args.max_in_flight is not None:
        services["api_max_in_flight"] = args.max_in_flight
    if args.admission_wait is not None:
        services["api_admission_wait_s"] = args.admission_wait
    if services:
        changes["services"] = services
    scenario = scenario.with_changes(changes)
    # A measurement: the scenario's nemesis off (its provider faults stay); the chaos phase planned as
    # every step and its ceiling at their run time, which each exceeds by Locust's start and stop (so the
    # verdict's "the workload ran its planned time" holds: planned with a margin, it was judged unknown).
    document = dict(scenario.document)
    document.pop("nemesis", None)
    plain = parse_scenario(document)
    total = len(counts) * 2 * args.duration
    plain = plain.with_changes({"load": {"duration_s": args.duration}, "workload": {"duration_s": total}})
    BenchRun.user_counts = counts
    BenchRun.step_s = args.duration
    if args.think:
        low, _, high = args.think.partition(",")
        BenchRun.think = (float(low), float(high or low))
    load_before = os.getloadavg()
    print(
        f"bench.load: {plain.name}, users {args.users}, {args.duration:g} s each, "
        f"{'PostgreSQL' if args.database else 'SQLite'}, api_workers {plain.services.api_workers}; "
        f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} on "
        f"{os.cpu_count()} cores",
        flush=True,
    )
    options = RunOptions(plain, plain.seed, args.out, args.database)
    lab = BenchRun(options)
    verdict = asyncio.run(lab.execute())
    load_after = os.getloadavg()
    print(
        "\n| users | API req/s | served req/s | p50 ms | p95 ms | p99 ms | failures | shed (503 overloaded) "
        "| /health req/s | ratio | CPU per s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for step in lab.steps:
        api, ceiling = step.api, step.ceiling
        ratio = api["rps"] / ceiling["rps"] if ceiling.get("rps") else 0.0
        cpu = ", ".join(f"{name} {value:.2f}" for name, value in step.cpu.items())
        print(
            f"| {step.users} | {api['rps']:.1f} | {api['served_rps']:.1f} | {api['p50_ms']:.0f} | "
            f"{api['p95_ms']:.0f} | {api['p99_ms']:.0f} | {api['failures']} | {api['shed']} | "
            f"{ceiling.get('rps', 0):.1f} | {ratio:.2f}x | {cpu} |"
        )
    best = max(lab.steps, key=lambda s: s.api.get("rps", 0))
    print(f"\nrequest classes at {best.users} users (the highest throughput):\n")
    print("| request class | requests | failures | req/s | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for row in best.classes:
        print(
            f"| `{row['request_class']}` | {row['requests']} | {row['failures']} | {row['rps']} | "
            f"{row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['p99_ms']:.0f} |"
        )
    print(
        f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min); verdict "
        f"{verdict['valid']}; run folder {lab.run_dir}"
    )
    (lab.run_dir / "bench_load.json").write_text(
        json.dumps(
            {
                "scenario": plain.name,
                "database": "postgresql" if args.database else "sqlite",
                "load_average": {"before": load_before, "after": load_after},
                "steps": [step.__dict__ for step in lab.steps],
                "verdict": verdict["valid"],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

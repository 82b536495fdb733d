"""`smslab swarm`: many seeded runs, each with its own random mix of faults, hunting for rare failures.

One green run proves little. Swarm testing (as FoundationDB's simulator and TigerBeetle's VOPR do) runs
many seeds, and each seed switches on a different subset of the fault kinds the lab has, at a different
intensity and timing: a failure that needs two faults together, or one fault alone without the others
masking it, shows up in some seeds. Every drawn scenario is an ordinary scenario file in the swarm
folder, so `smslab run FILE --seed S`, `smslab replay` and `smslab check` work on its runs unchanged, and
`smslab shrink` (chaos/shrink.py) cuts a failing one down.

Each run is `smslab run` in its own process (its own ports, Redis, SQLite file or PostgreSQL schema),
`parallel` at a time. Its result is read from its run folder's `verdict.json`, nothing else.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos.matrix import SHORT_DURATION_S
from chaos.processes import smslab_argv
from chaos.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from service import safeguards

# The scenarios a swarm draws from by default: one per fault class. Not `soak` (minutes long), not
# `noisy_neighbour` (its I9 latency bound is only meaningful without process kills), not
# `verbose_logging` (an operator's setting, not a fault).
DEFAULT_BASES = (
    "quick",
    "worker_kills",
    "api_kills",
    "lost_answers",
    "redis_loss",
    "webhook_chaos",
    "network",
    "db_cuts",
)

# Named sets of safeguards to switch off together. `seed`: exactly the gaps that
# ../shared/seed/phase4-production-hardening.md admits in the service as its authors wrote it (enqueue
# only partly transactional, the debit outside the send's transaction, replay protection wired into no
# webhook handler, no reconciler, so no resolution of ambiguous sends either, and no log redaction).
PROFILES: dict[str, tuple[str, ...]] = {
    "seed": (
        safeguards.ENQUEUE_TRANSACTION,
        safeguards.DEBIT_WITH_RESULT,
        safeguards.WEBHOOK_EFFECT_ONCE,
        safeguards.RECONCILER,
        safeguards.RESOLVE_AMBIGUOUS_SENDS,
        safeguards.LOG_REDACTION,
    ),
}

_P = random.Random  # the draw functions' generator, named short for the table below


def _every(rng: _P, low: tuple[float, float], width: tuple[float, float]) -> list[float]:
    start = round(rng.uniform(*low), 2)
    return [start, round(start + rng.uniform(*width), 2)]


def _hold(rng: _P, high: tuple[float, float]) -> list[float]:
    return [0.3, round(rng.uniform(*high), 2)]


def _at(rng: _P, duration: float) -> float:
    return round(rng.uniform(0.15, 0.65) * duration, 2)


def _p(rng: _P, low: float, high: float) -> float:
    return round(rng.uniform(low, high), 3)


def _rule(target: str, kind: str, probability: float, **params: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"target": target, "kind": kind, "probability": probability}
    if params:
        rule["params"] = params
    return rule


def _toxic(proxy: str, toxic: str, rng: _P, duration: float, attributes: dict[str, Any]) -> dict[str, Any]:
    return {
        "action": "toxic",
        "proxy": proxy,
        "at_s": _at(rng, duration),
        "duration_s": round(rng.uniform(1.0, 4.0), 2),
        "toxic": {"type": toxic, "attributes": attributes},
    }


# Where a drawn fault goes in the scenario document (WORKLOAD: a patch merged into its workload table).
NEMESIS, FAULTS, WORKER_FAILPOINTS, API_FAILPOINTS, WORKLOAD = (
    "nemesis",
    "faults",
    "worker_failpoints",
    "api_failpoints",
    "workload",
)

Draw = Callable[[_P, float], tuple[str, Any]]


@dataclass(frozen=True)
class FaultKind:
    """One kind of fault a swarm run may switch on, drawn within the bounds its draw function states."""

    name: str
    family: str  # nemesis | toxic | provider | failpoint | workload
    draw: Draw  # (generator, chaos duration) -> (where it goes, the rule or spec)
    postgresql_only: bool = False


FAULT_KINDS: tuple[FaultKind, ...] = (
    # Process faults: SIGKILL and a restart after a hold, Redis restarted empty, database links cut.
    FaultKind(
        "kill_worker",
        "nemesis",
        lambda r, d: (
            NEMESIS,
            {
                "action": "kill_worker",
                "every_s": _every(r, (2, 6), (1, 3)),
                "restart_after_s": _hold(r, (0.6, 1.5)),
            },
        ),
    ),
    FaultKind(
        "kill_api",
        "nemesis",
        lambda r, d: (
            NEMESIS,
            {
                "action": "kill_api",
                "every_s": _every(r, (4, 9), (1, 4)),
                "restart_after_s": _hold(r, (0.5, 1.2)),
            },
        ),
    ),
    FaultKind(
        "restart_redis",
        "nemesis",
        lambda r, d: (
            NEMESIS,
            {"action": "restart_redis", "at_s": _at(r, d), "restart_after_s": _hold(r, (0.4, 0.8))},
        ),
    ),
    FaultKind(
        "cut_db_connections",
        "nemesis",
        lambda r, d: (NEMESIS, {"action": "cut_db_connections", "every_s": _every(r, (2, 5), (1, 3))}),
        postgresql_only=True,
    ),
    # Network faults on the lab's proxies (latency 30 to 400 ms, resets), for 1 to 4 s.
    FaultKind(
        "providers_latency",
        "toxic",
        lambda r, d: (
            NEMESIS,
            _toxic(
                "providers", "latency", r, d, {"latency": r.randint(50, 400), "jitter": r.randint(0, 100)}
            ),
        ),
    ),
    FaultKind(
        "providers_reset",
        "toxic",
        lambda r, d: (NEMESIS, _toxic("providers", "reset_peer", r, d, {"timeout": r.randint(0, 200)})),
    ),
    FaultKind(
        "redis_latency",
        "toxic",
        lambda r, d: (NEMESIS, _toxic("redis", "latency", r, d, {"latency": r.randint(30, 200)})),
    ),
    FaultKind(
        "db_latency",
        "toxic",
        lambda r, d: (NEMESIS, _toxic("db", "latency", r, d, {"latency": r.randint(10, 100)})),
        postgresql_only=True,
    ),
    # The providers' own faults (the simulator's rules), each at a probability within its bounds.
    FaultKind(
        "mitto_accept_then_lose",
        "provider",
        lambda r, d: (FAULTS, _rule("mitto.send", "accept_then_lose", _p(r, 0.02, 0.15))),
    ),
    FaultKind(
        "mitto_503",
        "provider",
        lambda r, d: (FAULTS, _rule("mitto.send", "status", _p(r, 0.01, 0.08), status=503)),
    ),
    FaultKind(
        "mitto_429",
        "provider",
        lambda r, d: (FAULTS, _rule("mitto.send", "status", _p(r, 0.01, 0.05), status=429, retry_after=1)),
    ),
    FaultKind(
        "mitto_timeout",
        "provider",
        lambda r, d: (FAULTS, _rule("mitto.send", "timeout", _p(r, 0.01, 0.05), seconds=2)),
    ),
    FaultKind(
        "mitto_report_first",
        "provider",
        lambda r, d: (FAULTS, _rule("mitto.send", "report_first", _p(r, 0.05, 0.2))),
    ),
    FaultKind(
        "mitto_latency",
        "provider",
        lambda r, d: (
            FAULTS,
            _rule("mitto.send", "latency", _p(r, 0.1, 0.5), min_ms=0, max_ms=r.randint(50, 400)),
        ),
    ),
    FaultKind(
        "mitto_lookup_503",
        "provider",
        lambda r, d: (FAULTS, _rule("mitto.lookup", "status", _p(r, 0.05, 0.3), status=503)),
    ),
    FaultKind(
        "dlr_duplicate",
        "provider",
        lambda r, d: (
            FAULTS,
            _rule(
                "mitto.dlr", "duplicate", _p(r, 0.05, 0.3), copies=r.randint(1, 2), spread_ms=r.randint(0, 50)
            ),
        ),
    ),
    FaultKind(
        "dlr_latency",
        "provider",
        lambda r, d: (
            FAULTS,
            _rule("mitto.dlr", "latency", _p(r, 0.1, 0.6), min_ms=0, max_ms=r.randint(100, 800)),
        ),
    ),
    FaultKind("dlr_drop", "provider", lambda r, d: (FAULTS, _rule("mitto.dlr", "drop", _p(r, 0.01, 0.05)))),
    FaultKind(
        "dlr_bad_signature",
        "provider",
        lambda r, d: (FAULTS, _rule("mitto.dlr", "bad_signature", _p(r, 0.01, 0.1))),
    ),
    FaultKind(
        "stripe_duplicate",
        "provider",
        lambda r, d: (
            FAULTS,
            _rule(
                "stripe.webhook",
                "duplicate",
                _p(r, 0.1, 0.5),
                copies=r.randint(1, 2),
                spread_ms=r.randint(0, 20),
            ),
        ),
    ),
    FaultKind(
        "stripe_bad_signature",
        "provider",
        lambda r, d: (FAULTS, _rule("stripe.webhook", "bad_signature", _p(r, 0.02, 0.1))),
    ),
    FaultKind(
        "stripe_stale_timestamp",
        "provider",
        lambda r, d: (FAULTS, _rule("stripe.webhook", "stale_timestamp", _p(r, 0.02, 0.05))),
    ),
    FaultKind(
        "shopify_duplicate",
        "provider",
        lambda r, d: (
            FAULTS,
            _rule("shopify.webhook", "duplicate", _p(r, 0.1, 0.3), copies=1, spread_ms=r.randint(0, 20)),
        ),
    ),
    FaultKind(
        "shopify_latency",
        "provider",
        lambda r, d: (
            FAULTS,
            _rule("shopify.webhook", "latency", _p(r, 0.2, 0.6), min_ms=0, max_ms=r.randint(200, 1500)),
        ),
    ),
    # Crashes at exact lines (service/failpoints.py): the worst moments to die.
    FaultKind(
        "crash_after_provider_accepted",
        "failpoint",
        lambda r, d: (WORKER_FAILPOINTS, f"send.after_provider_accepted=kill@{_p(r, 0.01, 0.05)}"),
    ),
    FaultKind(
        "crash_between_record_and_debit",
        "failpoint",
        lambda r, d: (WORKER_FAILPOINTS, f"send.between_record_and_debit=kill@{_p(r, 0.01, 0.05)}"),
    ),
    FaultKind(
        "crash_after_claim",
        "failpoint",
        lambda r, d: (WORKER_FAILPOINTS, f"send.after_claim=kill@{_p(r, 0.01, 0.05)}"),
    ),
    FaultKind(
        "crash_after_lookup",
        "failpoint",
        lambda r, d: (WORKER_FAILPOINTS, f"reconcile.after_lookup=kill@{_p(r, 0.02, 0.1)}"),
    ),
    FaultKind(
        "crash_in_enqueue",
        "failpoint",
        lambda r, d: (API_FAILPOINTS, f"enqueue.after_recipients=kill@{_p(r, 0.02, 0.05)}"),
    ),
    FaultKind(
        "stall_before_enqueue_commit",
        "failpoint",
        lambda r, d: (
            API_FAILPOINTS,
            f"enqueue.before_commit=sleep:{round(r.uniform(0.5, 2.5), 2)}@{_p(r, 0.05, 0.1)}",
        ),
    ),
    FaultKind(
        "stall_in_webhook",
        "failpoint",
        lambda r, d: (API_FAILPOINTS, f"webhook.after_duplicate_check=sleep:0.2@{_p(r, 0.1, 0.3)}"),
    ),
    # Hostile workload shapes: what the clients do, not what breaks under them. Every enqueue (or most)
    # sent twice at once and retried with the same key, which only the idempotency key absorbs (I6); and
    # shops that run out of credits mid-run with no purchases, so enqueues are refused half-way (402)
    # and only the enqueue's single transaction keeps their credits whole (I4).
    FaultKind(
        "enqueue_duplicates",
        "workload",
        lambda r, d: (WORKLOAD, {"duplicate_enqueue": _p(r, 0.5, 1.0)}),
    ),
    FaultKind(
        "credit_shortage",
        "workload",
        lambda r, d: (WORKLOAD, {"credits_per_shop": r.randint(150, 600), "mix": {"buy": 0}}),
    ),
)
KINDS_BY_NAME = {kind.name: kind for kind in FAULT_KINDS}

# How likely a kind is switched on: more likely when the base scenario itself has it (the base was
# written to expose something with it), less for the rest, so every mix appears across seeds.
P_OWN_KIND = 0.6
SWARM_QUIESCENCE_S = 60.0
P_OTHER_KIND = 0.2


def kinds_of(scenario: Scenario) -> set[str]:
    """The fault kinds a scenario already has (by the swarm's names), to weight the draw."""
    found: set[str] = set()
    for rule in scenario.nemesis:
        if rule.action == "toxic" and rule.toxic:
            name = f"{rule.proxy}_{'latency' if rule.toxic.get('type') == 'latency' else 'reset'}"
            found.add(name)
        else:
            found.add(rule.action)
    for spec in scenario.simulator.faults:
        target, kind = spec.get("target"), spec.get("kind")
        if target == "mitto.send":
            status = (spec.get("params") or {}).get("status")
            found.add(f"mitto_{status}" if kind == "status" else f"mitto_{kind}")
        elif target == "mitto.lookup":
            found.add("mitto_lookup_503")
        elif isinstance(target, str) and isinstance(kind, str):
            found.add(f"{target.split('.')[0].replace('mitto', 'dlr')}_{kind}")
    workload = scenario.workload
    if workload.duplicate_enqueue >= 0.5:
        found.add("enqueue_duplicates")
    if workload.credits_per_shop < 1000 and not dict(workload.mix).get("buy"):
        found.add("credit_shortage")
    points = f"{scenario.services.worker_failpoints},{scenario.services.api_failpoints}"
    # A failpoint kind's point is the one its draw arms (any draw: the point does not vary).
    names = {
        str(kind.draw(random.Random(0), 10.0)[1]).split("=")[0]: kind.name
        for kind in FAULT_KINDS
        if kind.family == "failpoint"
    }
    found |= {names[p.split("=")[0]] for p in points.split(",") if p.split("=")[0] in names}
    return found & set(KINDS_BY_NAME)


@dataclass(frozen=True)
class DrawnRun:
    index: int
    seed: int
    base: str
    kinds: tuple[str, ...]
    scenario: Scenario


def draw_run(
    index: int,
    seed: int,
    base: Scenario,
    postgresql: bool,
    safeguards_off: tuple[str, ...],
    always: tuple[str, ...] = (),
    short: bool = False,
) -> DrawnRun:
    """Run `index`'s scenario: `base` with its faults replaced by a random subset of the lab's fault kinds
    (`always` among them) at random intensities and timings, and random workload sizes; deterministic for
    (seed, base). `short` caps the chaos phase at the short matrix's default (`SHORT_DURATION_S`; a
    matrix row may ask for longer)."""
    rng = random.Random(f"swarm:{seed}")
    document = json.loads(json.dumps(base.document))
    workload = document.setdefault("workload", {})
    duration = round(rng.uniform(8.0, 16.0), 1)
    if short:
        duration = min(duration, SHORT_DURATION_S)
    workload["duration_s"] = duration
    workload["shops"] = rng.randint(2, 3)
    workload["clients"] = rng.randint(2, 5)
    workload["contacts_per_shop"] = rng.randint(40, 160)
    own = kinds_of(base)
    candidates = [k for k in FAULT_KINDS if postgresql or not k.postgresql_only]
    chosen = [
        k
        for k in candidates
        if rng.random() < (P_OWN_KIND if k.name in own else P_OTHER_KIND) or k.name in always
    ]
    if not chosen:
        chosen = [rng.choice(candidates)]
    nemesis: list[dict[str, Any]] = []
    faults: list[dict[str, Any]] = []
    points: dict[str, list[str]] = {WORKER_FAILPOINTS: [], API_FAILPOINTS: []}
    for kind in chosen:
        where, item = kind.draw(rng, duration)
        if where == NEMESIS:
            nemesis.append(item)
        elif where == FAULTS:
            faults.append(item)
        elif where == WORKLOAD:
            for key, value in item.items():
                if isinstance(value, dict):
                    workload.setdefault(key, {}).update(value)
                else:
                    workload[key] = value
        else:
            points[where].append(item)
    document["nemesis"] = nemesis
    if postgresql and any(k.postgresql_only for k in chosen):
        document["backend"] = "postgresql"  # what the database faults need (they cut connections)
    document.setdefault("simulator", {})["faults"] = faults
    services = document.setdefault("services", {})
    services.update({name: ",".join(specs) for name, specs in points.items()})
    services["safeguards_off"] = list(safeguards_off)
    # Settling ends as soon as nothing is in flight, so a long bound costs nothing when the run is quiet;
    # a bound shorter than a heavy mix's backlog of delivery reports would read as `unknown`.
    document["quiescence_s"] = max(float(document.get("quiescence_s", 30.0)), SWARM_QUIESCENCE_S)
    document["name"] = f"swarm-{base.name}"
    document["seed"] = seed
    document["description"] = f"swarm run {index} from {base.name}: {', '.join(k.name for k in chosen)}"
    scenario = parse_scenario(document)
    return DrawnRun(index, seed, base.name, tuple(k.name for k in chosen), scenario)


def resolve_safeguards_off(names: list[str]) -> tuple[str, ...]:
    """`--safeguards-off` values: safeguard names or profile names (e.g. `seed`)."""
    resolved: list[str] = []
    for name in names:
        if name in PROFILES:
            resolved += PROFILES[name]
        elif name in safeguards.REGISTRY:
            resolved.append(name)
        else:
            known = ", ".join([*PROFILES, *safeguards.REGISTRY])
            raise ScenarioError(f"--safeguards-off: no safeguard or profile {name!r} (known: {known})")
    return tuple(dict.fromkeys(resolved))


@dataclass
class SwarmOptions:
    out_dir: Path
    seed: int = 1
    runs: int | None = None  # stop after this many runs
    minutes: float | None = None  # or stop starting runs after this long
    parallel: int = 0  # 0: sized to the machine
    bases: tuple[str, ...] = ()
    database_url: str | None = None
    safeguards_off: tuple[str, ...] = ()
    stop_on_failure: bool = False  # detection power: stop at the first failing run
    always: tuple[str, ...] = ()  # fault kinds every run switches on
    short: bool = False
    run_timeout_s: float = 600.0


def default_parallel() -> int:
    """A run's processes keep about two cores busy at its peaks; more at once on fewer cores measures the
    machine's scheduler, not the service (latency bounds and leases start to fail on their own)."""
    return max(1, (os.cpu_count() or 2) // 2)


def base_scenarios(names: tuple[str, ...], postgresql: bool) -> list[Scenario]:
    chosen = names or DEFAULT_BASES
    scenarios = [load_scenario(name) for name in chosen]
    fitting = [s for s in scenarios if postgresql or s.backend != "postgresql"]
    if not fitting:
        raise ScenarioError(
            "--base: none of these scenarios runs on SQLite (give --database postgresql://...)"
        )
    return fitting


def run_seed(swarm_seed: int, index: int) -> int:
    return random.Random(f"swarm:{swarm_seed}:run:{index}").randrange(1, 2**31)


@dataclass
class RunResult:
    index: int
    seed: int
    base: str
    kinds: tuple[str, ...]
    scenario_file: str
    run_dir: str = ""
    exit_code: int | None = None
    invariants: dict[str, bool | None] = field(default_factory=dict)
    unknown_because: list[str] = field(default_factory=list)
    settled_after_s: float | None = None
    seconds: float = 0.0
    error: str = ""
    # per invalid invariant, the `kind`s its witnesses name (what `smslab shrink` must keep failing)
    witness_kinds: dict[str, set[str]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Invalid or unknown anywhere, or the run did not produce a verdict at all."""
        return (
            bool(self.error or self.unknown_because or any(v is not True for v in self.invariants.values()))
            or not self.invariants
        )

    @property
    def failing_invariants(self) -> list[str]:
        return [name for name, valid in self.invariants.items() if valid is not True]

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seed": self.seed,
            "base": self.base,
            "fault_kinds": list(self.kinds),
            "scenario_file": self.scenario_file,
            "run": self.run_dir,
            "exit_code": self.exit_code,
            "invariants": self.invariants,
            "unknown_because": self.unknown_because,
            "settled_after_s": self.settled_after_s,
            "seconds": self.seconds,
            "error": self.error,
            "failed": self.failed,
        }


def read_result(result: RunResult, runs_dir: Path) -> RunResult:
    """Fill a result from the run folder `smslab run` left under `runs_dir` (its verdict alone)."""
    folders = (
        [p for p in runs_dir.iterdir() if p.is_dir() and not p.is_symlink()] if runs_dir.exists() else []
    )
    if not folders:
        result.error = result.error or "no run folder was written"
        return result
    folder = max(folders, key=lambda p: p.stat().st_mtime)
    result.run_dir = str(folder)
    verdict_file = folder / "verdict.json"
    if not verdict_file.exists():
        result.error = result.error or "the run wrote no verdict"
        return result
    verdict = json.loads(verdict_file.read_text())
    result.invariants = {item["id"]: item["valid"] for item in verdict["invariants"]}
    result.unknown_because = list(verdict.get("unknown_because") or [])
    for item in verdict["invariants"]:
        kinds = {str(w["kind"]) for w in item.get("witnesses", []) if w.get("kind")}
        if item["valid"] is False and kinds:
            result.witness_kinds[item["id"]] = kinds
        if item["id"] == "I2":
            settled = item.get("counts", {}).get("settled_after_s")
            # -1: the run did not settle within its bound (I2 and I7 say what was left)
            result.settled_after_s = float(settled) if settled is not None and settled >= 0 else None
    return result


def run_scenario_process(
    scenario: Scenario, seed: int, folder: Path, name: str, database_url: str | None, timeout_s: float
) -> tuple[int | None, str, Path]:
    """`smslab run` of a scenario file written to `folder/scenarios/NAME.toml`, in its own process, its
    output in `folder/runs/NAME.log`: (exit code, error, the folder its run folder went into)."""
    scenario_file = folder / "scenarios" / f"{name}.toml"
    scenario_file.parent.mkdir(parents=True, exist_ok=True)
    scenario_file.write_text(f"# {scenario.description}\n" + scenario.as_toml())
    runs_dir = folder / "runs" / name
    argv = smslab_argv("run", str(scenario_file), "--seed", str(seed), "--out", str(runs_dir))
    if database_url:
        argv += ["--database", database_url]
    log = folder / "runs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as output:
        try:
            completed = subprocess.run(
                argv, stdout=output, stderr=subprocess.STDOUT, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            return None, f"no verdict within {timeout_s:.0f} s; see {log}", runs_dir
    error = f"the lab could not run it (exit 3); see {log}" if completed.returncode == 3 else ""
    return completed.returncode, error, runs_dir


def run_one(drawn: DrawnRun, out_dir: Path, database_url: str | None, timeout_s: float) -> RunResult:
    """One swarm run as its own `smslab run` process."""
    name = f"{drawn.index:04d}"
    result = RunResult(
        drawn.index, drawn.seed, drawn.base, drawn.kinds, str(out_dir / "scenarios" / f"{name}.toml")
    )
    started = time.monotonic()
    result.exit_code, result.error, runs_dir = run_scenario_process(
        drawn.scenario, drawn.seed, out_dir, name, database_url, timeout_s
    )
    result.seconds = round(time.monotonic() - started, 1)
    return read_result(result, runs_dir)


def summarize(results: list[RunResult]) -> dict[str, Any]:
    """Per fault kind: how many runs switched it on and how many of those failed; per invariant: counts."""
    kinds: dict[str, dict[str, int]] = {}
    for result in results:
        for kind in result.kinds:
            entry = kinds.setdefault(kind, {"runs": 0, "failed": 0})
            entry["runs"] += 1
            entry["failed"] += int(result.failed)
    invariants: dict[str, dict[str, int]] = {}
    for result in results:
        for name, valid in result.invariants.items():
            entry = invariants.setdefault(name, {"valid": 0, "invalid": 0, "unknown": 0})
            entry["valid" if valid is True else "invalid" if valid is False else "unknown"] += 1
    return {
        "runs": len(results),
        "failed": sum(r.failed for r in results),
        "fault_kinds": dict(sorted(kinds.items())),
        "invariants": dict(sorted(invariants.items())),
        "never_drawn": sorted(set(KINDS_BY_NAME) - set(kinds)),
    }


def run_swarm(
    options: SwarmOptions, on_result: Callable[[RunResult, list[RunResult]], None] | None = None
) -> dict[str, Any]:
    """Draw and run until the run count or the time budget is used up; write `swarm.json` after each run
    (an interrupted swarm keeps what it found)."""
    if options.runs is None and options.minutes is None:
        options.runs = 20
    options.out_dir = options.out_dir.resolve()  # swarm.json names folders that outlive the working dir
    postgresql = bool(options.database_url)
    bases = base_scenarios(options.bases, postgresql)
    unknown = sorted(set(options.always) - set(KINDS_BY_NAME))
    if unknown:
        raise ScenarioError(f"--with: no fault kind {unknown[0]!r} (known: {', '.join(KINDS_BY_NAME)})")
    if not postgresql and any(KINDS_BY_NAME[k].postgresql_only for k in options.always):
        raise ScenarioError("--with: that fault kind needs PostgreSQL (give --database postgresql://...)")
    parallel = options.parallel or default_parallel()
    options.out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + options.minutes * 60 if options.minutes is not None else None
    started_at = datetime.now(UTC).isoformat()
    results: list[RunResult] = []
    lock = threading.Lock()
    stop = threading.Event()

    def drawn(index: int) -> DrawnRun:
        seed = run_seed(options.seed, index)
        base = bases[random.Random(f"swarm:{seed}:base").randrange(len(bases))]
        return draw_run(index, seed, base, postgresql, options.safeguards_off, options.always, options.short)

    def more(index: int) -> bool:
        if stop.is_set() or (options.runs is not None and index > options.runs):
            return False
        return deadline is None or time.monotonic() < deadline

    def write(finished: bool) -> dict[str, Any]:
        ordered = sorted(results, key=lambda r: (not r.failed, r.index))
        document = {
            "started_at": started_at,
            "finished_at": datetime.now(UTC).isoformat() if finished else None,
            "seed": options.seed,
            "database": "postgresql" if postgresql else "sqlite",
            "parallel": parallel,
            "bases": [b.name for b in bases],
            "safeguards_off": list(options.safeguards_off),
            "always": list(options.always),
            "short": options.short,
            "summary": summarize(results),
            "first_failure_after_runs": next(
                (r.index for r in sorted(results, key=lambda r: r.index) if r.failed), None
            ),
            "runs": [r.as_dict() for r in ordered],
        }
        (options.out_dir / "swarm.json").write_text(json.dumps(document, indent=1))
        return document

    index = 1
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        running: set[Future[RunResult]] = set()
        while True:
            while len(running) < parallel and more(index):
                running.add(
                    pool.submit(
                        run_one, drawn(index), options.out_dir, options.database_url, options.run_timeout_s
                    )
                )
                index += 1
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                with lock:
                    results.append(result)
                    write(False)
                if result.failed and options.stop_on_failure:
                    stop.set()
                if on_result:
                    on_result(result, results)
    return write(True)

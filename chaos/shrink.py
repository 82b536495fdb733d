"""`smslab shrink`: cut a failing run down to the fewest faults that still break the same invariant.

A swarm run can carry dozens of faults of which one mattered. Shrinking is delta debugging over the
run's fault schedule: the concrete nemesis events of its plan (each one becomes an `at_s` rule, so the
shrunk scenario is an ordinary file that `smslab run` plays as it is), its provider fault rules and its
failpoints; then each fault made smaller (a shorter hold or window, a lower probability), then the
workload (a shorter chaos phase, fewer clients, contacts and shops). Every candidate runs with the
failing run's seed.

A run is not a thread schedule: the same seed and faults meet a different interleaving each time. So a
candidate is accepted only when the invariant fails in `need` of `tries` runs (default 2 of 3), and a
candidate stops being tried as soon as it can no longer reach `need` (or has reached it).
"""

from __future__ import annotations

import copy
import json
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomli_w

from chaos.nemesis import load_plan
from chaos.scenario import Scenario, ScenarioError, parse_scenario
from chaos.swarm import RunResult, read_result, run_scenario_process

REGRESSIONS_DIR = Path(__file__).with_name("regressions")
SEED_GAPS_DIR = Path(__file__).with_name("seed_gaps")
FAILPOINT_FIELDS = ("worker_failpoints", "api_failpoints")


@dataclass(frozen=True)
class Unit:
    """One fault of the schedule: a nemesis rule, a provider fault rule or a failpoint spec."""

    where: str  # "nemesis", "faults", "worker_failpoints" or "api_failpoints"
    item: Any  # the rule (a table) or the spec (a string)

    def describe(self) -> str:
        if self.where == "nemesis":
            rule = self.item
            extra = f" {rule['proxy']} {rule['toxic']['type']}" if rule["action"] == "toxic" else ""
            return f"{rule['action']}{extra} at {rule['at_s']} s"
        if self.where == "faults":
            return f"{self.item['target']} {self.item['kind']} p={self.item.get('probability', 1.0)}"
        return f"failpoint {self.item}"


@dataclass
class Schedule:
    """A scenario document split into its fault units and everything else."""

    base: dict[str, Any]  # the document without faults
    units: list[Unit]

    def document(self) -> dict[str, Any]:
        document = copy.deepcopy(self.base)
        document["nemesis"] = [u.item for u in self.units if u.where == "nemesis"]
        document.setdefault("simulator", {})["faults"] = [u.item for u in self.units if u.where == "faults"]
        services = document.setdefault("services", {})
        for name in FAILPOINT_FIELDS:
            services[name] = ",".join(u.item for u in self.units if u.where == name)
        return document

    def with_units(self, units: list[Unit]) -> Schedule:
        return Schedule(self.base, list(units))

    def with_base(self, changes: Callable[[dict[str, Any]], None]) -> Schedule:
        base = copy.deepcopy(self.base)
        changes(base)
        return Schedule(base, list(self.units))

    def summary(self) -> dict[str, Any]:
        workload = self.base.get("workload", {})
        return {
            "faults": len(self.units),
            "fault_list": [u.describe() for u in self.units],
            "duration_s": workload.get("duration_s"),
            "clients": workload.get("clients"),
            "shops": workload.get("shops"),
            "contacts_per_shop": workload.get("contacts_per_shop"),
        }


def event_rule(event: Any) -> dict[str, Any]:
    """A planned nemesis event as a rule that fires exactly then, for exactly as long."""
    rule: dict[str, Any] = {"action": event.action, "at_s": event.at}
    if event.action in ("kill_worker", "kill_api", "restart_redis"):
        hold = max(0.0, float(event.hold_s))
        rule["restart_after_s"] = [hold, hold]
    elif event.action == "toxic":
        rule.update(proxy=event.target, duration_s=max(0.1, float(event.hold_s)), toxic=event.params["toxic"])
    return rule


def schedule_of(run_dir: Path) -> tuple[Schedule, int]:
    """The failing run's scenario with its plan's events as `at_s` rules, and its seed."""
    document = tomllib.loads((run_dir / "scenario.toml").read_text())
    seed = int(json.loads((run_dir / "run.json").read_text())["seed"])
    events = load_plan(run_dir / "nemesis.plan.json")
    units = [Unit("nemesis", event_rule(e)) for e in events]
    units += [Unit("faults", dict(rule)) for rule in document.get("simulator", {}).get("faults", [])]
    services = document.get("services", {})
    for name in FAILPOINT_FIELDS:
        units += [Unit(name, spec) for spec in str(services.get(name, "")).split(",") if spec]
    base = copy.deepcopy(document)
    base.pop("nemesis", None)
    base.get("simulator", {}).pop("faults", None)
    for name in FAILPOINT_FIELDS:
        base.get("services", {}).pop(name, None)
    base["seed"] = seed
    return Schedule(base, units), seed


def smaller_units(unit: Unit) -> Iterator[Unit]:
    """The same fault, weaker: half the hold or window, half the probability."""
    if unit.where == "nemesis":
        rule = unit.item
        if "restart_after_s" in rule and rule["restart_after_s"][0] > 0.3:
            hold = round(max(0.3, rule["restart_after_s"][0] / 2), 2)
            yield Unit("nemesis", {**rule, "restart_after_s": [hold, hold]})
        if rule["action"] == "toxic" and rule["duration_s"] > 0.5:
            yield Unit("nemesis", {**rule, "duration_s": round(max(0.5, rule["duration_s"] / 2), 2)})
    elif unit.where == "faults":
        probability = float(unit.item.get("probability", 1.0))
        if probability > 0.01:
            yield Unit("faults", {**unit.item, "probability": round(probability / 2, 4)})
    elif "@" in unit.item:
        head, _, tail = unit.item.partition("@")
        probability, _, count = tail.partition("*")
        if float(probability) > 0.005:
            yield Unit(
                unit.where, f"{head}@{round(float(probability) / 2, 4)}" + (f"*{count}" if count else "")
            )


def smaller_workloads(schedule: Schedule) -> Iterator[tuple[str, Schedule]]:
    workload = schedule.base.get("workload", {})
    last_event = max((u.item["at_s"] for u in schedule.units if u.where == "nemesis"), default=0.0)
    duration = float(workload.get("duration_s", 20.0))
    shorter = round(max(last_event + 1.0, 4.0, duration / 2), 1)
    if shorter < duration:
        yield f"chaos phase {duration} -> {shorter} s", _set_workload(schedule, "duration_s", shorter)
    for name, floor in (("clients", 1), ("shops", 1), ("contacts_per_shop", 10)):
        value = workload.get(name)
        if isinstance(value, int) and value > floor:
            smaller = max(floor, value // 2 if name == "contacts_per_shop" else value - 1)
            yield f"{name} {value} -> {smaller}", _set_workload(schedule, name, smaller)


def _set_workload(schedule: Schedule, name: str, value: Any) -> Schedule:
    return schedule.with_base(lambda base: base.setdefault("workload", {}).__setitem__(name, value))


@dataclass
class ShrinkOptions:
    run_dir: Path
    invariant: str | None = None
    max_runs: int = 40
    tries: int = 3
    need: int = 2
    out_dir: Path | None = None
    database_url: str | None = None
    run_timeout_s: float = 600.0


@dataclass
class Shrinker:
    options: ShrinkOptions
    invariant: str
    seed: int
    out_dir: Path
    runs_used: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    on_candidate: Callable[[dict[str, Any]], None] | None = None
    # The kinds of witness the failing run showed (I3's lost_debit, I9's starved...): a candidate must
    # fail with one of them, not with another failure of the same invariant. A seed-profile shrink of a
    # lost debit otherwise "kept" a candidate without the crash that lost it, failing I3 by a double send.
    witness_kinds: frozenset[str] = frozenset()

    def breaks(self, result: RunResult) -> bool:
        """The invariant failed, and for the same kind of reason, when the run's witnesses named one."""
        if result.invariants.get(self.invariant) is not False:
            return False
        return not self.witness_kinds or bool(
            self.witness_kinds & result.witness_kinds.get(self.invariant, set())
        )

    def budget_left(self) -> bool:
        return self.runs_used < self.options.max_runs

    def fails(self, schedule: Schedule, change: str) -> bool:
        """Does this schedule still break the invariant in `need` of `tries` runs (within the budget)?"""
        try:
            scenario = parse_scenario(schedule.document())
        except ScenarioError as exc:
            self._record(change, schedule, [], False, f"not a valid scenario: {exc}")
            return False
        outcomes: list[RunResult] = []
        failures = 0
        options = self.options
        for attempt in range(options.tries):
            if failures >= options.need or failures + (options.tries - attempt) < options.need:
                break
            if not self.budget_left():
                break
            name = f"{len(self.log):03d}-{attempt}"
            code, error, runs_dir = run_scenario_process(
                scenario, self.seed, self.out_dir, name, options.database_url, options.run_timeout_s
            )
            self.runs_used += 1
            result = read_result(
                RunResult(0, self.seed, scenario.name, (), "", exit_code=code, error=error), runs_dir
            )
            outcomes.append(result)
            failures += self.breaks(result)
        accepted = failures >= options.need
        self._record(change, schedule, outcomes, accepted, "")
        return accepted

    def _record(
        self, change: str, schedule: Schedule, outcomes: list[RunResult], accepted: bool, note: str
    ) -> None:
        entry = {
            "candidate": len(self.log),
            "change": change,
            "faults": len(schedule.units),
            "runs": [
                {
                    "run": r.run_dir,
                    "invariant_valid": r.invariants.get(self.invariant),
                    "witness_kinds": sorted(r.witness_kinds.get(self.invariant, ())),
                    "kept_failing": self.breaks(r),
                    "error": r.error,
                }
                for r in outcomes
            ],
            "accepted": accepted,
            "note": note,
        }
        self.log.append(entry)
        if self.on_candidate:
            self.on_candidate(entry)

    def ddmin(self, schedule: Schedule) -> Schedule:
        """Zeller's delta debugging over the fault units: try dropping chunks, then finer chunks."""
        units = list(schedule.units)
        chunks = 2
        while len(units) >= 1 and self.budget_left():
            size = max(1, len(units) // chunks)
            reduced = False
            for start in range(0, len(units), size):
                if not self.budget_left():
                    break
                kept = units[:start] + units[start + size :]
                dropped = units[start : start + size]
                change = "drop " + "; ".join(u.describe() for u in dropped)
                if self.fails(schedule.with_units(kept), change):
                    units = kept
                    chunks = max(chunks - 1, 2)
                    reduced = True
                    break
            if not reduced:
                if size == 1:
                    break
                chunks = min(len(units), chunks * 2)
            if not units:
                break
        return schedule.with_units(units)

    def weaken(self, schedule: Schedule) -> Schedule:
        """Each remaining fault made smaller, as long as the invariant still fails."""
        index = 0
        while index < len(schedule.units) and self.budget_left():
            unit = schedule.units[index]
            for weaker in smaller_units(unit):
                units = list(schedule.units)
                units[index] = weaker
                if self.fails(schedule.with_units(units), f"{unit.describe()} -> {weaker.describe()}"):
                    schedule = schedule.with_units(units)
                    break
            else:
                index += 1
        return schedule

    def lighten(self, schedule: Schedule) -> Schedule:
        progress = True
        while progress and self.budget_left():
            progress = False
            for change, candidate in smaller_workloads(schedule):
                if not self.budget_left():
                    break
                if self.fails(candidate, change):
                    schedule, progress = candidate, True
                    break
        return schedule


def failing_invariant(run_dir: Path, asked: str | None) -> str:
    verdict = json.loads((run_dir / "verdict.json").read_text())
    invalid = [item["id"] for item in verdict["invariants"] if item["valid"] is False]
    if asked:
        if asked not in invalid:
            raise ScenarioError(
                f"--invariant: {asked} did not fail in {run_dir} (failed: {', '.join(invalid) or 'none'})"
            )
        return asked
    if not invalid:
        raise ScenarioError(f"{run_dir}: no invariant failed in this run; nothing to shrink")
    return str(invalid[0])


def witness_kinds(run_dir: Path, invariant: str) -> frozenset[str]:
    verdict = json.loads((run_dir / "verdict.json").read_text())
    item: dict[str, Any] = next((i for i in verdict["invariants"] if i["id"] == invariant), {})
    return frozenset(str(w["kind"]) for w in item.get("witnesses", []) if w.get("kind"))


def shrink(
    options: ShrinkOptions, on_candidate: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Shrink, then write the smallest failing scenario (`shrunk.toml`) and `shrink.json`."""
    run_dir = options.run_dir.resolve()
    invariant = failing_invariant(run_dir, options.invariant)
    original, seed = schedule_of(run_dir)
    out_dir = (options.out_dir or run_dir.parent / f"{run_dir.name}-shrink").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    shrinker = Shrinker(
        options,
        invariant,
        seed,
        out_dir,
        on_candidate=on_candidate,
        witness_kinds=witness_kinds(run_dir, invariant),
    )
    started = time.monotonic()
    # The schedule as rules must still fail before anything is dropped: otherwise the run's failure
    # depended on what the conversion changed (a worker's choice) or on chance, and shrinking means nothing.
    reproduced = shrinker.fails(original, "the run's own schedule, as rules")
    smallest = original
    if reproduced:
        smallest = shrinker.lighten(shrinker.weaken(shrinker.ddmin(original)))
    result = {
        "run": str(run_dir),
        "invariant": invariant,
        "witness_kinds": sorted(shrinker.witness_kinds),
        "seed": seed,
        "tries": options.tries,
        "need": options.need,
        "reproduced": reproduced,
        "runs_used": shrinker.runs_used,
        "max_runs": options.max_runs,
        "seconds": round(time.monotonic() - started, 1),
        "before": original.summary(),
        "after": smallest.summary(),
        "scenario_file": str(out_dir / "shrunk.toml") if reproduced else None,
        "finished_at": datetime.now(UTC).isoformat(),
        "candidates": shrinker.log,
    }
    if reproduced:
        header = (
            f"# Shrunk from {run_dir.name}: {invariant} fails in {options.need} of {options.tries} runs with "
            f"seed {seed}.\n# `smslab run {out_dir / 'shrunk.toml'}` plays it; `smslab shrink` wrote it.\n"
        )
        (out_dir / "shrunk.toml").write_text(header + tomli_w.dumps(smallest.document()))
    (out_dir / "shrink.json").write_text(json.dumps(result, indent=1))
    return result


def save_regression(shrunk: Path, name: str, invariant: str, found: str, fixed_by: str, why: str) -> Path:
    """Keep a shrunk scenario in chaos/regressions/ with every safeguard on: it once broke `invariant`
    (found as `found`) and must hold from now on (`fixed_by`: the commit or safeguard that fixed it)."""
    document = tomllib.loads(shrunk.read_text())
    document.setdefault("services", {}).pop("safeguards_off", None)
    document["name"] = name
    document["regression"] = {"invariant": invariant, "found": found, "fixed_by": fixed_by, "why": why}
    header = (
        f"# A regression scenario (`smslab regressions` runs it; it must hold): it once broke {invariant}.\n"
        f"# Written by `smslab shrink --save {name}`.\n"
    )
    return _keep(REGRESSIONS_DIR, name, document, header)


def _keep(folder: Path, name: str, document: dict[str, Any], header: str) -> Path:
    parse_scenario(document)  # refuse to save what cannot be run
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(header + tomli_w.dumps(document))
    return path


def save_seed_gap(shrunk: Path, name: str, invariant: str, found: str, gap: str, why: str) -> Path:
    """Keep a shrunk scenario in chaos/seed_gaps/ with its safeguards still off: the smallest known
    reproduction of a gap the seed admits (`gap`, in the seed's words); `smslab seed-gaps` expects it to
    break `invariant` still. Unlike a regression, it is never fixed: it documents what the seed costs."""
    document = tomllib.loads(shrunk.read_text())
    if not document.get("services", {}).get("safeguards_off"):
        raise ScenarioError(f"{shrunk}: no safeguard is off in it; a seed gap is the seed's behaviour")
    document["name"] = name
    document["description"] = f"{invariant} broken by the seed's gap: {gap} ({why})."  # not the run's draw
    document["seed_gap"] = {"invariant": invariant, "gap": gap, "found": found, "why": why}
    header = (
        f"# A seed gap (`smslab seed-gaps` runs it; it must break {invariant}): the seed as written.\n"
        f"# Written by `smslab shrink --save-gap {name}`.\n"
    )
    return _keep(SEED_GAPS_DIR, name, document, header)


def _scenarios_in(folder: Path) -> list[Scenario]:
    scenarios = []
    for path in sorted(folder.glob("*.toml")):
        source = path.read_text()
        scenarios.append(parse_scenario(tomllib.loads(source), source))
    return scenarios


def regression_scenarios() -> list[Scenario]:
    return _scenarios_in(REGRESSIONS_DIR)


def seed_gap_scenarios() -> list[Scenario]:
    return _scenarios_in(SEED_GAPS_DIR)

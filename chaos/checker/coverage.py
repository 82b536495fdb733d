"""Coverage: what a run really exercised, and whether that was enough for its verdict to count.

A verdict rests on what the run did. A scenario whose workload stopped after two of its 25 seconds, or
whose faults never fired, proves nothing, however clean its invariants look. So every verdict carries:
- workload: the chaos phase planned and achieved, operations by kind and outcome, campaigns enqueued and
  completed, messages the provider accepted;
- faults: each planned nemesis event and whether it fired; each provider fault rule, how many requests
  it saw, how often it was expected to fire (probability x requests) and did;
- safeguards' paths: what the service counted of the code paths that only faults reach (ambiguous sends
  resolved, early delivery reports kept, duplicates refused...), from its saved tables and its logs;
and checks the scenario's minimums (`[minimums]`, `chaos.scenario.Minimums`). Each shortfall is a
sentence; with any, a verdict that would have read "every invariant holds" is `unknown` instead.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chaos.checker.evidence import AcceptedLike, DatabaseSnapshot
from chaos.checker.snapshot_io import SERVICE_COUNTS
from chaos.history import INVOKE
from chaos.scenario import Minimums, Scenario, ScenarioError, parse_scenario

FAULT_RULES = "fault_rules.json"  # in simulator/: the rules as they stood when the chaos ended
COUNTERS = "counters.json"  # in simulator/: requests (and fired faults) per endpoint
_RECONCILED = re.compile(rb'"event": "reconciled"')


def _json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def load_scenario_as_run(run_dir: Path) -> Scenario | None:
    try:
        return parse_scenario(tomllib.loads((run_dir / "scenario.toml").read_text()))
    except (OSError, ValueError, ScenarioError):
        return None


def _workload(
    manifest: dict[str, Any],
    history: list[dict[str, Any]],
    snapshot: DatabaseSnapshot,
    acceptances: Sequence[AcceptedLike],
) -> dict[str, Any]:
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for entry in history:
        if entry.get("type") != INVOKE:
            by_kind[str(entry.get("f"))][str(entry.get("type"))] += 1
    enqueued = sum(1 for c in snapshot.campaigns.values() if c["enqueued_at"] is not None)
    completed = sum(1 for c in snapshot.campaigns.values() if c["status"] == "completed")
    chaos = manifest.get("chaos") or {}
    planned = float(chaos.get("planned_s") or 0.0)
    achieved = float(chaos.get("achieved_s") or 0.0)
    return {
        "planned_s": planned,
        "achieved_s": achieved,
        "share": round(achieved / planned, 3) if planned else 0.0,
        "operations": {kind: dict(outcomes) for kind, outcomes in sorted(by_kind.items())},
        "campaigns_enqueued": enqueued,
        "campaigns_completed": completed,
        "messages_accepted": len(acceptances),
    }


def _nemesis(run_dir: Path) -> list[dict[str, Any]]:
    planned = _json(run_dir / "nemesis.plan.json", [])
    started: dict[tuple[float, str, str], str] = {}
    timeline = run_dir / "nemesis.jsonl"
    if timeline.exists():
        for line in timeline.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("phase") == "start":
                key = (float(entry.get("planned_at", -1)), str(entry.get("action")), str(entry.get("target")))
                started[key] = str(entry.get("outcome", ""))
    events = []
    for event in planned:
        key = (float(event["at"]), str(event["action"]), str(event["target"]))
        outcome = started.get(key)
        events.append(
            {
                "at": event["at"],
                "action": event["action"],
                "target": event["target"],
                "fired": outcome is not None and not outcome.startswith("failed"),
                "outcome": outcome,
            }
        )
    return events


def _requests_seen(target: str, endpoints: dict[str, dict[str, int]]) -> int:
    if target.endswith("*"):
        return sum(v.get("requests", 0) for t, v in endpoints.items() if t.startswith(target[:-1]))
    return int(endpoints.get(target, {}).get("requests", 0))


def _provider_rules(run_dir: Path, achieved_s: float) -> list[dict[str, Any]]:
    rules = _json(run_dir / "simulator" / FAULT_RULES, [])
    endpoints = _json(run_dir / "simulator" / COUNTERS, {}).get("endpoints", {})
    described = []
    for rule in rules:
        seen = _requests_seen(str(rule["target"]), endpoints)
        share = 1.0
        if achieved_s > 0 and (rule.get("start_s") is not None or rule.get("end_s") is not None):
            start = max(0.0, float(rule.get("start_s") or 0.0))
            end = min(achieved_s, float(rule["end_s"]) if rule.get("end_s") is not None else achieved_s)
            share = max(0.0, end - start) / achieved_s
        expected = float(rule.get("probability", 1.0)) * seen * share
        if rule.get("count") is not None:
            expected = min(expected, float(rule["count"]))
        described.append(
            {
                "id": rule["id"],
                "target": rule["target"],
                "kind": rule["kind"],
                "probability": rule.get("probability", 1.0),
                "requests_seen": seen,
                "expected": round(expected, 1),
                "fired": int(rule.get("fired", 0)),
            }
        )
    return described


def _safeguard_paths(run_dir: Path) -> dict[str, Any]:
    """The service's own account of its rarer paths: its saved counts, and its reconciler's log lines."""
    counts = _json(run_dir / "database" / SERVICE_COUNTS, {})
    reconciled: Counter[str] = Counter()
    for log in sorted((run_dir / "logs").glob("worker-*.log")):
        data = log.read_bytes()
        if not _RECONCILED.search(data):
            continue
        for line in data.splitlines():
            if _RECONCILED.search(line):
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                for key, value in entry.items():
                    if isinstance(value, int) and not isinstance(value, bool) and value:
                        reconciled[key] += value
                    elif isinstance(value, list) and key == "completed":
                        reconciled[key] += len(value)
    return {**counts, "reconciler": dict(sorted(reconciled.items()))}


def shortfalls(coverage: dict[str, Any], minimums: Minimums) -> list[str]:
    """Each way the run fell short of its scenario's minimums, as a sentence."""
    found = []
    workload = coverage["workload"]
    if workload["planned_s"] and workload["share"] < minimums.chaos_share:
        found.append(
            f"the workload ran {workload['achieved_s']:g} of its {workload['planned_s']:g} s "
            f"({workload['share']:.0%}; the scenario's minimum is {minimums.chaos_share:.0%})"
        )
    if minimums.every_nemesis_event:
        missed = [e for e in coverage["faults"]["nemesis"] if not e["fired"]]
        if missed:
            listed = ", ".join(f"{e['action']} at {e['at']:g} s" for e in missed[:5])
            found.append(f"{len(missed)} planned nemesis event(s) did not fire: {listed}")
    for rule in coverage["faults"]["provider_rules"]:
        if rule["expected"] >= minimums.expected_fires and rule["fired"] == 0:
            found.append(
                f"fault rule {rule['id']} ({rule['kind']} on {rule['target']}) never fired, though expected "
                f"{rule['expected']:g} times ({rule['requests_seen']} requests x {rule['probability']})"
            )
    if workload["campaigns_completed"] < minimums.campaigns_completed:
        found.append(
            f"{workload['campaigns_completed']} campaign(s) completed; the scenario's minimum is "
            f"{minimums.campaigns_completed}"
        )
    return found


def assess(
    run_dir: Path,
    manifest: dict[str, Any],
    history: list[dict[str, Any]],
    snapshot: DatabaseSnapshot,
    acceptances: Sequence[AcceptedLike],
) -> dict[str, Any]:
    """The verdict's coverage section, with `shortfalls` against the scenario's minimums."""
    scenario = load_scenario_as_run(run_dir)
    workload = _workload(manifest, history, snapshot, acceptances)
    coverage: dict[str, Any] = {
        "workload": workload,
        "faults": {
            "nemesis": _nemesis(run_dir),
            "provider_rules": _provider_rules(run_dir, workload["achieved_s"]),
            "crashes": sum(
                1
                for line in (run_dir / "nemesis.jsonl").read_text().splitlines()
                if '"action": "crash"' in line
            )
            if (run_dir / "nemesis.jsonl").exists()
            else 0,
        },
        "safeguard_paths": _safeguard_paths(run_dir),
    }
    minimums = scenario.minimums if scenario is not None else Minimums()
    coverage["minimums"] = {
        "chaos_share": minimums.chaos_share,
        "every_nemesis_event": minimums.every_nemesis_event,
        "expected_fires": minimums.expected_fires,
        "campaigns_completed": minimums.campaigns_completed,
    }
    coverage["shortfalls"] = shortfalls(coverage, minimums)
    if scenario is None:
        coverage["shortfalls"].insert(0, "the run folder has no readable scenario.toml")
    return coverage

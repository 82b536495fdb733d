"""What a person sees of a swarm and a shrink: a line per finished run, then the tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from chaos.report import WIDTH
from chaos.swarm import RunResult


def run_line(result: RunResult, done: list[RunResult], total: int | None) -> str:
    failures = sum(r.failed for r in done)
    kinds = len({k for r in done for k in r.kinds})
    if result.error:
        outcome = f"NO VERDICT: {result.error}"
    elif result.failed:
        bad = ", ".join(
            f"{name} {'invalid' if result.invariants.get(name) is False else 'unknown'}"
            for name in result.failing_invariants
        )
        outcome = "FAILED: " + (bad or "unknown: " + "; ".join(result.unknown_because))
    else:
        outcome = "every invariant holds"
    of = f"/{total}" if total else ""
    return (
        f"[{len(done)}{of}] run {result.index:04d} seed {result.seed} {result.base} "
        f"({', '.join(result.kinds)}): {outcome} in {result.seconds:.0f} s"
        f" | failures so far {failures}, fault kinds exercised {kinds}"
    )


def print_swarm(document: dict[str, Any], path: str) -> None:
    out = Console(width=WIDTH)
    runs = Table(title="swarm runs (failing first)")
    for column in ("run", "seed", "scenario", "fault kinds", "verdict", "settled after s"):
        runs.add_column(column)
    for entry in document["runs"]:
        if entry["error"]:
            verdict = entry["error"]
        elif entry["failed"]:
            bad = [name for name, valid in entry["invariants"].items() if valid is not True]
            verdict = (
                ("FAILED " + ", ".join(bad)) if bad else "UNKNOWN: " + "; ".join(entry["unknown_because"])
            )
        else:
            verdict = "all valid"
        settled = entry["settled_after_s"]
        runs.add_row(
            f"{entry['index']:04d}",
            str(entry["seed"]),
            entry["base"],
            ", ".join(entry["fault_kinds"]),
            verdict,
            "" if settled is None else f"{settled:.1f}",
        )
    out.print(runs)
    summary = document["summary"]
    kinds = Table(title="fault kinds")
    for column in ("fault kind", "runs", "failed"):
        kinds.add_column(column)
    for name, counts in summary["fault_kinds"].items():
        kinds.add_row(name, str(counts["runs"]), str(counts["failed"]))
    out.print(kinds)
    invariants = " ".join(
        f"{name} {c['valid']}/{c['valid'] + c['invalid'] + c['unknown']}"
        for name, c in summary["invariants"].items()
    )
    out.print(f"invariants valid: {invariants}", markup=False)
    if summary["never_drawn"]:
        out.print(f"fault kinds no run drew: {', '.join(summary['never_drawn'])}", markup=False)
    first = document.get("first_failure_after_runs")
    off = document.get("safeguards_off") or []
    found = f"first failure in run {first}" if first else "no failure"
    what = f" with {', '.join(off)} off" if off else " with every safeguard on"
    out.print(
        f"swarm{what}: {summary['runs']} runs, {summary['failed']} failed ({found}); {path}", markup=False
    )


def candidate_line(entry: dict[str, Any]) -> str:
    # F: failed as the run did; f: failed, for another kind of reason (not kept)
    tries = " ".join(
        ("F" if r.get("kept_failing", True) else "f")
        if r["invariant_valid"] is False
        else ("?" if r["error"] else ".")
        for r in entry["runs"]
    )
    mark = "kept" if entry["accepted"] else "rejected"
    note = f" ({entry['note']})" if entry["note"] else ""
    faults = f"{entry['faults']} faults"
    return f"candidate {entry['candidate']:>3}: {entry['change']} -> {faults} [{tries}] {mark}{note}"


def print_shrink(result: dict[str, Any]) -> None:
    out = Console(width=WIDTH)
    if not result["reproduced"]:
        out.print(
            f"{result['invariant']} did not fail in {result['need']} of {result['tries']} runs of the "
            f"run's own schedule: nothing to shrink (this rare a failure needs more --tries)",
            markup=False,
        )
        return
    table = Table(
        title=f"shrink: {result['invariant']} still fails ({result['need']} of {result['tries']} runs)"
    )
    for column in ("", "faults", "chaos s", "clients", "shops", "contacts/shop"):
        table.add_column(column)
    for label in ("before", "after"):
        s = result[label]
        table.add_row(
            label,
            str(s["faults"]),
            str(s["duration_s"]),
            str(s["clients"]),
            str(s["shops"]),
            str(s["contacts_per_shop"]),
        )
    out.print(table)
    out.print("faults left: " + ("; ".join(result["after"]["fault_list"]) or "none"), markup=False)
    out.print(
        f"{result['runs_used']} runs in {result['seconds']:.0f} s; "
        f"smallest failing scenario: {result['scenario_file']}",
        markup=False,
    )

"""`smslab matrix`: proof that the checker would catch each safeguard's absence.

For each row of `chaos/matrix.toml` (a safeguard, the scenario whose faults expose it, the changes it
needs, the invariant that must fail) the scenario runs with that safeguard switched off, and the named
invariant must come out invalid. Then the rows' scenarios run with every safeguard on, and every
invariant must hold: a failure that also happens with the safeguard on proves nothing about it. A
safeguard whose removal goes unnoticed is a failure of the lab, and so is a control run that fails.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos.scenario import Scenario, ScenarioError, load_scenario
from service import safeguards

MATRIX_FILE = Path(__file__).with_name("matrix.toml")
SHORT_DURATION_S = 6.0


@dataclass(frozen=True)
class MatrixRow:
    safeguard: str
    scenario: str
    fails: str
    why: str
    changes: dict[str, Any] = field(default_factory=dict)
    # a kind of witness the failure must show (`kind` of a witness): the failure for the stated reason,
    # not another one the same invariant also catches
    witness: str | None = None
    # how long the short matrix (CI) runs this row's scenario: a few seconds, unless the row's faults
    # need longer before its invariants have anything to judge
    short_duration_s: float = SHORT_DURATION_S


@dataclass
class Outcome:
    kind: str  # "safeguard_off" or "all_on"
    scenario: str
    safeguard: str | None
    expected: str  # "I6 invalid" or "all valid"
    verdicts: dict[str, Any]
    as_expected: bool
    run_dir: str
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "safeguard": self.safeguard,
            "number": safeguards.REGISTRY[self.safeguard].number if self.safeguard else None,
            "scenario": self.scenario,
            "expected": self.expected,
            "verdicts": self.verdicts,
            "as_expected": self.as_expected,
            "run": self.run_dir,
            "note": self.note,
        }


def load_matrix(path: Path = MATRIX_FILE) -> list[MatrixRow]:
    document = tomllib.loads(path.read_text())
    rows = []
    for index, table in enumerate(document.get("row", [])):
        where = f"matrix.row[{index}]"
        if table.get("safeguard") not in safeguards.REGISTRY:
            raise ScenarioError(f"{where}.safeguard: must be one of {', '.join(safeguards.REGISTRY)}")
        if not str(table.get("fails", "")).startswith("I"):
            raise ScenarioError(f"{where}.fails: must name an invariant (I1..I9)")
        rows.append(
            MatrixRow(
                table["safeguard"],
                table["scenario"],
                table["fails"],
                table.get("why", ""),
                table.get("changes", {}),
                table.get("witness"),
                float(table.get("short_duration_s", SHORT_DURATION_S)),
            )
        )
    missing = sorted(set(safeguards.REGISTRY) - {row.safeguard for row in rows})
    if missing:
        raise ScenarioError(f"matrix: no row exposes {', '.join(missing)}")
    return rows


def row_scenario(row: MatrixRow, short: bool) -> Scenario:
    scenario = load_scenario(row.scenario).with_changes(row.changes)
    if short and scenario.workload.duration_s > row.short_duration_s:
        scenario = scenario.with_changes({"workload": {"duration_s": row.short_duration_s}})
    return scenario


@dataclass
class PlannedRun:
    kind: str  # "safeguard_off" or "all_on"
    scenario: Scenario
    row: MatrixRow | None = None  # the row whose safeguard is off
    controls: list[str] = field(default_factory=list)  # all on: the rows whose scenario this is


def plan_runs(rows: list[MatrixRow], short: bool) -> list[PlannedRun]:
    """Every row with its safeguard off, then each distinct scenario of the rows with everything on."""
    runs = [
        PlannedRun("safeguard_off", row_scenario(row, short).with_safeguards_off((row.safeguard,)), row)
        for row in rows
    ]
    controls: dict[str, PlannedRun] = {}
    for row in rows:
        scenario = row_scenario(row, short)
        control = controls.setdefault(scenario.as_toml(), PlannedRun("all_on", scenario))
        control.controls.append(row.safeguard)
    return runs + list(controls.values())


def judge(kind: str, row: MatrixRow | None, verdict: dict[str, Any]) -> tuple[bool, str, dict[str, Any]]:
    verdicts = {item["id"]: item["valid"] for item in verdict["invariants"]}
    if kind == "safeguard_off":
        assert row is not None
        expected = f"{row.fails} invalid"
        failed = verdicts.get(row.fails) is False
        if row.witness:
            expected += f" ({row.witness})"
            witnesses: list[dict[str, Any]] = next(
                (item["witnesses"] for item in verdict["invariants"] if item["id"] == row.fails), []
            )
            failed = failed and any(w.get("kind") == row.witness for w in witnesses)
        return failed, expected, verdicts
    # Everything on: every invariant holds, and the run did what its scenario asks (no shortfall of
    # coverage): a control that exercised nothing controls nothing.
    exercised = not verdict.get("unknown_because")
    return all(v is True for v in verdicts.values()) and exercised, "all valid", verdicts


def run_matrix(
    out_dir: Path,
    short: bool,
    database_url: str | None,
    run: Callable[[Scenario, Path], tuple[Path, dict[str, Any]]],
    on_outcome: Callable[[Outcome, int, int], None] | None = None,
    only: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run every planned run through `run(scenario, out_dir)`, judge it, write `matrix.json`."""
    rows = load_matrix()
    if only:
        unknown = sorted(set(only) - {row.safeguard for row in rows})
        if unknown:
            raise ScenarioError(f"--only: no matrix row for {', '.join(unknown)}")
        rows = [row for row in rows if row.safeguard in only]
    planned = plan_runs(rows, short)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).isoformat()
    outcomes: list[Outcome] = []
    for index, planned_run in enumerate(planned, start=1):
        row = planned_run.row
        expected = f"{row.fails} invalid" if row else "all valid"
        note = row.why if row else f"the scenario of: {', '.join(planned_run.controls)}"
        try:
            run_dir, verdict = run(planned_run.scenario, out_dir)
        except Exception as exc:  # noqa: BLE001 - one broken run is a failed row, not a lost matrix
            outcome = Outcome(
                planned_run.kind,
                planned_run.scenario.name,
                row.safeguard if row else None,
                expected,
                {},
                False,
                "",
                note=f"the run itself failed: {type(exc).__name__}: {exc}",
            )
        else:
            ok, expected, verdicts = judge(planned_run.kind, row, verdict)
            if not ok and verdict.get("unknown_because"):
                note = "the run did not do what its scenario asks: " + "; ".join(verdict["unknown_because"])
            outcome = Outcome(
                planned_run.kind,
                planned_run.scenario.name,
                row.safeguard if row else None,
                expected,
                verdicts,
                ok,
                str(run_dir),
                note=note,
            )
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome, index, len(planned))
    result = {
        "started_at": started,
        "finished_at": datetime.now(UTC).isoformat(),
        "short": short,
        "database": "postgresql" if database_url else "sqlite",
        "as_expected": all(o.as_expected for o in outcomes),
        "rows": [o.as_dict() for o in outcomes],
    }
    (out_dir / "matrix.json").write_text(json.dumps(result, indent=1))
    return result

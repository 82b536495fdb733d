"""What a person sees: live progress while a run goes, and the verdict table at the end."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

# Off a terminal (CI logs, pipes) rich would wrap tables at 80 columns; a log has room for more.
WIDTH = None if sys.stdout.isatty() else 150
console = Console(stderr=True, width=None if sys.stderr.isatty() else WIDTH)
PHASES = ("prepare", "start", "world", "chaos", "heal", "settle", "snapshot", "check", "done")


class Progress:
    """One status line, rewritten in place on a terminal; one line per phase otherwise (CI logs)."""

    def __init__(self, quiet: bool = False) -> None:
        self.interactive = sys.stderr.isatty()
        self.quiet = quiet  # the matrix: only the interactive status line, no per-phase lines
        self.last_phase: str | None = None

    def __call__(self, state: dict[str, Any]) -> None:
        if self.quiet and not self.interactive:
            return
        phase = state.get("phase", "")
        ops = state.get("ops", {})
        done = sum(v for k, v in ops.items() if not k.endswith(":invoke"))
        unknown = sum(v for k, v in ops.items() if k.endswith(":info"))
        parts = [f"[bold]{phase}[/bold]"]
        if phase == "chaos":
            parts += [
                f"{state.get('elapsed_s', 0):.0f}/{state.get('duration_s', 0):.0f}s",
                f"{done} ops ({unknown} unknown)",
                f"{state.get('campaigns', 0)} campaigns enqueued",
                f"{state.get('faults', 0)} faults injected",
            ]
        elif phase == "settle":
            parts += [
                f"{state.get('elapsed_s', 0):.0f}s",
                f"{state.get('unsettled', 0)} recipients in flight",
                f"{state.get('deliveries', 0)} webhooks pending",
            ]
        line = "  ".join(parts)
        if self.interactive:
            console.print(f"\r{line}" + " " * 10, end="", markup=True, highlight=False)
            if phase == "done":
                console.print()
        elif phase != self.last_phase:
            console.print(line, markup=True, highlight=False)
        self.last_phase = phase


def _short(counts: dict[str, Any], limit: int = 4) -> str:
    interesting = [(k, v) for k, v in counts.items() if v]
    return ", ".join(f"{k}={v}" for k, v in interesting[:limit])


def verdict_table(verdict: dict[str, Any]) -> Table:
    valid = verdict["valid"]
    caption = {True: "[green]every invariant holds[/green]", False: "[red]INVALID[/red]"}.get(
        valid, "[yellow]unknown[/yellow]"
    )
    table = Table(
        title=f"verdict: {verdict.get('scenario')} (seed {verdict.get('seed')})  {caption}", show_lines=False
    )
    table.add_column("id")
    table.add_column("invariant", overflow="fold", max_width=46)
    table.add_column("verdict")
    table.add_column("counts", overflow="fold", max_width=60)
    table.add_column("first witness", overflow="fold", max_width=60)
    for item in verdict["invariants"]:
        state = item["valid"]
        label = (
            "[green]valid[/green]"
            if state is True
            else "[red]INVALID[/red]"
            if state is False
            else "[yellow]unknown[/yellow]"
        )
        witness = str(item["witnesses"][0]) if item["witnesses"] else item.get("note", "") or ""
        table.add_row(item["id"], item["title"], label, _short(item["counts"]), witness[:200])
    return table


def print_verdict(verdict: dict[str, Any], run_dir: str) -> None:
    out = Console(width=WIDTH)
    out.print(verdict_table(verdict))
    out.print(f"run folder: {run_dir}   (checked in {verdict.get('checked_in_s')} s)")


def _verdict_word(value: Any) -> str:
    return {True: "valid", False: "INVALID"}.get(value, "unknown")


def print_outcome(outcome: Any, index: int, total: int) -> None:
    """One line per matrix run as it finishes."""
    mark = "[green]as expected[/green]" if outcome.as_expected else "[red]NOT AS EXPECTED[/red]"
    what = f"{outcome.safeguard} off" if outcome.safeguard else "all safeguards on"
    failed = [k for k, v in outcome.verdicts.items() if v is not True]
    got = ", ".join(f"{k} {_verdict_word(outcome.verdicts[k])}" for k in failed) or "all valid"
    extra = f"  ({outcome.note})" if not outcome.verdicts and outcome.note else ""
    line = f"[{index}/{total}] {outcome.scenario}, {what}: expected {outcome.expected}, got {got}"
    console.print(f"{line}  {mark}{extra}", highlight=False)


def print_matrix(result: dict[str, Any], path: str) -> None:
    out = Console(width=WIDTH)
    ok = result["as_expected"]
    table = Table(
        title="safeguard matrix  "
        + ("[green]every row as expected[/green]" if ok else "[red]NOT AS EXPECTED[/red]")
    )
    for column in ("#", "safeguard off", "scenario", "expected", "I1..I8", "result"):
        table.add_column(column, overflow="fold")
    for row in result["rows"]:
        cells = " ".join(
            f"{k}:{'ok' if v is True else 'X' if v is False else '?'}" for k, v in row["verdicts"].items()
        )
        table.add_row(
            str(row["number"] or ""),
            row["safeguard"] or f"(all on) {row['note'].removeprefix('the scenario of: ')}",
            row["scenario"],
            row["expected"],
            cells or row["note"][:60],
            "[green]as expected[/green]" if row["as_expected"] else "[red]NOT AS EXPECTED[/red]",
        )
    out.print(table)
    out.print(f"matrix: {path}")

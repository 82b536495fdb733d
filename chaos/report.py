"""What a person sees: live progress while a run goes, and the verdict table at the end."""

from __future__ import annotations

import atexit
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

# Off a terminal (CI logs, pipes) rich would wrap tables at 80 columns; a log has room for more.
WIDTH = None if sys.stdout.isatty() else 150
console = Console(stderr=True, width=None if sys.stderr.isatty() else WIDTH)
_stderr_console = console  # `Progress`'s default (its `console` argument shadows the name)
PHASES = ("prepare", "start", "world", "chaos", "heal", "settle", "snapshot", "check", "done")


class Progress:
    """The run's progress as the harness reports it (`on_progress`), told truthfully wherever it is read.

    On a terminal: rich's live display, one frame replaced in place, and each finished phase's closing
    figures printed above it. Off a terminal (CI logs, pipes): plain lines only, no carriage return and no
    escape code, since a log keeps every byte: the latest figures at most every `every_s` seconds while a
    phase runs, and one closing line per phase with its figures and duration. `quiet` (the matrix, which
    prints a line per run) keeps only the live frame on a terminal and prints nothing off one.
    """

    def __init__(
        self,
        quiet: bool = False,
        *,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
        every_s: float = 5.0,
    ) -> None:
        if console is None:
            # rich counts FORCE_COLOR as a terminal, but a CI log with colours still cannot move a cursor.
            console = _stderr_console
            self.interactive = sys.stderr.isatty() and console.is_terminal and not console.is_dumb_terminal
        else:
            self.interactive = console.is_terminal and not console.is_dumb_terminal
        self.console = console
        self.quiet = quiet
        self.clock = clock
        self.every_s = every_s
        # The harness starts in "prepare" without reporting it: its first report is already "start".
        self.phase = PHASES[0]
        self.started = self.phase_started = self.last_line = clock()
        self.state: dict[str, Any] = {}
        self.live: Live | None = None

    def __call__(self, state: dict[str, Any]) -> None:
        now = self.clock()
        phase = str(state.get("phase") or self.phase)
        if phase != self.phase:
            closing = (
                f"{self.phase} done in {now - self.phase_started:.1f} s",
                _figures(self.phase, self.state),
            )
            self.phase, self.phase_started, self.last_line, self.state = phase, now, now, state
            if self.live is not None and phase != "done":
                self.live.refresh()  # the frame drawn again under the closing line is the new phase's
            self._say(*closing)
        self.state = state
        if phase == "done":
            self._say(f"run done in {now - self.started:.1f} s", [_verdict_caption(state.get("valid"))])
            self.close()
        elif self.interactive:
            self._live().refresh()
        elif not self.quiet and now - self.last_line >= self.every_s:
            self._say(f"{phase} {self._elapsed(now)}", _figures(phase, state))
            self.last_line = now

    def close(self) -> None:
        """The live display taken down (transient: only the closing lines stay), the cursor shown again."""
        if self.live is not None:
            self.live.stop()
            self.live = None
            atexit.unregister(self.close)
            if _active and _active[0] is self:
                _active.clear()

    def _say(self, head: str, figures: list[str]) -> None:
        """A closing or periodic line: above the live frame on a terminal, a plain line in a log."""
        if self.quiet:
            return
        tail = f": {', '.join(figures)}" if figures else ""
        if self.interactive:
            phase, _, rest = head.partition(" ")
            self.console.print(Text.assemble((phase, "bold"), f" {rest}{tail}"))
        else:
            self.console.file.write(f"{head}{tail}\n")
            self.console.file.flush()

    def _elapsed(self, now: float) -> str:
        elapsed = now - self.phase_started
        if self.phase == "chaos" and self.state.get("duration_s"):
            return f"{elapsed:.0f}/{float(self.state['duration_s']):.0f} s"
        return f"{elapsed:.0f} s"

    def _frame(self) -> Text:
        figures = _figures(self.phase, self.state)
        return Text.assemble((self.phase, "bold"), "  ".join(["", self._elapsed(self.clock()), *figures]))

    def _live(self) -> Live:
        if self.live is None:
            for other in _active:  # a run that failed half-way left its display up: it would hide ours
                other.close()
            self.live = Live(get_renderable=self._frame, console=self.console, transient=True)
            self.live.start()
            _active[:] = [self]
            atexit.register(self.close)  # a run that raises never reports "done"
        return self.live


_active: list[Progress] = []


def _figures(phase: str, state: dict[str, Any]) -> list[str]:
    """What a phase has to show: operations, campaigns and faults while the chaos runs; what is still in
    flight while the run settles (reported only by settle itself: older keys in `state` are stale)."""
    if phase == "chaos" and "load" in state:  # `smslab load`: Locust's own latest second
        load: dict[str, Any] = state.get("load") or {}
        return [
            f"{_count(load.get('users', 0), 'user')}",
            f"{load.get('rps', 0):.0f} requests/s",
            f"{_count(load.get('requests', 0), 'request')} ({load.get('failures', 0)} failed)",
            f"{_count(state.get('faults', 0), 'fault')} injected",
        ]
    if phase == "chaos":
        ops: dict[str, int] = state.get("ops") or {}
        done = sum(v for k, v in ops.items() if not k.endswith(":invoke"))
        unknown = sum(v for k, v in ops.items() if k.endswith(":info"))
        return [
            f"{_count(done, 'operation')} ({unknown} unknown)",
            f"{_count(state.get('campaigns', 0), 'campaign')} enqueued",
            f"{_count(state.get('faults', 0), 'fault')} injected",
        ]
    if phase == "settle" and "unsettled" in state:
        return [
            f"{_count(state['unsettled'], 'recipient')} in flight",
            f"{_count(state.get('deliveries', 0), 'webhook')} pending",
        ]
    return []


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


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


def coverage_lines(verdict: dict[str, Any]) -> list[str]:
    """What the run exercised, in three lines under the table: a verdict is only worth the run behind it."""
    coverage = verdict.get("coverage") or {}
    lines = []
    workload = coverage.get("workload")
    if workload:
        kinds: dict[str, int] = {}
        for outcomes in workload.get("operations", {}).values():
            for kind, number in outcomes.items():
                kinds[kind] = kinds.get(kind, 0) + number
        lines.append(
            f"exercised: chaos {workload.get('achieved_s', 0):g} of {workload.get('planned_s', 0):g} s; "
            f"{sum(kinds.values())} operations ("
            + ", ".join(f"{kind} {number}" for kind, number in sorted(kinds.items()))
            + f"); {_count(workload.get('campaigns_enqueued', 0), 'campaign')} enqueued, "
            f"{workload.get('campaigns_completed', 0)} completed; "
            f"{_count(workload.get('messages_accepted', 0), 'message')} accepted"
        )
    faults = coverage.get("faults")
    if faults:
        nemesis = faults.get("nemesis", [])
        rules = faults.get("provider_rules", [])
        parts = [f"nemesis {sum(1 for e in nemesis if e.get('fired'))}/{len(nemesis)} events fired"]
        parts += [f"{r['target']} {r['kind']} fired {r['fired']} (expected {r['expected']:g})" for r in rules]
        if faults.get("crashes"):
            parts.append(f"{_count(faults['crashes'], 'crash')} seen by the supervisor")
        lines.append("faults: " + "; ".join(parts))
    metrics = (verdict.get("observations") or {}).get("metrics") or {}
    if metrics.get("available"):
        rows = metrics.get("comparisons", [])
        wrong = [r for r in rows if not r.get("agrees")]
        lost = [r for r in rows if r.get("agrees") and r.get("off_by", 0) < 0]
        lines.append(
            f"observed: the service's metrics agree with ground truth ({len(rows)} counters)"
            + "".join(
                f"; {r['what']} {r['metric']:g} vs {r['truth']:g}, within what {r['lost_because']} can "
                "leave uncounted"
                for r in lost
            )
            if not wrong
            else "observed: the service's METRICS DISAGREE with ground truth: "
            + "; ".join(f"{r['what']} {r['metric']:g} vs {r['truth']:g}" for r in wrong)
        )
    elif metrics:
        lines.append(f"observed: no metrics ({metrics.get('why')})")
    return lines


def print_verdict(verdict: dict[str, Any], run_dir: str) -> None:
    out = Console(width=WIDTH)
    out.print(verdict_table(verdict))
    for line in coverage_lines(verdict):
        out.print(line, markup=False, highlight=False, overflow="fold")
    for reason in verdict.get("unknown_because") or []:  # every row valid, yet the run proves nothing
        out.print(f"unknown because: {reason}", markup=False, highlight=False)
    if verdict.get("load"):
        print_load(verdict, out)
    overran = (verdict.get("observations") or {}).get("stops_overran")
    if overran:  # not a verdict matter, but time the user waited, and a hang to look into
        out.print(
            "slow to stop: "
            + ", ".join(f"{name} ({count}x)" for name, count in sorted(overran.items()))
            + " did not stop within the grace period and was killed;"
            " its log ends with the stacks it was stuck in",
            markup=False,
            highlight=False,
        )
    out.print(f"run folder: {run_dir}   (checked in {verdict.get('checked_in_s')} s)")


def load_table(load: dict[str, Any]) -> Table:
    """Locust's figures by request class, as its own table shows them, the total last; `shed` counts the
    503 overloaded answers among the requests (successes in Locust's table, service/admission.py)."""
    table = Table(title="load (Locust)", show_lines=False)
    for column in ("request class", "requests", "failed", "shed", "req/s", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "request class" else "right")
    for row in load.get("summary", []):
        table.add_row(
            row["request_class"],
            str(row["requests"]),
            str(row["failures"]),
            str(row.get("shed", 0)),
            f"{row['rps']:g}",
            f"{row['p50_ms']:g}",
            f"{row['p95_ms']:g}",
            f"{row['p99_ms']:g}",
        )
    return table


def print_load(verdict: dict[str, Any], out: Console) -> None:
    """The load summary and the gate, under the verdict: exit 0 needs both the invariants and the gate."""
    load = verdict["load"]
    out.print(load_table(load))
    gate = load.get("gate") or {}
    if gate.get("passed"):
        out.print(f"load gate: [green]passed[/green] ({len(gate.get('checks', []))} checks)")
    else:
        out.print("load gate: [red]FAILED[/red]: " + "; ".join(gate.get("why", [])), highlight=False)
    if verdict.get("passed"):
        out.print("load run: [green]PASS[/green]: every invariant holds and the gate passed")
    else:
        failed = [
            what
            for what, bad in (
                ("the invariants", verdict.get("valid") is not True),
                ("the gate", not gate.get("passed")),
            )
            if bad
        ]
        out.print(f"load run: [red]FAIL[/red]: {' and '.join(failed)}")


def _verdict_caption(value: Any) -> str:
    return "every invariant holds" if value is True else "INVALID" if value is False else "unknown"


def _verdict_word(value: Any) -> str:
    return {True: "valid", False: "INVALID"}.get(value, "unknown")


def print_outcome(outcome: Any, index: int, total: int) -> None:
    """One line per matrix run as it finishes."""
    mark = "[green]as expected[/green]" if outcome.as_expected else "[red]NOT AS EXPECTED[/red]"
    what = f"{outcome.safeguard} off" if outcome.safeguard else "all safeguards on"
    failed = [k for k, v in outcome.verdicts.items() if v is not True]
    got = ", ".join(f"{k} {_verdict_word(outcome.verdicts[k])}" for k in failed) or "all valid"
    extra = (
        f"  ({outcome.note})" if (not outcome.verdicts or not outcome.as_expected) and outcome.note else ""
    )
    line = f"[{index}/{total}] {outcome.scenario}, {what}: expected {outcome.expected}, got {got}"
    console.print(f"{line}  {mark}{extra}", highlight=False)


def print_matrix(result: dict[str, Any], path: str) -> None:
    out = Console(width=WIDTH)
    ok = result["as_expected"]
    table = Table(
        title="safeguard matrix  "
        + ("[green]every row as expected[/green]" if ok else "[red]NOT AS EXPECTED[/red]")
    )
    for column in ("#", "safeguard off", "scenario", "expected", "I1..I9", "result"):
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

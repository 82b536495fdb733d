"""The progress display tells the truth where it is read: a CI log gets plain periodic and closing lines,
a terminal gets one live frame replaced in place (tested through a small terminal model, not by eye)."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from rich.console import Console

from chaos.report import Progress

ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class FakeClock:
    """Time that moves only when the test says so (steps in binary fractions: no rounding surprises)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drive(progress: Progress, clock: FakeClock) -> None:
    """A run as the harness reports it: the phases in order, chaos and settle every 0.5 s."""
    base: dict[str, Any] = {"run": "r1", "faults": 0, "ops": {}, "campaigns": 0}
    clock.now += 0.25
    progress({**base, "phase": "start"})
    clock.now += 5.5
    progress({**base, "phase": "world"})
    clock.now += 1.25
    progress({**base, "phase": "chaos", "duration_s": 15})
    state = dict(base)
    for step in range(1, 31):  # 15 s of chaos
        clock.now += 0.5
        ops = {"campaign:invoke": 400 * step, "campaign:ok": 380 * step, "campaign:info": step}
        state = {**base, "phase": "chaos", "duration_s": 15, "elapsed_s": step / 2}
        state.update(faults=step // 4, ops=ops, campaigns=30 * step)
        progress(state)
    clock.now += 0.25
    progress({**state, "phase": "heal"})
    clock.now += 8.0
    progress({**state, "phase": "settle"})
    for step in range(1, 25):  # 12 s of settling
        clock.now += 0.5
        progress({**state, "phase": "settle", "unsettled": 480 - 20 * step, "deliveries": 96 - 4 * step})
    clock.now += 0.5
    progress({**state, "phase": "settle", "unsettled": 0, "deliveries": 0})
    clock.now += 0.25
    progress({**state, "phase": "snapshot", "unsettled": 0, "deliveries": 0})
    clock.now += 2.0
    progress({**state, "phase": "check", "unsettled": 0, "deliveries": 0})
    clock.now += 0.25
    progress({**state, "phase": "done", "valid": True})


CLOSING = [
    "prepare done in 0.2 s",
    "start done in 5.5 s",
    "world done in 1.2 s",
    "chaos done in 15.2 s: 11430 operations (30 unknown), 900 campaigns enqueued, 7 faults injected",
    "heal done in 8.0 s",
    "settle done in 12.8 s: 0 recipients in flight, 0 webhooks pending",
    "snapshot done in 2.0 s",
    "check done in 0.2 s",
    "run done in 45.2 s: every invariant holds",
]


def log_console(buffer: io.StringIO) -> Console:
    return Console(file=buffer, force_terminal=False, width=150)


def terminal_console(buffer: io.StringIO) -> Console:
    return Console(file=buffer, force_terminal=True, width=150, _environ={"TERM": "xterm-256color"})


def screen(output: str) -> list[str]:
    """What a terminal shows after `output`: text, newlines, carriage returns, erase-line and cursor-up
    applied (colours and cursor visibility change nothing on screen); blank lines dropped."""
    lines, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]+", output):
        if token == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b["):
            if token.endswith("K"):
                lines[row] = ""
            elif token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token) :]
            col += len(token)
    return [line.rstrip() for line in lines if line.strip()]


def test_a_log_gets_a_line_every_few_seconds_and_each_phases_closing_figures() -> None:
    buffer, clock = io.StringIO(), FakeClock()
    progress = Progress(console=log_console(buffer), clock=clock)
    assert not progress.interactive
    drive(progress, clock)
    output = buffer.getvalue()
    assert "\r" not in output
    assert "\x1b" not in output
    chaos_lines = [
        "chaos 5/15 s: 3810 operations (10 unknown), 300 campaigns enqueued, 2 faults injected",
        "chaos 10/15 s: 7620 operations (20 unknown), 600 campaigns enqueued, 5 faults injected",
        "chaos 15/15 s: 11430 operations (30 unknown), 900 campaigns enqueued, 7 faults injected",
    ]
    settle_lines = [
        "settle 5 s: 280 recipients in flight, 56 webhooks pending",
        "settle 10 s: 80 recipients in flight, 16 webhooks pending",
    ]
    # Each phase's periodic lines (the latest figures, not the first frame's), then its closing line.
    assert output.splitlines() == [
        *CLOSING[:3],
        *chaos_lines,
        *CLOSING[3:5],
        *settle_lines,
        *CLOSING[5:],
    ]


def test_a_log_line_is_never_more_often_than_asked() -> None:
    buffer, clock = io.StringIO(), FakeClock()
    progress = Progress(console=log_console(buffer), clock=clock, every_s=2.0)
    drive(progress, clock)
    periodic = [
        line for line in buffer.getvalue().splitlines() if line.startswith("chaos ") and "done" not in line
    ]
    assert [line.split(":")[0] for line in periodic] == [f"chaos {s}/15 s" for s in (2, 4, 6, 8, 10, 12, 14)]


def test_a_terminal_gets_one_live_frame_replaced_and_the_closing_lines_above_it() -> None:
    buffer, clock = io.StringIO(), FakeClock()
    progress = Progress(console=terminal_console(buffer), clock=clock)
    assert progress.interactive
    drive(progress, clock)
    output = buffer.getvalue()
    # rich's live display drew the frames, each erasing the one before (erase-line codes) ...
    assert "\x1b[2K" in output
    plain = ESCAPE.sub("", output)
    assert "chaos  5/15 s  3810 operations (10 unknown)  300 campaigns enqueued  2 faults injected" in plain
    assert "settle  10 s  80 recipients in flight  16 webhooks pending" in plain
    # ... so what stays on screen is the closing lines alone, one per phase, not a pile of frames.
    assert screen(output) == CLOSING
    assert progress.live is None  # taken down at "done": the cursor is back


def test_the_terminal_model_would_see_frames_pile_up() -> None:
    """The model the test above relies on tells stacked frames from replaced ones."""
    assert screen("a 1\r\x1b[2Ka 2\r\x1b[2Ka 3") == ["a 3"]
    assert screen("a 1a 2a 3") == ["a 1a 2a 3"]
    assert screen("x\n\x1b[?25lframe 1\r\x1b[2Kframe 2\r\x1b[2K\x1b[1A\x1b[2Kx\ny") == ["x", "y"]


def test_quiet_prints_nothing_in_a_log_and_leaves_nothing_on_a_terminal() -> None:
    buffer, clock = io.StringIO(), FakeClock()
    drive(Progress(quiet=True, console=log_console(buffer), clock=clock), clock)
    assert buffer.getvalue() == ""
    buffer, clock = io.StringIO(), FakeClock()
    drive(Progress(quiet=True, console=terminal_console(buffer), clock=clock), clock)
    assert "11430 operations" in ESCAPE.sub("", buffer.getvalue())  # the frame was shown while it ran
    assert screen(buffer.getvalue()) == []


def test_a_display_left_up_by_a_run_that_raised_is_taken_down_by_the_next() -> None:
    buffer, clock = io.StringIO(), FakeClock()
    console = terminal_console(buffer)
    broken = Progress(quiet=True, console=console, clock=clock)
    broken({"phase": "start"})  # then the run raised: no "done"
    assert broken.live is not None
    following = Progress(quiet=True, console=console, clock=clock)
    following({"phase": "start"})
    assert broken.live is None
    assert following.live is not None
    assert following.live.is_started
    following({"phase": "done", "valid": False})
    assert following.live is None


def test_the_default_progress_off_a_terminal_writes_plain_lines_even_with_force_color(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """CI often sets FORCE_COLOR; rich then calls the log a terminal, but a log cannot move a cursor."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    clock = FakeClock()
    progress = Progress(clock=clock)
    assert not progress.interactive
    drive(progress, clock)
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert "\r" not in err
    assert CLOSING[3] in err.splitlines()

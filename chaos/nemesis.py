"""The nemesis: process and network faults on a timeline drawn from the seed.

`plan` turns the scenario's `[[nemesis]]` rules into concrete events (time, action, target, how long)
before anything runs; the plan is written to the run folder, and `smslab replay` runs the same plan
again. `Nemesis.run` plays it against the live processes, and writes what it did, when, to
`nemesis.jsonl` (the run's fault timeline).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaos.scenario import Scenario


@dataclass
class NemesisEvent:
    at: float
    action: str
    target: str = ""
    hold_s: float = 0.0  # kill: restart after; toxic: remove after
    params: dict[str, Any] = field(default_factory=dict)


def plan(scenario: Scenario, seed: int) -> list[NemesisEvent]:
    """The concrete fault timeline of a run: deterministic for (scenario, seed)."""
    events: list[NemesisEvent] = []
    horizon = scenario.workload.duration_s
    for index, rule in enumerate(scenario.nemesis):
        rng = random.Random(f"{seed}:nemesis:{index}")
        times: list[float] = []
        if rule.at_s is not None:
            times = [rule.at_s] if rule.at_s < horizon else []
        elif rule.every_s is not None:
            moment = rng.uniform(*rule.every_s)
            while moment < horizon:
                times.append(moment)
                moment += rng.uniform(*rule.every_s)
        for moment in times:
            if rule.action == "kill_worker":
                target = f"worker-{rng.randrange(scenario.services.workers)}"
                hold = rng.uniform(*rule.restart_after_s)
            elif rule.action == "kill_api":
                target, hold = "api", rng.uniform(*rule.restart_after_s)
            elif rule.action == "restart_redis":
                target, hold = "redis", rng.uniform(*rule.restart_after_s)
            elif rule.action == "cut_db_connections":
                target, hold = "database", 0.0
            else:
                target, hold = str(rule.proxy), rule.duration_s
            params = {"toxic": rule.toxic} if rule.toxic else {}
            events.append(NemesisEvent(round(moment, 3), rule.action, target, round(hold, 3), params))
    return sorted(events, key=lambda e: (e.at, e.action, e.target))


def save_plan(events: list[NemesisEvent], path: Path) -> None:
    path.write_text(json.dumps([asdict(e) for e in events], indent=1))


def load_plan(path: Path) -> list[NemesisEvent]:
    return [NemesisEvent(**entry) for entry in json.loads(path.read_text())]


Action = Callable[[NemesisEvent], Awaitable[str]]


class Nemesis:
    """Plays a plan: each event's action, then its undo (restart, heal) after its hold time."""

    def __init__(
        self, events: list[NemesisEvent], actions: dict[str, tuple[Action, Action | None]], timeline: Path
    ):
        self.events = events
        self.actions = actions
        self._timeline = timeline.open("a")
        self.injected = 0
        self._undos: set[asyncio.Task[None]] = set()

    def _log(self, started: float, event: NemesisEvent, phase: str, outcome: str) -> None:
        entry = {"t": round(time.monotonic() - started, 3), "planned_at": event.at, "action": event.action}
        entry.update({"target": event.target, "phase": phase, "outcome": outcome})
        self._timeline.write(json.dumps(entry) + "\n")
        self._timeline.flush()

    def record(self, started: float, action: str, target: str, outcome: str) -> None:
        """Something that happened outside the plan (a process that crashed on its own, its restart)."""
        now = round(time.monotonic() - started, 3)
        self._log(started, NemesisEvent(now, action, target), "start", outcome)

    async def run(self, started: float, stop: asyncio.Event) -> None:
        for event in self.events:
            delay = started + event.at - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                    break  # stopped before this event
                except TimeoutError:
                    pass
            # An event already due fires even if the stop came meanwhile: it was planned inside the chaos
            # phase, and a busy machine's scheduling delay must not drop it from the run.
            do, undo = self.actions[event.action]
            try:
                outcome = await do(event)
            except Exception as exc:  # noqa: BLE001 - a failed fault is logged, not fatal to the run
                outcome = f"failed: {type(exc).__name__}: {exc}"
            self.injected += 1
            self._log(started, event, "start", outcome)
            if undo is not None:
                task = asyncio.create_task(self._undo_later(started, event, undo))
                self._undos.add(task)
                task.add_done_callback(self._undos.discard)
        await asyncio.gather(*self._undos, return_exceptions=True)

    async def _undo_later(self, started: float, event: NemesisEvent, undo: Action) -> None:
        await asyncio.sleep(event.hold_s)
        try:
            outcome = await undo(event)
        except Exception as exc:  # noqa: BLE001
            outcome = f"failed: {type(exc).__name__}: {exc}"
        self._log(started, event, "end", outcome)

    def close(self) -> None:
        self._timeline.close()

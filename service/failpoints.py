"""Named crash points for the lab: make a process die (or stall) at an exact line.

A safeguard is only proven if the lab can put a crash exactly where the unsafe variant breaks: after the
provider accepted but before the result was written, between recording and debiting, and so on. These
points are inert unless armed, and arming them from the environment is refused outside lab runs
(`SMSLAB_LAB_ALLOW_UNSAFE=true`).

Spec (`SMSLAB_FAILPOINTS`): comma-separated `point=action[@probability][*count]`, where action is
`raise` (a `SimulatedCrash`, which no handler of ours catches), `kill` (SIGKILL to this very process, as
the OOM killer or `kill -9` would) or `sleep:SECONDS` (a stall, e.g. a GC pause longer than a lease).
`@0.1` fires on one hit in ten at random; `*count` limits how many hits fire in one process; without
either, every hit fires.

The random draws come from `SMSLAB_FAILPOINT_SEED` and the process's own stream (`SMSLAB_FAILPOINT_STREAM`,
which the lab sets to the process's name and start number, plus the process id in a worker process that
a server forked or spawned itself, as uvicorn's are): the same run draws the same sequence in the same
process start, and each process and each restart draws its own. One shared sequence made a crash loop of
`kill@P`: a restarted process drew what its killed predecessor drew, died on the same hit, and so did
every restart after it (an API that never finished one enqueue, whatever P said).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

POINTS: dict[str, str] = {
    "enqueue.after_key_claimed": "Idempotency-Key held, enqueue transaction not yet started",
    "enqueue.after_status_change": "campaign moved to sending, recipients not yet snapshotted",
    "enqueue.after_recipients": "recipients snapshotted, credits not yet reserved",
    "enqueue.before_commit": "everything written, transaction not yet committed",
    "enqueue.before_jobs": "enqueue committed, send jobs not yet queued",
    "send.after_claim": "recipients claimed and committed, provider not yet called",
    "send.after_provider_accepted": "provider answered, nothing recorded yet",
    "send.between_record_and_debit": "rows marked sent, debit not yet written",
    "reconcile.after_lookup": "provider lookup answered, resolution not yet written",
    "webhook.after_duplicate_check": "webhook checked for a duplicate, the event not yet recorded as seen",
    "webhook.after_event_recorded": "webhook event recorded, its effect not yet applied",
    "webhook.after_effect": "webhook effect applied, not yet committed",
}


class SimulatedCrash(BaseException):
    """Raised by an armed `raise` point. A BaseException so that no `except Exception` cleans up after it."""


@dataclass
class _Armed:
    action: str
    argument: float
    remaining: int | None
    probability: float = 1.0


_armed: dict[str, _Armed] = {}
_rng = random.Random(0)


def parse_spec(spec: str) -> dict[str, _Armed]:
    armed: dict[str, _Armed] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        point, sep, action = entry.partition("=")
        if not sep:
            raise ValueError(f"{entry!r} is not point=action")
        if point not in POINTS:
            raise ValueError(f"unknown failpoint {point!r}; known: {', '.join(POINTS)}")
        count: int | None = None
        if "*" in action:
            action, _, count_text = action.partition("*")
            if not count_text.isdigit() or int(count_text) < 1:
                raise ValueError(f"{entry!r}: count after * must be a whole number >= 1")
            count = int(count_text)
        probability = 1.0
        if "@" in action:
            action, _, probability_text = action.partition("@")
            try:
                probability = float(probability_text)
            except ValueError:
                probability = -1.0
            if not 0.0 < probability <= 1.0:
                raise ValueError(f"{entry!r}: probability after @ must be in (0, 1]")
        name, _, arg_text = action.partition(":")
        argument = 0.0
        if name == "sleep":
            try:
                argument = float(arg_text)
            except ValueError:
                raise ValueError(f"{entry!r}: sleep needs seconds, as sleep:2.5") from None
        elif name not in ("raise", "kill") or arg_text:
            raise ValueError(f"{entry!r}: action must be raise, kill or sleep:SECONDS")
        armed[point] = _Armed(name, argument, count, probability)
    return armed


def process_stream(named: str) -> str:
    """This process's draw stream: what the lab named it (`api:2`, its third start), and its pid when it
    is a server's own worker (all of them inherit one name)."""
    if multiprocessing.parent_process() is not None:
        return f"{named}:pid{os.getpid()}"
    return named


def configure(spec: str, seed: int = 0, stream: str = "") -> None:
    """Arm points from a spec (called once at process start from settings)."""
    _armed.clear()
    _armed.update(parse_spec(spec))
    _rng.seed(f"failpoints:{seed}:{stream}")


@contextmanager
def armed(point: str, action: str = "raise", count: int | None = None) -> Iterator[None]:
    """Arm one point for the duration of a block (tests running domain code in-process)."""
    spec = f"{point}={action}" + (f"*{count}" if count else "")
    previous = _armed.get(point)
    _armed.update(parse_spec(spec))
    try:
        yield
    finally:
        if previous is None:
            _armed.pop(point, None)
        else:
            _armed[point] = previous


@dataclass
class Pause:
    """A point that stops the coroutine reaching it until the test lets it go: `reached` is set when it
    gets there, and it waits for `go`. In-process tests only, to put two transactions in a known order
    without guessing at sleeps."""

    reached: asyncio.Event
    go: asyncio.Event


_paused: dict[str, Pause] = {}


@contextmanager
def paused(point: str) -> Iterator[Pause]:
    """Pause the next coroutine that hits `point` (once), until `pause.go.set()`."""
    if point not in POINTS:
        raise ValueError(f"unknown failpoint {point!r}")
    pause = Pause(asyncio.Event(), asyncio.Event())
    _paused[point] = pause
    try:
        yield pause
    finally:
        _paused.pop(point, None)
        pause.go.set()


async def hit(point: str) -> None:
    """Mark a crash point in domain code. Costs a dict lookup when nothing is armed."""
    if _paused and (pause := _paused.pop(point, None)) is not None:
        pause.reached.set()
        await pause.go.wait()
    if not _armed:
        return
    entry = _armed.get(point)
    if entry is None:
        return
    if entry.probability < 1.0 and _rng.random() >= entry.probability:
        return
    if entry.remaining is not None:
        if entry.remaining <= 0:
            return
        entry.remaining -= 1
    if entry.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif entry.action == "sleep":
        await asyncio.sleep(entry.argument)
    else:
        raise SimulatedCrash(point)

"""The history of a run, in Jepsen's terms: every operation is an `invoke`, then `ok` (it certainly
happened), `fail` (it certainly did not) or `info` (nobody knows: a timeout, a lost connection).

Written as JSON lines (`history.jsonl`) as the run goes, so a run that dies still leaves its history.
A completion names its invocation (`op`), so checkers pair them without replaying process order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

INVOKE, OK, FAIL, INFO = "invoke", "ok", "fail", "info"
_encoder = msgspec.json.Encoder()


@dataclass
class Op:
    index: int
    process: str
    f: str
    value: dict[str, Any]


class History:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("ab")
        self._next = 0
        self._started = time.monotonic()
        self.started_at = time.time()  # wall clock of `time` 0: to line the history up with other ledgers
        self.counts: dict[str, int] = {}

    def _write(self, entry: dict[str, Any]) -> None:
        self._file.write(_encoder.encode(entry) + b"\n")
        self._file.flush()

    def invoke(self, process: str, f: str, value: dict[str, Any]) -> Op:
        op = Op(self._next, process, f, value)
        self._next += 1
        self._write(
            {
                "index": op.index,
                "time": self.elapsed(),
                "process": process,
                "type": INVOKE,
                "f": f,
                "value": value,
            }
        )
        return op

    def complete(self, op: Op, kind: str, value: dict[str, Any]) -> None:
        index = self._next
        self._next += 1
        key = f"{op.f}:{kind}"
        self.counts[key] = self.counts.get(key, 0) + 1
        self._write(
            {
                "index": index,
                "time": self.elapsed(),
                "process": op.process,
                "type": kind,
                "f": op.f,
                "op": op.index,
                "value": {**op.value, **value},
            }
        )

    @property
    def next_index(self) -> int:
        """The index the next entry gets (a merged history continues from it)."""
        return self._next

    def elapsed(self) -> float:
        return round(time.monotonic() - self._started, 6)

    def close(self) -> None:
        self._file.close()


def read_history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    decoder = msgspec.json.Decoder()
    entries = []
    with path.open("rb") as handle:
        for line in handle:
            if line.endswith(b"\n"):
                entries.append(decoder.decode(line))
    return entries

"""Ground-truth ledgers: what the fake providers really did, on disk before any response leaves.

Each ledger is an append-only JSON-lines file in the simulator's data directory. A record is written with
one `write(2)` on an `O_APPEND` descriptor before the HTTP response is sent, so it survives a SIGKILL of
the simulator the instant after (the kernel holds the bytes) and the checker can trust it over anything
the service says. `fsync=True` also survives a machine crash, at a cost the lab rarely needs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()


class JsonLinesLedger:
    def __init__(self, path: Path, fsync: bool = False) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._buffer: list[dict[str, Any]] = []

    def append_many(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        data = b"".join(_encoder.encode(r) + b"\n" for r in records)
        with self._lock:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            if self._fsync:
                os.fsync(self._fd)

    def append(self, record: dict[str, Any]) -> None:
        self.append_many([record])

    def defer(self, record: dict[str, Any]) -> None:
        """Buffer a record; `flush` writes every buffered record in one write. The caller must flush
        before anything that depends on the record (a response, a webhook) leaves."""
        self._buffer.append(record)

    def flush(self) -> None:
        if self._buffer:
            records, self._buffer = self._buffer, []
            self.append_many(records)

    def close(self) -> None:
        self.flush()
        os.close(self._fd)


def read_ledger(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete record; a torn last line (the writer killed mid-write) is skipped, not fatal."""
    if not path.exists():
        return
    decoder = msgspec.json.Decoder()
    with path.open("rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            try:
                yield decoder.decode(line)
            except msgspec.DecodeError:
                continue

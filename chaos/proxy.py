"""A small asyncio TCP fault proxy with Toxiproxy's vocabulary (Toxiproxy itself cannot be installed here).

One `Proxy` per upstream (the database, Redis, the providers' APIs); the service connects to the proxy's
port instead of the upstream's. Toxics are added and removed while connections are open and apply to
the data flowing from then on. Each toxic has a `stream` (`upstream`: service to server, `downstream`:
server to service) and a `toxicity`: the probability that it applies to a given connection, drawn from
the proxy's seeded generator.

Toxics (attributes in Toxiproxy's units):
- `latency`: `latency` ms (+/- `jitter` ms) before each chunk is forwarded
- `bandwidth`: at most `rate` KB/s
- `slicer`: chunks cut to about `average_size` bytes (+/- `size_variation`), `delay` us apart
- `limit_data`: the connection is closed once `bytes` have passed
- `timeout`: nothing passes; after `timeout` ms the connection is closed, or never if 0 (a blackhole)
- `reset_peer`: after `timeout` ms the connection is reset (TCP RST)
- `slow_close`: the close is delayed by `delay` ms
`disable()` is Toxiproxy's `down`: every connection is cut and new ones refused until `enable()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

TOXIC_ATTRIBUTES: dict[str, dict[str, float]] = {
    "latency": {"latency": 0, "jitter": 0},
    "bandwidth": {"rate": 0},
    "slicer": {"average_size": 0, "size_variation": 0, "delay": 0},
    "limit_data": {"bytes": 0},
    "timeout": {"timeout": 0},
    "reset_peer": {"timeout": 0},
    "slow_close": {"delay": 0},
}
STREAMS = ("upstream", "downstream")
CHUNK = 32 * 1024


class ToxicError(ValueError):
    """A toxic that cannot be used; the message names the field."""


@dataclass
class Toxic:
    name: str
    type: str
    stream: str = "downstream"
    toxicity: float = 1.0
    attributes: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: Any, where: str = "toxic") -> Toxic:
        if not isinstance(spec, dict):
            raise ToxicError(f"{where}: must be a table")
        kind = spec.get("type")
        if kind not in TOXIC_ATTRIBUTES:
            raise ToxicError(f"{where}.type: must be one of {', '.join(TOXIC_ATTRIBUTES)}")
        stream = spec.get("stream", "downstream")
        if stream not in STREAMS:
            raise ToxicError(f"{where}.stream: must be upstream or downstream")
        toxicity = spec.get("toxicity", 1.0)
        if isinstance(toxicity, bool) or not isinstance(toxicity, int | float) or not 0 <= toxicity <= 1:
            raise ToxicError(f"{where}.toxicity: must be between 0 and 1")
        attributes = spec.get("attributes", {})
        if not isinstance(attributes, dict):
            raise ToxicError(f"{where}.attributes: must be a table")
        for key, value in attributes.items():
            if key not in TOXIC_ATTRIBUTES[kind]:
                raise ToxicError(f"{where}.attributes.{key}: not an attribute of {kind}")
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ToxicError(f"{where}.attributes.{key}: must be a number >= 0")
        name = str(spec.get("name") or f"{kind}_{stream}")
        return cls(name, kind, stream, float(toxicity), {**TOXIC_ATTRIBUTES[kind], **attributes})


class _Connection:
    def __init__(self, proxy: Proxy, client: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.proxy = proxy
        self.client_reader, self.client_writer = client
        self.server_writer: asyncio.StreamWriter | None = None
        self.rolls: dict[str, bool] = {}  # toxic name -> applies to this connection
        self.passed = 0
        self.closed = asyncio.Event()

    def applies(self, toxic: Toxic) -> bool:
        roll = self.rolls.get(toxic.name)
        if roll is None:
            roll = self.rolls[toxic.name] = self.proxy.rng.random() < toxic.toxicity
        return roll

    def active(self, stream: str) -> list[Toxic]:
        return [t for t in self.proxy.toxics.values() if t.stream == stream and self.applies(t)]

    def reset(self) -> None:
        for writer in (self.client_writer, self.server_writer):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self.closed.set()

    def close(self) -> None:
        for writer in (self.client_writer, self.server_writer):
            if writer is not None:
                writer.close()
        self.closed.set()


class Proxy:
    def __init__(self, name: str, upstream_host: str, upstream_port: int, seed: int = 0) -> None:
        self.name = name
        self.upstream = (upstream_host, upstream_port)
        self.toxics: dict[str, Toxic] = {}
        self.enabled = True
        self.rng = random.Random(f"{seed}:proxy:{name}")
        self.connections: set[_Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.start_server(self._accept, host, port)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self.server:
            self.server.close()
        for connection in list(self.connections):
            connection.close()
        # Let every connection's handler see its streams close and finish, so none is left pending
        # (and cancelled, noisily) when the event loop ends.
        handlers = [task for task in self._handlers if not task.done()]
        if handlers:
            await asyncio.wait(handlers, timeout=2.0)

    def add(self, toxic: Toxic) -> None:
        self.toxics[toxic.name] = toxic
        for connection in self.connections:
            connection.rolls.pop(toxic.name, None)

    def remove(self, name: str) -> None:
        self.toxics.pop(name, None)

    def clear(self) -> None:
        self.toxics.clear()

    def disable(self) -> None:
        """Toxiproxy's `down`: cut every connection, refuse new ones."""
        self.enabled = False
        for connection in list(self.connections):
            connection.reset()

    def enable(self) -> None:
        self.enabled = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        if not self.enabled:
            writer.transport.abort()
            return
        connection = _Connection(self, (reader, writer))
        try:
            server_reader, connection.server_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.connections.add(connection)
        try:
            await asyncio.gather(
                self._pump(connection, reader, connection.server_writer, "upstream"),
                self._pump(connection, server_reader, writer, "downstream"),
                return_exceptions=True,
            )
        finally:
            self.connections.discard(connection)
            connection.close()

    async def _pump(
        self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stream: str
    ) -> None:
        """Forward one direction. Whichever way a side ends (EOF, a reset, an error), the other side is
        ended too: a reset client otherwise left the other pump waiting on a server that never speaks,
        and a database backend behind it idle in its transaction, holding its locks, forever."""
        try:
            await self._forward(connection, reader, writer, stream)
        except (ConnectionError, OSError):
            connection.reset()  # pass a reset on as a reset
        finally:
            connection.close()

    async def _forward(
        self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stream: str
    ) -> None:
        while not connection.closed.is_set():
            data = await reader.read(CHUNK)
            if not data:
                for toxic in connection.active(stream):
                    if toxic.type == "slow_close":
                        await asyncio.sleep(toxic.attributes["delay"] / 1000)
                connection.close()
                return
            if await self._through_toxics(connection, writer, data, stream):
                return

    async def _through_toxics(
        self, connection: _Connection, writer: asyncio.StreamWriter, data: bytes, stream: str
    ) -> bool:
        """Forward one chunk through this stream's toxics; True once the connection is finished."""
        pieces = [data]
        for toxic in connection.active(stream):
            a = toxic.attributes
            if toxic.type in ("timeout", "reset_peer"):
                if toxic.type == "timeout" and a["timeout"] == 0:
                    await connection.closed.wait()  # a blackhole: nothing passes, nothing closes
                    return True
                await asyncio.sleep(a["timeout"] / 1000)
                connection.reset() if toxic.type == "reset_peer" else connection.close()
                return True
            if toxic.type == "latency":
                jitter = a["jitter"]
                await asyncio.sleep(max(0.0, a["latency"] + self.rng.uniform(-jitter, jitter)) / 1000)
            elif toxic.type == "bandwidth" and a["rate"] > 0:
                await asyncio.sleep(len(data) / (a["rate"] * 1024))
            elif toxic.type == "slicer" and a["average_size"] > 0:
                pieces = list(_slices(data, int(a["average_size"]), int(a["size_variation"]), self.rng))
            elif toxic.type == "limit_data" and connection.passed + len(data) > a["bytes"]:
                allowed = max(0, int(a["bytes"]) - connection.passed)
                if allowed:
                    writer.write(data[:allowed])
                connection.close()
                return True
        slicer = next((t for t in connection.active(stream) if t.type == "slicer"), None)
        for piece in pieces:
            writer.write(piece)
            connection.passed += len(piece)
            if slicer is not None and slicer.attributes["delay"]:
                await asyncio.sleep(slicer.attributes["delay"] / 1_000_000)
        try:
            await writer.drain()
        except ConnectionError:
            connection.close()
            return True
        return False


def _slices(data: bytes, average: int, variation: int, rng: random.Random) -> Any:
    start = 0
    while start < len(data):
        size = max(1, average + rng.randint(-variation, variation))
        yield data[start : start + size]
        start += size

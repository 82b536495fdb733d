"""HTTP clients for the fakes' webhooks: aiohttp's, and a lean hand-written HTTP/1.1 one.

The dispatcher (`delivery.py`) posts every attempt through one of these and records in
`webhook_deliveries.jsonl` either the status it got or, when no complete answer came, the name in the
`DeliveryError`. Both clients keep the same contract, and a test holds them to it
(`tests/test_simulator_webhooks.py`):

- a timeout per attempt (`timeout`: aiohttp's covers connecting and the exchange together, the lean
  client's each of them); waiting for one of the `max_connections` slots is not part of it;
- `DeliveryError` whenever no complete HTTP answer came, named as the checker reads it: a refused
  connection is `ConnectionRefusedError` (the request never reached the service, so it cannot have taken
  effect: `may_have_taken_effect` in `chaos/checker/evidence.py`); the connection closed before the answer
  was complete is `IncompleteReadError`; a reset is `ConnectionResetError`; no answer in time is
  `TimeoutError`; an answer that is not HTTP is `ValueError`;
- a kept-alive connection the server has closed is never reused (after an API restart, every retry took
  the next dead connection), and a failed POST is never retried inside the client: one attempt, one
  request, one ledger line.

aiohttp is the default. `--outbound-client lean` keeps the hand-written one for what it is cheaper at:
docs/performance.md has both measured side by side (`bench/simulator.py`), and the decision.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp


class DeliveryError(Exception):
    """The attempt got no complete HTTP answer (connection refused or reset, timeout, garbled)."""


class OutboundClient(Protocol):
    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        """POST `path` (appended to the base URL) and return the status code, or raise DeliveryError."""
        ...

    async def aclose(self) -> None: ...


OUTBOUND_CLIENTS = ("aiohttp", "lean")
DEFAULT_OUTBOUND_CLIENT = "aiohttp"


def open_outbound_client(
    kind: str, base_url: str, timeout: float = 10.0, max_connections: int = 64
) -> OutboundClient:
    if kind == "aiohttp":
        return AiohttpOutboundClient(base_url, timeout, max_connections)
    if kind == "lean":
        return LeanOutboundClient(base_url, timeout, max_connections)
    raise ValueError(f"outbound client: must be one of {', '.join(OUTBOUND_CLIENTS)}")


def failure_name(exc: BaseException) -> str:
    """What an aiohttp failure is called in the ledger: the name the lean client gives the same event."""
    if isinstance(exc, TimeoutError):  # aiohttp's connect and read timeouts are TimeoutErrors too
        return "TimeoutError"
    if isinstance(exc, aiohttp.ClientConnectorError):  # connecting failed: nothing was sent
        return _os_error_name(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "IncompleteReadError"
    if isinstance(exc, aiohttp.ClientPayloadError):
        cause = exc.__cause__
        return _os_error_name(cause) if isinstance(cause, OSError) else "IncompleteReadError"
    if isinstance(exc, aiohttp.ClientResponseError):  # a status line or header aiohttp cannot parse
        return "ValueError"
    if isinstance(exc, OSError):
        return _os_error_name(exc)
    return type(exc).__name__


def _os_error_name(exc: OSError) -> str:
    """`ConnectionRefusedError`, `ConnectionResetError`, ...: the OS error behind it, as Python names it.

    aiohttp re-raises a socket's error as a `ClientOSError`, with the original as its cause and often
    without its errno (`ClientOSError('Connection lost')` for a `ConnectionResetError`)."""
    while isinstance(exc, aiohttp.ClientOSError) and isinstance(exc.__cause__, OSError):
        exc = exc.__cause__
    if type(exc) in (OSError, aiohttp.ClientOSError):
        return type(OSError(exc.errno, "")).__name__ if exc.errno in errno.errorcode else "OSError"
    return type(exc).__name__


class AiohttpOutboundClient:
    """aiohttp's client, one session with a pool of keep-alive connections.

    aiohttp takes an idle connection from its pool only while its transport is open, and a server's
    close (EOF) closes the transport as soon as the event loop reads it, so a connection the service
    closed is not reused. It retries a request on a dead kept-alive connection for idempotent methods
    only, never for POST, so each attempt is one request.
    """

    def __init__(self, base_url: str, timeout: float = 10.0, max_connections: int = 64) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:  # inside the running loop, at the first attempt
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )
        return self._session

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        """POST and return the status code, or raise DeliveryError."""
        async with self._slots:
            try:
                async with self._open().post(self.base_url + path, data=body, headers=headers) as response:
                    await response.read()
                    return response.status
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                raise DeliveryError(failure_name(exc)) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()


class LeanOutboundClient:
    """A lean HTTP/1.1 client: keep-alive connections on raw asyncio streams, plain `http://` only.

    Kept (as `--outbound-client lean`) for one use aiohttp does not serve cheaply: a load test that has
    the simulator deliver webhooks as fast as the service absorbs them, on the service's own two cores.
    It writes each request in one go and reads only the status line, the framing headers and the body:
    the simulator then spends a third to two fifths of the CPU per delivered report that it does with
    aiohttp (92 against 264 us; 150 to 190 us less in six runs of `bench/simulator.py`, see
    docs/performance.md), CPU the service under test keeps.
    It is also what the benchmark measures aiohttp against.
    """

    def __init__(self, base_url: str, timeout: float = 10.0, max_connections: int = 64) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise ValueError("the lean outbound client speaks plain http:// only")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.base_path = parts.path.rstrip("/")
        self.host_header = parts.netloc
        self.timeout = timeout
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        """POST and return the status code, or raise DeliveryError."""
        async with self._slots:
            connection = self._reusable()
            try:
                if connection is None:
                    connection = _Connection(
                        *await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
                    )
                status, keep = await asyncio.wait_for(
                    self._exchange(connection, path, body, headers), self.timeout
                )
            except (
                OSError,
                TimeoutError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
            ) as exc:
                if connection is not None:
                    connection.close()
                raise DeliveryError(type(exc).__name__) from None
            if keep:
                self._idle.append(connection)
            else:
                connection.close()
            return status

    def _reusable(self) -> _Connection | None:
        """An idle connection the server has not closed, if any.

        A server that restarted closed every connection it had; their EOF is already queued here. Using
        one anyway sends the request into a dead socket: the delivery fails at once, and a retry takes the
        next dead one. A provider's retries then all failed against a healthy service after its restart
        (the lab saw a Stripe payment's eight attempts lost this way, and the payment never credited).
        """
        while self._idle:
            connection = self._idle.pop()
            if connection.reader.at_eof() or connection.writer.is_closing():
                connection.close()
                continue
            return connection
        return None

    async def _exchange(
        self, connection: _Connection, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bool]:
        lines = [
            f"POST {self.base_path}{path} HTTP/1.1",
            f"Host: {self.host_header}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        connection.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await connection.writer.drain()
        head = await connection.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length, chunked, keep = 0, False, True
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                keep = False
        if chunked:
            while True:
                size = int((await connection.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await connection.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await connection.reader.readexactly(length)
        return status, keep

    async def aclose(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()

"""A lean HTTP/1.1 client for the fakes' webhooks: keep-alive connections on raw asyncio streams.

The fakes must never be what limits a load test; httpx spends about a millisecond of CPU per request,
which caps a single process near 1,000 deliveries a second. This client writes each request in one go and
reads only the status line, the framing headers and the body, so the simulator can deliver thousands of
reports a second. Plain `http://` targets only (the lab's); an `https://` target falls back to httpx.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx


class DeliveryError(Exception):
    """The attempt got no complete HTTP answer (connection refused or reset, timeout, garbled)."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()


class OutboundClient:
    def __init__(self, base_url: str, timeout: float = 10.0, max_connections: int = 64) -> None:
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.base_path = parts.path.rstrip("/")
        self.host_header = parts.netloc
        self.timeout = timeout
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._fallback = httpx.AsyncClient(timeout=timeout) if self.https else None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        """POST and return the status code, or raise DeliveryError."""
        if self._fallback is not None:
            try:
                url = f"https://{self.host_header}{self.base_path}{path}"
                return (await self._fallback.post(url, content=body, headers=headers)).status_code
            except httpx.HTTPError as exc:
                raise DeliveryError(type(exc).__name__) from None
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
        if self._fallback is not None:
            await self._fallback.aclose()

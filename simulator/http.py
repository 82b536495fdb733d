"""Just enough ASGI for the fakes, and full control of what reaches the wire.

The fakes need to misbehave in ways a web framework tries hard to prevent: a response cut off half-way,
a response that never comes. So they speak raw ASGI through these helpers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import msgspec

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_BODY_BYTES = 16 * 1024 * 1024
_encoder = msgspec.json.Encoder()


class BodyTooLarge(Exception):
    pass


class ConnectionCut(Exception):
    """Raised after a partial response: the server closes the connection mid-response."""


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    client: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def query_one(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


async def read_request(scope: Scope, receive: Receive) -> Request:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    client = scope.get("client") or ("", 0)
    return Request(
        method=scope["method"],
        path=scope["path"],
        query=parse_qs(scope.get("query_string", b"").decode("latin-1")),
        headers=headers,
        body=b"".join(chunks),
        client=str(client[0]),
    )


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, document: Any, headers: dict[str, str] | None = None) -> Response:
        return cls(status, _encoder.encode(document), dict(headers or {}))

    async def send(self, send: Send) -> None:
        headers = [
            (b"content-type", self.content_type.encode()),
            (b"content-length", str(len(self.body)).encode()),
        ]
        headers.extend((k.lower().encode(), v.encode()) for k, v in self.headers.items())
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})

    async def send_cut(self, send: Send) -> None:
        """Headers and half the body, then the connection drops: the client cannot read an answer."""
        headers = [
            (b"content-type", self.content_type.encode()),
            (b"content-length", str(len(self.body)).encode()),
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True}
        )
        raise ConnectionCut


Handler = Callable[[Request], Awaitable[Response]]

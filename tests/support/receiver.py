"""A bare HTTP server standing in for the service: records every webhook byte for byte."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int = 200


@dataclass
class Receiver:
    """Answers 500 to the first `fail_first` requests, or whatever `judge` says (e.g. 400 on a bad
    signature), else 200."""

    fail_first: int = 0
    judge: Callable[[Received], int] | None = None
    received: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> int:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                got = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                receiver.received.append(got)
                if len(receiver.received) <= receiver.fail_first:
                    got.status = 500
                elif receiver.judge is not None:
                    got.status = receiver.judge(got)
                self.send_response(got.status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return int(self.server.server_address[1])

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.received

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()

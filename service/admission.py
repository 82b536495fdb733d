"""Admission control: an API process serves a bounded number of requests at once, and says so when full.

Each API process admits at most `SMSLAB_API_MAX_IN_FLIGHT` requests at a time. A request that finds every
slot taken waits in line at most `SMSLAB_API_ADMISSION_WAIT_SECONDS` (first come, first served); one that
is still waiting then, or that finds the line itself full, is answered `503 overloaded` with
`Retry-After`, before any handler runs and before its body is read, so it changed nothing: a client
retries it as it is (an enqueue with the same `Idempotency-Key`), and the providers redeliver a webhook
answered non-2xx. `/health*`, `/metrics` and `/schema` are never held back (a probe must see a busy
process as alive), nor are the providers' webhooks (see `EXEMPT_PATHS`): the cap is on the merchants'
API.

What it protects: the latency of what the process does serve. One event loop takes every request it is
sent; past its CPU's saturation each one waits behind all the others, latency grows with the crowd (p99
1.1 s at 64 Locust users on two cores, docs/performance.md) and clients time out on work that may then
happen anyway. By Little's law, latency = requests in flight / throughput, so a cap on what is in flight
is a cap on latency, and the surplus learns at once to come back later instead of timing out. The fault
it survives is an overload of the process as a whole, which the per-shop rate limits cannot see (every
shop within its budget, too many shops at once). `SMSLAB_API_MAX_IN_FLIGHT=0` turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections import deque

import msgspec
from litestar import Litestar
from litestar.middleware import ASGIMiddleware
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Receive, Scope, Send

from service import logs
from service.errors import PROBLEM_TYPE_BASE
from service.metrics import HTTP_SHED

OVERLOADED_SLUG = "overloaded"
# Never held back: probes, the scrape and the OpenAPI document; and the providers' webhooks, which have a
# guard of their own (`SMSLAB_WEBHOOK_RATE_LIMIT`, a 429 per provider) and whose delivery reports are
# committed in groups of whatever is in flight: capped at 32 at once, one API process absorbed 2,526-2,572
# reports/s instead of 3,224-3,245 (bench/webhooks.py, 64 in flight, side by side).
EXEMPT_PATHS = (r"^/health", r"^/metrics", r"^/schema", r"^/webhooks/")
# How long the line may be, in multiples of the slots: a line longer than this would not be served within
# the wait anyway while the process is saturated, so its newcomers are told at once.
LINE_PER_SLOT = 4


class AdmissionControl:
    """The slots of one API process and the line for them (one event loop: no lock needed)."""

    def __init__(self, max_in_flight: int, wait_s: float) -> None:
        self.max_in_flight = max_in_flight
        self.wait_s = wait_s
        self.max_waiting = max_in_flight * LINE_PER_SLOT
        self.in_flight = 0
        self._line: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._line)

    async def enter(self) -> bool:
        """Take a slot (True), waiting for one at most `wait_s`; False: the request is to be refused."""
        if self.in_flight < self.max_in_flight and not self._line:
            self.in_flight += 1
            return True
        if self.wait_s <= 0 or len(self._line) >= self.max_waiting:
            return False
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._line.append(turn)
        admitted = False
        try:
            async with asyncio.timeout(self.wait_s):
                await turn
            admitted = True  # `leave` handed its slot over: in_flight already counts this request
        except TimeoutError:
            admitted = turn.done() and not turn.cancelled()  # the slot came as the wait ran out
        finally:
            if not turn.done():
                turn.cancel()
            if turn.cancelled():  # timed out, or cancelled in line (its client went): leave the line
                with contextlib.suppress(ValueError):  # unless a `leave` already dropped it from there
                    self._line.remove(turn)
            elif not admitted:  # handed a slot just as it was cancelled: pass the slot on
                self.leave()
        return admitted

    def leave(self) -> None:
        """Give the slot to the first request still in line, or free it."""
        while self._line:
            turn = self._line.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.in_flight -= 1


def export_routes(app: Litestar) -> None:
    """`smslab_http_shed_total` at 0 for every route admission control covers, from the start: the
    overload alert reads its rate, and a series that appeared only at its first refusal would leave the
    alert nothing to compare (and a scrape nothing to show the operator)."""
    exempt = re.compile("|".join(EXEMPT_PATHS))
    for route in app.routes:
        if isinstance(route, HTTPRoute) and not exempt.search(route.path_format):
            HTTP_SHED.labels(route=route.path_format)


class AdmissionMiddleware(ASGIMiddleware):
    """Runs after routing (Litestar builds the middleware per route), so a refusal is counted by route."""

    scopes = ("http",)  # type: ignore[assignment]
    exclude_path_pattern = EXEMPT_PATHS

    def __init__(self, max_in_flight: int, wait_s: float) -> None:
        self.control = AdmissionControl(max_in_flight, wait_s)
        self.retry_after_s = max(1, math.ceil(wait_s))

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        control = self.control
        if not await control.enter():
            await self._refuse(scope, send)
            return
        try:
            await next_app(scope, receive, send)
        finally:
            control.leave()

    async def _refuse(self, scope: Scope, send: Send) -> None:
        control = self.control
        route = str(scope.get("path_template") or "unmatched")
        HTTP_SHED.labels(route=route).inc()
        body: dict[str, object] = {
            "type": PROBLEM_TYPE_BASE + OVERLOADED_SLUG,
            "title": "This API process is over capacity",
            "status": 503,
            "detail": (
                f"{control.in_flight} requests in flight and {control.waiting} waiting; nothing was done, "
                f"retry after {self.retry_after_s} s"
            ),
        }
        request_id = logs.current_request_id()
        if request_id:
            body["request_id"] = request_id
        content = msgspec.json.encode(body)
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(content)).encode()),
                    (b"retry-after", str(self.retry_after_s).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content, "more_body": False})

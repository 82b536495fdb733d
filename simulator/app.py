"""The simulator process: every fake under its own path prefix, faults applied in front of each endpoint.

`/mitto/...` the fake Mitto, `/stripe/...` the fake Stripe, `/control/...` the control API (the fake
Shopify only calls out: the lab triggers its webhooks through `/control/shopify/webhooks`).
For a provider endpoint the fault engine decides first: added latency, then at most one of: a status
answered instead of doing the work, a cut connection without the work, or the work done and its answer
lost (held past the client's timeout, or cut mid-response). Every fault that fires is written to
`simulator_events.jsonl` so a run's evidence shows which requests were tampered with.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator import control
from simulator.delivery import DELIVERIES_LEDGER, WebhookDispatcher
from simulator.faults import FaultEngine
from simulator.http import BodyTooLarge, ConnectionCut, Receive, Request, Response, Scope, Send, read_request
from simulator.ledger import JsonLinesLedger
from simulator.mitto import DlrConfig, FakeMitto, mitto_error
from simulator.outbound import DEFAULT_OUTBOUND_CLIENT
from simulator.shopify import FakeShopify
from simulator.stripe import FakeStripe, StripeApiError

EVENTS_LEDGER = "simulator_events.jsonl"


@dataclass(frozen=True)
class SimulatorConfig:
    data_dir: Path
    seed: int = 0
    target: str | None = None  # the service's base URL, where webhooks go
    public_url: str = "http://127.0.0.1:8025"
    time_scale: float = 0.001  # provider retry schedules: 1 hour passes in 3.6 s
    mitto_api_key: str = "lab-mitto-key"
    dlr: DlrConfig = field(default_factory=DlrConfig)
    stripe_secret_key: str = "sk_test_lab_change_me_in_production"  # noqa: S105 - lab default
    stripe_webhook_secret: str = "whsec_lab_change_me_in_production"  # noqa: S105 - lab default
    shopify_api_secret: str = "lab-shopify-secret-change-me-in-production"  # noqa: S105 - lab default
    faults: list[dict[str, Any]] = field(default_factory=list)  # rules active from the start
    fsync: bool = False
    outbound_client: str = DEFAULT_OUTBOUND_CLIENT  # which HTTP client delivers webhooks (outbound.py)
    retry_horizon_s: float = 0.0  # see `WebhookDispatcher.retry_horizon_s`
    webhook_timeout_s: float = 10.0  # one attempt, connecting included; past it the attempt failed
    # Without a token the control API (it can fake payments and erase nothing less than the ground truth
    # of a run) answers only clients on loopback; with one, any client presenting X-Control-Token.
    control_token: str | None = None


@dataclass(frozen=True)
class ProviderRoute:
    target: str
    handler: Callable[[Request], Awaitable[Response]]
    error: Callable[[int, str], Response]


COLLECTOR_THRESHOLDS = (50_000, 20, 100)  # young, middle, old: see SimulatorApp._lifespan


class SimulatorApp:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.started_at = time.time()
        self.faults = FaultEngine(config.seed)
        self.faults.add_many(config.faults, where="scenario.faults")
        self.deliveries = WebhookDispatcher(
            config.target,
            JsonLinesLedger(config.data_dir / DELIVERIES_LEDGER, fsync=config.fsync),
            config.time_scale,
            faults=self.faults,
            client=config.outbound_client,
            retry_horizon_s=config.retry_horizon_s,
            timeout=config.webhook_timeout_s,
        )
        self.mitto = FakeMitto(
            config.data_dir,
            config.mitto_api_key,
            config.seed,
            self.deliveries,
            config.dlr,
            fsync=config.fsync,
        )
        self.stripe = FakeStripe(
            config.data_dir,
            config.stripe_secret_key,
            config.stripe_webhook_secret,
            config.seed,
            self.deliveries,
            config.public_url,
            fsync=config.fsync,
        )
        self.shopify = FakeShopify(
            config.data_dir, config.shopify_api_secret, config.seed, self.deliveries, fsync=config.fsync
        )
        self.events = JsonLinesLedger(config.data_dir / EVENTS_LEDGER, fsync=config.fsync)

        def mitto_problem(status: int, message: str) -> Response:
            return mitto_error(status, message, status)

        self.provider_routes: dict[tuple[str, str], ProviderRoute] = {
            ("POST", "/mitto/api/v1.1/Messages/sendmessagesbulk"): ProviderRoute(
                "mitto.send", self.mitto.send_bulk, mitto_problem
            ),
            ("GET", "/mitto/api/v1/Messages"): ProviderRoute(
                "mitto.lookup", self.mitto.lookup, mitto_problem
            ),
        }

        def stripe_problem(status: int, message: str) -> Response:
            return StripeApiError(status, "api_error", message).response()

        self.stripe_route = ProviderRoute("stripe.api", self.stripe.handle, stripe_problem)

        def shopify_problem(status: int, message: str) -> Response:
            return Response.json(status, {"errors": message})

        self.shopify_route = ProviderRoute("shopify.api", self.shopify.handle, shopify_problem)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            request = await read_request(scope, receive)
        except BodyTooLarge:
            await Response.json(413, {"error": {"code": 413, "message": "body too large"}}).send(send)
            return
        route = self.provider_routes.get((request.method, request.path))
        if route is None and request.path.startswith("/stripe/"):
            route = self.stripe_route
        if route is None and request.path.startswith("/shopify/"):
            route = self.shopify_route
        try:
            if route is not None:
                await self._provider_call(route, request, send)
            elif request.path.startswith("/control/") or request.path == "/control":
                if not control.allowed(request, self.config.control_token):
                    await Response.json(403, {"status": 403, "detail": control.REFUSED}).send(send)
                    return
                await (await control.handle(self, request)).send(send)
            else:
                await Response.json(404, {"error": {"code": 404, "message": "no such endpoint"}}).send(send)
        except ConnectionCut:
            return  # the response is left incomplete; the server closes the connection

    async def _provider_call(self, route: ProviderRoute, request: Request, send: Send) -> None:
        decision = self.faults.decide(route.target)
        for delayed in decision.delayed_by:  # every fault that fired is in the events ledger, latency too
            self.events.append(
                {"t": time.time(), "target": route.target, "fault": "latency", "rule": delayed.id}
            )
        if decision.delay:
            await asyncio.sleep(decision.delay)
        for modifier in decision.modifiers:
            request.extra[modifier.kind] = True
            self.events.append(
                {"t": time.time(), "target": route.target, "fault": modifier.kind, "rule": modifier.id}
            )
        rule = decision.terminal
        if rule is None:
            await (await route.handler(request)).send(send)
            return
        self.events.append(
            {
                "t": time.time(),
                "target": route.target,
                "fault": rule.kind,
                "rule": rule.id,
                "params": rule.params,
            }
        )
        if rule.kind == "status":
            status = int(rule.params["status"])
            response = route.error(status, "simulated failure")
            if status == 429:
                response.headers["Retry-After"] = str(rule.params.get("retry_after", 1))
            await response.send(send)
        elif rule.kind == "reset":
            await Response.json(200, {"cut": True}).send_cut(send)
        elif rule.kind == "timeout":
            response = await route.handler(request)
            await asyncio.sleep(float(rule.params.get("seconds", 30)))
            await response.send(send)
        elif rule.kind == "accept_then_lose":
            response = await route.handler(request)
            if rule.params.get("mode", "cut") == "hang":
                await asyncio.sleep(float(rule.params.get("seconds", 30)))
            await response.send_cut(send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # SIGUSR1: every thread's stack to the log, which the lab asks for before it kills a
                # process that would not stop (as the service's processes do, `service.stack_dumps`)
                faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
                # The provider's ground truth grows with every message (a million of them: 570 MB of
                # objects the cyclic collector walked again and again). At the default thresholds the
                # fake Mitto alone slowed from 21,000 to 15,600 messages/s as it filled to a million; at
                # these, 33,000 to 40,000 all the way, the same memory (as with the collector off).
                gc.set_threshold(*COLLECTOR_THRESHOLDS)
                self.deliveries.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.deliveries.stop()
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def close(self) -> None:
        self.mitto.close()
        self.stripe.close()
        self.shopify.close()
        self.deliveries.ledger.close()
        self.events.close()

    def status(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "seed": self.config.seed,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "data_dir": str(self.config.data_dir),
            "target": self.config.target,
        }

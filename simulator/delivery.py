"""Outbound webhooks of the fake providers: scheduled, signed per attempt, retried on the provider's schedule.

Every delivery attempt and the answer it got is appended to `webhook_deliveries.jsonl`, so the checker
knows which reports and events the service acknowledged. Retry schedules are the providers' own (as far
as they are public), compressed by `time_scale` (0.001: an hour of provider time passes in 3.6 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from simulator.ledger import JsonLinesLedger

DELIVERIES_LEDGER = "webhook_deliveries.jsonl"

# Seconds of provider time before each retry (modelled on public facts; see docs/providers.md).
STRIPE_RETRY_DELAYS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)  # test mode: a few hours
SHOPIFY_RETRY_DELAYS = (10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7500.0)  # 8 retries over ~4 h
MITTO_RETRY_DELAYS = (30.0, 60.0, 120.0, 300.0, 600.0)  # assumed: Mitto does not publish one


@dataclass
class Delivery:
    provider: str
    path: str  # appended to the target URL, query string included
    body: bytes
    sign: Callable[[bytes], dict[str, str]]  # headers for one attempt (Stripe signs each attempt anew)
    retry_delays: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    on_due: Callable[[], None] | None = None  # the provider's own state change when the event happens
    attempt: int = 0
    delivery_id: int = 0


class WebhookDispatcher:
    def __init__(
        self,
        target: str | None,
        ledger: JsonLinesLedger,
        time_scale: float,
        concurrency: int = 64,
        timeout: float = 10.0,
    ) -> None:
        self.target = target.rstrip("/") if target else None
        self.ledger = ledger
        self.time_scale = time_scale
        self.timeout = timeout
        self._heap: list[tuple[float, int, Delivery]] = []
        self._order = itertools.count()
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self.counters: dict[str, int] = {
            "scheduled": 0,
            "attempts": 0,
            "acknowledged": 0,
            "failed_attempts": 0,
        }

    def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=self.timeout, limits=httpx.Limits(max_connections=128, max_keepalive_connections=64)
        )
        self._runner = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._runner:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client:
            await self._client.aclose()

    @property
    def pending(self) -> int:
        return len(self._heap) + len(self._tasks)

    def schedule(self, delivery: Delivery, delay_seconds: float = 0.0) -> None:
        """Deliver after `delay_seconds` of wall time (not scaled: the caller chose it)."""
        if not delivery.delivery_id:
            delivery.delivery_id = next(self._ids)
            self.counters["scheduled"] += 1
        heapq.heappush(self._heap, (time.monotonic() + delay_seconds, next(self._order), delivery))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            due, _, delivery = self._heap[0]
            wait = due - time.monotonic()
            if wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                continue
            heapq.heappop(self._heap)
            if delivery.on_due is not None and delivery.attempt == 0:
                delivery.on_due()
            if self.target is None:
                continue  # nowhere to deliver: the provider's own state still changed
            await self._slots.acquire()
            task = asyncio.create_task(self._attempt(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _attempt(self, delivery: Delivery) -> None:
        assert self._client is not None
        assert self.target is not None
        delivery.attempt += 1
        self.counters["attempts"] += 1
        headers = {"content-type": "application/json", **delivery.sign(delivery.body)}
        status: int | None = None
        error: str | None = None
        try:
            response = await self._client.post(
                self.target + delivery.path, content=delivery.body, headers=headers
            )
            status = response.status_code
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        finally:
            self._slots.release()
        acknowledged = status is not None and 200 <= status < 300
        self.counters["acknowledged" if acknowledged else "failed_attempts"] += 1
        self.ledger.append(
            {
                "t": time.time(),
                "delivery": delivery.delivery_id,
                "provider": delivery.provider,
                "attempt": delivery.attempt,
                "status": status,
                "error": error,
                "acknowledged": acknowledged,
                **delivery.meta,
            }
        )
        if not acknowledged and delivery.attempt <= len(delivery.retry_delays):
            self.schedule(delivery, delivery.retry_delays[delivery.attempt - 1] * self.time_scale)

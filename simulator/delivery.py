"""Outbound webhooks of the fake providers: scheduled, faulted, signed per attempt, retried on schedule.

Every delivery attempt and the answer it got is appended to `webhook_deliveries.jsonl` (with the faults
that shaped it), so the checker knows which reports and events the service acknowledged. Retry schedules
are the providers' own (as far as they are public), compressed by `time_scale` (0.001: an hour of
provider time passes in 3.6 s). Faults on outbound targets (`mitto.dlr`, `stripe.webhook`,
`shopify.webhook`) are decided per delivery (latency, duplicate, drop) and per attempt (bad signature,
stale timestamp); see `faults.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from simulator.faults import ATTEMPT_KINDS, DELIVERY_KINDS, FaultEngine
from simulator.ledger import JsonLinesLedger
from simulator.outbound import DEFAULT_OUTBOUND_CLIENT, DeliveryError, OutboundClient, open_outbound_client

DELIVERIES_LEDGER = "webhook_deliveries.jsonl"

# Seconds of provider time before each retry (modelled on public facts; see docs/providers.md).
STRIPE_RETRY_DELAYS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)  # test mode: a few hours
SHOPIFY_RETRY_DELAYS = (10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7500.0)  # 8 retries over ~4 h
MITTO_RETRY_DELAYS = (30.0, 60.0, 120.0, 300.0, 600.0)  # assumed: Mitto does not publish one
HORIZON_RETRY_CAP_S = 2.0  # wall seconds between the retries that stretch a schedule to its horizon

FAULT_TARGETS = {"mitto": "mitto.dlr", "stripe": "stripe.webhook", "shopify": "shopify.webhook"}


@dataclass(slots=True)
class Delivery:
    provider: str
    path: str  # appended to the target URL, query string included
    body: bytes
    # Headers for one attempt, given how many seconds in the past to sign or stamp it (0: now).
    sign: Callable[[bytes, float], dict[str, str]]
    retry_delays: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    on_due: Callable[[], None] | None = None  # the provider's own state change when the event happens
    attempt: int = 0
    delivery_id: int = 0
    copy_of: int | None = None
    original: Delivery | None = None  # a duplicate sends its original's body as it stands when sent
    dropped: bool = False
    faults: list[str] = field(default_factory=list)
    first_attempt_at: float | None = None  # monotonic: where the retry horizon is measured from


def _corrupt(delivery: Delivery, headers: dict[str, str], path: str) -> tuple[dict[str, str], str]:
    """Break whatever authenticates this attempt: the signature header, or the callback's token."""
    for name in ("Stripe-Signature", "X-Shopify-Hmac-Sha256"):
        if name in headers:
            value = headers[name]
            headers[name] = value[:-4] + ("AAAA" if not value.endswith("AAAA") else "BBBB")
            return headers, path
    if "token=" in path:
        return headers, path.split("token=")[0] + "token=forged-by-the-lab"
    return headers, path


# Webhook deliveries in flight at once. At 64, the service's API in a quick run's settle phase sat idle a
# quarter of the time while 64 reports waited on one group commit: its drain was in-flight /
# latency (64 / ~45 ms), not its CPU. At 128 the same settle took 0.75x as long (six runs side by
# side); a provider under a backlog sends as fast as its receiver answers.
DELIVERIES_IN_FLIGHT = 128


class WebhookDispatcher:
    def __init__(
        self,
        target: str | None,
        ledger: JsonLinesLedger,
        time_scale: float,
        faults: FaultEngine | None = None,
        concurrency: int = DELIVERIES_IN_FLIGHT,
        timeout: float = 10.0,
        client: str = DEFAULT_OUTBOUND_CLIENT,
        retry_horizon_s: float = 0.0,
    ) -> None:
        self.target = target.rstrip("/") if target else None
        # Retries go on (at the schedule's last interval, capped) until this many wall seconds after the
        # first attempt, when the provider's own compressed schedule ends sooner: the lab makes a
        # provider's horizon outlast what a scenario does to the service, as real ones (hours, days)
        # outlast a restart. 0: the provider's schedule alone.
        self.retry_horizon_s = retry_horizon_s
        self.client_kind = client
        self.ledger = ledger
        self.time_scale = time_scale
        self.faults = faults
        self.timeout = timeout
        self.concurrency = concurrency
        self._heap: list[tuple[float, int, Delivery]] = []
        self._order = itertools.count()
        self._ids = itertools.count(1)
        self._wake: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._unfinished = 0  # deliveries admitted and not yet acknowledged, given up or dropped
        self._promised = 0  # webhooks a provider has committed to and not emitted yet (see `promise`)
        self._runner: asyncio.Task[None] | None = None
        self._client: OutboundClient | None = None
        self.before_sending: list[Callable[[], None]] = []  # e.g. flush the ledgers the due events wrote
        self.counters: dict[str, int] = {
            "scheduled": 0,
            "attempts": 0,
            "acknowledged": 0,
            "failed_attempts": 0,
            "dropped": 0,
            "duplicated": 0,
        }

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        if self.target:
            self._client = open_outbound_client(
                self.client_kind, self.target, self.timeout, max_connections=self.concurrency
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
        """Webhooks not yet acknowledged or given up: 0 means every one of them was.

        A delivery counts from the moment it is scheduled (so a provider call that fires a webhook has
        made it pending before it answers) until it is acknowledged, dropped, out of retries, or has
        nowhere to go: whether it is waiting for its due time, for a free connection, in flight (also
        inline, `deliver_now`) or waiting for a retry. Webhooks a provider has promised (`promise`)
        count too. (Counting the heap and the running tasks missed a delivery taken off the heap while
        it waited for a free connection, and every `deliver_now` attempt.)
        """
        return self._unfinished + self._promised

    def promise(self) -> Callable[[], None]:
        """A webhook the provider will schedule later (an asynchronous payment that settles a moment after
        the call that started it): pending from now until the returned function is called, which the
        provider does once it has scheduled the delivery (or decided there is none)."""
        self._promised += 1
        kept = False

        def keep() -> None:
            nonlocal kept
            if not kept:
                kept = True
                self._promised -= 1

        return keep

    def schedule(self, delivery: Delivery, delay_seconds: float = 0.0) -> None:
        """Deliver after `delay_seconds` of wall time (not scaled: the caller chose it)."""
        if not delivery.delivery_id:
            delay_seconds += self._admit(delivery, delay_seconds)
        heapq.heappush(self._heap, (time.monotonic() + delay_seconds, next(self._order), delivery))
        if self._wake is not None:
            self._wake.set()

    def _admit(self, delivery: Delivery, due_in: float = 0.0) -> float:
        """A new delivery: its id, and the faults decided once for it. Returns the extra delay."""
        delivery.delivery_id = next(self._ids)
        self.counters["scheduled"] += 1
        self._unfinished += 1
        target = FAULT_TARGETS[delivery.provider]
        if self.faults is None or delivery.copy_of is not None or not self.faults.may_apply(target):
            return 0.0
        decision = self.faults.decide(target, kinds=DELIVERY_KINDS)
        if decision.delay:
            delivery.faults.append("latency")
        if decision.kind == "drop":
            delivery.dropped = True
            delivery.faults.append("drop")
            self.counters["dropped"] += 1
        elif decision.kind == "duplicate" and decision.terminal is not None:
            params = decision.terminal.params
            for n in range(1, int(params.get("copies", 1)) + 1):
                twin = copy.copy(delivery)
                twin.delivery_id, twin.copy_of, twin.on_due, twin.faults = (
                    0,
                    delivery.delivery_id,
                    None,
                    ["duplicate"],
                )
                twin.meta = dict(delivery.meta)
                twin.original = delivery
                self.counters["duplicated"] += 1
                self.schedule(twin, due_in + decision.delay + n * float(params.get("spread_ms", 10)) / 1000)
        return decision.delay

    async def deliver_now(self, delivery: Delivery) -> None:
        """Happen and attempt at once, before returning (a report that beats the send's own answer)."""
        self._admit(delivery)
        if delivery.on_due is not None:
            delivery.on_due()
            delivery.on_due = None
        for hook in self.before_sending:
            hook()
        if delivery.dropped:
            self._record(delivery, None, None, dropped=True)
            self._unfinished -= 1
            return
        if self._client is None or self._slots is None:
            self._unfinished -= 1  # nowhere to deliver: the provider's own state still changed
            return
        await self._slots.acquire()
        await self._attempt(delivery)

    async def _run(self) -> None:
        assert self._wake is not None
        assert self._slots is not None
        while True:
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self._heap[0][0] - time.monotonic()
            if wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                continue
            # Everything due now happens first (its records written in one go), then goes out.
            now = time.monotonic()
            due: list[Delivery] = []
            while self._heap and self._heap[0][0] <= now and len(due) < 5_000:
                delivery = heapq.heappop(self._heap)[2]
                if delivery.on_due is not None:
                    delivery.on_due()
                    delivery.on_due = None
                due.append(delivery)
            for hook in self.before_sending:
                hook()
            for delivery in due:
                if delivery.dropped:
                    self._record(delivery, None, None, dropped=True)
                    self._unfinished -= 1
                    continue
                if self._client is None:
                    self._unfinished -= 1  # nowhere to deliver: the provider's own state still changed
                    continue
                await self._slots.acquire()
                task = asyncio.create_task(self._attempt(delivery))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _attempt(self, delivery: Delivery) -> None:
        assert self._client is not None
        assert self._slots is not None
        delivery.attempt += 1
        if delivery.first_attempt_at is None:
            delivery.first_attempt_at = time.monotonic()
        self.counters["attempts"] += 1
        age, corrupt, faults = 0.0, False, []
        if self.faults is not None:
            decision = self.faults.decide(
                FAULT_TARGETS[delivery.provider], kinds=ATTEMPT_KINDS, count_request=False
            )
            stale = decision.has("stale_timestamp")
            if stale is not None:
                age = float(stale.params.get("seconds", 600))
                faults.append("stale_timestamp")
            if decision.has("bad_signature") is not None:
                corrupt = True
                faults.append("bad_signature")
        body = delivery.original.body if delivery.original is not None else delivery.body
        headers = {"Content-Type": "application/json", **delivery.sign(body, age)}
        path = delivery.path
        if corrupt:
            headers, path = _corrupt(delivery, headers, path)
        status: int | None = None
        error: str | None = None
        try:
            status = await self._client.post(path, body, headers)
        except DeliveryError as exc:
            error = str(exc)
        finally:
            self._slots.release()
        acknowledged = status is not None and 200 <= status < 300
        retry_in = None if acknowledged else self._next_retry(delivery)
        self._record(
            delivery, status, error, attempt_faults=faults, gave_up=not acknowledged and retry_in is None
        )
        if retry_in is not None:
            self.schedule(delivery, retry_in)
        else:
            self._unfinished -= 1  # acknowledged, or the provider gave up

    def _next_retry(self, delivery: Delivery) -> float | None:
        """Seconds until the next attempt after a failed one, or None: the provider gives up."""
        if delivery.attempt <= len(delivery.retry_delays):
            return delivery.retry_delays[delivery.attempt - 1] * self.time_scale
        started = delivery.first_attempt_at or time.monotonic()
        if delivery.retry_delays and time.monotonic() - started < self.retry_horizon_s:
            return min(delivery.retry_delays[-1] * self.time_scale, HORIZON_RETRY_CAP_S)
        return None

    def _record(
        self,
        delivery: Delivery,
        status: int | None,
        error: str | None,
        dropped: bool = False,
        attempt_faults: list[str] | None = None,
        gave_up: bool = False,
    ) -> None:
        acknowledged = status is not None and 200 <= status < 300
        if not dropped:
            self.counters["acknowledged" if acknowledged else "failed_attempts"] += 1
        self.ledger.append(
            {
                "t": time.time(),
                "delivery": delivery.delivery_id,
                "copy_of": delivery.copy_of,
                "provider": delivery.provider,
                "attempt": delivery.attempt,
                "status": status,
                "error": error,
                "acknowledged": acknowledged,
                "dropped": dropped,
                "faults": delivery.faults + (attempt_faults or []),
                **({"gave_up": True} if gave_up else {}),
                **delivery.meta,
            }
        )

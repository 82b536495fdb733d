"""Tenant rate limits (safeguard 9, `tenant_rate_limits`, invariant I9): one shop cannot starve another.

Each merchant route belongs to one class (`opt={"rate_class": ...}` on its handler, `RouteClass`), and
each shop has a budget per class (`SMSLAB_RATE_LIMITS`, e.g. `strict=60/minute burst=10`: a sustained
rate, and how many may come at once; without `burst`, the whole period's count may). The count lives in
Redis, so every API process on every host shares it, and is kept by GCRA (the generic cell rate
algorithm) in one Lua script: the check and the update are one atomic step on the server, on the
server's clock, never a read and then a write. A request over its budget gets a 429 problem with
`Retry-After` (whole seconds, at least 1) before its body is read, so it changes nothing: an enqueue
refused here has not claimed its Idempotency-Key. Every limited answer, refused or not, carries
`RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`.

The providers' webhooks are never counted against a merchant: a provider's retries must not be refused
by a tenant's budget. They have one global guard of their own, per provider, against floods.

Redis unreachable: the policy is a setting (`SMSLAB_RATE_LIMIT_WHEN_REDIS_DOWN`). `allow` (the default)
serves the request unlimited, logs one line a minute and counts it (`smslab_rate_limiter_unavailable_total`):
availability over isolation, since Redis down already stops the sending pipeline and a limiter that
refused everything would turn a queue outage into an API outage. `deny` answers 503 with Retry-After:
isolation over availability, for deployments where one tenant's flood is the greater risk.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from service import logs
from service.errors import ProblemError
from service.metrics import RATE_LIMITER_UNAVAILABLE

log = logs.get_logger(__name__)


class RouteClass(StrEnum):
    GENERAL = "general"
    STRICT = "strict"  # enqueue, cancel, credit grants: what starts work or moves money
    CONTACTS = "contacts"
    CAMPAIGNS = "campaigns"
    BILLING = "billing"
    IMPORTS = "imports"  # bulk contacts
    REPORTS = "reports"  # lists and exports


RATE_CLASS = "rate_class"  # the handler `opt` key naming its class
PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
# The bursts bound what one shop can make the service do at once: ten 10,000-contact imports arriving
# together are seconds of one core, whatever the minute's budget says.
DEFAULT_LIMITS = (
    "general=600/minute burst=60,strict=60/minute burst=10,contacts=300/minute burst=30,"
    "campaigns=300/minute burst=30,billing=60/minute burst=10,imports=10/minute burst=2,"
    "reports=300/minute burst=30"
)
DEFAULT_WEBHOOK_LIMIT = "5000/second"  # per provider, all shops together: a flood, not a busy hour
_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour)(?:\s+burst\s*=\s*(\d+))?\s*$")

# For the lab's functional runs (the fuzzer, the test suite): every class a budget no run reaches, so a
# 429 never stands in for the answer under test. Safeguard 9 stays on: every request still pays its check.
UNREACHABLE_LIMITS = ",".join(f"{route_class.value}=100000/minute" for route_class in RouteClass)


@dataclass(frozen=True)
class Limit:
    """`count` per `period_s` sustained, at most `burst` at once (GCRA's tolerance: burst intervals)."""

    count: int
    period_s: float
    burst: int = 0  # 0: `count`

    @property
    def at_once(self) -> int:
        return self.burst or self.count

    @property
    def interval_s(self) -> float:
        return self.period_s / self.count

    def most_admitted_within(self, seconds: float) -> int:
        """The most requests GCRA admits in any `seconds`: the burst, then one per interval."""
        return self.at_once + math.floor(seconds / self.interval_s)

    @cached_property
    def key(self) -> str:
        """Part of the bucket's key: processes configured with other limits (a rolling change of
        SMSLAB_RATE_LIMITS) keep separate counts instead of reading each other's state."""
        return f"{self.count}-{self.period_s:g}-{self.at_once}"

    def as_dict(self) -> dict[str, float]:
        return {"count": self.count, "period_s": self.period_s, "burst": self.at_once}

    def __str__(self) -> str:
        unit = next(name for name, seconds in PERIODS.items() if seconds == self.period_s)
        return f"{self.count}/{unit}" + (f" burst={self.burst}" if self.burst else "")


def parse_limit(text: str) -> Limit:
    match = _LIMIT.match(text)
    if not match or int(match.group(1)) < 1 or (match.group(3) is not None and int(match.group(3)) < 1):
        raise ValueError(f"expected COUNT/second|minute|hour [burst=N] with COUNT and N >= 1, got {text!r}")
    return Limit(int(match.group(1)), PERIODS[match.group(2)], int(match.group(3) or 0))


def parse_limits(text: str) -> dict[str, Limit]:
    """`class=COUNT/period,...` over the defaults; each class named once, every class known."""
    limits = {name: parse_limit(value) for name, value in _pairs(DEFAULT_LIMITS)}
    seen: set[str] = set()
    for name, value in _pairs(text):
        if name not in {c.value for c in RouteClass}:
            known = ", ".join(c.value for c in RouteClass)
            raise ValueError(f"unknown route class {name!r}; known: {known}")
        if name in seen:
            raise ValueError(f"route class {name!r} given twice")
        seen.add(name)
        limits[name] = parse_limit(value)
    return limits


def _pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"expected class=COUNT/period, got {part!r}")
        pairs.append((name.strip(), value.strip()))
    return pairs


# GCRA in one step, on the server's clock. KEYS[1]: the bucket; ARGV: the emission interval and the
# tolerance (burst x interval), in microseconds. The stored value is the theoretical arrival time (TAT).
# Returns {allowed 1|0, remaining, reset_after_us, retry_after_us}.
_GCRA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst
if now < allow_at then
  return {0, 0, tat - now, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
local remaining = math.floor((burst - (new_tat - now)) / interval)
return {1, remaining, new_tat - now, 0}
"""
# The same for `count` requests to one bucket at once (ARGV[3]), as `count` runs of `_GCRA` in a row
# would decide them: the first `admitted` are allowed (TAT advancing one interval each), the rest
# refused. Returns {admitted, TAT - now before them}; `_expand` gives each request its own answer.
_GCRA_MANY = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local admitted = math.floor((now + burst - tat) / interval)
if admitted > count then admitted = count end
if admitted < 0 then admitted = 0 end
if admitted > 0 then
  local new_tat = tat + admitted * interval
  redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
end
return {admitted, tat - now}
"""


def _expand(admitted: int, base_us: int, interval_us: int, burst_us: int, count: int) -> list[list[int]]:
    """`_GCRA_MANY`'s answer as the `count` answers of `_GCRA` one after another ({allowed, remaining,
    reset, retry after}, microseconds), TAT starting `base_us` after now."""
    answers = []
    for i in range(1, count + 1):
        if i <= admitted:
            tat = base_us + i * interval_us
            answers.append([1, (burst_us - tat) // interval_us, tat, 0])
        else:
            tat = base_us + admitted * interval_us
            answers.append([0, 0, tat, tat + interval_us - burst_us])
    return answers


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: Limit
    remaining: int
    reset_s: float
    retry_after_s: float

    def headers(self) -> dict[str, str]:
        """The RateLimit fields on every limited answer (the IETF draft's): how many may come at once
        (the burst), how many of those are left, the seconds until all are back; and the policy."""
        headers = {
            "RateLimit-Policy": f"{self.limit.count};w={int(self.limit.period_s)};burst={self.limit.at_once}",
            "RateLimit-Limit": str(self.limit.at_once),
            "RateLimit-Remaining": str(max(0, self.remaining)),
            "RateLimit-Reset": str(max(0, math.ceil(self.reset_s))),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


class TooManyRequests(ProblemError):
    status = 429
    slug = "rate-limited"
    title = "Too many requests for this shop and route class"


class RateLimiterUnavailable(ProblemError):
    status = 503
    slug = "rate-limiter-unavailable"
    title = "The rate limiter cannot be reached"


class RateLimiter:
    """The shared counters. One per API process; every process counts in the same Redis keys."""

    def __init__(
        self,
        redis_url: str,
        limits: dict[str, Limit],
        webhook_limit: Limit,
        *,
        namespace: str = "smslab",
        when_down: str = "allow",
    ) -> None:
        self.limits = limits
        self.webhook_limit = webhook_limit
        self.namespace = namespace
        self.when_down = when_down
        # Short timeouts: a limiter that waits for a dead Redis would make every request wait.
        self._redis = aioredis.from_url(redis_url, socket_timeout=0.25, socket_connect_timeout=0.25)
        self._script = self._redis.register_script(_GCRA)
        self._many = self._redis.register_script(_GCRA_MANY)
        # Checks waiting for the next pipeline; non-empty exactly while a flush is scheduled.
        self._waiting: list[tuple[str, int, int, asyncio.Future[list[int]]]] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._last_complaint = 0.0
        self.unavailable = 0  # times Redis could not be asked (exported as a metric)
        self.round_trips = 0  # pipelines sent: with `checks`, how well checks are batched
        self.checks = 0

    async def close(self) -> None:
        for flush in list(self._flushes):
            await asyncio.wait({flush}, timeout=1)
        await self._redis.aclose()

    async def check(self, bucket: str, limit: Limit) -> Decision | None:
        """One request against a bucket: the decision, or None when Redis cannot be asked (the caller
        then applies the policy)."""
        interval_us = int(limit.interval_s * 1_000_000)
        try:
            allowed, remaining, reset_us, retry_us = await self._evaluate(
                f"{self.namespace}:ratelimit:{bucket}", interval_us, interval_us * limit.at_once
            )
        except (RedisError, OSError):
            self._complain()
            return None
        return Decision(bool(allowed), limit, int(remaining), int(reset_us) / 1e6, int(retry_us) / 1e6)

    async def _evaluate(self, key: str, interval_us: int, tolerance_us: int) -> list[int]:
        """The GCRA script for one bucket, sent with every other check this event-loop turn asked for
        in one pipeline. Each script still runs atomically on the server, so batching changes no
        decision; under many requests in flight it saves a pool checkout, a socket write and a wake-up
        per request."""
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        first = not self._waiting
        self._waiting.append((key, interval_us, tolerance_us, future))
        if first:
            flush = asyncio.create_task(self._flush())
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        return await future

    async def _flush(self) -> None:
        batch, self._waiting = self._waiting, []
        try:
            results = await self._run_batch([(key, i, t) for key, i, t, _ in batch])
        except BaseException as error:  # Redis down, or cancelled at shutdown: every waiter learns it
            for *_, future in batch:
                if not future.done():
                    future.set_exception(error if isinstance(error, Exception) else RedisError("cancelled"))
            if not isinstance(error, Exception):
                raise
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():  # its request was cancelled meanwhile
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _run_batch(self, batch: list[tuple[str, int, int]]) -> list[Any]:
        """The checks of one pipeline; where Redis lost a script (a restart, SCRIPT FLUSH), load both and
        run those checks again."""
        self.checks += len(batch)
        results = await self._pipeline(batch)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            await self._redis.script_load(_GCRA)
            await self._redis.script_load(_GCRA_MANY)
            for i, result in zip(missing, await self._pipeline([batch[i] for i in missing]), strict=True):
                results[i] = result
        return results

    async def _pipeline(self, batch: list[tuple[str, int, int]]) -> list[Any]:
        """One command per bucket: checks of one bucket asked in the same turn (a storm of one provider's
        delivery reports, a flooding shop) are one `_GCRA_MANY` instead of one script run each, so the
        API encodes, and Redis runs, one command per bucket however many requests share it."""
        self.round_trips += 1
        buckets: dict[tuple[str, int, int], list[int]] = {}
        for index, check in enumerate(batch):
            buckets.setdefault(check, []).append(index)
        pipe = self._redis.pipeline(transaction=False)
        for (key, interval_us, tolerance_us), indices in buckets.items():
            if len(indices) == 1:
                pipe.evalsha(self._script.sha, 1, key, interval_us, tolerance_us)
            else:
                pipe.evalsha(self._many.sha, 1, key, interval_us, tolerance_us, len(indices))
        answers = await pipe.execute(raise_on_error=False)
        results: list[Any] = [None] * len(batch)
        for (check, indices), answer in zip(buckets.items(), answers, strict=True):
            _key, interval_us, tolerance_us = check
            if len(indices) == 1 or isinstance(answer, Exception):
                for index in indices:
                    results[index] = answer
                continue
            admitted, base_us = (int(value) for value in answer)
            for index, one in zip(
                indices, _expand(admitted, base_us, interval_us, tolerance_us, len(indices)), strict=True
            ):
                results[index] = one
        return results

    async def for_shop(self, domain: str, route_class: str) -> Decision | None:
        limit = self.limits[route_class]
        return await self.check(f"shop:{domain}:{route_class}:{limit.key}", limit)

    async def for_webhooks(self, provider: str) -> Decision | None:
        return await self.check(f"webhooks:{provider}:{self.webhook_limit.key}", self.webhook_limit)

    def _complain(self) -> None:
        self.unavailable += 1
        RATE_LIMITER_UNAVAILABLE.inc()
        now = time.monotonic()
        if now - self._last_complaint >= 60:
            self._last_complaint = now
            log.warning("rate_limiter_unavailable", policy=self.when_down, since_last=self.unavailable)

    def refuse(self, decision: Decision | None, what: str) -> None:
        """Raise the answer for a request the limiter refuses (or cannot decide, under `deny`)."""
        if decision is None:
            if self.when_down == "deny":
                raise RateLimiterUnavailable(
                    "the rate limiter's Redis cannot be reached; retry shortly", headers={"Retry-After": "1"}
                )
            return
        if not decision.allowed:
            raise TooManyRequests(
                f"{what}: over {decision.limit}; retry after {decision.headers()['Retry-After']} s",
                headers=decision.headers(),
            )


def rate_class(route_class: RouteClass) -> dict[str, str]:
    """The handler `opt` that puts a route in a class: `@get(..., opt=rate_class(RouteClass.REPORTS))`."""
    return {RATE_CLASS: route_class.value}


def rate_class_of(handler: Any) -> str | None:
    """The class a route handler declares (`opt={"rate_class": ...}`); None for unlimited routes."""
    opt = getattr(handler, "opt", None) or {}
    value = opt.get(RATE_CLASS)
    return str(value) if value else None

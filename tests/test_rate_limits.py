"""Safeguard 9, `tenant_rate_limits` (invariant I9): one shop's budget per route class, shared by every
API process through Redis, refused with 429 before anything changes; and I9's checker on histories.

The switched-off twin: with the safeguard off the same burst is served in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from chaos.checker import i9_tenant_isolation
from chaos.processes import smslab_argv
from service import safeguards
from service.app import create_app
from service.auth import is_public
from service.db.models import Campaign, EnqueueRequest
from service.embedded_redis import EmbeddedRedis
from service.rate_limits import RateLimiter, RouteClass, parse_limit, parse_limits, rate_class_of
from service.settings import Settings, validate
from tests.support.api import Api, problem, start_api
from tests.support.lab import Lab

ALPHA, BETA = "alpha.myshopify.com", "beta.myshopify.com"


@contextlib.asynccontextmanager
async def apis(lab: Lab, tmp_path: Path, count: int = 1) -> AsyncIterator[list[Api]]:
    """`count` API processes on the lab's settings (its database, its Redis: one shared count)."""
    processes = [start_api(lab.settings, tmp_path / f"api-{n}") for n in range(count)]
    clients = [Api(lab.settings, process) for process in processes]
    try:
        yield clients
    finally:
        for client, process in zip(clients, processes, strict=True):
            await client.close()
            process.stop()


def assert_limited(response: httpx.Response) -> None:
    """Every limited answer carries the RateLimit fields; a refusal also a whole-second Retry-After."""
    for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy"):
        assert name in response.headers, (name, dict(response.headers))
    if response.status_code == 429:
        assert int(response.headers["Retry-After"]) >= 1
        assert problem(response)["type"].endswith("/rate-limited")


# --- configuration -----------------------------------------------------------------------------------
def test_limits_parse_over_the_defaults_and_bad_ones_name_the_class() -> None:
    limits = parse_limits("strict=5/second burst=2, imports=1/hour")
    assert (limits["strict"].count, limits["strict"].period_s, limits["strict"].at_once) == (5, 1.0, 2)
    assert (limits["imports"].count, limits["imports"].at_once) == (1, 1)
    assert str(limits["general"]) == "600/minute burst=60"  # a class not named keeps its default
    assert parse_limit("10/minute burst=2").most_admitted_within(60) == 12
    for text, message in [
        ("bulk=5/minute", "unknown route class 'bulk'"),
        ("strict=5/fortnight", "expected COUNT/second|minute|hour"),
        ("strict=0/minute", "COUNT and N >= 1"),
        ("strict=5/minute,strict=6/minute", "given twice"),
        ("strict", "expected class=COUNT/period"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_limits(text)


def test_a_bad_limit_stops_the_api_with_one_line_naming_the_setting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSLAB_")}
    env.update(SMSLAB_VAR_DIR=str(tmp_path), SMSLAB_RATE_LIMITS="strict=lots")
    done = subprocess.run(smslab_argv("api"), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("smslab: bad setting SMSLAB_RATE_LIMITS:"), lines


def test_every_merchant_route_is_in_exactly_one_class_and_no_public_route_is(tmp_path: Path) -> None:
    app = create_app(validate(Settings(var_dir=tmp_path)), "redis://127.0.0.1:9")
    seen = set()
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if set(getattr(handler, "http_methods", ())) <= {"OPTIONS", "HEAD"}:
                continue  # CORS preflight and HEAD: answered by the framework, never by a handler
            declared = rate_class_of(handler)
            if is_public(route.path):
                assert declared is None, f"{route.path} is public and must not count against a shop"
            elif route.path.startswith("/api"):
                assert declared in {c.value for c in RouteClass}, f"{route.path} declares no rate class"
                seen.add(declared)
    assert {"general", "strict", "campaigns", "billing", "imports", "reports"} <= seen


# --- the limits, over HTTP, across processes -----------------------------------------------------------
@pytest.mark.webhooks_to_api
async def test_one_shop_at_its_limit_limits_neither_another_shop_nor_its_other_classes(
    lab: Lab, tmp_path: Path
) -> None:
    lab = lab.with_settings(rate_limits="campaigns=3/minute")
    async with apis(lab, tmp_path, count=2) as (first, second):
        alpha = [first.as_shop(ALPHA), second.as_shop(ALPHA)]
        answers = [
            await alpha[n % 2].post("/api/campaigns", json={"name": "x", "body": "hi"}) for n in range(5)
        ]
        assert [a.status_code for a in answers] == [201, 201, 201, 429, 429]  # counted across both processes
        for answer in answers:
            assert_limited(answer)
        assert [a.headers["RateLimit-Remaining"] for a in answers[:3]] == ["2", "1", "0"]
        async with lab.sessions() as session:
            assert (
                await session.scalar(select(func.count()).select_from(Campaign)) == 3
            )  # refusals wrote nothing
        beta = await second.as_shop(BETA).post("/api/campaigns", json={"name": "x", "body": "hi"})
        assert beta.status_code == 201
        assert_limited(beta)
        wallet = await first.as_shop(ALPHA).get("/api/wallet")  # class general: its own budget
        assert wallet.status_code == 200
        assert_limited(wallet)


async def test_with_the_safeguard_off_the_same_burst_is_served_in_full(lab: Lab, tmp_path: Path) -> None:
    lab = lab.unsafe(safeguards.TENANT_RATE_LIMITS, rate_limits="campaigns=3/minute")
    async with apis(lab, tmp_path) as (api,):
        client = api.as_shop(ALPHA)
        answers = [await client.post("/api/campaigns", json={"name": "x", "body": "hi"}) for _ in range(5)]
    assert [a.status_code for a in answers] == [201] * 5
    assert not any("RateLimit-Limit" in a.headers for a in answers)


async def test_an_enqueue_refused_with_429_has_not_claimed_its_key_and_its_retry_succeeds(
    lab: Lab, tmp_path: Path
) -> None:
    # One enqueue per 10 s: the refusal must not depend on how fast the first enqueue is answered (at
    # one a second, a first enqueue slower than a second on a loaded machine let the second through).
    lab = lab.with_settings(rate_limits="strict=6/minute burst=1")
    shop_id = await lab.shop(ALPHA, credits=100)
    await lab.contacts(shop_id, 3)
    first, second = await lab.campaign(shop_id), await lab.campaign(shop_id)
    async with apis(lab, tmp_path) as (api,):
        client = api.as_shop(ALPHA)
        assert (
            await client.post(f"/api/campaigns/{first}/enqueue", headers={"Idempotency-Key": "k-1"})
        ).status_code == 202
        refused = await client.post(f"/api/campaigns/{second}/enqueue", headers={"Idempotency-Key": "k-2"})
        assert refused.status_code == 429
        assert_limited(refused)
        async with lab.sessions() as session:
            keys = list(await session.scalars(select(EnqueueRequest.idempotency_key)))
            status = await session.scalar(select(Campaign.status).where(Campaign.id == second))
        assert keys == ["k-1"]
        assert status == "draft"
        await asyncio.sleep(int(refused.headers["Retry-After"]))
        retried = await client.post(f"/api/campaigns/{second}/enqueue", headers={"Idempotency-Key": "k-2"})
    assert retried.status_code == 202, retried.text
    assert retried.json()["recipient_count"] == 3
    assert "Idempotent-Replayed" not in retried.headers  # executed now, not a stored refusal replayed


@pytest.mark.webhooks_to_api
async def test_provider_webhooks_are_not_counted_against_a_merchant_but_have_a_flood_guard(
    lab: Lab, tmp_path: Path
) -> None:
    lab = lab.with_settings(rate_limits="general=1/hour", webhook_rate_limit="3/minute")
    await lab.shop(ALPHA)
    async with apis(lab, tmp_path) as (api,):
        merchant = api.as_shop(ALPHA)
        assert (await merchant.get("/api/wallet")).status_code == 200
        assert (await merchant.get("/api/wallet")).status_code == 429  # the merchant's budget is spent
        url = f"/webhooks/mitto/dlr?token={lab.settings.mitto_dlr_token}"
        report = {
            "messageId": "nope",
            "reference": "c1-r1",
            "status": "Delivered",
            "timestamp": "2026-11-28T12:00:00Z",
        }
        anonymous = api.anonymous()
        answers = [await anonymous.post(url, json=report) for _ in range(4)]
    assert [a.status_code for a in answers][:3] == [200, 200, 200]  # not refused for the shop's budget
    assert answers[3].status_code == 429
    assert int(answers[3].headers["Retry-After"]) >= 1


@pytest.mark.parametrize("policy", ["allow", "deny"])
async def test_redis_down_follows_the_policy(lab: Lab, tmp_path: Path, policy: str) -> None:
    redis = EmbeddedRedis(tmp_path / "own-redis")
    lab = lab.with_settings(redis_url=redis.start(), rate_limit_when_redis_down=policy)
    await lab.shop(ALPHA)
    try:
        async with apis(lab, tmp_path) as (api,):
            client = api.as_shop(ALPHA)
            assert (await client.get("/api/wallet")).status_code == 200
            redis.stop()
            answers = [await client.get("/api/wallet") for _ in range(5)]
            metrics = (await api.anonymous().get("/metrics")).text
            log = (tmp_path / "api-0" / "api.log").read_text()
    finally:
        redis.stop()
    if policy == "allow":
        assert [a.status_code for a in answers] == [200] * 5
        assert "RateLimit-Limit" not in answers[0].headers  # served unlimited, and not pretending otherwise
        assert log.count("rate_limiter_unavailable") == 1  # one line a minute, not one per request
        assert "smslab_rate_limiter_unavailable_total 5.0" in metrics
    else:
        assert [a.status_code for a in answers] == [503] * 5
        assert answers[0].headers["Retry-After"] == "1"
        assert problem(answers[0])["type"].endswith("/rate-limiter-unavailable")


# --- the limiter's batched round trips -----------------------------------------------------------------
async def test_checks_asked_together_share_a_round_trip_and_each_bucket_admits_exactly_its_burst(
    tmp_path: Path,
) -> None:
    """Sixty requests at once over three shops, burst 10 each: one pipeline carries many checks, and
    the decisions are those of sixty checks one by one (each script is atomic on the server)."""
    redis = EmbeddedRedis(tmp_path / "redis")
    limit = parse_limit("10/hour burst=10")
    limiter = RateLimiter(redis.start(), {"general": limit}, parse_limit("5000/second"))
    try:
        decisions = await asyncio.gather(
            *(limiter.for_shop(f"shop{n % 3}.myshopify.com", "general") for n in range(60))
        )
    finally:
        await limiter.close()
        redis.stop()
    assert all(d is not None for d in decisions)
    allowed = [n % 3 for n, d in enumerate(decisions) if d is not None and d.allowed]
    assert sorted(allowed) == [0] * 10 + [1] * 10 + [2] * 10
    assert sorted(d.remaining for d in decisions if d is not None and d.allowed) == sorted(
        list(range(10)) * 3
    )
    assert limiter.checks == 60
    assert limiter.round_trips < 10, limiter.round_trips  # batched: not one round trip per check


def test_many_checks_of_one_bucket_are_answered_as_one_check_after_another() -> None:
    """`_GCRA_MANY`'s arithmetic (`_expand`) against `_GCRA`'s, run request by request in Python."""
    import random

    from service.rate_limits import _expand

    def one_by_one(tat: int, interval: int, burst: int, count: int) -> list[list[int]]:
        now, answers = 0, []
        for _ in range(count):
            tat = max(tat, now)
            new_tat = tat + interval
            if now < new_tat - burst:
                answers.append([0, 0, tat - now, new_tat - burst - now])
                continue
            tat = new_tat
            answers.append([1, (burst - (new_tat - now)) // interval, new_tat - now, 0])
        return answers

    rng = random.Random(7)
    for _ in range(2000):
        interval = rng.randint(1, 1_000_000)
        burst = interval * rng.randint(1, 20)
        count = rng.randint(2, 40)
        tat = rng.randint(0, burst + 3 * interval)  # after now (a TAT in the past counts as now)
        admitted = max(0, min(count, (burst - tat) // interval))
        assert _expand(admitted, tat, interval, burst, count) == one_by_one(tat, interval, burst, count)


async def test_one_buckets_checks_in_one_turn_are_one_command_and_decide_as_one_by_one(
    tmp_path: Path,
) -> None:
    """Twelve requests at once to one bucket (a provider's storm): its burst of five admitted with the
    remaining counts of five checks in a row, the rest refused with a Retry-After."""
    redis = EmbeddedRedis(tmp_path / "redis")
    limiter = RateLimiter(
        redis.start(), {"general": parse_limit("10/second burst=5")}, parse_limit("5000/second")
    )
    try:
        decisions = await asyncio.gather(*(limiter.for_shop(ALPHA, "general") for _ in range(12)))
    finally:
        await limiter.close()
        redis.stop()
    answered = [d for d in decisions if d is not None]
    assert len(answered) == 12
    assert [d.remaining for d in answered if d.allowed] == [4, 3, 2, 1, 0]
    refused = [d for d in answered if not d.allowed]
    assert len(refused) == 7
    assert all(0 < d.retry_after_s <= 0.1 for d in refused)
    assert limiter.round_trips <= 3


async def test_a_redis_that_lost_the_script_is_given_it_again_and_no_check_is_lost(tmp_path: Path) -> None:
    """A Redis restarted or flushed forgets loaded scripts: every check of the batch that met
    NOSCRIPT is run again after loading it, rather than answered as Redis unavailable."""
    redis = EmbeddedRedis(tmp_path / "redis")
    url = redis.start()
    limiter = RateLimiter(url, {"general": parse_limit("100/hour")}, parse_limit("5000/second"))
    try:
        first = await limiter.for_shop(ALPHA, "general")
        await limiter._redis.script_flush()
        again = await asyncio.gather(*(limiter.for_shop(ALPHA, "general") for _ in range(5)))
    finally:
        await limiter.close()
        redis.stop()
    assert first is not None
    assert first.allowed
    assert [d is not None and d.allowed for d in again] == [True] * 5
    assert [d.remaining for d in again if d is not None] == [98, 97, 96, 95, 94]
    assert limiter.unavailable == 0


# --- I9 from histories ---------------------------------------------------------------------------------
class History:
    """A history as the workload writes it: invoke, then its completion."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def call(
        self, f: str, shop: str, start: float, took: float | None, status: int | None, **value: Any
    ) -> None:
        index = len(self.entries)
        self.entries.append(
            {
                "index": index,
                "time": start,
                "process": "p",
                "type": "invoke",
                "f": f,
                "value": {"shop": shop, **value},
            }
        )
        if took is None:
            return
        kind = "info" if status is None or status >= 500 else "ok" if status < 300 else "fail"
        if value.get("problem") == "overloaded":
            kind = "fail"  # refused before anything ran, as the load users record it
        answer = {"shop": shop, **value, "status": status}
        if status == 503:
            answer["retry_after"] = "1"
        if status == 429:
            answer["retry_after"] = value.pop("retry_after", "1")
        self.entries.append(
            {
                "index": index + 1,
                "time": start + took,
                "process": "p",
                "type": kind,
                "f": f,
                "op": index,
                "value": answer,
            }
        )

    def flood(
        self, start: float, took: float, status: int, route_class: str = "reports", **value: Any
    ) -> None:
        self.call(
            "list_contacts",
            "noisy.myshopify.com",
            start,
            took,
            status,
            flood=True,
            route_class=route_class,
            **value,
        )


ISOLATION = {
    "latency_bound_s": 2.0,
    "noisy_clients": 2,
    "rate_limits": {"reports": {"count": 60, "period_s": 60.0, "burst": 5}},
}


def isolated_run() -> History:
    history = History()
    for n in range(40):
        history.flood(n * 0.25, 0.05, 200 if n % 8 == 0 else 429)
    for n in range(10):
        history.call("enqueue", ALPHA, 0.5 + n, 0.2, 202)
    return history


def test_i9_holds_when_the_others_are_served_in_time_and_the_flood_is_refused() -> None:
    result = i9_tenant_isolation.check(isolated_run().entries, ISOLATION)
    assert result.valid is True, result.witnesses
    assert result.counts["others_during_flood"] == 10
    assert result.counts["flood_refused_429"] == 35


def test_i9_a_slow_or_unanswered_other_shop_is_a_starved_witness() -> None:
    history = isolated_run()
    history.call("create_campaign", BETA, 3.0, 2.5, 201)
    history.call("enqueue", BETA, 4.0, 10.0, None)
    result = i9_tenant_isolation.check(history.entries, ISOLATION)
    assert result.valid is False
    starved = [w for w in result.witnesses if w["kind"] == "starved"]
    assert [w["why"] for w in starved] == ["took 2500 ms, over the bound of 2000 ms", "no answer (None)"]
    assert starved[0]["flood_in_flight"] == 1
    assert "history_time" in starved[0]


def test_i9_a_flood_served_past_its_budget_or_refused_without_retry_after_is_caught() -> None:
    served = History()
    for n in range(20):  # 20 served within 5 s: the budget (burst 5, one a second) admits 10
        served.flood(n * 0.25, 0.05, 200)
    served.call("enqueue", ALPHA, 1.0, 0.1, 202)
    result = i9_tenant_isolation.check(served.entries, ISOLATION)
    assert result.valid is False
    assert result.counts["over_limit"] == 1
    assert "admits 10" in result.witnesses[0]["why"]
    bare = isolated_run()
    bare.flood(5.0, 0.01, 429, retry_after=None)
    bare.flood(5.5, 0.01, 503)
    result = i9_tenant_isolation.check(bare.entries, ISOLATION)
    assert {w["kind"] for w in result.witnesses} == {"no_retry_after", "flood_unanswered"}


def test_i9_another_shop_refused_503_overloaded_during_the_flood_was_starved() -> None:
    """A process the flood filled refusing another shop is the starvation I9 exists for, however fast
    the refusal; the flood's own 503 overloaded answers are neither unanswered nor served."""
    history = isolated_run()
    for n in range(12):  # within 3 s: over the budget if they counted as served
        history.flood(1.0 + n * 0.25, 0.01, 503, problem="overloaded")
    assert i9_tenant_isolation.check(history.entries, ISOLATION).valid is True
    history.call("wallet", BETA, 2.0, 0.01, 503, problem="overloaded")
    result = i9_tenant_isolation.check(history.entries, ISOLATION)
    assert result.valid is False
    assert [(w["kind"], w["why"]) for w in result.witnesses] == [
        ("starved", "refused 503 overloaded: the API process was full while the flood was served")
    ]


def test_i9_without_a_flood_has_nothing_to_judge_and_says_so() -> None:
    quiet = History()
    quiet.call("enqueue", ALPHA, 1.0, 0.1, 202)
    result = i9_tenant_isolation.check(quiet.entries, {"noisy_clients": 0})
    assert result.valid is True
    assert "not exercised" in str(result.note)
    missing = i9_tenant_isolation.check(quiet.entries, ISOLATION)  # a noisy tenant was planned
    assert missing.valid == "unknown"
    alone = History()
    alone.flood(0.0, 0.1, 429)
    assert i9_tenant_isolation.check(alone.entries, ISOLATION).valid == "unknown"  # nobody to starve


def test_i9_excuses_calls_inside_the_nemesiss_windows_on_the_apis_path(tmp_path: Path) -> None:
    """The API killed while the noisy tenant floods: the calls it cut or refused, and the slow ones as it
    came back, are the nemesis's doing, not the flood's; a starved call well outside is still caught."""
    history = isolated_run()
    history.call("enqueue", BETA, 3.5, 1.0, None)  # cut as the API died at 4.0 s (logged at 4.2 s)
    history.call("create_campaign", BETA, 5.0, 0.1, None)  # refused while it was down
    history.call(  # the flood's own, refused too
        "list_contacts", "noisy.myshopify.com", 5.2, 0.01, None, flood=True, route_class="reports"
    )
    history.call("enqueue", BETA, 7.0, 3.0, 202)  # slow while it caught up (restarted at 6.0 s)
    history.call("enqueue", BETA, 9.6, 2.5, 202)  # 3.6 s after the restart, still within RECOVERY_S
    (tmp_path / "nemesis.jsonl").write_text(
        "\n".join(
            json.dumps(entry)
            for entry in (
                {"t": 2.2, "planned_at": 2.0, "action": "kill_api", "target": "api", "phase": "start"},
                {
                    "t": 3.0,
                    "planned_at": 1.0,
                    "action": "kill_worker",
                    "target": "worker-0",
                    "phase": "start",
                },
                {"t": 4.0, "planned_at": 2.0, "action": "kill_api", "target": "api", "phase": "end"},
            )
        )
        + "\n"
    )
    manifest = {"clock": {"history_started_at": 100.0, "chaos_started_at": 102.0}}  # chaos t + 2 s
    windows = i9_tenant_isolation.disruptions(tmp_path, manifest)
    assert [(w["action"], w["from"], w["to"]) for w in windows] == [("kill_api", 4.2, 6.0)]
    result = i9_tenant_isolation.check(history.entries, ISOLATION, windows)
    assert result.valid is True, result.witnesses
    assert result.counts["others_excused_by_nemesis"] == 4
    assert result.counts["flood_excused_by_nemesis"] == 1
    history.call("enqueue", BETA, 14.0, 2.5, 202)  # 8 s after the restart: the flood's doing again
    history.flood(16.0, 0.05, 429)
    late = i9_tenant_isolation.check(history.entries, ISOLATION, windows)
    assert late.valid is False
    assert [w["history_time"] for w in late.witnesses if w["kind"] == "starved"] == [14.0]
    # A call the load generator cut short as it stopped is nobody's answer.
    stopped = isolated_run()
    stopped.call("enqueue", BETA, 9.0, 0.1, None, error="interrupted")
    assert i9_tenant_isolation.check(stopped.entries, ISOLATION).valid is True

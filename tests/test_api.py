"""The HTTP API as a real process: authentication, tenant isolation, contacts, campaigns, enqueue, errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
from sqlalchemy import text

from service.db import migrate
from tests.support.api import Api, problem, start_api
from tests.support.lab import Lab, phone_numbers

SHOP = "alpha.myshopify.com"
OTHER = "beta.myshopify.com"


# --- authentication ---------------------------------------------------------------------------------


def _forged(api: Api, **changes: object) -> str:
    now = int(time.time())
    claims = {
        "iss": f"https://{SHOP}/admin",
        "dest": f"https://{SHOP}",
        "aud": api.settings.shopify_api_key,
        "sub": "1",
        "exp": now + 60,
        "nbf": now - 1,
    }
    claims.update(changes)
    secret = str(claims.pop("secret", api.settings.shopify_api_secret))
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, algorithm="HS256")


async def test_requests_without_a_valid_session_token_are_401(api: Api) -> None:
    now = int(time.time())
    forged: dict[str, dict[str, object]] = {
        "wrong secret": {"secret": "x" * 40},
        "wrong audience": {"aud": "someone-else"},
        "expired": {"exp": now - 3600},
        "iss and dest disagree": {"iss": "https://evil.myshopify.com/admin"},
        "not a shop domain": {"dest": "https://example.com", "iss": "https://example.com/admin"},
        "no expiry": {"exp": None},
    }
    cases: dict[str, dict[str, str]] = {
        "no header": {},
        "not bearer": {"Authorization": "Basic abc"},
        "not a JWT": {"Authorization": "Bearer not-a-jwt"},
    }
    cases.update(
        {name: {"Authorization": f"Bearer {_forged(api, **claims)}"} for name, claims in forged.items()}
    )
    client = api.anonymous()
    for name, headers in cases.items():
        response = await client.get("/api/wallet", headers=headers)
        assert response.status_code == 401, name
        assert problem(response)["type"].endswith("/unauthorized"), name


async def test_the_first_valid_token_installs_the_shop(api: Api) -> None:
    response = await api.as_shop("newcomer.myshopify.com").get("/api/wallet")
    assert response.status_code == 200
    assert response.json() == {"balance": 0, "reserved": 0, "available": 0}


async def test_a_shop_never_sees_another_shops_rows(api: Api, lab: Lab) -> None:
    alpha, beta = api.as_shop(SHOP), api.as_shop(OTHER)
    await lab.shop(SHOP, credits=100)
    await alpha.post("/api/contacts", json={"contacts": [{"phone": "+12025550143", "sms_consent": True}]})
    created = (await alpha.post("/api/campaigns", json={"name": "a", "body": "hello"})).json()
    campaign = f"/api/campaigns/{created['id']}"
    for method, path in [("GET", campaign), ("POST", f"{campaign}/enqueue"), ("POST", f"{campaign}/cancel")]:
        response = await beta.request(method, path)
        assert response.status_code == 404, (method, path)
        assert problem(response)["type"].endswith("/not-found")
    assert (await beta.get("/api/campaigns")).json()["items"] == []
    assert (await beta.get("/api/contacts")).json()["items"] == []
    assert (await beta.get("/api/wallet")).json()["balance"] == 0
    assert (await alpha.get(campaign)).json()["status"] == "draft"


# --- contacts -----------------------------------------------------------------------------------------


async def test_contacts_are_upserted_in_bulk_and_paginated(api: Api) -> None:
    client = api.as_shop()
    phones = phone_numbers(5_000)
    rows = [
        {"phone": p, "email": f"c{i}@example.com", "sms_consent": i % 2 == 0} for i, p in enumerate(phones)
    ]
    response = await client.post("/api/contacts", json={"contacts": rows})
    assert response.json() == {"received": 5000, "upserted": 5000, "merged_duplicates": 0}
    seen, cursor = 0, None
    while True:
        page = (
            await client.get("/api/contacts", params={"limit": 1000, **({"after": cursor} if cursor else {})})
        ).json()
        seen += len(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == 5000
    # Updating: a field left out keeps its value; national format is normalised to E.164.
    update = {"contacts": [{"phone": "(201) 555-0000", "first_name": "Ada"}]}
    assert (await client.post("/api/contacts", json=update)).status_code == 200
    first = (await client.get("/api/contacts", params={"limit": 1})).json()["items"][0]
    assert (first["phone"], first["first_name"], first["sms_consent"]) == ("+12015550000", "Ada", True)


async def test_invalid_contact_rows_are_reported_row_by_row_and_nothing_is_written(api: Api) -> None:
    client = api.as_shop()
    rows = [
        {"phone": "+12025550143", "sms_consent": True},
        {"phone": "12345"},
        {"phone": "+12025550144", "email": "not-an-email"},
        {"phone": "+12025550145", "sms_consent": "yes", "favourite_colour": "red"},
        {"email": "a@b.co"},
    ]
    response = await client.post("/api/contacts", json={"contacts": rows})
    assert response.status_code == 422
    body = problem(response)
    assert {(e["row"], e["field"]) for e in body["errors"]} == {
        (1, "phone"),
        (2, "email"),
        (3, "sms_consent"),
        (3, "favourite_colour"),
        (4, "phone"),
    }
    assert (await client.get("/api/contacts")).json()["items"] == []


async def test_malformed_contact_requests_get_a_clear_4xx(api: Api) -> None:
    client = api.as_shop()
    for body, status in [
        (b"{not json", 400),
        (b'{"contacts": "all"}', 422),
        (b"{}", 422),
        (b'{"contacts": []}', 422),
    ]:
        response = await client.post(
            "/api/contacts", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == status, body
        problem(response)


# --- campaigns and enqueue ------------------------------------------------------------------------------


async def test_campaign_validation_errors_name_the_fields(api: Api) -> None:
    response = await api.as_shop().post("/api/campaigns", json={"name": "", "body": "x" * 2000})
    assert response.status_code == 422
    assert {e["field"] for e in problem(response)["errors"]} == {"name", "body"}


async def test_enqueue_over_http_speaks_the_idempotency_contract(api: Api, lab: Lab) -> None:
    client = api.as_shop()
    await lab.shop(SHOP, credits=25)
    rows = [{"phone": p, "sms_consent": True} for p in phone_numbers(20)]
    await client.post("/api/contacts", json={"contacts": rows})
    campaign = (await client.post("/api/campaigns", json={"name": "a", "body": "hello"})).json()["id"]
    second = (await client.post("/api/campaigns", json={"name": "b", "body": "hello again"})).json()["id"]

    first = await client.post(f"/api/campaigns/{campaign}/enqueue", headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202
    assert (first.json()["recipient_count"], first.json()["reserved_credits"]) == (20, 20)
    replay = await client.post(f"/api/campaigns/{campaign}/enqueue", headers={"Idempotency-Key": "k-1"})
    assert (replay.status_code, replay.json(), replay.headers["idempotent-replayed"]) == (
        202,
        first.json(),
        "true",
    )

    reused = await client.post(f"/api/campaigns/{second}/enqueue", headers={"Idempotency-Key": "k-1"})
    assert reused.status_code == 422
    assert problem(reused)["type"].endswith("/idempotency-key-reused")

    again = await client.post(f"/api/campaigns/{campaign}/enqueue", headers={"Idempotency-Key": "k-2"})
    assert again.status_code == 409
    assert problem(again)["type"].endswith("/campaign-not-draft")

    short = await client.post(f"/api/campaigns/{second}/enqueue", headers={"Idempotency-Key": "k-3"})
    assert short.status_code == 402
    assert (problem(short)["needed"], problem(short)["available"]) == (20, 5)
    assert (await client.get(f"/api/campaigns/{second}")).json()["status"] == "draft"
    retried = await client.post(f"/api/campaigns/{second}/enqueue", headers={"Idempotency-Key": "k-3"})
    assert (retried.status_code, retried.headers["idempotent-replayed"]) == (402, "true")
    assert retried.headers["content-type"].startswith("application/problem+json")
    assert {k: v for k, v in problem(retried).items() if k != "request_id"} == {
        k: v for k, v in problem(short).items() if k != "request_id"
    }
    assert (await client.get("/api/wallet")).json() == {"balance": 25, "reserved": 20, "available": 5}


async def test_concurrent_enqueues_over_http_have_one_winner(api: Api, lab: Lab) -> None:
    client = api.as_shop()
    await lab.shop(SHOP, credits=100)
    await client.post(
        "/api/contacts", json={"contacts": [{"phone": p, "sms_consent": True} for p in phone_numbers(30)]}
    )
    campaign = (await client.post("/api/campaigns", json={"name": "a", "body": "hello"})).json()["id"]
    responses = await asyncio.gather(
        *(
            client.post(f"/api/campaigns/{campaign}/enqueue", headers={"Idempotency-Key": f"k{i}"})
            for i in range(6)
        )
    )
    assert sorted(r.status_code for r in responses) == [202, 409, 409, 409, 409, 409]
    detail = (await client.get(f"/api/campaigns/{campaign}")).json()
    assert (detail["recipient_count"], detail["credits"]["reserved"]) == (30, 30)


async def test_campaign_detail_and_cancel(api: Api, lab: Lab) -> None:
    client = api.as_shop()
    await lab.shop(SHOP, credits=100)
    await client.post(
        "/api/contacts", json={"contacts": [{"phone": p, "sms_consent": True} for p in phone_numbers(10)]}
    )
    campaign = (await client.post("/api/campaigns", json={"name": "a", "body": "hello"})).json()["id"]
    await client.post(f"/api/campaigns/{campaign}/enqueue")
    cancelled = await client.post(f"/api/campaigns/{campaign}/cancel")
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert (body["status"], body["counts"]["cancelled"], body["credits"]["reservation_status"]) == (
        "cancelled",
        10,
        "settled",
    )
    assert (await client.get("/api/wallet")).json() == {"balance": 100, "reserved": 0, "available": 100}
    again = await client.post(f"/api/campaigns/{campaign}/cancel")
    assert again.status_code == 409
    listed = (await client.get("/api/campaigns")).json()["items"]
    assert [c["id"] for c in listed] == [campaign]


# --- errors, health, schema -------------------------------------------------------------------------------


async def test_unknown_routes_methods_and_parameters_are_problem_details(api: Api) -> None:
    client = api.as_shop()
    assert problem(await client.get("/api/nothing-here"))["status"] == 404
    assert problem(await client.delete("/api/wallet"))["status"] == 405
    assert problem(await client.get("/api/contacts", params={"limit": 0}))["status"] == 400
    assert problem(await client.get("/api/campaigns/999999"))["status"] == 404


async def test_openapi_schema_is_served(api: Api) -> None:
    schema = (await api.anonymous().get("/schema/openapi.json")).json()
    assert {"/api/contacts", "/api/campaigns/{campaign_id}/enqueue", "/api/wallet", "/health/full"} <= set(
        schema["paths"]
    )


async def test_health_full_reports_each_dependency(api: Api) -> None:
    client = api.anonymous()
    assert (await client.get("/health")).json() == {"status": "ok"}
    response = await client.get("/health/full")
    checks = response.json()["checks"]
    assert (checks["database"]["ok"], checks["redis"]["ok"]) == (True, True)
    assert checks["database"]["revision"] == migrate.head_revision()
    # No worker runs in this test: the pipeline cannot make progress, and health says so.
    assert (response.status_code, checks["workers"]) == (503, {"ok": False, "alive": 0})


async def test_health_full_answers_while_another_transaction_holds_the_write_lock(api: Api, lab: Lab) -> None:
    """A writer holding SQLite's write lock (PostgreSQL: an open write transaction) must not hold up the
    database check: it reads, so it never queues behind the writer for the busy timeout."""
    shop_id = await lab.shop(SHOP)
    answered = asyncio.Event()
    async with lab.sessions() as session, session.begin():
        await session.execute(
            text("UPDATE wallets SET balance = balance WHERE shop_id = :shop"), {"shop": shop_id}
        )

        async def probe() -> dict[str, object]:
            try:
                report: dict[str, Any] = (await api.anonymous().get("/health/full", timeout=40)).json()
                return dict(report["checks"]["database"])
            finally:
                answered.set()

        probing = asyncio.create_task(probe())
        # The writer lets go only once the check answered, or after far longer than its 2 s timeout.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answered.wait(), 20)
    database = await probing
    assert database["ok"] is True, database


async def test_logs_carry_request_ids_and_no_personal_data_or_secrets(api: Api, lab: Lab) -> None:
    token = api.token(SHOP)
    client = api.as_shop()
    await client.post(
        "/api/contacts",
        json={"contacts": [{"phone": "+12025550143", "email": "ada@example.com", "sms_consent": True}]},
    )
    await client.post("/api/contacts", json={"contacts": [{"phone": "+1202", "email": "bad@example.com"}]})
    response = await client.get("/api/wallet", headers={"X-Request-Id": "trace-me-123"})
    assert response.headers["x-request-id"] == "trace-me-123"
    await api.anonymous().get("/api/wallet", headers={"Authorization": f"Bearer {token}x"})
    api.process.stop()
    log = api.process.log_path.read_text()
    assert "trace-me-123" in log
    for secret in ("+12025550143", "2025550143", "ada@example.com", "bad@example.com", token, token[:40]):
        assert secret not in log
    assert api.settings.shopify_api_secret not in log


# --- the request log -------------------------------------------------------------------------------------
async def test_each_request_is_logged_once_by_one_api_process_or_two(lab: Lab, tmp_path: Path) -> None:
    """One line per request, the API's own (route, status, request id); never uvicorn's access line
    beside it. Its worker processes (`--workers 2`) once set logging up after uvicorn had silenced its
    access log, and logged every request twice."""
    for workers in (1, 2):
        process = start_api(lab.settings, tmp_path / f"logs-{workers}", workers=workers)
        port = process.argv[process.argv.index("--port") + 1]
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for number in range(6):
                    headers = {"X-Request-Id": f"once-{workers}-{number}"}
                    assert (await client.get("/health", headers=headers)).status_code == 200
        finally:
            process.stop()
        lines = [
            json.loads(line) for line in process.log_path.read_text().splitlines() if line.startswith("{")
        ]
        assert not [line for line in lines if line.get("logger") == "uvicorn.access"], workers
        mine = [line for line in lines if str(line.get("request_id", "")).startswith(f"once-{workers}-")]
        assert [line["event"] for line in mine] == ["request"] * 6, workers

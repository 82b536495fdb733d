"""Requests built by an attacker, against the API as a real process on both databases.

Each case here was a finding of a review done as an attacker would: before its fix the service answered
it with a 500 (and a traceback in the log), accepted what it should not, or let it take effect. Every
answer must be a 4xx problem, nothing may be written, and the log must hold no traceback.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import jwt
from sqlalchemy import func, select

from service.db.models import BillingTransaction, Contact, Shop
from service.input_rules import MAX_FIELD_ERRORS
from tests.support.api import Api, problem
from tests.support.lab import Lab, shopify_time

SHOP = "alpha.myshopify.com"
OTHER = "beta.myshopify.com"
DEEP = b"[" * 5_000 + b"]" * 5_000


def _no_tracebacks(api: Api) -> None:
    api.process.stop()
    log = api.process.log_path.read_text()
    assert "Traceback" not in log
    assert '"status": 500' not in log
    assert "status=500" not in log


async def _count(lab: Lab, model: type) -> int:
    async with lab.sessions() as session, session.begin():
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_a_long_lived_session_token_is_refused_and_401s_name_no_library_classes(api: Api) -> None:
    now = int(time.time())
    claims = {
        "iss": f"https://{SHOP}/admin",
        "dest": f"https://{SHOP}",
        "aud": api.settings.shopify_api_key,
        "sub": "1",
        "nbf": now - 1,
        "exp": now + 10 * 365 * 86_400,
    }
    ten_years = jwt.encode(claims, api.settings.shopify_api_secret, algorithm="HS256")
    client = api.anonymous()
    refused = await client.get("/api/wallet", headers={"Authorization": f"Bearer {ten_years}"})
    assert refused.status_code == 401
    assert "longer than" in problem(refused)["detail"]
    forged = jwt.encode({**claims, "exp": now + 60}, "x" * 40, algorithm="HS256")
    bad = problem(await client.get("/api/wallet", headers={"Authorization": f"Bearer {forged}"}))
    assert "Error" not in bad["detail"]
    assert "Exception" not in bad["detail"]
    _no_tracebacks(api)


async def test_anonymous_requests_are_refused_before_their_body_is_read(api: Api, lab: Lab) -> None:
    client = api.anonymous()
    for body in (DEEP, b"{not json", b"x" * 200_000):
        response = await client.post(
            "/api/contacts", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 401, response.text
    assert await _count(lab, Shop) == 0
    _no_tracebacks(api)


async def test_deep_json_big_numbers_and_nul_characters_get_4xx_and_write_nothing(api: Api, lab: Lab) -> None:
    await lab.shop(SHOP, credits=10)
    client = api.as_shop()
    headers = {"content-type": "application/json"}
    for path in ("/api/contacts", "/api/campaigns", "/api/billing/checkout", "/api/campaigns/1/enqueue"):
        deep = await client.post(path, content=DEEP, headers=headers)
        assert deep.status_code in (400, 404), (path, deep.text)
    huge = "9" * 30
    assert (await client.get(f"/api/campaigns/{huge}")).status_code == 400
    assert (await client.post(f"/api/campaigns/{huge}/enqueue")).status_code == 400
    assert (await client.get("/api/contacts", params={"after": huge})).status_code == 400
    assert (await client.get("/api/contacts", params={"limit": huge})).status_code == 400
    cases = [
        ("/api/campaigns", {"name": "a\x00b", "body": "hello"}),
        ("/api/campaigns", {"name": "a", "body": "x" * 1_601}),
        ("/api/contacts", {"contacts": [{"phone": "+12025550143", "first_name": "A\x00"}]}),
        ("/api/contacts", {"contacts": [{"phone": "+1202555\x000143"}]}),
        (
            "/api/contacts",
            {"contacts": [{"phone": "+12025550143", "email": ("a" * 64 + "@" + "b" * 300 + ".com")}]},
        ),
        ("/api/billing/checkout", {"credits": 10**30}),
    ]
    for path, body in cases:
        response = await client.post(path, json=body)
        assert response.status_code == 422, (path, body, response.text)
    # An email the validator accepts only as typed (upper case, spaces) is measured after normalising.
    long_local = "A" * 64
    padded = f"  {long_local}@{'b' * 250}.COM  "
    response = await client.post(
        "/api/contacts", json={"contacts": [{"phone": "+12025550143", "email": padded}]}
    )
    assert response.status_code == 200
    assert await _count(lab, Contact) == 1
    _no_tracebacks(api)


async def test_error_lists_are_capped_and_unknown_keys_count_once_per_row(api: Api) -> None:
    client = api.as_shop()
    row = {"phone": "+12025550143", **{f"k{i}": 1 for i in range(50_000)}}
    response = await client.post("/api/contacts", json={"contacts": [row]})
    assert response.status_code == 422
    assert len(response.content) < 2_000
    assert [e["row"] for e in problem(response)["errors"]] == [0]
    many = [{"phone": "12345"} for _ in range(5_000)]
    response = await client.post("/api/contacts", json={"contacts": many})
    body = problem(response)
    assert len(body["errors"]) <= MAX_FIELD_ERRORS + 1
    assert body["errors_not_listed"] > 0
    assert len(response.content) < 20_000


async def test_bodies_past_their_route_limit_are_413(api: Api) -> None:
    client = api.as_shop()
    big = json.dumps({"name": "a", "body": "x" * 70_000}).encode()
    response = await client.post("/api/campaigns", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert problem(response)["type"].endswith("/payload-too-large")
    rows = [{"phone": f"+1202555{n:04d}", "first_name": "x" * 200} for n in range(10_000)]
    bulk = json.dumps({"contacts": rows}).encode()
    assert len(bulk) > 2_000_000  # well above the other routes' limit, within the bulk import's
    assert (
        await client.post("/api/contacts", content=bulk, headers={"content-type": "application/json"})
    ).status_code != 413
    too_big = b'{"contacts": [' + b'{"phone": "+12025550143"},' * 200_000 + b"{}]}"
    assert (
        await client.post("/api/contacts", content=too_big, headers={"content-type": "application/json"})
    ).status_code == 413


async def test_a_checkout_key_is_checked_like_the_enqueues_and_leaves_nothing(api: Api, lab: Lab) -> None:
    client = api.as_shop()
    for key in ("k" * 300, "two words"):
        response = await client.post(
            "/api/billing/checkout", json={"credits": 1000}, headers={"Idempotency-Key": key}
        )
        assert response.status_code == 422, response.text
    # A control character is not a legal header value (RFC 9110): uvicorn's parser (httptools) refuses
    # the request before the service sees it; a lenient parser would hand it to the key check (422).
    response = await client.post(
        "/api/billing/checkout", json={"credits": 1000}, headers={"Idempotency-Key": "\x01bad"}
    )
    assert response.status_code in (400, 422), response.text
    assert await _count(lab, BillingTransaction) == 0
    ok = await client.post(
        "/api/billing/checkout", json={"credits": 1000}, headers={"Idempotency-Key": "k" * 255}
    )
    assert ok.status_code == 201
    _no_tracebacks(api)


def _shopify(api: Api, body: bytes, **headers: str) -> dict[str, str]:
    signed: dict[str, str] = {
        "X-Shopify-Hmac-Sha256": base64.b64encode(
            hmac.new(api.settings.shopify_api_secret.encode(), body, hashlib.sha256).digest()
        ).decode(),
        "X-Shopify-Triggered-At": shopify_time(),
        "X-Shopify-Event-Id": "evt-1",
    }
    signed.update(headers)
    return signed


async def test_non_ascii_signature_headers_are_refused_and_nothing_is_written(api: Api, lab: Lab) -> None:
    client = api.anonymous()
    body = json.dumps({"id": 7, "phone": "+12025550143"}).encode()
    shopify = await client.post(
        "/webhooks/shopify",
        content=body,
        headers={b"X-Shopify-Hmac-Sha256": "é".encode(), b"X-Shopify-Topic": b"customers/create"},
    )
    assert shopify.status_code == 401
    stripe = await client.post(
        "/webhooks/stripe", content=b"{}", headers={b"Stripe-Signature": "t=1,v1=é".encode()}
    )
    assert stripe.status_code == 400
    assert await _count(lab, Contact) == 0
    _no_tracebacks(api)


async def test_a_signed_body_resent_under_other_headers_takes_no_effect(api: Api, lab: Lab) -> None:
    """A captured `customers/create`, re-sent as `shop/redact` for another shop, with a new event id."""
    alpha = await lab.shop(SHOP)
    beta = await lab.shop(OTHER)
    await lab.contacts(beta, 3)
    client = api.anonymous()
    body = json.dumps({"id": 42, "phone": "+12025550199", "email": "ada@example.com"}).encode()
    created = await client.post(
        "/webhooks/shopify",
        content=body,
        headers=_shopify(api, body, **{"X-Shopify-Topic": "customers/create", "X-Shopify-Shop-Domain": SHOP}),
    )
    assert (created.status_code, created.json()["status"]) == (200, "created")
    replayed = await client.post(
        "/webhooks/shopify",
        content=body,
        headers=_shopify(
            api,
            body,
            **{
                "X-Shopify-Topic": "shop/redact",
                "X-Shopify-Shop-Domain": OTHER,
                "X-Shopify-Event-Id": "evt-new",
            },
        ),
    )
    assert replayed.status_code == 400
    again = await client.post(
        "/webhooks/shopify",
        content=body,
        headers=_shopify(
            api,
            body,
            **{
                "X-Shopify-Topic": "customers/update",
                "X-Shopify-Shop-Domain": OTHER,
                "X-Shopify-Event-Id": "e2",
            },
        ),
    )
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    async with lab.sessions() as session, session.begin():
        by_shop = dict(
            (await session.execute(select(Contact.shop_id, func.count()).group_by(Contact.shop_id))).all()
        )
    assert by_shop == {alpha: 1, beta: 3}
    for stale in ("", "2020-01-01T00:00:00Z", shopify_time(-3600)):
        other = json.dumps({"id": 43, "phone": "+12025550198"}).encode()
        headers = _shopify(
            api, other, **{"X-Shopify-Topic": "customers/create", "X-Shopify-Shop-Domain": SHOP}
        )
        headers["X-Shopify-Triggered-At"] = stale
        assert (await client.post("/webhooks/shopify", content=other, headers=headers)).status_code == 400
    _no_tracebacks(api)


async def test_one_malformed_delivery_report_is_refused_alone(api: Api, lab: Lab) -> None:
    _, campaign_id = await lab.sending_campaign(recipients=3)
    await lab.send(campaign_id)
    messages = lab.accepted_messages()
    client = api.anonymous()
    url = f"/webhooks/mitto/dlr?token={api.settings.mitto_dlr_token}"

    def report(message: dict[str, str], **changes: object) -> dict[str, object]:
        return {
            "messageId": message["message_id"],
            "reference": message["reference"],
            "status": "Delivered",
            "errorCode": None,
            "timestamp": "t1",
            **changes,
        }

    answers = await asyncio.gather(
        client.post(url, json=report(messages[0])),
        client.post(url, json=report(messages[1], errorCode=2**40)),
        client.post(url, json=report(messages[2], messageId="m" * 300)),
        client.post(url, json=report(messages[2])),
    )
    assert [a.status_code for a in answers] == [200, 422, 422, 200]
    statuses = await lab.recipient_statuses(campaign_id)
    assert statuses == {"delivered": 2, "sent": 1}
    _no_tracebacks(api)


async def test_every_route_is_private_unless_it_is_on_the_public_list(api: Api) -> None:
    from service.app import create_app
    from service.auth import PUBLIC_PATHS, is_public

    app = create_app(api.settings, api.settings.redis_url or "redis://127.0.0.1:6379/0")
    client = api.anonymous()
    checked = 0
    for route in app.routes:
        path = route.path_format.replace("{campaign_id}", "1")
        for method in sorted(getattr(route, "methods", set()) - {"OPTIONS", "HEAD"}):
            response = await client.request(method, path, content=b"{}")
            if is_public(route.path):
                assert response.status_code != 401 or path.startswith("/webhooks"), (method, path)
            else:
                assert response.status_code == 401, (method, path, response.status_code)
                checked += 1
    assert checked >= 10
    assert PUBLIC_PATHS == ("/health", "/metrics", "/schema", "/webhooks")


async def test_every_route_resolves_its_dependencies_one_by_one_and_opens_the_session_last(api: Api) -> None:
    """No task group per request (resolve_dependencies_one_by_one); a bad page cursor is refused
    before the session is opened, and the route still answers with its problem."""
    from litestar.routes import HTTPRoute

    from service.app import create_app

    app = create_app(api.settings, api.settings.redis_url or "redis://127.0.0.1:6379/0")
    routes_with_several = 0
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for _handler, kwargs_model in route.route_handler_map.values():
            order = [next(iter(batch)) for batch in kwargs_model.dependency_batches]
            assert all(len(batch) == 1 for batch in kwargs_model.dependency_batches), route.path
            routes_with_several += len(order) > 1
            keys = [d.key for d in order]
            if "db_session" in keys and "page" in keys:
                assert keys.index("page") < keys.index("db_session"), (route.path, keys)
    assert routes_with_several >= 10
    response = await api.as_shop().get("/api/campaigns", params={"after": "not-a-cursor"})
    assert response.status_code == 400
    assert problem(response)["status"] == 400

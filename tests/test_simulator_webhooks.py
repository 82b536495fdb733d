"""The fakes' outbound webhooks, received by a plain HTTP server: checked with the official Stripe library,
an independent HMAC computation, and the service's own verifiers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import stripe

from service.settings import Settings, validate
from service.webhooks import shopify as shopify_webhooks
from service.webhooks import stripe_events
from tests.support.infra import SimulatorProcess
from tests.support.receiver import Receiver

STRIPE_KEY = {"Authorization": "Bearer sk_test_lab_change_me_in_production"}
WEBHOOK_SECRET = "whsec_lab_change_me_in_production"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def start_simulator(tmp_path: Path, receiver: Receiver) -> SimulatorProcess:
    port = receiver.start()
    sim = SimulatorProcess(tmp_path / "sim", target_port=port)
    sim.start()
    return sim


def create_and_pay(sim: SimulatorProcess) -> str:
    form = {
        "mode": "payment",
        "success_url": "http://x/ok",
        "line_items[0][quantity]": "1",
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "8000",
        "line_items[0][price_data][product_data][name]": "1000 SMS credits",
        "metadata[credits]": "1000",
    }
    session = httpx.post(f"{sim.base_url}/stripe/v1/checkout/sessions", data=form, headers=STRIPE_KEY).json()
    sim.control("POST", f"/stripe/sessions/{session['id']}/pay", json={})
    return str(session["id"])


def test_stripe_events_pass_the_official_librarys_construct_event(tmp_path: Path, receiver: Receiver) -> None:
    sim = start_simulator(tmp_path, receiver)
    try:
        session_id = create_and_pay(sim)
        sim.control("POST", f"/stripe/sessions/{session_id}/refund", json={"amount": 1000})
        completed, refunded = receiver.wait_for(2)
    finally:
        sim.stop()
    for received, kind in ((completed, "checkout.session.completed"), (refunded, "charge.refunded")):
        assert received.path == "/webhooks/stripe"
        event = stripe.Webhook.construct_event(
            received.body, received.headers["stripe-signature"], WEBHOOK_SECRET
        )
        assert event.type == kind
    assert json.loads(completed.body)["data"]["object"]["payment_status"] == "paid"
    assert json.loads(refunded.body)["data"]["object"]["amount_refunded"] == 1000
    # And the service's verifier (the same library, every configured secret) agrees.
    settings = validate(Settings())
    assert stripe_events.verify(settings, completed.body, completed.headers["stripe-signature"])["id"]


def test_stripe_retries_failed_deliveries_and_signs_each_attempt_anew(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.fail_first = 2
    sim = start_simulator(tmp_path, receiver)
    try:
        create_and_pay(sim)
        attempts = receiver.wait_for(3)
    finally:
        sim.stop()
    assert len({a.body for a in attempts}) == 1  # the same event every time
    assert len({json.loads(a.body)["id"] for a in attempts}) == 1
    for attempt in attempts:
        stripe.WebhookSignature.verify_header(
            attempt.body.decode(), attempt.headers["stripe-signature"], WEBHOOK_SECRET, 300
        )
    assert [a.at for a in attempts] == sorted(a.at for a in attempts)
    assert attempts[1].at - attempts[0].at >= 0.05  # Stripe's first retry (60 s, compressed 1000x)


def test_stripe_api_idempotency_follows_stripes_rules(simulator: SimulatorProcess) -> None:
    url = f"{simulator.base_url}/stripe/v1/checkout/sessions"
    form = {
        "mode": "payment",
        "success_url": "http://x/ok",
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "100",
    }
    headers = {**STRIPE_KEY, "Idempotency-Key": "k1"}
    first = httpx.post(url, data=form, headers=headers)
    replay = httpx.post(url, data=form, headers=headers)
    assert (first.json()["id"], replay.headers["idempotent-replayed"]) == (replay.json()["id"], "true")
    other = httpx.post(url, data={**form, "success_url": "http://x/other"}, headers=headers)
    assert (other.status_code, other.json()["error"]["type"]) == (400, "idempotency_error")
    invalid = httpx.post(url, data={"mode": "payment"}, headers={**STRIPE_KEY, "Idempotency-Key": "k2"})
    assert (invalid.status_code, invalid.json()["error"]["param"]) == (400, "success_url")
    fixed = httpx.post(url, data=form, headers={**STRIPE_KEY, "Idempotency-Key": "k2"})
    assert fixed.status_code == 200  # a validation failure was not saved under the key
    assert httpx.post(url, data=form, headers={"Authorization": "Bearer sk_wrong"}).status_code == 401


def test_shopify_webhooks_carry_shopifys_headers_and_a_verifiable_hmac(
    tmp_path: Path, receiver: Receiver
) -> None:
    sim = start_simulator(tmp_path, receiver)
    try:
        payload = {"id": 42, "phone": "+12025550143", "sms_marketing_consent": {"state": "subscribed"}}
        sent = sim.control(
            "POST",
            "/shopify/webhooks",
            json={"shop": "alpha.myshopify.com", "topic": "customers/update", "payload": payload},
        )
        [received] = receiver.wait_for(1)
        refused = httpx.post(f"{sim.base_url}/control/shopify/webhooks", json={"shop": "x", "topic": "t"})
    finally:
        sim.stop()
    headers = received.headers
    assert received.path == "/webhooks/shopify"
    assert headers["x-shopify-topic"] == "customers/update"
    assert headers["x-shopify-shop-domain"] == "alpha.myshopify.com"
    assert headers["x-shopify-event-id"] == sent["event_id"]
    assert headers["x-shopify-webhook-id"] == sent["webhook_id"]
    assert shopify_webhooks.parse_triggered_at(headers["x-shopify-triggered-at"]) is not None
    secret = validate(Settings()).shopify_api_secret
    independent = base64.b64encode(hmac.new(secret.encode(), received.body, hashlib.sha256).digest()).decode()
    assert hmac.compare_digest(independent, headers["x-shopify-hmac-sha256"])
    shopify_webhooks.verify(validate(Settings()), received.body, headers["x-shopify-hmac-sha256"])
    assert json.loads(received.body) == payload
    assert (refused.status_code, refused.json()["detail"].split(":")[0]) == (422, "shop")


def test_mitto_reports_each_message_then_its_final_status(tmp_path: Path, receiver: Receiver) -> None:
    sim = start_simulator(tmp_path, receiver)
    try:
        bulk = {"messages": [{"from": "Lab", "to": "+12025550143", "text": "hi", "reference": "c1-r1"}]}
        accepted = httpx.post(
            f"{sim.base_url}/mitto/api/v1.1/Messages/sendmessagesbulk",
            json=bulk,
            headers={"X-Mitto-API-Key": "lab-mitto-key"},
        ).json()
        intermediate, final = receiver.wait_for(2)
        looked_up = httpx.get(
            f"{sim.base_url}/mitto/api/v1/Messages",
            params={"reference": "c1-r1"},
            headers={"X-Mitto-API-Key": "lab-mitto-key"},
        ).json()
    finally:
        sim.stop()
    assert intermediate.path == "/webhooks/mitto/dlr?token=lab-dlr-token-change-me-in-production"
    reports = [json.loads(r.body) for r in (intermediate, final)]
    message_id = accepted["messages"][0]["messageId"]
    assert [(r["messageId"], r["reference"], r["status"]) for r in reports] == [
        (message_id, "c1-r1", "Sent"),
        (message_id, "c1-r1", "Delivered"),
    ]
    assert set(reports[1]) == {"messageId", "reference", "status", "errorCode", "timestamp"}
    assert looked_up["messages"][0]["deliveryStatus"] == "Delivered"


async def test_webhooks_reach_a_service_that_restarted_on_the_same_port() -> None:
    """After a restart every kept-alive connection to the old process is dead; none may be reused. (Each
    retry took the next dead connection: a Stripe payment's eight attempts all failed against a healthy
    API, and the payment was never credited.)"""
    import asyncio

    from simulator.outbound import OutboundClient

    open_writers: list[asyncio.StreamWriter] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_writers.append(writer)
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    first = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = int(first.sockets[0].getsockname()[1])
    client = OutboundClient(f"http://127.0.0.1:{port}")
    try:
        statuses = await asyncio.gather(*(client.post("/hook", b"{}", {}) for _ in range(8)))
        assert statuses == [200] * 8  # eight connections now idle, kept alive
        first.close()
        for writer in open_writers:  # the old process is gone, and every connection with it
            writer.close()
        open_writers.clear()
        await asyncio.sleep(0.1)
        second = await asyncio.start_server(answer, "127.0.0.1", port)
        try:
            assert [await client.post("/hook", b"{}", {}) for _ in range(3)] == [200] * 3
        finally:
            second.close()
            for writer in open_writers:
                writer.close()
    finally:
        await client.aclose()

"""The fakes' outbound webhooks, received by a plain HTTP server: checked with the official Stripe library,
an independent HMAC computation, and the service's own verifiers."""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import hmac
import json
import socket
import struct
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from unittest import mock

import aiohttp
import httpx
import pytest
import stripe

from service.settings import Settings, validate
from service.webhooks import shopify as shopify_webhooks
from service.webhooks import stripe_events
from simulator.delivery import DELIVERIES_IN_FLIGHT
from simulator.outbound import OUTBOUND_CLIENTS, DeliveryError, failure_name, open_outbound_client
from tests.support.infra import SimulatorProcess
from tests.support.receiver import Received, Receiver

STRIPE_KEY = {"Authorization": "Bearer sk_test_lab_change_me_in_production"}
WEBHOOK_SECRET = "whsec_lab_change_me_in_production"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def start_simulator(tmp_path: Path, receiver: Receiver, *extra_args: str) -> SimulatorProcess:
    port = receiver.start()
    sim = SimulatorProcess(tmp_path / "sim", target_port=port, extra_args=extra_args)
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


# --- `pending` (GET /control/deliveries): 0 only once every webhook was acknowledged or given up --------


def held_receiver(receiver: Receiver) -> threading.Event:
    """Make the receiver hold every request until the returned event is set (then answer 200). (A
    request is held up to 120 s, as long as the simulator waits for an answer in these tests: a shorter
    hold counted from each request's arrival could let the first go before the last had arrived.)"""
    release = threading.Event()

    def hold(_: Received) -> int:
        release.wait(120)
        return 200

    receiver.judge = hold
    return release


def test_a_webhook_the_admin_api_fires_is_pending_from_the_moment_it_answers(
    tmp_path: Path, receiver: Receiver
) -> None:
    release = held_receiver(receiver)
    sim = start_simulator(tmp_path, receiver)
    try:
        admin = f"{sim.base_url}/shopify/alpha.myshopify.com/admin/api/2025-07"
        created = httpx.post(
            f"{admin}/customers.json",
            json={"customer": {"phone": "+12025550143"}},
            headers={"X-Shopify-Access-Token": "shpat_lab"},
        )
        assert created.status_code == 201
        right_after = sim.control("GET", "/deliveries")
        receiver.wait_for(1)
        in_flight = sim.control("GET", "/deliveries")
        release.set()
        done = sim.wait_for_deliveries(timeout=10)
    finally:
        release.set()
        sim.stop()
    assert (right_after["scheduled"], right_after["pending"], right_after["acknowledged"]) == (1, 1, 0)
    assert (in_flight["pending"], in_flight["acknowledged"]) == (1, 0)
    assert (done["pending"], done["acknowledged"]) == (0, 1)


def test_reports_sent_before_the_send_answers_are_pending_while_in_flight(
    tmp_path: Path, receiver: Receiver
) -> None:
    """`report_first` delivers a message's reports inline, before the send's answer. While the first is
    in flight nothing is on the schedule and no background task runs: it was not counted (pending 0)."""
    release = held_receiver(receiver)
    sim = start_simulator(tmp_path, receiver)
    answer: list[httpx.Response] = []
    try:
        sim.add_fault(target="mitto.send", kind="report_first")
        bulk = {"messages": [{"from": "Lab", "to": "+12025550143", "text": "hi", "reference": "c1-r1"}]}
        sending = threading.Thread(
            target=lambda: answer.append(
                httpx.post(
                    f"{sim.base_url}/mitto/api/v1.1/Messages/sendmessagesbulk",
                    json=bulk,
                    headers={"X-Mitto-API-Key": "lab-mitto-key"},
                    timeout=20,
                )
            )
        )
        sending.start()
        [held] = receiver.wait_for(1)
        in_flight = sim.control("GET", "/deliveries")
        release.set()
        sending.join(20)
        done = sim.wait_for_deliveries(timeout=10)
    finally:
        release.set()
        sim.stop()
    assert json.loads(held.body)["status"] == "Sent"
    assert (in_flight["attempts"], in_flight["pending"]) == (1, 1)
    assert answer[0].status_code == 200
    assert (done["pending"], done["acknowledged"]) == (0, 2)


def test_deliveries_waiting_for_a_free_connection_are_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The most deliveries in flight take every connection; one more, taken off the schedule, waits for
    one. Counting the schedule and the running attempts missed it: pending said 64 with 65 undelivered."""
    most = DELIVERIES_IN_FLIGHT
    # every connection at once: a listen backlog of 5 would drop SYNs and make connecting take seconds.
    monkeypatch.setattr(ThreadingHTTPServer, "request_queue_size", 2 * most)
    receiver = Receiver()
    release = held_receiver(receiver)
    # Held deliveries must stay in flight until the count is taken: on a busy machine the 65 triggers
    # and 64 connections took 9.6 s once, and the first attempts hit the 10 s default and were retried.
    sim = start_simulator(tmp_path, receiver, "--webhook-timeout", "120")
    try:
        for n in range(most + 1):
            trigger = {"shop": "alpha.myshopify.com", "topic": "customers/update", "payload": {"id": n}}
            sim.control("POST", "/shopify/webhooks", json=trigger)
        assert len(receiver.wait_for(most, timeout=60)) == most
        waiting = sim.control("GET", "/deliveries")
        release.set()
        done = sim.wait_for_deliveries(timeout=15)
    finally:
        release.set()
        sim.stop()
        receiver.stop()
    assert (waiting["scheduled"], waiting["attempts"], waiting["pending"]) == (most + 1, most, most + 1)
    assert (done["pending"], done["acknowledged"]) == (0, most + 1)


@pytest.mark.parametrize("kind", OUTBOUND_CLIENTS)
async def test_webhooks_reach_a_service_that_restarted_on_the_same_port(kind: str) -> None:
    """After a restart every kept-alive connection to the old process is dead; none may be reused. (Each
    retry took the next dead connection: a Stripe payment's eight attempts all failed against a healthy
    API, and the payment was never credited.)"""
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
    client = open_outbound_client(kind, f"http://127.0.0.1:{port}")
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


# What a server does after reading a request, and what the delivery ledger must then record. The checker
# reads these names (chaos/checker/evidence.py): a refused connection never reached the service; any
# other failure may have taken effect.
MISBEHAVIOURS = {
    "refused": "ConnectionRefusedError",
    "closed before answering": "IncompleteReadError",
    "closed mid-head": "IncompleteReadError",
    "closed mid-body": "IncompleteReadError",
    "reset": "ConnectionResetError",
    "no answer in time": "TimeoutError",
    "not HTTP": "ValueError",
}


async def misbehaving_server(behaviour: str) -> tuple[asyncio.Server | None, int, list[int]]:
    """A server that reads each request and then does `behaviour`; and how many requests it read."""
    requests: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        requests.append(1)
        if behaviour == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if behaviour == "no answer in time":
            await asyncio.sleep(2)
        else:
            writer.write(
                {
                    "closed before answering": b"",
                    "closed mid-head": b"HTTP/1.1 200 OK\r\nContent-Le",
                    "closed mid-body": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
                    "not HTTP": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
                }[behaviour]
            )
            await writer.drain()
        writer.close()

    if behaviour == "refused":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return None, int(probe.getsockname()[1]), requests
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1]), requests


@pytest.mark.parametrize("kind", OUTBOUND_CLIENTS)
@pytest.mark.parametrize("behaviour", list(MISBEHAVIOURS))
async def test_an_attempt_without_a_complete_answer_is_named_as_the_checker_reads_it(
    kind: str, behaviour: str
) -> None:
    server, port, requests = await misbehaving_server(behaviour)
    client = open_outbound_client(kind, f"http://127.0.0.1:{port}", timeout=0.5)
    try:
        with pytest.raises(DeliveryError) as failure:
            await client.post("/hook", b"{}", {"Content-Type": "application/json"})
    finally:
        await client.aclose()
        if server is not None:
            server.close()
    assert str(failure.value) == MISBEHAVIOURS[behaviour]
    assert len(requests) == (0 if behaviour == "refused" else 1)  # one attempt is one request, never retried


@pytest.mark.parametrize("kind", OUTBOUND_CLIENTS)
async def test_a_post_lost_on_a_kept_alive_connection_is_not_sent_again(kind: str) -> None:
    """The service reads the second request on a kept-alive connection and dies without answering: the
    attempt fails, and the request is not resent by the client (a resend would be a second attempt the
    ledger never records)."""
    requests: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            requests.append(1)
            if len(requests) > 1:
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    client = open_outbound_client(kind, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        assert await client.post("/hook", b"{}", {}) == 200
        with pytest.raises(DeliveryError) as failure:
            await client.post("/hook", b"{}", {})
        await asyncio.sleep(0.1)
    finally:
        await client.aclose()
        server.close()
    assert str(failure.value) == "IncompleteReadError"
    assert len(requests) == 2


def test_aiohttps_wrapped_socket_errors_are_named_by_the_error_behind_them() -> None:
    """aiohttp re-raises a socket error as ClientOSError, often without its errno; the ledger names the
    socket's own error, as the lean client does (a `ClientOSError` line appeared in a quick run)."""
    lost = aiohttp.ClientOSError("Connection lost")
    lost.__cause__ = ConnectionResetError("Connection lost")
    assert failure_name(lost) == "ConnectionResetError"
    assert failure_name(aiohttp.ClientOSError(errno.EPIPE, "Can not write request body")) == "BrokenPipeError"
    assert failure_name(aiohttp.ClientOSError("no errno, no cause")) == "OSError"
    refused = aiohttp.ClientConnectorError(
        mock.Mock(ssl=False, host="127.0.0.1", port=9), ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    )
    assert failure_name(refused) == "ConnectionRefusedError"


@pytest.mark.parametrize("kind", OUTBOUND_CLIENTS)
async def test_chunked_answers_are_read_and_connection_close_is_honoured(kind: str) -> None:
    """Three chunked answers on one kept-alive connection; then `Connection: close` each time, so each
    later request opens a connection of its own."""
    connections: list[int] = []
    answered: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            answered.append(1)
            if len(answered) <= 3:
                writer.write(
                    b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                )
                await writer.drain()
                continue
            writer.write(b"HTTP/1.1 409 Conflict\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno")
            await writer.drain()
            break
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    client = open_outbound_client(kind, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        assert [await client.post("/hook", b"{}", {}) for _ in range(3)] == [202, 202, 202]
        assert len(connections) == 1
        assert [await client.post("/hook", b"{}", {}) for _ in range(3)] == [409, 409, 409]
        assert len(connections) == 3
    finally:
        await client.aclose()
        server.close()

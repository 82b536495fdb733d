"""The fake Stripe: the part of the API the service uses, with Stripe's shapes, idempotency and signed events.

API (under /stripe, form-encoded like Stripe's, `Authorization: Bearer sk_...`):
- `POST /v1/checkout/sessions`, `GET /v1/checkout/sessions/{id}`, `GET /v1/checkout/sessions?payment_intent=`
- `POST /v1/refunds`, `GET /v1/refunds?charge=`
Idempotency keys (POST): the first response, success or failure, is replayed for the same key and
parameters (`Idempotent-Replayed: true`); other parameters -> 400 `idempotency_error`; the same key still
running -> 409; validation failures are not saved. Keys are kept for the simulator's life (Stripe: 24 h+).

Ground truth (`stripe_ledger.jsonl`): every session created, payment taken, payment failed and refund,
written before any answer or event leaves. Events (`checkout.session.completed`, `...async_payment_*`,
`charge.refunded`) are signed as Stripe signs them (`t=...,v1=HMAC-SHA256("{t}.{body}")`), anew for
every delivery attempt, and retried on Stripe's schedule (compressed).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from simulator.delivery import STRIPE_RETRY_DELAYS, Delivery, WebhookDispatcher
from simulator.http import Request, Response
from simulator.ledger import JsonLinesLedger, read_ledger

STRIPE_LEDGER = "stripe_ledger.jsonl"
API_VERSION = "2024-06-20"


class StripeApiError(Exception):
    def __init__(self, status: int, error_type: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message, self.param = status, error_type, message, param

    def response(self) -> Response:
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.param:
            error["param"] = self.param
        return Response.json(self.status, {"error": error})


def decode_form(body: bytes) -> dict[str, Any]:
    """Stripe's bracket notation (`line_items[0][price_data][currency]=usd`) into nested objects."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode(), keep_blank_values=True):
        parts = key.replace("]", "").split("[")
        node: Any = root
        for part, following in zip(parts, [*parts[1:], None], strict=True):
            child: Any = value if following is None else ([] if following.isdigit() else {})
            if isinstance(node, list):
                index = int(part)
                while len(node) <= index:
                    node.append(None)
                if node[index] is None or following is None:
                    node[index] = child
                node = node[index]
            else:
                if part not in node or following is None:
                    node[part] = child
                node = node[part]
    return root


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    signature = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={signature}"


@dataclass
class StoredIdempotency:
    fingerprint: str
    response: Response | None = None  # None while the first request still runs


@dataclass
class StripeState:
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    idempotency: dict[str, StoredIdempotency] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


class FakeStripe:
    def __init__(
        self,
        data_dir: Path,
        secret_key: str,
        webhook_secret: str,
        seed: int,
        dispatcher: WebhookDispatcher,
        base_url: str,
        fsync: bool = False,
    ) -> None:
        self.secret_key = secret_key
        self.webhook_secret = webhook_secret
        self.dispatcher = dispatcher
        self.base_url = base_url
        self.seed = seed
        self._counters: dict[str, int] = {}
        self.state = StripeState()
        self.ledger_path = data_dir / STRIPE_LEDGER
        self._recover()
        self.ledger = JsonLinesLedger(self.ledger_path, fsync=fsync)

    # --- identity and persistence ---------------------------------------------------------------
    def _id(self, prefix: str) -> str:
        """Deterministic for a seed and an order of requests, and never repeated after a restart."""
        number = self._counters.get(prefix, 0) + 1
        self._counters[prefix] = number
        return f"{prefix}_test_" + hashlib.sha256(f"{self.seed}:{prefix}:{number}".encode()).hexdigest()[:24]

    def _recover(self) -> None:
        """Sessions, charges and refunds from the ledger; id counters continue where they stopped."""
        for record in read_ledger(self.ledger_path):
            kind, obj = record["kind"], record["object"]
            if kind in ("session", "payment", "payment_failed"):
                self.state.sessions[obj["id"]] = obj
            if kind in ("payment", "refund"):
                self.state.charges[record["charge"]["id"]] = record["charge"]
            if kind == "refund":
                self.state.refunds[obj["id"]] = obj
            if kind == "event":
                self.state.events.append(obj)
        self._counters = {
            "cs": sum(1 for r in read_ledger(self.ledger_path) if r["kind"] == "session"),
            "pi": sum(1 for s in self.state.sessions.values() if s.get("payment_intent")),
            "ch": len(self.state.charges),
            "re": len(self.state.refunds),
            "evt": len(self.state.events),
        }

    def _record(self, kind: str, obj: dict[str, Any], **extra: Any) -> None:
        self.ledger.append({"t": time.time(), "kind": kind, "object": obj, **extra})

    # --- the API ----------------------------------------------------------------------------------
    def _authorised(self, request: Request) -> bool:
        return request.headers.get("authorization", "") == f"Bearer {self.secret_key}"

    async def handle(self, request: Request) -> Response:
        if not self._authorised(request):
            return StripeApiError(401, "invalid_request_error", "Invalid API Key provided.").response()
        path = request.path.removeprefix("/stripe")
        try:
            if request.method == "POST":
                return await self._idempotent(request, path)
            if request.method == "GET" and path == "/v1/checkout/sessions":
                return self._list_sessions(request)
            if request.method == "GET" and path.startswith("/v1/checkout/sessions/"):
                return self._retrieve_session(path.rsplit("/", 1)[1])
            if request.method == "GET" and path == "/v1/refunds":
                return self._list_refunds(request)
        except StripeApiError as exc:
            return exc.response()
        return StripeApiError(
            404, "invalid_request_error", f"Unrecognized request URL ({request.method}: {path})."
        ).response()

    async def _idempotent(self, request: Request, path: str) -> Response:
        params = decode_form(request.body)
        key = request.headers.get("idempotency-key")
        if not key:
            return self._post(path, params)
        fingerprint = hashlib.sha256(f"{path}?{json.dumps(params, sort_keys=True)}".encode()).hexdigest()
        stored = self.state.idempotency.get(key)
        if stored is not None:
            if stored.fingerprint != fingerprint:
                raise StripeApiError(
                    400,
                    "idempotency_error",
                    "Keys for idempotent requests can only be used with the same parameters they were first "
                    "used with.",
                )
            if stored.response is None:
                raise StripeApiError(
                    409,
                    "idempotency_error",
                    "There is currently another in-progress request using this Idempotent Key.",
                )
            replay = Response(stored.response.status, stored.response.body, {**stored.response.headers})
            replay.headers["Idempotent-Replayed"] = "true"
            return replay
        self.state.idempotency[key] = StoredIdempotency(fingerprint)
        try:
            response = self._post(path, params)
        except StripeApiError as exc:
            response = exc.response()
            if exc.status == 400:
                del self.state.idempotency[key]  # validation failures are not saved
                return response
        self.state.idempotency[key].response = response
        await asyncio.sleep(0)
        return response

    def _post(self, path: str, params: dict[str, Any]) -> Response:
        if path == "/v1/checkout/sessions":
            return Response.json(200, self.create_session(params))
        if path == "/v1/refunds":
            charge_id = params.get("charge")
            if not charge_id and params.get("payment_intent"):
                charge_id = next(
                    (
                        c["id"]
                        for c in self.state.charges.values()
                        if c["payment_intent"] == params["payment_intent"]
                    ),
                    None,
                )
            amount = int(params["amount"]) if str(params.get("amount", "")).isdigit() else None
            return Response.json(200, self.refund(str(charge_id or ""), amount))
        raise StripeApiError(404, "invalid_request_error", f"Unrecognized request URL (POST: {path}).")

    def create_session(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("mode") != "payment":
            raise StripeApiError(400, "invalid_request_error", "mode must be payment", "mode")
        for name in ("success_url",):
            if not params.get(name):
                raise StripeApiError(400, "invalid_request_error", f"Missing required param: {name}.", name)
        items = params.get("line_items")
        if not isinstance(items, list) or not items:
            raise StripeApiError(
                400, "invalid_request_error", "Missing required param: line_items.", "line_items"
            )
        amount = 0
        currency = None
        for i, item in enumerate(items):
            price = item.get("price_data") or {}
            try:
                amount += int(price["unit_amount"]) * int(item.get("quantity", "1"))
                currency = str(price["currency"]).lower()
            except (KeyError, ValueError):
                raise StripeApiError(
                    400, "invalid_request_error", "Invalid line item", f"line_items[{i}][price_data]"
                ) from None
        session_id = self._id("cs")
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": amount,
            "amount_total": amount,
            "currency": currency,
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata") or {},
            "mode": "payment",
            "payment_intent": None,
            "payment_status": "unpaid",
            "status": "open",
            "success_url": params.get("success_url"),
            "cancel_url": params.get("cancel_url"),
            "url": f"{self.base_url}/stripe/pay/{session_id}",
            "created": int(time.time()),
            "livemode": False,
        }
        self.state.sessions[session_id] = session
        self._record("session", session)
        return session

    def _retrieve_session(self, session_id: str) -> Response:
        session = self.state.sessions.get(session_id)
        if session is None:
            raise StripeApiError(
                404, "invalid_request_error", f"No such checkout.session: '{session_id}'", "session"
            )
        return Response.json(200, session)

    def _list_sessions(self, request: Request) -> Response:
        payment_intent = request.query_one("payment_intent")
        found = [
            s
            for s in self.state.sessions.values()
            if not payment_intent or s["payment_intent"] == payment_intent
        ]
        limit = int(request.query_one("limit") or 10)
        return Response.json(200, _list("/v1/checkout/sessions", found[:limit], len(found) > limit))

    def _list_refunds(self, request: Request) -> Response:
        charge = request.query_one("charge")
        found = [r for r in self.state.refunds.values() if not charge or r["charge"] == charge]
        limit = int(request.query_one("limit") or 10)
        return Response.json(200, _list("/v1/refunds", found[:limit], len(found) > limit))

    # --- what happens at Stripe's end (driven by the lab through the control API) -------------
    def pay(
        self, session_id: str, asynchronous: bool = False, succeed: bool = True, delay: float = 0.05
    ) -> dict[str, Any]:
        session = self.state.sessions.get(session_id)
        if session is None:
            raise StripeApiError(404, "invalid_request_error", f"No such checkout.session: '{session_id}'")
        if session["status"] != "open":
            raise StripeApiError(400, "invalid_request_error", f"session is {session['status']}, not open")
        session["status"] = "complete"
        session["payment_intent"] = self._id("pi")
        if not asynchronous:
            return self._settle(session, succeed, "checkout.session.completed")
        self._emit("checkout.session.completed", dict(session))  # payment_status still unpaid
        kind = (
            "checkout.session.async_payment_succeeded" if succeed else "checkout.session.async_payment_failed"
        )
        # The settlement's event is pending from this answer on, not only once it is emitted.
        emitted = self.dispatcher.promise()

        def settle() -> None:
            try:
                self._settle(session, succeed, kind)
            finally:
                emitted()

        asyncio.get_running_loop().call_later(delay, settle)
        return session

    def _settle(self, session: dict[str, Any], succeed: bool, event_type: str) -> dict[str, Any]:
        if succeed:
            session["payment_status"] = "paid"
            charge = {
                "id": self._id("ch"),
                "object": "charge",
                "amount": session["amount_total"],
                "amount_refunded": 0,
                "currency": session["currency"],
                "payment_intent": session["payment_intent"],
                "paid": True,
                "refunded": False,
                "status": "succeeded",
                "created": int(time.time()),
            }
            self.state.charges[charge["id"]] = charge
            self._record("payment", dict(session), charge=dict(charge))
        else:
            self._record("payment_failed", dict(session))
        self._emit(event_type, dict(session))
        return session

    def refund(self, charge_id: str, amount: int | None = None) -> dict[str, Any]:
        charge = self.state.charges.get(charge_id)
        if charge is None:
            raise StripeApiError(404, "invalid_request_error", f"No such charge: '{charge_id}'", "charge")
        left = charge["amount"] - charge["amount_refunded"]
        amount = left if amount is None else amount
        if amount <= 0 or amount > left:
            raise StripeApiError(400, "invalid_request_error", f"Refund amount must be 1 to {left}", "amount")
        refund = {
            "id": self._id("re"),
            "object": "refund",
            "amount": amount,
            "charge": charge_id,
            "payment_intent": charge["payment_intent"],
            "currency": charge["currency"],
            "status": "succeeded",
            "created": int(time.time()),
        }
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        self.state.refunds[refund["id"]] = refund
        self._record("refund", refund, charge=dict(charge))
        self._emit("charge.refunded", dict(charge))
        return refund

    def charge_of_session(self, session_id: str) -> str:
        session = self.state.sessions.get(session_id) or {}
        for charge in self.state.charges.values():
            if charge["payment_intent"] and charge["payment_intent"] == session.get("payment_intent"):
                return str(charge["id"])
        raise StripeApiError(404, "invalid_request_error", f"session {session_id} has no charge")

    def _emit(self, event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
        event = {
            "id": self._id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "type": event_type,
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
        }
        self.state.events.append(event)
        self._record("event", event)
        body = json.dumps(event, separators=(",", ":")).encode()
        self.dispatcher.schedule(
            Delivery(
                provider="stripe",
                path="/webhooks/stripe",
                body=body,
                sign=lambda payload, age: {
                    "Stripe-Signature": sign(self.webhook_secret, payload, int(time.time() - age))
                },
                retry_delays=STRIPE_RETRY_DELAYS,
                meta={"event": event["id"], "type": event_type, "object": obj.get("id")},
            )
        )
        return event

    def close(self) -> None:
        self.ledger.close()


def _list(url: str, data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}

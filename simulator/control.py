"""The control API, in the spirit of Toxiproxy's: list, set and clear faults, read counters, reset.

GET    /control/health              the simulator is up; its seed and data directory
GET    /control/faults              the active fault rules, with how often each fired
POST   /control/faults              add a rule: {"target", "kind", "probability", "count", "params"}
DELETE /control/faults              clear every rule (or ?target=mitto.send for one endpoint)
GET    /control/counters            requests and fired faults per endpoint; messages accepted
GET    /control/mitto/messages      ground truth for ?reference=... (every acceptance, duplicates too)
GET    /control/mitto/recent        the latest ?limit=N (<= 2000) acceptances and delivery reports as sent
POST   /control/reset               clear rules, counters and fault generators (ledgers are never erased)
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from typing import TYPE_CHECKING

import msgspec

from simulator.faults import FaultSpecError
from simulator.http import Request, Response
from simulator.shopify import ShopifyRequestError
from simulator.stripe import StripeApiError

if TYPE_CHECKING:
    from simulator.app import SimulatorApp


# Which process answered: whoever started this one on a port it chose checks it is not another's.
PROCESS_ID_HEADER = "X-Process-Id"
REFUSED = "the control API answers loopback clients, or any with X-Control-Token when one is set"


def allowed(request: Request, token: str | None) -> bool:
    """Loopback clients always; others only with the configured token (compared in constant time)."""
    given = request.headers.get("x-control-token", "")
    if token and hmac.compare_digest(given.encode("utf-8", "replace"), token.encode()):
        return True
    try:
        return ipaddress.ip_address(request.client).is_loopback
    except ValueError:
        return False


def _problem(status: int, detail: str) -> Response:
    return Response.json(status, {"status": status, "detail": detail})


async def handle(app: SimulatorApp, request: Request) -> Response:
    path, method = request.path.rstrip("/"), request.method
    if path == "/control/health" and method == "GET":
        return Response.json(200, app.status(), {PROCESS_ID_HEADER: str(os.getpid())})
    if path == "/control/faults":
        if method == "GET":
            return Response.json(200, {"faults": [rule.as_dict() for rule in app.faults.rules]})
        if method == "POST":
            try:
                spec = request.json()
            except msgspec.DecodeError:
                return _problem(400, "body is not JSON")
            try:
                if isinstance(spec, dict):
                    rules = [app.faults.add(spec)]
                elif isinstance(spec, list):
                    rules = app.faults.add_many(spec)
                else:
                    raise FaultSpecError("fault: must be an object or a list of objects")
            except FaultSpecError as exc:
                return _problem(422, str(exc))
            return Response.json(201, {"faults": [rule.as_dict() for rule in rules]})
        if method == "DELETE":
            return Response.json(200, {"cleared": app.faults.clear(request.query_one("target"))})
    if path == "/control/counters" and method == "GET":
        return Response.json(
            200,
            {
                "endpoints": app.faults.counters_snapshot(),
                "mitto": {
                    "accepted": app.mitto.state.sequence,
                    "bulks": app.mitto.state.bulks,
                    "references": len(app.mitto.state.by_reference),
                },
            },
        )
    if path == "/control/mitto/messages" and method == "GET":
        reference = request.query_one("reference")
        if not reference:
            return _problem(400, "reference is required")
        found = app.mitto.state.by_reference.get(reference, [])
        return Response.json(
            200,
            {
                "messages": [
                    {"message_id": m.message_id, "to": m.to, "accepted_at": m.accepted_at} for m in found
                ]
            },
        )
    if path == "/control/mitto/recent" and method == "GET":
        text = request.query_one("limit") or "200"
        limit = max(1, min(int(text), 2000)) if text.isdigit() else 200
        state = app.mitto.state
        return Response.json(
            200,
            {
                "accepted": list(state.recent_accepted)[-limit:],
                "reports": list(state.recent_reports)[-limit:],
            },
        )
    if path.startswith("/control/stripe/") or path.startswith("/control/shopify/"):
        return await _provider_control(app, request, path, method)
    if path == "/control/deliveries" and method == "GET":
        return Response.json(200, {**app.deliveries.counters, "pending": app.deliveries.pending})
    if path == "/control/reset" and method == "POST":
        app.faults.reset()
        return Response.json(200, {"reset": True})
    return _problem(404, f"no control endpoint {method} {path}")


async def _provider_control(app: SimulatorApp, request: Request, path: str, method: str) -> Response:
    try:
        body = request.json() if request.body.strip() else {}
    except msgspec.DecodeError:
        return _problem(400, "body is not JSON")
    if not isinstance(body, dict) and path != "/control/shopify/webhooks":
        return _problem(422, "body: must be an object")
    parts = path.split("/")  # ["", "control", "stripe", "sessions", id, action]
    try:
        if (
            method == "POST"
            and len(parts) == 6
            and parts[2:4] == ["stripe", "sessions"]
            and parts[5] == "pay"
        ):
            succeed = body.get("succeed", True)
            asynchronous = body.get("async", False)
            if not isinstance(succeed, bool) or not isinstance(asynchronous, bool):
                return _problem(422, "succeed, async: must be true or false")
            return Response.json(200, app.stripe.pay(parts[4], asynchronous=asynchronous, succeed=succeed))
        if (
            method == "POST"
            and len(parts) == 6
            and parts[2:4] == ["stripe", "sessions"]
            and parts[5] == "refund"
        ):
            amount = body.get("amount")
            if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int)):
                return _problem(422, "amount: must be a whole number of cents")
            return Response.json(200, app.stripe.refund(app.stripe.charge_of_session(parts[4]), amount))
        if method == "GET" and path == "/control/stripe/events":
            return Response.json(200, {"events": app.stripe.state.events})
        if method == "POST" and path == "/control/shopify/webhooks":
            return Response.json(201, app.shopify.trigger(body))
    except StripeApiError as exc:
        return _problem(exc.status, exc.message)
    except ShopifyRequestError as exc:
        return _problem(422, str(exc))
    return _problem(404, f"no control endpoint {method} {path}")

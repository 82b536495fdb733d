"""The fake Shopify: webhooks for shops and customers, with Shopify's headers, HMAC and retries.

Under `/shopify/{shop}/admin/api/{version}/` the fake has the customers part of the Admin API: creating or
updating a customer fires `customers/create` or `customers/update`, as Shopify does. Any other topic is
triggered through the control API (`POST /control/shopify/webhooks`). The fake delivers each
to `{target}/webhooks/shopify` with `X-Shopify-Topic`, `X-Shopify-Hmac-Sha256` (base64 HMAC-SHA256 of
the raw body with the app's client secret), `X-Shopify-Shop-Domain`, `X-Shopify-API-Version`,
`X-Shopify-Webhook-Id` (one per delivery), `X-Shopify-Event-Id` (one per merchant action, the dedupe key)
and `X-Shopify-Triggered-At`; on a non-2xx answer it retries 8 times (compressed) with the original
payload. Every event is in `shopify_events.jsonl` before its first delivery leaves.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from simulator.delivery import SHOPIFY_RETRY_DELAYS, Delivery, WebhookDispatcher
from simulator.http import Request, Response
from simulator.ledger import JsonLinesLedger, read_ledger

SHOPIFY_LEDGER = "shopify_events.jsonl"
API_VERSION = "2025-07"
TOPICS = (
    "customers/create",
    "customers/update",
    "app/uninstalled",
    "customers/data_request",
    "customers/redact",
    "shop/redact",
)


class ShopifyRequestError(ValueError):
    """A control request the fake cannot act on; the message names the field."""


def hmac_header(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


class FakeShopify:
    def __init__(
        self, data_dir: Path, api_secret: str, seed: int, dispatcher: WebhookDispatcher, fsync: bool = False
    ) -> None:
        self.api_secret = api_secret
        self.seed = seed
        self.dispatcher = dispatcher
        self.ledger_path = data_dir / SHOPIFY_LEDGER
        self.events_sent = sum(1 for _ in read_ledger(self.ledger_path))
        self.customers: dict[tuple[str, int], dict[str, Any]] = {}
        self.customers_created = sum(
            1 for r in read_ledger(self.ledger_path) if r["topic"] == "customers/create"
        )
        self.ledger = JsonLinesLedger(self.ledger_path, fsync=fsync)

    def trigger(self, spec: Any) -> dict[str, Any]:
        """Deliver one topic for a shop: `{"shop", "topic", "payload", "triggered_at"?, "event_id"?}`."""
        if not isinstance(spec, dict):
            raise ShopifyRequestError("body: must be an object")
        shop, topic, payload = spec.get("shop"), spec.get("topic"), spec.get("payload")
        if not isinstance(shop, str) or not shop.endswith(".myshopify.com"):
            raise ShopifyRequestError("shop: must be a NAME.myshopify.com domain")
        if topic not in TOPICS:
            raise ShopifyRequestError(f"topic: must be one of {', '.join(TOPICS)}")
        if not isinstance(payload, dict):
            raise ShopifyRequestError("payload: must be an object")
        triggered_at = spec.get("triggered_at") or datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self.events_sent += 1
        event_id = str(
            spec.get("event_id") or uuid.uuid5(uuid.NAMESPACE_URL, f"{self.seed}:shopify:{self.events_sent}")
        )
        body = json.dumps(payload, separators=(",", ":")).encode()
        webhook_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.seed}:shopify-webhook:{self.events_sent}"))
        self.ledger.append(
            {
                "t": time.time(),
                "event_id": event_id,
                "webhook_id": webhook_id,
                "shop": shop,
                "topic": topic,
                "triggered_at": triggered_at,
                "body_sha256": hashlib.sha256(body).hexdigest(),
            }
        )
        headers = {
            "X-Shopify-Topic": topic,
            "X-Shopify-Shop-Domain": shop,
            "X-Shopify-API-Version": API_VERSION,
            "X-Shopify-Webhook-Id": webhook_id,
            "X-Shopify-Event-Id": event_id,
            "X-Shopify-Triggered-At": triggered_at,
        }
        self.dispatcher.schedule(
            Delivery(
                provider="shopify",
                path="/webhooks/shopify",
                body=body,
                sign=lambda raw, age: {
                    **headers,
                    "X-Shopify-Hmac-Sha256": hmac_header(self.api_secret, raw),
                    **({"X-Shopify-Triggered-At": _older(triggered_at, age)} if age else {}),
                },
                retry_delays=SHOPIFY_RETRY_DELAYS,
                meta={"event": event_id, "type": topic, "shop": shop},
            )
        )
        return {"event_id": event_id, "webhook_id": webhook_id, "triggered_at": triggered_at}

    # --- the Admin API: customers (what a merchant or an import does in Shopify) ------------------
    async def handle(self, request: Request) -> Response:
        """`/shopify/{shop}/admin/api/{version}/customers.json` (POST) and `.../customers/{id}.json` (PUT):
        the change is made and its webhook fired, as in Shopify. `X-Shopify-Access-Token` is required."""
        parts = request.path.strip("/").split("/")  # shopify, shop, admin, api, version, customers[, id.json]
        if len(parts) < 6 or parts[2:4] != ["admin", "api"] or not parts[1].endswith(".myshopify.com"):
            return Response.json(404, {"errors": "Not Found"})
        if not request.headers.get("x-shopify-access-token"):
            return Response.json(
                401,
                {"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"},
            )
        shop = parts[1]
        try:
            document = request.json()
        except msgspec.DecodeError:
            return Response.json(400, {"errors": {"customer": "Required parameter missing or invalid"}})
        customer = document.get("customer") if isinstance(document, dict) else None
        if not isinstance(customer, dict):
            return Response.json(400, {"errors": {"customer": "Required parameter missing or invalid"}})
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        if request.method == "POST" and parts[5] == "customers.json":
            self.customers_created += 1
            customer = {
                **customer,
                "id": 7_000_000_000 + self.customers_created,
                "created_at": now,
                "updated_at": now,
            }
            self.customers[(shop, customer["id"])] = customer
            self.trigger({"shop": shop, "topic": "customers/create", "payload": customer})
            return Response.json(201, {"customer": customer})
        if (
            request.method == "PUT"
            and len(parts) == 7
            and parts[5] == "customers"
            and parts[6].endswith(".json")
        ):
            key = (
                shop,
                int(parts[6].removesuffix(".json")) if parts[6].removesuffix(".json").isdigit() else -1,
            )
            if key not in self.customers:
                return Response.json(404, {"errors": "Not Found"})
            updated = {**self.customers[key], **customer, "id": key[1], "updated_at": now}
            self.customers[key] = updated
            self.trigger({"shop": shop, "topic": "customers/update", "payload": updated})
            return Response.json(200, {"customer": updated})
        return Response.json(404, {"errors": "Not Found"})

    def close(self) -> None:
        self.ledger.close()


def _older(triggered_at: str, seconds: float) -> str:
    """The same instant, `seconds` earlier (a stale timestamp fault)."""
    try:
        moment = datetime.fromisoformat(triggered_at.replace("Z", "+00:00"))
    except ValueError:
        return triggered_at
    return (moment - timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")

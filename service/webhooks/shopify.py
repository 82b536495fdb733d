"""`POST /webhooks/shopify`: Shopify webhooks, verified by HMAC, deduplicated by event id, applied once.

Verification: `X-Shopify-Hmac-Sha256` is base64(HMAC-SHA256(raw body, app client secret)), compared in
constant time; wrong, missing or not ASCII -> 401, nothing recorded.

Shopify signs the body only, so whoever captured a delivery can re-send its body under other headers.
So the headers are never trusted on their own:
- dedupe key: the SHA-256 of the signed body, not `X-Shopify-Event-Id` (a header anyone can change).
  Shopify's retries send the original body, so they are duplicates as before; a captured body re-sent
  under a new event id, another topic or another shop's domain is a duplicate too, and does nothing;
- each topic's payload must agree with the headers wherever it names them (`shop_domain` of the privacy
  topics, `myshopify_domain` of `app/uninstalled`, a customer object with an id for `customers/*`);
  a delivery that does not -> 400, nothing recorded;
- `X-Shopify-Triggered-At` is required, may not be older than `SMSLAB_SHOPIFY_WEBHOOK_HORIZON_SECONDS`
  (Shopify stops retrying long before) nor from the future -> else 400; a customer webhook older than the
  state it would overwrite changes nothing (`stale`).

Topics: `customers/create`, `customers/update` (contact and SMS consent), `app/uninstalled`,
`customers/data_request`, `customers/redact`, `shop/redact`. Others are recorded with no effect.
Every handler is a few statements: well inside Shopify's 5 s deadline.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service import logs, privacy
from service.auth import is_shop_domain
from service.contacts.shopify_sync import sync_customer
from service.db.apply_once import Effect, EffectResult, IncomingEvent, apply_once
from service.db.models import utcnow
from service.errors import BadRequest, Unauthorized
from service.input_rules import MAX_INT64, decode_json, in_int_range, is_storable_text
from service.settings import Settings
from service.shops import install_shop, shop_by_domain, uninstall_shop

log = logs.get_logger(__name__)

CUSTOMER_TOPICS = ("customers/create", "customers/update")
PRIVACY_TOPICS = ("customers/data_request", "customers/redact", "shop/redact")
ERASURE_TOPICS = ("customers/redact", "shop/redact")


FUTURE_SKEW = timedelta(minutes=5)


class ShopifyHmacInvalid(Unauthorized):
    slug = "invalid-hmac"
    title = "X-Shopify-Hmac-Sha256 does not verify"


class InconsistentWebhook(BadRequest):
    slug = "inconsistent-webhook"
    title = "The webhook's headers do not agree with its signed body"


def hmac_of(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def verify(settings: Settings, body: bytes, signature: str | None) -> None:
    # Compared as bytes: a header that is not ASCII is simply wrong, never a TypeError.
    given = (signature or "").strip().encode("utf-8", "replace")
    if not given or not hmac.compare_digest(hmac_of(settings.shopify_api_secret, body).encode(), given):
        raise ShopifyHmacInvalid("the webhook's HMAC does not match its body")


def parse_triggered_at(value: str | None) -> datetime | None:
    """ISO 8601 with up to nanoseconds (`2023-03-29T18:00:27.877041743Z`); None if absent or unreadable."""
    if not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _customer_id(customer: Any) -> int | None:
    value = customer.get("id") if isinstance(customer, dict) else None
    return value if in_int_range(value, 1, MAX_INT64) else None


def check_consistent(topic: str, domain: str, payload: dict[str, Any]) -> None:
    """The payload agrees with the headers wherever it names them, and has the shape of its topic."""
    if topic in CUSTOMER_TOPICS:
        if _customer_id(payload) is None or "shop_domain" in payload or "customer" in payload:
            raise InconsistentWebhook(f"a {topic} body is a customer object with an id")
    elif topic in PRIVACY_TOPICS:
        if payload.get("shop_domain") != domain:
            raise InconsistentWebhook(f"{topic}: shop_domain in the body is not X-Shopify-Shop-Domain")
        if topic != "shop/redact" and not isinstance(payload.get("customer"), dict):
            raise InconsistentWebhook(f"{topic}: the body names no customer")
        named = payload.get("customer")
        if (topic == "customers/redact" or (isinstance(named, dict) and "id" in named)) and _customer_id(
            named
        ) is None:
            raise InconsistentWebhook(f"{topic}: the customer has no valid id")
    elif topic == "app/uninstalled" and payload.get("myshopify_domain") != domain:
        raise InconsistentWebhook(
            "app/uninstalled: myshopify_domain in the body is not X-Shopify-Shop-Domain"
        )


def check_fresh(settings: Settings, triggered_at: datetime | None) -> None:
    if triggered_at is None:
        raise BadRequest("X-Shopify-Triggered-At is required (an ISO 8601 time)")
    now = utcnow()
    if triggered_at > now + FUTURE_SKEW:
        raise BadRequest("X-Shopify-Triggered-At is in the future")
    if now - triggered_at > timedelta(seconds=settings.shopify_webhook_horizon_seconds):
        raise BadRequest(
            "X-Shopify-Triggered-At is older than Shopify's retry horizon "
            f"({settings.shopify_webhook_horizon_seconds:g} s): refused, as a replay would be"
        )


async def handle(
    session: AsyncSession, settings: Settings, headers: dict[str, str], body: bytes
) -> EffectResult:
    topic = headers.get("x-shopify-topic", "")
    domain = headers.get("x-shopify-shop-domain", "")
    if not topic or not domain:
        raise BadRequest("X-Shopify-Topic and X-Shopify-Shop-Domain are required")
    if not is_storable_text(topic, 100) or not is_shop_domain(domain):
        raise BadRequest("X-Shopify-Topic or X-Shopify-Shop-Domain is not what Shopify sends")
    payload = decode_json(body, "webhook body")
    if not isinstance(payload, dict):
        raise BadRequest("webhook body must be a JSON object")
    check_consistent(topic, domain, payload)
    triggered_at = parse_triggered_at(headers.get("x-shopify-triggered-at"))
    check_fresh(settings, triggered_at)
    region = settings.default_phone_region
    shop = (
        await install_shop(session, domain)
        if topic in CUSTOMER_TOPICS
        else await shop_by_domain(session, domain)
    )
    customer = payload.get("customer") if topic in PRIVACY_TOPICS else payload
    customer_id = _customer_id(customer)
    incoming = IncomingEvent(
        "shopify",
        # One signed body takes effect once, whatever headers it came with (see the module's docstring).
        f"sha256:{hashlib.sha256(body).hexdigest()}",
        topic,
        shop_id=shop.id if shop else None,
        subject=f"customer:{customer_id}" if customer_id is not None else None,
        # An erasure request is recorded without its payload: it names the very data being erased.
        payload=None if topic in ERASURE_TOPICS else payload,
        triggered_at=triggered_at,
    )
    effect: Effect
    if shop is None:
        effect = partial(_outcome, outcome="unknown_shop")
    elif topic in CUSTOMER_TOPICS and not shop.active:
        effect = partial(_outcome, outcome="shop_inactive")
    elif topic in CUSTOMER_TOPICS:
        effect = partial(
            sync_customer,
            settings=settings,
            shop_id=shop.id,
            customer=payload,
            triggered_at=triggered_at,
            region=region,
        )
    elif topic == "app/uninstalled":
        effect = partial(uninstall_shop, shop_id=shop.id)
    elif topic == "customers/data_request" and isinstance(customer, dict):
        effect = partial(privacy.export_customer, shop_id=shop.id, customer=customer, region=region)
    elif topic == "customers/redact" and isinstance(customer, dict):
        effect = partial(privacy.redact_customer, shop_id=shop.id, customer=customer, region=region)
    elif topic == "shop/redact":
        effect = partial(privacy.redact_shop, shop_id=shop.id)
    else:
        effect = partial(_outcome, outcome="ignored")
    result = await apply_once(session, settings, incoming, effect)
    log.info("shopify_event", topic=topic, shop_id=incoming.shop_id, outcome=result.outcome)
    return result


async def _outcome(_tx: AsyncSession, outcome: str) -> EffectResult:
    return EffectResult(outcome)

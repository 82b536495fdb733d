"""`POST /webhooks/shopify`: Shopify webhooks, verified by HMAC, deduplicated by event id, applied once.

Verification: `X-Shopify-Hmac-Sha256` is base64(HMAC-SHA256(raw body, app client secret)), compared in
constant time; wrong or missing -> 401, nothing recorded. Dedupe key: `X-Shopify-Event-Id` (shared by
every delivery of one merchant action; `X-Shopify-Webhook-Id` when an old API version sends none).
Staleness: `X-Shopify-Triggered-At` against the state a customer webhook would overwrite.

Topics: `customers/create`, `customers/update` (contact and SMS consent), `app/uninstalled`,
`customers/data_request`, `customers/redact`, `shop/redact`. Others are recorded with no effect.
Every handler is a few statements: well inside Shopify's 5 s deadline.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from functools import partial

from sqlalchemy.ext.asyncio import AsyncSession

from service import logs, privacy
from service.contacts.shopify_sync import sync_customer
from service.db.apply_once import Effect, EffectResult, IncomingEvent, apply_once
from service.errors import BadRequest, Unauthorized
from service.settings import Settings
from service.shops import install_shop, shop_by_domain, uninstall_shop

log = logs.get_logger(__name__)

CUSTOMER_TOPICS = ("customers/create", "customers/update")
PRIVACY_TOPICS = ("customers/data_request", "customers/redact", "shop/redact")
ERASURE_TOPICS = ("customers/redact", "shop/redact")


class ShopifyHmacInvalid(Unauthorized):
    slug = "invalid-hmac"
    title = "X-Shopify-Hmac-Sha256 does not verify"


def hmac_of(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def verify(settings: Settings, body: bytes, signature: str | None) -> None:
    if not signature or not hmac.compare_digest(
        hmac_of(settings.shopify_api_secret, body), signature.strip()
    ):
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


async def handle(
    session: AsyncSession, settings: Settings, headers: dict[str, str], body: bytes
) -> EffectResult:
    topic = headers.get("x-shopify-topic", "")
    domain = headers.get("x-shopify-shop-domain", "")
    event_id = headers.get("x-shopify-event-id") or headers.get("x-shopify-webhook-id")
    if not topic or not domain or not event_id:
        raise BadRequest("X-Shopify-Topic, X-Shopify-Shop-Domain and X-Shopify-Event-Id are required")
    try:
        payload = json.loads(body)
    except ValueError:
        raise BadRequest("webhook body is not JSON") from None
    if not isinstance(payload, dict):
        raise BadRequest("webhook body must be a JSON object")
    triggered_at = parse_triggered_at(headers.get("x-shopify-triggered-at"))
    region = settings.default_phone_region
    shop = (
        await install_shop(session, domain)
        if topic in CUSTOMER_TOPICS
        else await shop_by_domain(session, domain)
    )
    customer = payload.get("customer") if topic in PRIVACY_TOPICS else payload
    subject = f"customer:{int(customer['id'])}" if isinstance(customer, dict) and customer.get("id") else None
    incoming = IncomingEvent(
        "shopify",
        f"{domain}:{event_id}",
        topic,
        shop_id=shop.id if shop else None,
        subject=subject,
        # An erasure request is recorded without its payload: it names the very data being erased.
        payload=None if topic in ERASURE_TOPICS else payload,
        triggered_at=triggered_at,
    )
    effect: Effect
    if shop is None:
        effect = partial(_outcome, outcome="unknown_shop")
    elif topic in CUSTOMER_TOPICS and not shop.active:
        effect = partial(_outcome, outcome="shop_inactive")
    elif topic in CUSTOMER_TOPICS and isinstance(customer, dict) and customer.get("id") is not None:
        effect = partial(
            sync_customer,
            settings=settings,
            shop_id=shop.id,
            customer=customer,
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

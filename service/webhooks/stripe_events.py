"""`POST /webhooks/stripe`: Stripe events, verified with the official library, applied once.

Verification: `Stripe-Signature` (`t=...,v1=...`) checked by `stripe.WebhookSignature.verify_header`
against every configured secret (rotation keeps the old one valid for a while), tolerance 300 s. A bad
or stale signature is a 400 and nothing is recorded.

Events:
- `checkout.session.completed` with `payment_status` `paid` (or `no_payment_required`), and
  `checkout.session.async_payment_succeeded`: grant the session's credits (once per session).
- `checkout.session.async_payment_failed`: the billing row is marked failed.
- `charge.refunded`: the charge's refunds are listed from Stripe and each is taken once. If the purchase
  was not seen yet, the session is found by its payment intent; the refund waits for the grant.
- anything else: recorded, no effect.
Stripe calls happen before the transaction opens, so no database lock waits on the network.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import stripe
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service import logs
from service.billing import fulfilment
from service.db.apply_once import Effect, EffectResult, IncomingEvent, apply_once
from service.db.models import BillingTransaction
from service.errors import BadRequest
from service.input_rules import decode_json, is_storable_text
from service.settings import Settings

TOLERANCE_SECONDS = 300
log = logs.get_logger(__name__)


class StripeSignatureInvalid(BadRequest):
    slug = "invalid-signature"
    title = "Stripe-Signature does not verify"


def verify(settings: Settings, payload: bytes, signature: str | None) -> dict[str, Any]:
    """The event, if any configured secret verifies the signature within the tolerance."""
    if not signature:
        raise StripeSignatureInvalid("Stripe-Signature header is missing")
    if not signature.isascii() or not signature.isprintable():
        raise StripeSignatureInvalid("Stripe-Signature is not what Stripe sends (t=...,v1=...)")
    text = payload.decode("utf-8", errors="replace")
    for secret in settings.stripe_webhook_secret:
        try:
            stripe.WebhookSignature.verify_header(text, signature, secret, TOLERANCE_SECONDS)
        except stripe.SignatureVerificationError:
            continue
        event = decode_json(payload, "event body")
        if (
            not isinstance(event, dict)
            or not is_storable_text(event.get("id"), 200)
            or not is_storable_text(event.get("type"), 100)
        ):
            raise BadRequest("not a Stripe event")
        obj = (event.get("data") or {}).get("object") if isinstance(event.get("data"), dict) else None
        if obj is not None and (not isinstance(obj, dict) or not is_storable_text(str(obj.get("id")), 200)):
            raise BadRequest("not a Stripe event: data.object is not an object with an id")
        return event
    raise StripeSignatureInvalid("no configured secret verifies this signature (wrong secret, or too old)")


async def _billing_for_charge(
    session: AsyncSession, client: stripe.StripeClient, charge: dict[str, Any]
) -> BillingTransaction | None:
    payment_intent = charge.get("payment_intent")
    if not payment_intent:
        return None
    async with session.begin():
        billing = await session.scalar(
            select(BillingTransaction).where(BillingTransaction.payment_intent == payment_intent)
        )
    if billing is not None:
        return billing
    # The refund came before the purchase: ask Stripe which session this payment belongs to.
    sessions = await client.v1.checkout.sessions.list_async(
        params={"payment_intent": payment_intent, "limit": 1}
    )
    if not sessions.data:
        return None
    async with session.begin():
        return await session.scalar(
            select(BillingTransaction).where(BillingTransaction.provider_ref == sessions.data[0].id)
        )


async def handle(
    session: AsyncSession, settings: Settings, client: stripe.StripeClient, event: dict[str, Any]
) -> EffectResult:
    event_type = str(event["type"])
    obj: dict[str, Any] = (event.get("data") or {}).get("object") or {}
    incoming = IncomingEvent("stripe", str(event["id"]), event_type, subject=obj.get("id"), payload=event)
    object_id = str(obj.get("id"))
    effect: Effect
    if event_type in GRANTING and (
        event_type != "checkout.session.completed" or obj.get("payment_status") in PAID
    ):
        effect = partial(
            fulfilment.grant_purchase,
            settings=settings,
            session_id=object_id,
            payment_intent=obj.get("payment_intent"),
        )
    elif event_type == "checkout.session.completed":
        effect = partial(_outcome, outcome="awaiting_async_payment")
    elif event_type == "checkout.session.async_payment_failed":
        effect = partial(fulfilment.mark_payment_failed, session_id=object_id)
    elif event_type == "charge.refunded":
        billing = await _billing_for_charge(session, client, obj)
        listed = await client.v1.refunds.list_async(params={"charge": object_id, "limit": 100})
        refunds = [
            fulfilment.StripeRefund(r.id, int(r.amount))
            for r in listed.data
            if getattr(r, "status", "succeeded") in ("succeeded", "pending")
        ]
        if billing is None:
            effect = partial(_outcome, outcome="unknown_payment", flagged=True)
        else:
            incoming.shop_id = billing.shop_id
            effect = partial(
                fulfilment.apply_refunds,
                settings=settings,
                billing_id=billing.id,
                charge_amount_cents=int(obj.get("amount") or 0),
                refunds=refunds,
                fully_refunded=bool(obj.get("refunded")),
            )
    else:
        effect = partial(_outcome, outcome="ignored")
    result = await apply_once(session, settings, incoming, effect)
    log.info("stripe_event", event_type=event_type, outcome=result.outcome, flagged=result.flagged)
    return result


GRANTING = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
PAID = ("paid", "no_payment_required")


async def _outcome(_tx: AsyncSession, outcome: str, flagged: bool = False) -> EffectResult:
    return EffectResult(outcome, flagged)

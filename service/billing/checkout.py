"""Buying credits: a Stripe Checkout Session per purchase, created through the official `stripe` library.

A pending billing transaction is written first, keyed by an idempotency key (the client's own
`Idempotency-Key` if it sent one), and the same key goes to Stripe: a retried request, ours or the
client's, gets the same Checkout Session back instead of a second one.
"""

from __future__ import annotations

import uuid
from typing import Any

import stripe
from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.db.dialect import insert_ignoring_conflicts
from service.db.models import BillingStatus, BillingTransaction, utcnow
from service.errors import InvalidInput, ProblemError
from service.input_rules import idempotency_key
from service.pagination import Page, keyset_page
from service.settings import Settings

STRIPE_TIMEOUT_SECONDS = 10


class PaymentProviderUnavailable(ProblemError):
    status = 503
    slug = "payment-provider-unavailable"
    title = "The payment provider could not be reached"


def create_stripe_client(settings: Settings, http_client: stripe.HTTPClient) -> stripe.StripeClient:
    """The official client, pointed at `SMSLAB_STRIPE_API_BASE` (the simulator's /stripe in the lab)."""
    return stripe.StripeClient(
        settings.stripe_secret_key,
        base_addresses={"api": settings.stripe_api_base},
        http_client=http_client,
        max_network_retries=2,
    )


def stripe_http_client() -> stripe.HTTPXClient:
    return stripe.HTTPXClient(timeout=STRIPE_TIMEOUT_SECONDS)


def package_price(settings: Settings, credits: Any) -> int:
    prices = dict(settings.credit_packages)
    if isinstance(credits, bool) or not isinstance(credits, int) or credits not in prices:
        on_sale = ", ".join(str(c) for c in prices)
        raise InvalidInput(
            f"credits must be one of the packages on sale: {on_sale}",
            errors=[{"field": "credits", "message": f"not a package on sale ({on_sale})"}],
        )
    return prices[credits]


async def purchases_page(
    connection: AsyncConnection, shop_id: int, page: Page
) -> tuple[list[Row[Any]], int | None]:
    """The shop's purchases (with what was refunded of each), oldest first."""
    query = select(BillingTransaction).where(BillingTransaction.shop_id == shop_id)
    return await keyset_page(connection, query, BillingTransaction.id, page)


async def create_checkout(
    session: AsyncSession,
    settings: Settings,
    client: stripe.StripeClient,
    *,
    shop_id: int,
    shop_domain: str,
    credits: Any,
    client_key: str | None,
) -> BillingTransaction:
    amount = package_price(settings, credits)
    # Checked like the enqueue's, before anything is written: a key the column cannot hold would fail
    # at the database on every retry (a 5xx that can never succeed), with a pending row left behind.
    client_key = idempotency_key(client_key) if client_key is not None else None
    key = f"checkout:{shop_id}:{client_key}" if client_key else f"checkout:{shop_id}:{uuid.uuid4()}"
    now = utcnow()
    async with session.begin():
        await session.execute(
            insert_ignoring_conflicts(session, BillingTransaction, ["idempotency_key"]).values(
                shop_id=shop_id,
                idempotency_key=key,
                provider="stripe",
                credits=credits,
                amount_cents=amount,
                currency=settings.credit_currency,
                status=BillingStatus.PENDING,
                credits_granted=0,
                credits_refunded=0,
                refund_shortfall=0,
                created_at=now,
                updated_at=now,
            )
        )
        billing = await session.scalar(
            select(BillingTransaction).where(BillingTransaction.idempotency_key == key)
        )
    assert billing is not None
    if billing.credits != credits:
        raise InvalidInput("this Idempotency-Key was first used for another package", billing_id=billing.id)
    if billing.provider_ref is None:
        try:
            checkout = await client.v1.checkout.sessions.create_async(
                params={
                    "mode": "payment",
                    "line_items": [
                        {
                            "quantity": 1,
                            "price_data": {
                                "currency": settings.credit_currency,
                                "unit_amount": amount,
                                "product_data": {"name": f"{credits} SMS credits"},
                            },
                        }
                    ],
                    "success_url": f"{settings.checkout_return_url}?billing={billing.id}&result=success",
                    "cancel_url": f"{settings.checkout_return_url}?billing={billing.id}&result=cancel",
                    "client_reference_id": str(billing.id),
                    "metadata": {"billing_id": str(billing.id), "shop": shop_domain, "credits": str(credits)},
                    "payment_intent_data": {"metadata": {"billing_id": str(billing.id)}},
                },
                options={"idempotency_key": key},
            )
        except stripe.StripeError as exc:
            raise PaymentProviderUnavailable(
                f"Stripe did not create the checkout session ({type(exc).__name__}); retry the request",
                headers={"Retry-After": "2"},
                billing_id=billing.id,
            ) from None
        async with session.begin():
            await session.execute(
                update(BillingTransaction)
                .where(BillingTransaction.id == billing.id)
                .values(provider_ref=checkout.id, checkout_url=checkout.url, updated_at=utcnow())
            )
        billing.provider_ref, billing.checkout_url = checkout.id, checkout.url
    return billing

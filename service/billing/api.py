"""HTTP: `POST /api/billing/checkout` (buy a credit package) and `GET /api/billing/transactions`."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from stripe import StripeClient

from service.billing.checkout import create_checkout, purchases_page
from service.db.models import BillingTransaction
from service.http import documented_body, problems
from service.input_rules import IDEMPOTENCY_KEY_SCHEMA, decode_json
from service.pagination import Page
from service.rate_limits import RouteClass, rate_class
from service.settings import Settings
from service.shops import SessionShop


class CheckoutIn(msgspec.Struct):
    """Which package to buy: `credits` is one of the packages on sale (`SMSLAB_CREDIT_PACKAGES`)."""

    credits: Annotated[int, msgspec.Meta(ge=1)]


class PurchaseView(msgspec.Struct):
    """A credit purchase: its Checkout Session (pay at `url`) and what became of it."""

    billing_id: int
    session_id: str | None
    url: str | None
    credits: int
    amount_cents: int
    currency: str
    status: str
    credits_granted: int
    credits_refunded: int
    refund_shortfall: int

    @classmethod
    def of(cls, billing: BillingTransaction | Row[Any]) -> PurchaseView:
        return cls(
            billing_id=billing.id,
            session_id=billing.provider_ref,
            url=billing.checkout_url,
            credits=billing.credits,
            amount_cents=billing.amount_cents,
            currency=billing.currency,
            status=billing.status,
            credits_granted=billing.credits_granted,
            credits_refunded=billing.credits_refunded,
            refund_shortfall=billing.refund_shortfall,
        )


class PurchasePage(msgspec.Struct):
    items: list[PurchaseView]
    next_cursor: int | None


class BillingController(Controller):
    path = "/api/billing"
    tags = ["billing"]

    @post(
        "/checkout",
        status_code=201,
        summary="Start buying credits: a Stripe Checkout Session",
        opt=rate_class(RouteClass.BILLING),
        description=(
            "With an Idempotency-Key, a retry gets the same Checkout Session; the same key for another "
            "package is a 422 naming `billing_id`. Stripe unreachable: 503 with `billing_id` and "
            "Retry-After; retry with the same key."
        ),
        responses=problems(400, 429, 401, 409, 413, 422, 503),
        operation_class=documented_body(CheckoutIn, "The package to buy"),
    )
    async def checkout(
        self,
        request: Request[Any, Any, Any],
        shop: NamedDependency[SessionShop],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
        stripe_client: NamedDependency[StripeClient],
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(
                name="Idempotency-Key",
                description="1 to 255 printable ASCII characters; a retry with the same key is answered once",
                schema_extra=IDEMPOTENCY_KEY_SCHEMA,
            ),
        ] = None,
    ) -> PurchaseView:
        data = decode_json(await request.body())
        billing = await create_checkout(
            db_session,
            settings,
            stripe_client,
            shop_id=shop.id,
            shop_domain=shop.domain,
            credits=data.get("credits") if isinstance(data, dict) else None,
            client_key=idempotency_key,
        )
        return PurchaseView.of(billing)

    @get(
        "/transactions",
        summary="Purchases and their refunds, oldest first",
        opt=rate_class(RouteClass.REPORTS),
        responses=problems(400, 429, 401, 503),
    )
    async def transactions(
        self,
        shop: NamedDependency[SessionShop],
        reader: NamedDependency[AsyncConnection],
        page: NamedDependency[Page],
    ) -> PurchasePage:
        purchases, next_cursor = await purchases_page(reader, shop.id, page)
        return PurchasePage([PurchaseView.of(b) for b in purchases], next_cursor)

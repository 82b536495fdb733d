"""HTTP: `POST /api/billing/checkout` (buy a credit package) and `GET /api/billing/transactions`."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.params import Parameter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.billing.checkout import create_checkout, describe
from service.db.models import BillingTransaction, Shop
from service.http import runtime_of
from service.pagination import keyset_page


class BillingController(Controller):
    path = "/api/billing"
    tags = ["billing"]

    @post("/checkout", status_code=201, summary="Start buying credits: a Stripe Checkout Session")
    async def checkout(
        self,
        data: dict[str, Any],
        shop: Shop,
        db_session: AsyncSession,
        state: State,
        idempotency_key: Annotated[str | None, Parameter(header="Idempotency-Key")] = None,
    ) -> dict[str, Any]:
        runtime = runtime_of(state)
        return await create_checkout(
            db_session,
            runtime.settings,
            runtime.stripe,
            shop_id=shop.id,
            shop_domain=shop.domain,
            credits=data.get("credits"),
            client_key=idempotency_key,
        )

    @get("/transactions", summary="Purchases and their refunds, oldest first")
    async def transactions(
        self,
        shop: Shop,
        db_session: AsyncSession,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
        after: Annotated[int | None, Parameter(ge=0)] = None,
    ) -> dict[str, Any]:
        query = select(BillingTransaction).where(BillingTransaction.shop_id == shop.id)
        page, next_cursor = await keyset_page(db_session, query, BillingTransaction.id, limit, after)
        return {"items": [describe(b) for b in page], "next_cursor": next_cursor}

"""HTTP: the three providers' webhook endpoints. Thin: read the raw body, verify, hand to the handler."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.datastructures import State
from sqlalchemy.ext.asyncio import AsyncSession

from service.http import runtime_of
from service.webhooks import mitto, shopify, stripe_events


class WebhooksController(Controller):
    path = "/webhooks"
    tags = ["webhooks"]

    @post("/stripe", status_code=200, summary="Stripe events (Stripe-Signature verified)")
    async def stripe(
        self, request: Request[Any, Any, Any], db_session: AsyncSession, state: State
    ) -> dict[str, Any]:
        runtime = runtime_of(state)
        body = await request.body()
        event = stripe_events.verify(runtime.settings, body, request.headers.get("stripe-signature"))
        result = await stripe_events.handle(db_session, runtime.settings, runtime.stripe, event)
        return {"status": result.outcome, "flagged": result.flagged}

    @post("/shopify", status_code=200, summary="Shopify webhooks (X-Shopify-Hmac-Sha256 verified)")
    async def shopify(
        self, request: Request[Any, Any, Any], db_session: AsyncSession, state: State
    ) -> dict[str, Any]:
        runtime = runtime_of(state)
        body = await request.body()
        shopify.verify(runtime.settings, body, request.headers.get("x-shopify-hmac-sha256"))
        headers = {k.lower(): v for k, v in request.headers.items()}
        result = await shopify.handle(db_session, runtime.settings, headers, body)
        return {"status": result.outcome, "flagged": result.flagged}

    @post("/mitto/dlr", status_code=200, summary="Mitto delivery reports (?token= verified)")
    async def mitto_dlr(
        self,
        request: Request[Any, Any, Any],
        db_session: AsyncSession,
        state: State,
        token: str | None = None,
    ) -> dict[str, Any]:
        runtime = runtime_of(state)
        mitto.verify(runtime.settings, token)
        body = await request.body()
        result = await mitto.handle(db_session, runtime.settings, body, runtime.report_batcher)
        return {"status": result.outcome, "flagged": result.flagged}

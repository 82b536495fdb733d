"""HTTP: the three providers' webhook endpoints. Thin: read the raw body, verify, hand to the handler."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession
from stripe import StripeClient

from service.db.apply_once import EffectResult
from service.http import problems
from service.settings import Settings
from service.webhooks import mitto, shopify, stripe_events
from service.webhooks.report_batcher import DeliveryReportBatcher


class WebhookOutcome(msgspec.Struct):
    """What the delivery did: `applied`, `duplicate` (seen before, no effect) or a handler's outcome;
    `flagged` when an operator should look (an unknown payment or message, a refund short of credits)."""

    status: str
    flagged: bool

    @classmethod
    def of(cls, result: EffectResult) -> WebhookOutcome:
        return cls(result.outcome, result.flagged)


class WebhooksController(Controller):
    path = "/webhooks"
    tags = ["webhooks"]

    @post(
        "/stripe",
        status_code=200,
        summary="Stripe events (Stripe-Signature verified)",
        responses=problems(400, 409, 503, s400="Stripe-Signature missing, wrong or too old; or not an event"),
    )
    async def stripe(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
        stripe_client: NamedDependency[StripeClient],
    ) -> WebhookOutcome:
        body = await request.body()
        event = stripe_events.verify(settings, body, request.headers.get("stripe-signature"))
        return WebhookOutcome.of(await stripe_events.handle(db_session, settings, stripe_client, event))

    @post(
        "/shopify",
        status_code=200,
        summary="Shopify webhooks (X-Shopify-Hmac-Sha256 verified)",
        responses=problems(400, 401, 409, 503, s401="X-Shopify-Hmac-Sha256 missing or wrong"),
    )
    async def shopify(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> WebhookOutcome:
        body = await request.body()
        shopify.verify(settings, body, request.headers.get("x-shopify-hmac-sha256"))
        headers = {k.lower(): v for k, v in request.headers.items()}
        return WebhookOutcome.of(await shopify.handle(db_session, settings, headers, body))

    @post(
        "/mitto/dlr",
        status_code=200,
        summary="Mitto delivery reports (?token= verified)",
        responses=problems(400, 401, 409, 422, 503, s401="The callback token is missing or wrong"),
    )
    async def mitto_dlr(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
        report_batcher: NamedDependency[DeliveryReportBatcher],
        token: Annotated[str | None, QueryParameter(description="The secret in the callback URL")] = None,
    ) -> WebhookOutcome:
        mitto.verify(settings, token)
        body = await request.body()
        return WebhookOutcome.of(await mitto.handle(db_session, settings, body, report_batcher))

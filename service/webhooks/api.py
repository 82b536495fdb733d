"""HTTP: the three providers' webhook endpoints. Thin: read the raw body, verify, hand to the handler."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from stripe import StripeClient

from service.db.apply_once import DUPLICATE, EffectResult
from service.errors import ProblemError
from service.http import problems
from service.metrics import WEBHOOK_EVENTS
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


async def counted(provider: str, delivery: Awaitable[EffectResult]) -> WebhookOutcome:
    """One delivery, counted by what became of it: applied (it took effect, or was decided on: stale,
    superseded, unknown...), duplicate (seen before: no effect), rejected (a 4xx: bad signature or
    body), failed (the service could not answer it: the provider retries)."""
    try:
        result = await delivery
    except ProblemError as refusal:
        WEBHOOK_EVENTS.labels(
            provider=provider, outcome="rejected" if refusal.status < 500 else "failed"
        ).inc()
        raise
    except Exception:
        WEBHOOK_EVENTS.labels(provider=provider, outcome="failed").inc()
        raise
    WEBHOOK_EVENTS.labels(
        provider=provider, outcome="duplicate" if result.outcome == DUPLICATE else "applied"
    ).inc()
    return WebhookOutcome.of(result)


class WebhooksController(Controller):
    path = "/webhooks"
    tags = ["webhooks"]

    @post(
        "/stripe",
        status_code=200,
        summary="Stripe events (Stripe-Signature verified)",
        responses=problems(
            400, 409, 429, 503, s400="Stripe-Signature missing, wrong or too old; or not an event"
        ),
    )
    async def stripe(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
        stripe_client: NamedDependency[StripeClient],
    ) -> WebhookOutcome:
        body = await request.body()

        async def deliver() -> EffectResult:
            event = stripe_events.verify(settings, body, request.headers.get("stripe-signature"))
            return await stripe_events.handle(db_session, settings, stripe_client, event)

        return await counted("stripe", deliver())

    @post(
        "/shopify",
        status_code=200,
        summary="Shopify webhooks (X-Shopify-Hmac-Sha256 verified)",
        responses=problems(400, 401, 409, 429, 503, s401="X-Shopify-Hmac-Sha256 missing or wrong"),
    )
    async def shopify(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> WebhookOutcome:
        body = await request.body()

        async def deliver() -> EffectResult:
            shopify.verify(settings, body, request.headers.get("x-shopify-hmac-sha256"))
            headers = {k.lower(): v for k, v in request.headers.items()}
            return await shopify.handle(db_session, settings, headers, body)

        return await counted("shopify", deliver())

    @post(
        "/mitto/dlr",
        status_code=200,
        summary="Mitto delivery reports (?token= verified)",
        responses=problems(400, 401, 409, 422, 429, 503, s401="The callback token is missing or wrong"),
    )
    async def mitto_dlr(
        self,
        request: Request[Any, Any, Any],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
        report_batcher: NamedDependency[DeliveryReportBatcher],
        token: Annotated[str | None, QueryParameter(description="The secret in the callback URL")] = None,
    ) -> WebhookOutcome:
        async def deliver() -> EffectResult:
            mitto.verify(settings, token)
            return await mitto.handle(sessions, settings, await request.body(), report_batcher)

        return await counted("mitto", deliver())

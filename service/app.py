"""The Litestar application: routes, the dependencies handlers declare, error rendering, the life cycle.

Handlers name what they need (`settings`, `db_session`, `shop`, `page`, `queue`, `stripe_client`,
`report_batcher`, `engine`) and get it from here; nothing reaches into application state.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from saq.queue.redis import RedisQueue
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from stripe import StripeClient

from service import deployment, logs, stack_dumps
from service.admission import AdmissionMiddleware, export_routes
from service.auth import provide_shop, session_guard
from service.billing.api import BillingController
from service.campaigns.api import CampaignsController
from service.contacts.api import ContactsController
from service.db.session import reading
from service.health import HealthController
from service.http import (
    EXCEPTION_HANDLERS,
    RequestContextMiddleware,
    allow_every_method_in_options,
    resolve_dependencies_one_by_one,
)
from service.input_rules import BODY_LIMIT_DEFAULT
from service.metrics_api import MetricsController
from service.metrics_server import serve_metrics_apart
from service.pagination import provide_page
from service.rate_limits import RateLimiter, parse_limit, parse_limits
from service.runtime import Runtime
from service.settings import Settings
from service.shops import SessionShop
from service.wallet.api import WalletController
from service.webhooks.api import WebhooksController
from service.webhooks.report_batcher import DeliveryReportBatcher


def _constant(value: Any) -> Provide:
    """A dependency that is one object for the life of the process."""

    def provide() -> Any:
        return value

    provide.__annotations__["return"] = type(value)
    return Provide(provide, use_cache=True, sync_to_thread=False)


def create_app(settings: Settings, redis_url: str) -> Litestar:
    runtime = Runtime.build(settings, redis_url, role="api")
    batcher = DeliveryReportBatcher(runtime.sessions, settings)
    limiter = RateLimiter(
        redis_url,
        parse_limits(settings.rate_limits),
        parse_limit(settings.webhook_rate_limit),
        namespace=settings.queue_name,
        when_down=settings.rate_limit_when_redis_down,
    )

    async def provide_session() -> AsyncGenerator[AsyncSession, None]:
        async with runtime.sessions() as session:
            yield session

    async def provide_reader() -> AsyncGenerator[AsyncConnection, None]:
        async with reading(runtime.engine) as connection:
            yield connection

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        stack_dumps.install()
        await runtime.start()
        logs.get_logger(__name__).info("api_started", queue=settings.queue_name, env=settings.env)
        deployment.announce(settings, "api")
        metrics_server = await serve_metrics_apart(settings, dependencies)
        try:
            yield
        finally:
            if metrics_server is not None:
                await metrics_server.stop()
            await limiter.close()
            await runtime.close()

    dependencies: dict[str, Provide] = {
        "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
        "engine": _constant(runtime.engine),
        "queue": _constant(runtime.queue),
        "stripe_client": _constant(runtime.stripe),
        "report_batcher": _constant(batcher),
        "db_session": Provide(provide_session),
        # Reads of the request path: Core on a pooled connection outside any transaction (db.session).
        "reader": Provide(provide_reader),
        "sessions": _constant(runtime.sessions),
        "shop": Provide(provide_shop, sync_to_thread=False),
        "page": Provide(provide_page),
    }
    app = Litestar(
        route_handlers=[
            HealthController,
            ContactsController,
            CampaignsController,
            WalletController,
            BillingController,
            WebhooksController,
            # With a port of its own, /metrics is served there only (service/metrics_server.py).
            *([] if settings.metrics_port else [MetricsController]),
        ],
        dependencies=dependencies,
        guards=[session_guard(settings, runtime.engine, limiter)],
        request_max_body_size=BODY_LIMIT_DEFAULT,
        signature_namespace={
            "Settings": Settings,
            "AsyncEngine": AsyncEngine,
            "RedisQueue": RedisQueue,
            "StripeClient": StripeClient,
            "DeliveryReportBatcher": DeliveryReportBatcher,
            "AsyncSession": AsyncSession,
            "AsyncConnection": AsyncConnection,
            "SessionShop": SessionShop,
        },
        exception_handlers=EXCEPTION_HANDLERS,
        # Outermost first: a refused request still gets its request id, its log line and its count.
        middleware=[
            RequestContextMiddleware(),
            *(
                [AdmissionMiddleware(settings.api_max_in_flight, settings.api_admission_wait_seconds)]
                if settings.api_max_in_flight
                else []
            ),
        ],
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="SMS lab reference service",
            version="0.1.0",
            path="/schema",
            description="The SMS-campaign backend's merchant API. Errors are RFC 9457 problem details.",
        ),
        logging_config=None,
    )
    allow_every_method_in_options(app)
    resolve_dependencies_one_by_one(app)
    if settings.api_max_in_flight:
        export_routes(app)
    return app


def app_from_environment() -> Litestar:
    """Factory for uvicorn's worker processes (`smslab api --workers N`): settings from SMSLAB_*."""
    from service.settings import load_settings

    settings = load_settings()
    logs.configure_for(settings, "api")
    return create_app(settings, os.environ["SMSLAB_REDIS_URL"])

"""The Litestar application: routes, dependencies, error rendering, and the runtime's life cycle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from service import logs
from service.billing.api import BillingController
from service.campaigns.api import CampaignsController
from service.contacts.api import ContactsController
from service.health import HealthController
from service.http import EXCEPTION_HANDLERS, RequestContextMiddleware, provide_session, provide_shop
from service.runtime import Runtime
from service.settings import Settings
from service.wallet.api import WalletController
from service.webhooks.api import WebhooksController


def create_app(settings: Settings, redis_url: str) -> Litestar:
    runtime = Runtime.build(settings, redis_url, role="api")

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.runtime = runtime
        await runtime.start()
        logs.get_logger(__name__).info("api_started", queue=settings.queue_name)
        try:
            yield
        finally:
            await runtime.close()

    return Litestar(
        route_handlers=[
            HealthController,
            ContactsController,
            CampaignsController,
            WalletController,
            BillingController,
            WebhooksController,
        ],
        dependencies={"db_session": Provide(provide_session), "shop": Provide(provide_shop)},
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[RequestContextMiddleware()],
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="SMS lab reference service",
            version="0.1.0",
            path="/schema",
            description="The SMS-campaign backend's merchant API. Errors are RFC 9457 problem details.",
        ),
        logging_config=None,
    )


def app_from_environment() -> Litestar:
    """Factory for uvicorn's worker processes (`smslab api --workers N`): settings from SMSLAB_*."""
    import os

    from service.settings import load_settings

    settings = load_settings()
    logs.configure_for(settings, "api")
    return create_app(settings, os.environ["SMSLAB_REDIS_URL"])

"""What a process of the service holds while it runs: settings, the database, the queue, the provider client.

The API and the workers build one `Runtime` at start-up and close it at shutdown; domain code receives
only the pieces it needs (a session, the settings, a client), never the runtime itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from saq.queue.redis import RedisQueue
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from stripe import HTTPXClient, StripeClient

from service import failpoints, logs
from service.billing.checkout import create_stripe_client, stripe_http_client
from service.db.session import create_engine, create_sessionmaker
from service.queue import create_queue
from service.sending.mitto import MittoClient
from service.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    redis_url: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    queue: RedisQueue
    mitto: MittoClient
    stripe: StripeClient
    stripe_http: HTTPXClient

    @classmethod
    def build(cls, settings: Settings, redis_url: str, role: str) -> Runtime:
        failpoints.configure(
            settings.failpoints, settings.failpoint_seed, failpoints.process_stream(settings.failpoint_stream)
        )
        logs.register_secrets(
            [
                settings.mitto_api_key,
                settings.mitto_dlr_token,
                settings.shopify_api_secret,
                settings.shopify_api_key,
                settings.stripe_secret_key,
                *settings.stripe_webhook_secret,
            ]
        )
        engine = create_engine(settings, role)
        sessions = create_sessionmaker(engine)
        stripe_http = stripe_http_client()
        return cls(
            settings=settings,
            redis_url=redis_url,
            engine=engine,
            sessions=sessions,
            queue=create_queue(settings, redis_url),
            mitto=MittoClient(settings),
            stripe=create_stripe_client(settings, stripe_http),
            stripe_http=stripe_http,
        )

    async def start(self) -> None:
        await self.queue.connect()

    async def close(self) -> None:
        await self.mitto.aclose()
        await self.stripe_http.close_async()  # type: ignore[no-untyped-call]
        try:
            await self.queue.disconnect()
        except Exception:  # noqa: BLE001 - shutting down; Redis may already be gone
            logs.get_logger(__name__).warning("queue_disconnect_failed")
        await self.engine.dispose()

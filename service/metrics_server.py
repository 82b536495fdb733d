"""`/metrics` and `/health*` on a port of their own (`SMSLAB_METRICS_PORT`), as operators bind them to an
internal interface away from the merchants' traffic. Same process, same event loop, same dependencies."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from litestar import Litestar
from litestar.di import Provide

from service.health import HealthController
from service.http import EXCEPTION_HANDLERS
from service.metrics_api import MetricsController
from service.settings import Settings


class _Nested(uvicorn.Server):
    """A second server inside the API's process: the API's own server handles the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class MetricsServer:
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 5)


async def serve_metrics_apart(settings: Settings, dependencies: dict[str, Provide]) -> MetricsServer | None:
    if not settings.metrics_port:
        return None
    app = Litestar(
        route_handlers=[HealthController, MetricsController],
        dependencies=dependencies,
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=None,
        logging_config=None,
    )
    config = uvicorn.Config(
        app, host=settings.metrics_host, port=settings.metrics_port, log_config=None, access_log=False
    )
    server = _Nested(config)
    task = asyncio.create_task(server.serve())
    return MetricsServer(server, task)

"""The API and workers as real processes, and an HTTP client that acts as a merchant's browser."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from chaos.processes import ManagedProcess, smslab_argv
from service.auth import issue_session_token
from service.embedded_redis import free_port
from service.settings import Settings, settings_as_env


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = settings_as_env(settings)
    env.update(extra)
    return env


def start_api(settings: Settings, log_dir: Path, port: int | None = None, **extra_env: str) -> ManagedProcess:
    port = port or free_port()
    process = ManagedProcess(
        "api",
        smslab_argv("api", "--port", str(port)),
        log_dir / "api.log",
        service_env(settings, **extra_env),
        ready_url=f"http://127.0.0.1:{port}/health",
    )
    process.start()
    process.wait_ready()
    return process


def start_worker(settings: Settings, log_dir: Path, name: str = "worker", **extra_env: str) -> ManagedProcess:
    process = ManagedProcess(
        name,
        smslab_argv("worker", "--concurrency", "4"),
        log_dir / f"{name}.log",
        service_env(settings, **extra_env),
    )
    process.start()
    process.wait_ready()
    return process


@dataclass
class Api:
    settings: Settings
    process: ManagedProcess
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        assert self.process.ready_url
        return self.process.ready_url.removesuffix("/health")

    def token(self, shop: str) -> str:
        return issue_session_token(self.settings, shop)

    def anonymous(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(base_url=self.base_url, timeout=30)
        self.clients.append(client)
        return client

    def as_shop(self, shop: str = "alpha.myshopify.com") -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            base_url=self.base_url, timeout=30, headers={"Authorization": f"Bearer {self.token(shop)}"}
        )
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


def problem(response: httpx.Response) -> dict[str, Any]:
    """The problem-details body of an error response (and a check that it is one)."""
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == response.status_code
    return body

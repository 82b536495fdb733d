"""The API and workers as real processes, and an HTTP client that acts as a merchant's browser."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from chaos.processes import ManagedProcess, service_argv
from service.auth import issue_session_token
from service.embedded_redis import free_port
from service.settings import Settings, settings_as_env


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = settings_as_env(settings)
    env.update(extra)
    return env


def start_api(
    settings: Settings, log_dir: Path, port: int | None = None, workers: int = 1, **extra_env: str
) -> ManagedProcess:
    port = port or free_port()
    process = ManagedProcess(
        "api",
        service_argv("api", "--port", str(port), "--workers", str(workers)),
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
        service_argv("worker", "--concurrency", "4"),
        log_dir / f"{name}.log",
        service_env(settings, **extra_env),
    )
    process.start()
    process.wait_ready()
    return process


class OpenApiPromise:
    """The API's OpenAPI (`/schema/openapi.json`) as a promise every test holds it to: each answer a test
    sees must have its status documented for its route. So the schema lists every status the tests
    observe, and a route that starts answering something new fails the test that saw it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.routes: list[tuple[re.Pattern[str], str, dict[str, Any]]] = []
        for template, operations in document["paths"].items():
            pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template.rstrip("/")))
            self.routes.append((re.compile(f"^{pattern}/?$"), template, operations))

    def check(self, method: str, path: str, status: int) -> None:
        for pattern, template, operations in self.routes:
            if pattern.match(path) and method.lower() in operations:
                documented = set(operations[method.lower()]["responses"])
                assert str(status) in documented, (
                    f"{method} {template} answered {status}, which its OpenAPI does not document "
                    f"(documented: {', '.join(sorted(documented))})"
                )
                return
        # Not a route of the API (a test probing an unknown path or method): nothing was promised.


@dataclass
class Api:
    settings: Settings
    process: ManagedProcess
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    promise: OpenApiPromise | None = None

    async def _hold_to_the_schema(self, response: httpx.Response) -> None:
        if response.request.url.path.startswith("/schema"):
            return
        if self.promise is None:
            async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as client:
                document = (await client.get("/schema/openapi.json")).raise_for_status().json()
            self.promise = OpenApiPromise(document)
        self.promise.check(response.request.method, response.request.url.path, response.status_code)

    def _client(self, **kwargs: Any) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            base_url=self.base_url, timeout=30, event_hooks={"response": [self._hold_to_the_schema]}, **kwargs
        )
        self.clients.append(client)
        return client

    @property
    def base_url(self) -> str:
        assert self.process.ready_url
        return self.process.ready_url.removesuffix("/health")

    def token(self, shop: str) -> str:
        return issue_session_token(self.settings, shop)

    def _fresh_token(self, shop: str) -> Any:
        """An httpx auth flow that puts a fresh session token on every request (tokens live a minute)."""
        settings = self.settings

        def authorize(request: httpx.Request) -> httpx.Request:
            request.headers["Authorization"] = f"Bearer {issue_session_token(settings, shop)}"
            return request

        return authorize

    def anonymous(self) -> httpx.AsyncClient:
        return self._client()

    def as_shop(self, shop: str = "alpha.myshopify.com") -> httpx.AsyncClient:
        return self._client(auth=self._fresh_token(shop))

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


def problem(response: httpx.Response) -> dict[str, Any]:
    """The problem-details body of an error response (and a check that it is one)."""
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == response.status_code
    return body

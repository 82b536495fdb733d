"""Fixtures: every integration test runs on SQLite and PostgreSQL, with real Redis and the real simulator."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from service import failpoints
from service.db import migrate
from service.embedded_redis import free_port
from service.rate_limits import UNREACHABLE_LIMITS
from service.settings import Settings, validate
from tests.support.api import Api, start_api
from tests.support.infra import (
    POSTGRES_URL,
    RedisForTests,
    SimulatorProcess,
    create_schema,
    drop_schema,
    postgres_or_skip,
)
from tests.support.lab import Lab

BACKENDS = ["sqlite", "postgresql"]
# Tests of other things send bursts no merchant would (ten imports in a row): budgets they never reach.
# Tests of the limits set their own (tests/test_rate_limits.py).
UNREACHED_LIMITS = UNREACHABLE_LIMITS


@pytest.fixture(scope="session")
def redis_for_tests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisForTests]:
    redis = RedisForTests(tmp_path_factory.mktemp("redis"))
    yield redis
    redis.close()


@pytest.fixture
def queue_name(redis_for_tests: RedisForTests) -> Iterator[str]:
    name = f"smslab-test-{uuid.uuid4().hex[:10]}"
    yield name
    redis_for_tests.delete_queue(name)


@pytest.fixture(params=BACKENDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, str | None]]:
    """A fresh, migrated database: {"url": ..., "schema": ...}."""
    if request.param == "sqlite":
        yield {"url": f"sqlite+aiosqlite:///{tmp_path / 'service.db'}", "schema": None}
        return
    await postgres_or_skip()
    schema = await create_schema()
    try:
        yield {"url": POSTGRES_URL, "schema": schema}
    finally:
        await drop_schema(schema)


@pytest.fixture
def simulator(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SimulatorProcess]:
    """The fakes; with `@pytest.mark.webhooks_to_api` their webhooks go to the test's API process."""
    marker = request.node.get_closest_marker("webhooks_to_api")
    process = SimulatorProcess(tmp_path / "simulator")
    if marker is not None:
        process.target_port = free_port()
        process.dlr_final = marker.kwargs.get("dlr_final", process.dlr_final)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def settings(
    database: dict[str, str | None],
    simulator: SimulatorProcess,
    redis_for_tests: RedisForTests,
    queue_name: str,
    tmp_path: Path,
) -> Settings:
    return validate(
        Settings(
            var_dir=tmp_path / "var",
            database_url=str(database["url"]),
            database_schema=database["schema"],
            redis_url=redis_for_tests.url,
            queue_name=queue_name,
            mitto_base_url=simulator.mitto_url,
            stripe_api_base=f"{simulator.base_url}/stripe",
            mitto_timeout_seconds=2.0,
            send_lease_seconds=10.0,
            reconcile_interval_seconds=1.0,
            batch_size=50,
            log_format="json",
            rate_limits=UNREACHED_LIMITS,
        )
    )


@pytest.fixture
async def lab(
    settings: Settings, simulator: SimulatorProcess, redis_for_tests: RedisForTests, tmp_path: Path
) -> AsyncIterator[Lab]:
    await migrate.upgrade_async(settings)
    lab = Lab.build(settings, simulator, redis_for_tests.url, tmp_path)
    try:
        yield lab
    finally:
        await lab.close()


@pytest.fixture(autouse=True)
def _disarm_failpoints() -> Iterator[None]:
    yield
    failpoints.configure("")


@pytest.fixture
async def api(lab: Lab, tmp_path: Path) -> AsyncIterator[Api]:
    """The API as its own process, on the lab's database, Redis and simulator."""
    process = start_api(lab.settings, tmp_path / "logs", port=lab.simulator.target_port)
    client = Api(lab.settings, process)
    try:
        yield client
    finally:
        await client.close()
        process.stop()

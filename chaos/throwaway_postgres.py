"""`--database testcontainers`: a throwaway PostgreSQL in a Docker container, for users who have Docker.

This machine has no Docker engine, so the lab and its tests never depend on it: they use a PostgreSQL
server given by URL. Where a user has Docker, `smslab run --database testcontainers` (and the test suite
with `SMSLAB_TEST_POSTGRES_URL=testcontainers`) start a fresh `postgres:16` container, use it, and remove
it afterwards. Without Docker (or without the `testcontainers` package) they stop with one line that says
which, before anything else starts. The Docker path is documented as untested here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

WORD = "testcontainers"
IMAGE = "postgres:16"


class NoDocker(RuntimeError):
    """Why a throwaway PostgreSQL cannot be had here; `str()` is the one line to show."""


def _container_class() -> Any:
    try:
        from testcontainers.postgres import PostgresContainer
    except ImportError:
        raise NoDocker(
            "--database testcontainers needs the testcontainers package: "
            "pip install 'testcontainers[postgres]'"
        ) from None
    return PostgresContainer


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL URL (postgresql://...) valid while the block runs; the container goes afterwards."""
    container_class = _container_class()
    try:
        container = container_class(IMAGE, driver=None)  # talks to Docker already
        container.start()
    except Exception as exc:  # noqa: BLE001 - docker-py raises many kinds; each means "no Docker here"
        raise NoDocker(
            f"--database testcontainers needs a running Docker engine; none answers ({type(exc).__name__}). "
            "Give a PostgreSQL URL instead, e.g. --database postgresql://postgres@127.0.0.1:5432/test"
        ) from None
    try:
        yield str(container.get_connection_url()).replace("postgresql+psycopg2://", "postgresql://")
    finally:
        container.stop()


@contextlib.contextmanager
def database_url(given: str | None) -> Iterator[str | None]:
    """`given` as it is, or, for the word `testcontainers`, a throwaway PostgreSQL's URL."""
    if given != WORD:
        yield given
        return
    with throwaway_postgres() as url:
        yield url

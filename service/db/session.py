"""Engines and sessions for both backends, with each backend's concurrency made explicit.

SQLite: one writer at a time. Every transaction starts with `BEGIN IMMEDIATE`, so a transaction that
reads and then writes never fails half-way on a lock upgrade; WAL lets readers run beside the writer and
`busy_timeout` makes writers queue instead of failing. A transaction declared read-only (`read_only`)
starts with a deferred `BEGIN` instead and never waits for the writer: a page of contacts or a balance
does not queue behind an import (on PostgreSQL it is `READ ONLY`, so a write in it fails loudly).
PostgreSQL: READ COMMITTED, where the pipeline's conditional updates (`... WHERE status = 'pending'`)
are what decide races, not isolation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from service.db.dialect import dialect_name
from service.db.sqlite_driver import one_trip_dbapi
from service.settings import Settings

SQLITE_BUSY_TIMEOUT_SECONDS = 30
SQLITE_POOL_SIZE = 10  # one writer at a time whatever the count; as many as PostgreSQL's old steady pool
READ_ONLY = "smslab_read_only"  # the execution option `read_only` sets (and SQLite's BEGIN reads)


READ_ONLY_OPTIONS = {READ_ONLY: True, "postgresql_readonly": True}


async def read_only(session: AsyncSession) -> None:
    """Declare the transaction just begun read-only; call it before its first statement. (A bare
    connection: `await connection.execution_options(**READ_ONLY_OPTIONS)` before its first statement.)"""
    await session.connection(execution_options=READ_ONLY_OPTIONS)


def no_transaction_options(dialect: str) -> dict[str, Any]:
    """Execution options for reads that need no transaction of their own around them.

    PostgreSQL: AUTOCOMMIT, so no BEGIN and no COMMIT round trip. Under READ COMMITTED every statement of
    a transaction takes its own snapshot anyway, so a read of several statements sees what it would
    have seen inside one; nothing here takes row locks. SQLite: a deferred read transaction (one
    snapshot for all its statements, never behind the writer), since there the BEGIN is a trip to the
    connection's thread, not to a server."""
    if dialect == "postgresql":
        return {"isolation_level": "AUTOCOMMIT"}
    return {READ_ONLY: True}


async def reads_need_no_transaction(session: AsyncSession) -> None:
    """Declare the transaction just begun a plain read (see `no_transaction_options`); call it before its
    first statement. The request path's reads use it; tools that want one snapshot use `read_only`."""
    await session.connection(execution_options=no_transaction_options(dialect_name(session)))


@asynccontextmanager
async def reading(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A pooled connection for Core reads outside any transaction (`no_transaction_options`): what the
    busiest reads of the request path use (the guard's shop lookup, a wallet). An ORM session around the
    same statement cost 180 to 330 microseconds of CPU more (bench/routes.py)."""
    async with engine.connect() as connection:
        await connection.execution_options(**no_transaction_options(engine.dialect.name))
        yield connection


def application_name(settings: Settings, role: str) -> str:
    """How this process shows in pg_stat_activity: `{SMSLAB_DATABASE_APPLICATION_NAME}-{role}`."""
    return f"{settings.database_application_name}-{role}"


def create_engine(settings: Settings, role: str = "service", pool_size: int | None = None) -> AsyncEngine:
    """One process's engine: a fixed pool of `SMSLAB_DATABASE_POOL_SIZE` connections (SQLite:
    `SQLITE_POOL_SIZE`), each opened on first need and then kept. (`pool_size`: a tool's own small pool.)

    No overflow: SQLAlchemy closes an overflow connection as soon as it is returned to a full pool, so
    with requests in flight around the pool's size every burst opened and closed connections (for
    asyncpg a TCP connect, an SSL probe, start-up and type set-up each time). With the rate limiter's
    extra await per request, that churn was most of what the limiter appeared to cost."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(settings.database_url)
    server_settings = {
        "application_name": application_name(settings, role),
        # A backend whose client vanished mid-transaction keeps its row locks until the server notices,
        # which without a reset is never (a SIGKILLed API's batch behind a proxy blocked every later
        # delivery-report batch in the lab). No transaction here waits on anything outside the database,
        # so one idle for this long belongs to a dead client.
        "idle_in_transaction_session_timeout": str(
            round(settings.database_idle_transaction_timeout_seconds * 1000)
        ),
    }
    if settings.database_schema:
        server_settings["search_path"] = settings.database_schema
    return create_async_engine(
        settings.database_url,
        pool_size=pool_size or settings.database_pool_size,
        # A short-lived tool's explicit small pool keeps its overflow (it may hold two at once).
        max_overflow=pool_size or 0,
        # No pre-ping: it costs a round trip per checkout. When the server drops connections (restart,
        # terminated backends), the first statement that fails invalidates the whole pool, that request
        # gets a 503 or its job a retry, and the next checkout connects afresh.
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args={"server_settings": server_settings, "timeout": 10, "command_timeout": 60},
    )


def _sqlite_engine(database_url: str) -> AsyncEngine:
    database = make_url(database_url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        database_url,
        module=one_trip_dbapi(),  # one thread hop per statement (sqlite_driver.py)
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
        pool_size=SQLITE_POOL_SIZE,
        max_overflow=0,  # a new aiosqlite connection is a thread and four PRAGMAs: kept, not churned
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so that BEGIN IMMEDIATE below is the only BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        reading = connection.get_execution_options().get(READ_ONLY)
        connection.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")

    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)

"""Alembic migrations and the SQLAlchemy models describe the same schema, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from service.db import migrate
from service.db.models import Base
from tests.support.lab import Lab


async def test_models_and_migrations_agree(lab: Lab) -> None:
    async with lab.engine.connect() as connection:
        diff = await connection.run_sync(
            lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
            )
        )
    assert diff == []


async def test_upgrade_is_repeatable_and_downgrade_reverses_it(lab: Lab) -> None:
    await migrate.upgrade_async(lab.settings)  # already at head: a no-op
    await migrate.downgrade_async(lab.settings, "base")
    async with lab.engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: sync.dialect.get_table_names(sync))
    assert set(tables) <= {"alembic_version"}
    await migrate.upgrade_async(lab.settings)
    async with lab.engine.connect() as connection:
        revision = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    assert revision == migrate.head_revision()


async def test_a_transaction_left_idle_by_a_vanished_client_is_ended_and_its_locks_freed() -> None:
    """PostgreSQL only (SQLite has no sessions to leave behind): see `service/db/session.py`."""
    import asyncio

    import pytest
    from sqlalchemy.exc import DBAPIError

    from service.db.session import create_engine
    from service.settings import Settings, validate
    from tests.support.infra import POSTGRES_URL, postgres_or_skip

    await postgres_or_skip()
    settings = validate(Settings(database_url=POSTGRES_URL, database_idle_transaction_timeout_seconds=0.5))
    engine = create_engine(settings, "test")
    try:
        async with engine.connect() as vanished, engine.connect() as other:
            await vanished.begin()
            await vanished.execute(text("SELECT pg_advisory_xact_lock(4242)"))
            await other.begin()
            held = (await other.execute(text("SELECT pg_try_advisory_xact_lock(4242)"))).scalar()
            assert held is False
            await other.rollback()
            await asyncio.sleep(1.5)  # the client never speaks again
            await other.begin()
            freed = (await other.execute(text("SELECT pg_try_advisory_xact_lock(4242)"))).scalar()
            assert freed is True
            await other.rollback()
            with pytest.raises(DBAPIError):
                await vanished.execute(text("SELECT 1"))
    finally:
        await engine.dispose()

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

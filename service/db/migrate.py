"""Run Alembic migrations programmatically (`smslab db upgrade`, tests, the lab)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from service.db.session import create_engine
from service.settings import Settings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    config.attributes["settings"] = settings
    return config


async def _ensure_schema(settings: Settings) -> None:
    if not settings.database_schema:
        return
    engine = create_engine(settings.with_overrides(database_schema=None), pool_size=1)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{settings.database_schema}"'))
    finally:
        await engine.dispose()


def head_revision() -> str:
    """The revision `smslab db upgrade` brings a database to."""
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the database to `revision`. Safe to run again: Alembic applies only what is missing."""
    asyncio.run(_ensure_schema(settings))
    command.upgrade(alembic_config(settings), revision)


def check(settings: Settings) -> None:
    """Bring the database to head, then `alembic check`: raises if the models describe anything the
    migrations do not (a model changed without its migration)."""
    upgrade(settings)
    command.check(alembic_config(settings))


def downgrade(settings: Settings, revision: str) -> None:
    """Step the schema back to `revision` (`base` drops every table). Data in dropped tables is lost."""
    command.downgrade(alembic_config(settings), revision)


async def downgrade_async(settings: Settings, revision: str) -> None:
    await asyncio.to_thread(downgrade, settings, revision)


async def upgrade_async(settings: Settings, revision: str = "head") -> None:
    # Alembic's env runs its own event loop, so from async code it runs on a thread of its own.
    await asyncio.to_thread(upgrade, settings, revision)

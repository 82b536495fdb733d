"""The few statements whose spelling differs between SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def dialect_name(session: AsyncSession) -> str:
    bind = session.get_bind()
    return bind.dialect.name


def upsert_insert(session: AsyncSession, model: Any) -> Any:
    """An INSERT that supports ON CONFLICT on either backend (both spell it the same way)."""
    if dialect_name(session) == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


def insert_ignoring_conflicts(session: AsyncSession, model: Any, index_elements: list[str]) -> Any:
    return upsert_insert(session, model).on_conflict_do_nothing(index_elements=index_elements)

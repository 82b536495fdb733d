"""The few statements whose spelling differs between SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

LockableSelect = TypeVar("LockableSelect", bound=Select[Any])


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


def for_update(statement: LockableSelect) -> LockableSelect:
    """`SELECT ... FOR UPDATE` that also refreshes the objects it returns.

    The ORM hands back the object already in the session's identity map, with the attribute values it
    read before the lock was granted; after waiting for another transaction those can be stale (a grant
    already made, a campaign already cancelled). `populate_existing` makes the locked read the one that
    counts. SQLite has no FOR UPDATE (its BEGIN IMMEDIATE already serialises writers) and ignores it.
    """
    return statement.with_for_update().execution_options(populate_existing=True)

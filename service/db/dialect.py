"""The few statements whose spelling differs between SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import BindParameter, Select, Table, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

LockableSelect = TypeVar("LockableSelect", bound=Select[Any])


def dialect_name(session: AsyncSession) -> str:
    bind = session.get_bind()
    return bind.dialect.name


def upsert_insert(session: AsyncSession, model: Any) -> Any:
    """An INSERT that supports ON CONFLICT on either backend (both spell it the same way)."""
    return dialect_insert(dialect_name(session))(model)


def insert_ignoring_conflicts(session: AsyncSession, model: Any, index_elements: list[str]) -> Any:
    return upsert_insert(session, model).on_conflict_do_nothing(index_elements=index_elements)


def dialect_insert(dialect: str) -> Callable[..., Any]:
    """The INSERT construct of a dialect by name, for statements built once per dialect."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def binds(table: Table, prefix: str, *columns: str) -> dict[str, BindParameter[Any]]:
    """`column=bindparam(prefix + column)` with the column's type, for the `.values()` of a statement
    built once; `bound(prefix, column=value, ...)` gives the values under the same names.

    The hot paths build their statements once (a statement object keeps its cache key; building one per
    call and keying it again was a fifth of an enqueue's CPU) and pass values at execution. The prefix
    keeps the names off the table's own: an UPDATE executed with a parameter named after a column of its
    table also SETs that column."""
    names = {column: prefix + column for column in columns}
    clashing = sorted(name for name in names.values() if name in table.c)
    if clashing:
        raise ValueError(f"bind names {clashing} are columns of {table.name}: choose another prefix")
    return {column: bindparam(name, type_=table.c[column].type) for column, name in names.items()}


def bound(prefix: str, **values: Any) -> dict[str, Any]:
    """Execution values for `binds(table, prefix, ...)`: `bound("k_", shop_id=3)` is `{"k_shop_id": 3}`."""
    return {prefix + column: value for column, value in values.items()}


def for_update(statement: LockableSelect) -> LockableSelect:
    """`SELECT ... FOR UPDATE` that also refreshes the objects it returns.

    The ORM hands back the object already in the session's identity map, with the attribute values it
    read before the lock was granted; after waiting for another transaction those can be stale (a grant
    already made, a campaign already cancelled). `populate_existing` makes the locked read the one that
    counts. SQLite has no FOR UPDATE (its BEGIN IMMEDIATE already serialises writers) and ignores it.
    """
    return statement.with_for_update().execution_options(populate_existing=True)

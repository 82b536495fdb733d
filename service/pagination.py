"""Keyset pagination: `?limit=&after=<id>` pages in id order, stable while rows are added."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute


async def keyset_page(
    session: AsyncSession,
    query: Select[Any],
    id_column: InstrumentedAttribute[int],
    limit: int,
    after: int | None,
) -> tuple[list[Any], int | None]:
    """One page and the cursor of the next (None on the last page). Own transaction."""
    query = query.order_by(id_column).limit(limit + 1)
    if after is not None:
        query = query.where(id_column > after)
    async with session.begin():
        rows = list(await session.scalars(query))
    page = rows[:limit]
    next_cursor = int(getattr(page[-1], id_column.key)) if len(rows) > limit else None
    return page, next_cursor

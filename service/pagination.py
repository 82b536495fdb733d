"""Keyset pagination: `?limit=&after=<id>` pages in id order, stable while rows are added.

Every list route takes the same two parameters through one dependency (`provide_page`), so their bounds
and their 400 for a bad value are written once and documented in the OpenAPI of every list route.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from litestar.params import QueryParameter
from sqlalchemy import Row, Select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import InstrumentedAttribute

from service.errors import BadRequest

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
MAX_ID = 2**63 - 1  # ids are BIGINT on PostgreSQL and INTEGER (64-bit) on SQLite
_CURSOR = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True)
class Page:
    """Which page a client asked for: at most `limit` rows with an id greater than `after`."""

    limit: int = DEFAULT_PAGE_SIZE
    after: int | None = None


async def provide_page(
    limit: Annotated[
        int, QueryParameter(ge=1, le=MAX_PAGE_SIZE, description="Rows per page (1 to 1000)")
    ] = DEFAULT_PAGE_SIZE,
    after: Annotated[
        str | None,
        QueryParameter(
            description="The previous page's `next_cursor`; omit for the first",
            # Documented as what it is, an integer with exact bounds; read as text and parsed here, so
            # that `after=null` or `after=1e3` is the 400 it should be (Litestar would take "null").
            schema_extra={"type": "integer", "one_of": None, "minimum": 0, "maximum": MAX_ID},
        ),
    ] = None,
) -> Page:
    if after is None:
        return Page(limit, None)
    if not _CURSOR.fullmatch(after) or int(after) > MAX_ID:
        raise BadRequest(
            f"after must be a whole number from 0 to {MAX_ID}",
            errors=[{"field": "after", "message": "not a cursor"}],
        )
    return Page(limit, int(after))


async def keyset_page(
    connection: AsyncConnection, query: Select[Any], id_column: InstrumentedAttribute[int], page: Page
) -> tuple[list[Row[Any]], int | None]:
    """One page and the cursor of the next (None on the last page), as rows of the query's columns.

    One statement, run as Core on a connection outside any transaction (`db.session.reading`): a page
    is read as the rows stand, and the ORM's objects would only be copied into the answer's structs."""
    query = query.order_by(id_column).limit(page.limit + 1)
    if page.after is not None:
        query = query.where(id_column > page.after)
    rows = list(await connection.execute(query))
    items = rows[: page.limit]
    next_cursor = int(getattr(items[-1], id_column.key)) if len(rows) > page.limit else None
    return items, next_cursor

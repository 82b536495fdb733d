"""Reading a shop's contacts back, page by page, oldest first."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db.models import Contact
from service.pagination import Page, keyset_page


async def list_contacts(
    connection: AsyncConnection, shop_id: int, page: Page
) -> tuple[list[Row[Any]], int | None]:
    return await keyset_page(connection, select(Contact).where(Contact.shop_id == shop_id), Contact.id, page)

"""Reading a shop's contacts back, page by page, oldest first."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import Contact
from service.pagination import Page, keyset_page


async def list_contacts(session: AsyncSession, shop_id: int, page: Page) -> tuple[list[Contact], int | None]:
    return await keyset_page(session, select(Contact).where(Contact.shop_id == shop_id), Contact.id, page)

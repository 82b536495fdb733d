"""HTTP: `POST /api/contacts` (bulk upsert) and `GET /api/contacts` (paginated)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.params import Parameter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.contacts.upsert import upsert_contacts, validate_rows
from service.db.models import Contact, Shop
from service.errors import InvalidInput
from service.http import runtime_of
from service.pagination import keyset_page


class ContactsController(Controller):
    path = "/api/contacts"
    tags = ["contacts"]

    @post("/", status_code=200, summary="Create or update contacts in bulk (all rows or none)")
    async def upsert(
        self, data: dict[str, Any], shop: Shop, db_session: AsyncSession, state: State
    ) -> dict[str, Any]:
        if "contacts" not in data:
            raise InvalidInput(
                'body must be {"contacts": [...]}', errors=[{"field": "contacts", "message": "missing"}]
            )
        rows = validate_rows(data["contacts"], runtime_of(state).settings.default_phone_region)
        result = await upsert_contacts(db_session, shop.id, rows)
        return {
            "received": result.received,
            "upserted": result.upserted,
            "merged_duplicates": result.merged_duplicates,
        }

    @get("/", summary="List contacts, oldest first; pass next_cursor as `after` for the next page")
    async def list_contacts(
        self,
        shop: Shop,
        db_session: AsyncSession,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
        after: Annotated[int | None, Parameter(ge=0)] = None,
    ) -> dict[str, Any]:
        page, next_cursor = await keyset_page(
            db_session, select(Contact).where(Contact.shop_id == shop.id), Contact.id, limit, after
        )
        return {
            "items": [
                {
                    "id": c.id,
                    "phone": c.phone_e164,
                    "email": c.email,
                    "first_name": c.first_name,
                    "sms_consent": c.sms_consent,
                    "updated_at": c.updated_at.isoformat(),
                }
                for c in page
            ],
            "next_cursor": next_cursor,
        }

"""HTTP: `POST /api/contacts` (bulk upsert) and `GET /api/contacts` (paginated)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import anyio.to_thread
import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.contacts.listing import list_contacts
from service.contacts.upsert import (
    MAX_CONTACTS_PER_REQUEST,
    MAX_EMAIL,
    MAX_FIRST_NAME,
    MAX_PHONE_INPUT,
    upsert_contacts,
    validate_rows,
)
from service.db.models import Contact
from service.errors import InvalidInput
from service.http import documented_body, problems
from service.input_rules import BODY_LIMIT_BULK, decode_json
from service.pagination import Page
from service.rate_limits import RouteClass, rate_class
from service.settings import Settings
from service.shops import SessionShop


class ContactRowIn(msgspec.Struct, forbid_unknown_fields=True):
    """A contact to create or update, matched by phone. A field left out keeps its stored value; a field
    sent as null clears it. `phone` may be national (`SMSLAB_DEFAULT_PHONE_REGION`) or E.164."""

    phone: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PHONE_INPUT)]
    email: Annotated[str, msgspec.Meta(max_length=MAX_EMAIL)] | None = None
    first_name: Annotated[str, msgspec.Meta(max_length=MAX_FIRST_NAME)] | None = None
    sms_consent: bool = False


class ContactsIn(msgspec.Struct):
    contacts: Annotated[list[ContactRowIn], msgspec.Meta(min_length=1, max_length=MAX_CONTACTS_PER_REQUEST)]


class UpsertSummary(msgspec.Struct):
    received: int
    upserted: int
    merged_duplicates: int


class ContactView(msgspec.Struct):
    id: int
    phone: str
    email: str | None
    first_name: str | None
    sms_consent: bool
    updated_at: datetime

    @classmethod
    def of(cls, contact: Contact | Row[Any]) -> ContactView:
        return cls(
            contact.id,
            contact.phone_e164,
            contact.email,
            contact.first_name,
            contact.sms_consent,
            contact.updated_at,
        )


class ContactPage(msgspec.Struct):
    items: list[ContactView]
    next_cursor: int | None


INLINE_IMPORT_BYTES = 4096  # about fifty rows: validated on the event loop, without a thread


def _import_rows(body: bytes, default_region: str) -> list[dict[str, Any]]:
    data = decode_json(body)
    if not isinstance(data, dict) or "contacts" not in data:
        raise InvalidInput(
            'body must be {"contacts": [...]}', errors=[{"field": "contacts", "message": "missing"}]
        )
    return validate_rows(data["contacts"], default_region)


class ContactsController(Controller):
    path = "/api/contacts"
    tags = ["contacts"]

    @post(
        "/",
        status_code=200,
        summary="Create or update contacts in bulk (all rows or none)",
        opt=rate_class(RouteClass.IMPORTS),
        responses=problems(
            400, 429, 401, 409, 413, 422, 503, s422="Some rows are invalid: `errors` names row and field"
        ),
        request_max_body_size=BODY_LIMIT_BULK,
        operation_class=documented_body(ContactsIn, "Up to 10,000 contacts, all written or none"),
    )
    async def upsert(
        self,
        request: Request[Any, Any, Any],
        shop: NamedDependency[SessionShop],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> UpsertSummary:
        body = await request.body()
        # Decoding and validating 10,000 rows is half a second of CPU: in a thread, so the event loop
        # keeps answering every other request meanwhile (I9) instead of stalling behind one import. A
        # small import (a few dozen rows, a millisecond or two) is cheaper here than the thread's hop.
        if len(body) <= INLINE_IMPORT_BYTES:
            rows = _import_rows(body, settings.default_phone_region)
        else:
            rows = await anyio.to_thread.run_sync(_import_rows, body, settings.default_phone_region)
        result = await upsert_contacts(db_session, shop.id, rows)
        return UpsertSummary(result.received, result.upserted, result.merged_duplicates)

    @get(
        "/",
        summary="List contacts, oldest first; pass next_cursor as `after` for the next page",
        opt=rate_class(RouteClass.REPORTS),
        responses=problems(400, 429, 401, 503),
    )
    async def list_contacts(
        self,
        shop: NamedDependency[SessionShop],
        reader: NamedDependency[AsyncConnection],
        page: NamedDependency[Page],
    ) -> ContactPage:
        contacts, next_cursor = await list_contacts(reader, shop.id, page)
        return ContactPage([ContactView.of(c) for c in contacts], next_cursor)

"""Bulk upsert of contacts: every row validated first, then all rows written in one transaction.

A request with one bad row writes nothing and reports every bad row by index, so an import never
half-lands. A field left out of a row keeps its stored value; a field sent as null clears it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service.contacts.phones import InvalidPhone, normalize_phone
from service.db.dialect import upsert_insert
from service.db.models import Contact, utcnow
from service.errors import InvalidInput

MAX_CONTACTS_PER_REQUEST = 10_000
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
OPTIONAL_FIELDS = ("email", "first_name", "sms_consent")
_CHUNK = 1_000  # rows per INSERT: well inside both backends' bind-parameter limits


@dataclass(frozen=True)
class UpsertResult:
    received: int
    upserted: int
    merged_duplicates: int


def validate_rows(rows: Any, default_region: str) -> list[dict[str, Any]]:
    """Normalised rows, or InvalidInput listing every bad row (`row` is the index in the request)."""
    if not isinstance(rows, list):
        raise InvalidInput(
            "'contacts' must be a list", errors=[{"field": "contacts", "message": "not a list"}]
        )
    if not rows:
        raise InvalidInput("'contacts' is empty", errors=[{"field": "contacts", "message": "empty"}])
    if len(rows) > MAX_CONTACTS_PER_REQUEST:
        raise InvalidInput(
            f"at most {MAX_CONTACTS_PER_REQUEST} contacts per request, got {len(rows)}",
            errors=[{"field": "contacts", "message": "too many rows"}],
        )
    errors: list[dict[str, Any]] = []
    clean: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        problems, value = _validate_row(row, default_region)
        errors.extend({"row": index, "field": field, "message": message} for field, message in problems)
        if not problems:
            clean.append(value)
    if errors:
        raise InvalidInput(
            f"{len({e['row'] for e in errors})} of {len(rows)} contacts are invalid", errors=errors
        )
    return clean


def _validate_row(row: Any, default_region: str) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    if not isinstance(row, dict):
        return [("", "must be an object")], {}
    problems: list[tuple[str, str]] = []
    value: dict[str, Any] = {}
    phone = row.get("phone")
    if not isinstance(phone, str):
        problems.append(("phone", "is required and must be a string"))
    else:
        try:
            value["phone_e164"] = normalize_phone(phone, default_region)
        except InvalidPhone as exc:
            problems.append(("phone", str(exc)))
    if "email" in row:
        email = row["email"]
        if email is not None and (not isinstance(email, str) or len(email) > 320 or not EMAIL.match(email)):
            problems.append(("email", "is not an email address"))
        else:
            value["email"] = email.strip().lower() if isinstance(email, str) else None
    if "first_name" in row:
        name = row["first_name"]
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            problems.append(("first_name", "must be a string of at most 200 characters"))
        else:
            value["first_name"] = name
    if "sms_consent" in row:
        if not isinstance(row["sms_consent"], bool):
            problems.append(("sms_consent", "must be true or false"))
        else:
            value["sms_consent"] = row["sms_consent"]
    unknown = set(row) - {"phone", *OPTIONAL_FIELDS}
    problems.extend((field, "is not a contact field") for field in sorted(unknown))
    return problems, value


async def upsert_contacts(session: AsyncSession, shop_id: int, rows: list[dict[str, Any]]) -> UpsertResult:
    """Write validated rows (own transaction). Duplicate phones in one request: the last row wins."""
    by_phone: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_phone[row["phone_e164"]] = {**by_phone.get(row["phone_e164"], {}), **row}
    # Rows that carry the same optional fields share one statement shape.
    groups: dict[frozenset[str], list[dict[str, Any]]] = defaultdict(list)
    for row in by_phone.values():
        groups[frozenset(f for f in OPTIONAL_FIELDS if f in row)].append(row)
    now = utcnow()
    async with session.begin():
        for present, group in groups.items():
            for start in range(0, len(group), _CHUNK):
                values = [
                    {
                        "shop_id": shop_id,
                        "phone_e164": row["phone_e164"],
                        "email": row.get("email"),
                        "first_name": row.get("first_name"),
                        "sms_consent": row.get("sms_consent", False),
                        "created_at": now,
                        "updated_at": now,
                    }
                    for row in group[start : start + _CHUNK]
                ]
                statement = upsert_insert(session, Contact).values(values)
                updates = {field: statement.excluded[field] for field in present}
                updates["updated_at"] = statement.excluded.updated_at
                await session.execute(
                    statement.on_conflict_do_update(index_elements=["shop_id", "phone_e164"], set_=updates)
                )
    return UpsertResult(
        received=len(rows), upserted=len(by_phone), merged_duplicates=len(rows) - len(by_phone)
    )

"""Bulk upsert of contacts: every row validated first, then all rows written in one transaction.

A request with one bad row writes nothing and reports every bad row by index, so an import never
half-lands. A field left out of a row keeps its stored value; a field sent as null clears it.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from service.contacts.phones import InvalidPhone, normalize_phone
from service.db.dialect import dialect_insert, dialect_name
from service.db.models import Contact, utcnow
from service.errors import InvalidInput
from service.input_rules import MAX_FIELD_ERRORS, is_storable_text, refuse_with_errors, text_problem

MAX_CONTACTS_PER_REQUEST = 10_000
MAX_PHONE_INPUT = 32  # as typed, before normalising to E.164
MAX_EMAIL = 320  # after normalising; the column's width
MAX_FIRST_NAME = 200
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
OPTIONAL_FIELDS = ("email", "first_name", "sms_consent")
KNOWN_FIELDS = frozenset({"phone", *OPTIONAL_FIELDS})


@dataclass(frozen=True)
class UpsertResult:
    received: int
    upserted: int
    merged_duplicates: int


def validate_rows(rows: Any, default_region: str) -> list[dict[str, Any]]:
    """Normalised rows, or InvalidInput listing the bad rows (`row` is the index in the request).

    The list is capped (`input_rules.MAX_FIELD_ERRORS`, then a count), and a row's unknown keys are one
    problem however many there are: a hostile request cannot make the answer larger than itself."""
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
    bad_rows = 0
    clean: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        problems, value = _validate_row(row, default_region)
        if problems:
            bad_rows += 1
            if len(errors) <= MAX_FIELD_ERRORS:
                errors.extend({"row": index, "field": f, "message": m} for f, m in problems)
        else:
            clean.append(value)
    if errors:
        raise refuse_with_errors(f"{bad_rows} of {len(rows)} contacts are invalid", errors)
    return clean


def _validate_row(row: Any, default_region: str) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    if not isinstance(row, dict):
        return [("", "must be an object")], {}
    problems: list[tuple[str, str]] = []
    value: dict[str, Any] = {}
    phone = row.get("phone")
    if (problem := text_problem(phone, MAX_PHONE_INPUT)) is not None:
        problems.append(("phone", "is required and " + problem if phone is None else problem))
    else:
        try:
            value["phone_e164"] = normalize_phone(str(phone), default_region)
        except InvalidPhone as exc:
            problems.append(("phone", str(exc)))
    if "email" in row:
        email = row["email"]
        normalised = email.strip().lower() if isinstance(email, str) else email
        if email is not None and (not is_storable_text(normalised, MAX_EMAIL) or not EMAIL.match(normalised)):
            problems.append(("email", "is not an email address"))
        else:
            value["email"] = normalised
    if "first_name" in row:
        name = row["first_name"]
        if name is not None and not is_storable_text(name, MAX_FIRST_NAME):
            problems.append(("first_name", f"must be text of at most {MAX_FIRST_NAME} characters"))
        else:
            value["first_name"] = name
    if "sms_consent" in row:
        if not isinstance(row["sms_consent"], bool):
            problems.append(("sms_consent", "must be true or false"))
        else:
            value["sms_consent"] = row["sms_consent"]
    unknown = [key for key in row if key not in KNOWN_FIELDS]
    if unknown:
        # One problem for the row, naming the first: never one per key (a row can carry 50,000).
        first = unknown[0] if is_storable_text(unknown[0], 64) else "(unprintable)"
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        problems.append((first, f"is not a contact field{more}"))
    return problems, value


_CONTACTS = cast(Table, Contact.__table__)


@functools.cache
def _upsert_statement(dialect: str, present: frozenset[str]) -> Any:
    """INSERT ... ON CONFLICT (shop, phone) DO UPDATE of the fields the rows carry: built once per
    dialect and set of fields (eight at most), on the table, so an import never compiles one again."""
    statement = dialect_insert(dialect)(_CONTACTS)
    updates = {field: statement.excluded[field] for field in sorted(present)}
    updates["updated_at"] = statement.excluded.updated_at
    return statement.on_conflict_do_update(index_elements=["shop_id", "phone_e164"], set_=updates)


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
                for row in group
            ]
            # One statement, executed for every row (the driver's executemany): a 10,000-row import
            # holds SQLite's write lock a tenth as long as multi-row VALUES did, whose compiling was most
            # of the cost (bench/import_contacts.py).
            await session.execute(_upsert_statement(dialect_name(session), present), values)
    return UpsertResult(
        received=len(rows), upserted=len(by_phone), merged_duplicates=len(rows) - len(by_phone)
    )

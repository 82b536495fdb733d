"""What untrusted input may be: the bounds every body, path, query and header value is held to.

Hostile input must never cost more than it should, nor reach the database in a shape the database
refuses (which would surface as a 500, or worse, a 503 that no retry can ever fix). So every value from
outside is checked here, the same way on both backends, before anything is written:
- a JSON body is decoded once, here: malformed or nested deeper than `MAX_JSON_DEPTH` is a 400;
- text may not hold NUL or unpaired surrogates (PostgreSQL refuses both), and has a length bound;
- integers that are stored are within their column's range (64-bit ids, 32-bit provider codes);
- bodies are bounded per route (`BODY_LIMIT_*`, Litestar's `request_max_body_size`) and refused with a
  413 before they are read past the bound.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from service.errors import BadRequest, InvalidInput

MAX_JSON_DEPTH = 32
MAX_INT64 = 2**63 - 1
MAX_INT32 = 2**31 - 1
MIN_INT32 = -(2**31)
BODY_LIMIT_DEFAULT = 64 * 1024  # every route but the bulk import
BODY_LIMIT_BULK = 4 * 1024 * 1024  # 10,000 contacts with every field filled in
MAX_FIELD_ERRORS = 100  # a refused request lists at most this many problems, then counts the rest

_DECODER = msgspec.json.Decoder()


class NestedTooDeep(BadRequest):
    slug = "too-deeply-nested"
    title = "The JSON body is nested too deeply"


def decode_json(raw: bytes, what: str = "request body") -> Any:
    """The body's JSON value; a 400 problem if it is not JSON or is nested deeper than MAX_JSON_DEPTH."""
    try:
        value = _DECODER.decode(raw)
    except msgspec.DecodeError:
        raise BadRequest(f"the {what} is not JSON") from None
    except RecursionError:
        raise NestedTooDeep(f"the {what} is nested more than {MAX_JSON_DEPTH} levels deep") from None
    if depth_exceeds(value, MAX_JSON_DEPTH):
        raise NestedTooDeep(f"the {what} is nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def depth_exceeds(value: Any, limit: int) -> bool:
    """True if containers nest deeper than `limit` (iteratively: a deep value cannot exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def text_problem(value: Any, max_length: int, *, min_length: int = 1) -> str | None:
    """Why this value cannot be stored as text, or None. (Not a string; too short or long; NUL or an
    unpaired surrogate, which PostgreSQL refuses and SQLite would keep.)"""
    if not isinstance(value, str):
        return "must be a string"
    if not min_length <= len(value) <= max_length:
        return f"must be {min_length} to {max_length} characters"
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text"
    return None


def is_storable_text(value: Any, max_length: int) -> bool:
    return text_problem(value, max_length, min_length=0) is None


def in_int_range(value: Any, low: int, high: int) -> bool:
    """An integer (not a bool) within [low, high]."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def refuse_with_errors(detail: str, errors: list[dict[str, Any]]) -> InvalidInput:
    """A 422 listing at most MAX_FIELD_ERRORS problems, and how many more there were."""
    extra: dict[str, Any] = {"errors": errors[:MAX_FIELD_ERRORS]}
    if len(errors) > MAX_FIELD_ERRORS:
        extra["errors_not_listed"] = len(errors) - MAX_FIELD_ERRORS
    return InvalidInput(detail, **extra)


MAX_IDEMPOTENCY_KEY = 255
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
# How the OpenAPI documents the header: the same rule. Litestar does not enforce it; `idempotency_key`
# does, with the 422 problem clients of the enqueue have always had.
IDEMPOTENCY_KEY_SCHEMA = {
    "minLength": 1,
    "maxLength": MAX_IDEMPOTENCY_KEY,
    "pattern": _IDEMPOTENCY_KEY.pattern,
}


def idempotency_key(key: str) -> str:
    """A client's `Idempotency-Key`, checked the same way on every route that takes one (422 if bad):
    1 to 255 printable ASCII characters, no spaces."""
    if not _IDEMPOTENCY_KEY.match(key):
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters, no spaces",
            errors=[{"field": "Idempotency-Key", "message": "invalid"}],
        )
    return key

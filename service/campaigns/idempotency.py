"""Idempotency-Key for the enqueue endpoint (safeguard 1), after Stripe and Brandur Leach's key table.

Phase 1 (own transaction): claim the key by inserting it with a fingerprint of the request and a lock
time. A concurrent request with the same key sees the row: same fingerprint and still locked -> 409;
other fingerprint -> 422; finished -> the stored response, replayed byte for byte.
Phase 2 is the enqueue transaction itself, which stores the response in the same commit as its effects.
A request that ran and was refused (402 not enough credits, 409 no longer a draft, 422 no recipients) has
its refusal stored instead, before it is answered: a retry, or a duplicate sent at the same moment, gets
that same refusal, never a 202 (Stripe's rule; to try again after fixing the cause, use a new key).
Refusals before the request ran (a bad key, 404, 422 key reused, 409 in flight) store nothing. A request
that crashed between the phases leaves a lock that expires after `enqueue_lock_timeout_seconds`; the
next request with the key then takes it over.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.dialect import binds, bound, dialect_insert, dialect_name, for_update
from service.db.models import EnqueueRequest, utcnow
from service.errors import IdempotencyKeyInFlight, IdempotencyKeyReused
from service.settings import Settings


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: dict[str, Any]


def fingerprint(campaign_id: int, body: Any) -> str:
    canonical = json.dumps({"campaign_id": campaign_id, "body": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


_KEYS = cast(Table, EnqueueRequest.__table__)


_CLAIMED = (
    "shop_id", "idempotency_key", "campaign_id", "fingerprint", "locked_at", "created_at", "expires_at"
)  # fmt: skip


@functools.cache
def _claim_statement(dialect: str) -> Any:
    """The key's row, inserted unless it exists: built once per dialect (every keyed enqueue runs it)."""
    return (
        dialect_insert(dialect)(_KEYS)
        .values(binds(_KEYS, "k_", *_CLAIMED))
        .on_conflict_do_nothing(index_elements=["shop_id", "idempotency_key"])
        .returning(_KEYS.c.id)
    )


async def claim_key(
    session: AsyncSession, settings: Settings, *, shop_id: int, key: str, campaign_id: int, fingerprint: str
) -> StoredResponse | None:
    """Hold the key for this request (None), or return the response to replay. Caller's transaction,
    which commits the claim before the enqueue's own transaction begins (a duplicate then sees it)."""
    now = utcnow()
    expires_at = now + timedelta(seconds=settings.enqueue_key_ttl_seconds)
    inserted = await session.scalar(
        _claim_statement(dialect_name(session)),
        bound(
            "k_",
            shop_id=shop_id,
            idempotency_key=key,
            campaign_id=campaign_id,
            fingerprint=fingerprint,
            locked_at=now,
            created_at=now,
            expires_at=expires_at,
        ),
    )
    if inserted is not None:
        return None
    existing = await session.scalar(
        for_update(
            select(EnqueueRequest).where(
                EnqueueRequest.shop_id == shop_id, EnqueueRequest.idempotency_key == key
            )
        )
    )
    if existing is None:  # released between our insert and select; the client may simply retry
        raise IdempotencyKeyInFlight("the key was just released; retry the request")
    if existing.expires_at <= now:
        await session.execute(
            update(EnqueueRequest)
            .where(EnqueueRequest.id == existing.id)
            .values(
                campaign_id=campaign_id,
                fingerprint=fingerprint,
                locked_at=now,
                response_status=None,
                response_body=None,
                created_at=now,
                expires_at=expires_at,
            )
        )
        return None
    if existing.fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was first used for a different request",
            campaign_id=existing.campaign_id,
        )
    if existing.response_status is not None and existing.response_body is not None:
        return StoredResponse(existing.response_status, existing.response_body)
    lock_age = (now - existing.locked_at).total_seconds() if existing.locked_at else None
    if lock_age is not None and lock_age < settings.enqueue_lock_timeout_seconds:
        raise IdempotencyKeyInFlight(
            "a request with this Idempotency-Key is in progress",
            headers={"Retry-After": str(max(1, int(settings.enqueue_lock_timeout_seconds - lock_age)))},
        )
    # The request that held the key died without finishing: take the key over, exactly once.
    taken = await session.execute(
        update(EnqueueRequest)
        .where(EnqueueRequest.id == existing.id, EnqueueRequest.locked_at == existing.locked_at)
        .values(locked_at=now)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        raise IdempotencyKeyInFlight("a request with this Idempotency-Key is in progress")
    return None


_STORE_RESPONSE = (
    update(_KEYS)
    .where(_KEYS.c.shop_id == bindparam("k_shop"), _KEYS.c.idempotency_key == bindparam("k_key"))
    .values(locked_at=None, **binds(_KEYS, "k_", "response_status", "response_body"))
)


async def store_response(
    session: AsyncSession, *, shop_id: int, key: str, status: int, body: dict[str, Any]
) -> None:
    """Record the outcome in the caller's transaction, i.e. in the same commit as the effects."""
    await session.execute(
        _STORE_RESPONSE,
        {"k_shop": shop_id, "k_key": key, **bound("k_", response_status=status, response_body=body)},
    )


async def store_refusal(
    session: AsyncSession, *, shop_id: int, key: str, status: int, problem: dict[str, Any]
) -> None:
    """Keep a refusal as the key's answer. Own transaction: the refused effects were rolled back."""
    async with session.begin():
        await store_response(session, shop_id=shop_id, key=key, status=status, body=problem)


async def purge_expired(session: AsyncSession) -> int:
    """Drop keys past their 24 h life (reconciler). Caller's transaction."""
    result = await session.execute(delete(EnqueueRequest).where(EnqueueRequest.expires_at <= utcnow()))
    return int(result.rowcount)  # type: ignore[attr-defined]

"""Credit reservations: credits set aside for a campaign at enqueue, consumed by its debits.

A reservation is unique per `(shop, reservation_key)` and the key derives from the campaign, so enqueueing
the same campaign twice cannot reserve twice. The wallet's `reserved` moves in the same transaction as
every reservation change; "no live reservation on a finished campaign" (I4) is kept by `release`.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.dialect import binds, bound, dialect_insert, dialect_name, for_update
from service.db.models import CreditReservation, ReservationStatus, Wallet, utcnow
from service.errors import InsufficientCredits


def reservation_key(campaign_id: int) -> str:
    return f"campaign:{campaign_id}"


_RESERVATIONS = cast(Table, CreditReservation.__table__)
_WALLETS = cast(Table, Wallet.__table__)


@functools.cache
def _reserve_statement(dialect: str) -> Any:
    """The campaign's reservation, inserted unless it exists: built once per dialect (every enqueue)."""
    return (
        dialect_insert(dialect)(_RESERVATIONS)
        .values(
            status=ReservationStatus.ACTIVE.value,
            **binds(
                _RESERVATIONS,
                "r_",
                "shop_id",
                "campaign_id",
                "reservation_key",
                "amount",
                "remaining",
                "expires_at",
                "created_at",
                "updated_at",
            ),
        )
        .on_conflict_do_nothing(index_elements=["shop_id", "reservation_key"])
        .returning(_RESERVATIONS.c.id)
    )


# Conditional update: the check and the reservation are one statement, so two racing campaigns cannot
# both spend the same available credits.
_CREDITS = bindparam("w_credits", type_=_WALLETS.c.reserved.type)
_RESERVE_IF_AVAILABLE = (
    update(_WALLETS)
    .where(_WALLETS.c.shop_id == bindparam("w_shop"), _WALLETS.c.balance - _WALLETS.c.reserved >= _CREDITS)
    .values(reserved=_WALLETS.c.reserved + _CREDITS, **binds(_WALLETS, "w_", "updated_at"))
    .returning(_WALLETS.c.reserved)
)


async def reserve_credits(
    session: AsyncSession, *, shop_id: int, campaign_id: int, credits: int, expires_at: datetime
) -> bool:
    """Set `credits` aside for the campaign, or raise InsufficientCredits. Caller's transaction.

    Returns False (and reserves nothing) if this campaign's reservation already exists.
    """
    now = utcnow()
    inserted = await session.scalar(
        _reserve_statement(dialect_name(session)),
        bound(
            "r_",
            shop_id=shop_id,
            campaign_id=campaign_id,
            reservation_key=reservation_key(campaign_id),
            amount=credits,
            remaining=credits,
            expires_at=expires_at,
            created_at=now,
            updated_at=now,
        ),
    )
    if inserted is None:
        return False
    reserved = await session.scalar(
        _RESERVE_IF_AVAILABLE, {"w_shop": shop_id, "w_credits": credits, **bound("w_", updated_at=now)}
    )
    if reserved is None:
        wallet = await session.scalar(select(Wallet).where(Wallet.shop_id == shop_id))
        available = (wallet.balance - wallet.reserved) if wallet else 0
        raise InsufficientCredits(
            f"this campaign needs {credits} credits and {available} are available",
            needed=credits,
            available=available,
        )
    return True


async def _active_for_update(session: AsyncSession, campaign_id: int) -> CreditReservation | None:
    return await session.scalar(
        for_update(
            select(CreditReservation).where(
                CreditReservation.campaign_id == campaign_id,
                CreditReservation.status == ReservationStatus.ACTIVE,
            )
        )
    )


async def take(session: AsyncSession, *, campaign_id: int, credits: int) -> int:
    """Consume up to `credits` from the campaign's active reservation; returns how many it covered.

    Does not touch the wallet: the caller moves `balance` and `reserved` together with its own change.
    """
    reservation = await _active_for_update(session, campaign_id)
    if reservation is None or reservation.remaining <= 0:
        return 0
    taken = min(credits, reservation.remaining)
    await session.execute(
        update(CreditReservation)
        .where(CreditReservation.id == reservation.id)
        .values(remaining=CreditReservation.remaining - taken, updated_at=utcnow())
    )
    return taken


async def release_part(session: AsyncSession, *, shop_id: int, campaign_id: int, credits: int) -> int:
    """Give back credits of messages that will never be sent (rejected, cancelled). Caller's transaction."""
    if credits <= 0:
        return 0
    taken = await take(session, campaign_id=campaign_id, credits=credits)
    if taken:
        await _unreserve(session, shop_id, taken)
    return taken


async def release(
    session: AsyncSession,
    *,
    shop_id: int,
    campaign_id: int,
    status: ReservationStatus = ReservationStatus.SETTLED,
) -> int:
    """Close the campaign's reservation and give back what is left of it. Caller's transaction."""
    reservation = await _active_for_update(session, campaign_id)
    if reservation is None:
        return 0
    leftover = reservation.remaining
    await session.execute(
        update(CreditReservation)
        .where(CreditReservation.id == reservation.id, CreditReservation.status == ReservationStatus.ACTIVE)
        .values(remaining=0, status=status, updated_at=utcnow())
    )
    if leftover:
        await _unreserve(session, shop_id, leftover)
    return leftover


async def _unreserve(session: AsyncSession, shop_id: int, credits: int) -> None:
    await session.execute(
        update(Wallet)
        .where(Wallet.shop_id == shop_id)
        .values(reserved=Wallet.reserved - credits, updated_at=utcnow())
    )

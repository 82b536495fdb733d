"""Credit reservations: credits set aside for a campaign at enqueue, consumed by its debits.

A reservation is unique per `(shop, reservation_key)` and the key derives from the campaign, so enqueueing
the same campaign twice cannot reserve twice. The wallet's `reserved` moves in the same transaction as
every reservation change; "no live reservation on a finished campaign" (I4) is kept by `release`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.dialect import for_update, insert_ignoring_conflicts
from service.db.models import CreditReservation, ReservationStatus, Wallet, utcnow
from service.errors import InsufficientCredits


def reservation_key(campaign_id: int) -> str:
    return f"campaign:{campaign_id}"


async def reserve_credits(
    session: AsyncSession, *, shop_id: int, campaign_id: int, credits: int, expires_at: datetime
) -> bool:
    """Set `credits` aside for the campaign, or raise InsufficientCredits. Caller's transaction.

    Returns False (and reserves nothing) if this campaign's reservation already exists.
    """
    now = utcnow()
    inserted = await session.scalar(
        insert_ignoring_conflicts(session, CreditReservation, ["shop_id", "reservation_key"])
        .values(
            shop_id=shop_id,
            campaign_id=campaign_id,
            reservation_key=reservation_key(campaign_id),
            amount=credits,
            remaining=credits,
            status=ReservationStatus.ACTIVE,
            expires_at=expires_at,
            created_at=now,
            updated_at=now,
        )
        .returning(CreditReservation.id)
    )
    if inserted is None:
        return False
    # Conditional update: the check and the reservation are one statement, so two racing campaigns
    # cannot both spend the same available credits.
    reserved = await session.scalar(
        update(Wallet)
        .where(Wallet.shop_id == shop_id, Wallet.balance - Wallet.reserved >= credits)
        .values(reserved=Wallet.reserved + credits, updated_at=now)
        .returning(Wallet.reserved)
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

"""The append-only credit ledger and the wallet balance that moves with it.

Invariant I4: a wallet's `balance` equals the sum of its ledger entries. Both change in the same
transaction, and an entry is written at most once per `(shop, idempotency_key)`: a repeated grant,
purchase or debit with the same key changes nothing.

The ledger is the truth; `wallets.balance` and `wallets.reserved` are running totals kept beside it so
that a balance is one row, not a sum. So an entry can never close a gap between the two (it moves both
by the same amount): a wallet that disagrees with its ledger is put back by `recompute_wallet`, and a
credit movement the ledger lacks is recorded by `adjust_credits` (the credit-reconciliation runbook).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.db.dialect import for_update, insert_ignoring_conflicts
from service.db.models import (
    CreditLedgerEntry,
    CreditReservation,
    LedgerKind,
    ReservationStatus,
    Wallet,
    utcnow,
)
from service.pagination import Page, keyset_page
from service.wallet import reservations


async def _insert_entry(
    session: AsyncSession,
    *,
    shop_id: int,
    amount: int,
    kind: LedgerKind,
    idempotency_key: str,
    campaign_id: int | None,
    messages: int,
    note: str | None,
) -> bool:
    inserted = await session.scalar(
        insert_ignoring_conflicts(session, CreditLedgerEntry, ["shop_id", "idempotency_key"])
        .values(
            shop_id=shop_id,
            amount=amount,
            kind=kind,
            idempotency_key=idempotency_key,
            campaign_id=campaign_id,
            messages=messages,
            note=note,
            created_at=utcnow(),
        )
        .returning(CreditLedgerEntry.id)
    )
    return inserted is not None


async def move_wallet(session: AsyncSession, shop_id: int, *, balance: int = 0, reserved: int = 0) -> None:
    await session.execute(
        update(Wallet)
        .where(Wallet.shop_id == shop_id)
        .values(balance=Wallet.balance + balance, reserved=Wallet.reserved + reserved, updated_at=utcnow())
    )


async def append_entry(
    session: AsyncSession,
    *,
    shop_id: int,
    amount: int,
    kind: LedgerKind,
    idempotency_key: str,
    campaign_id: int | None = None,
    messages: int = 0,
    note: str | None = None,
) -> bool:
    """Write one ledger entry and apply it to the wallet; False if the key was already used.

    Runs inside the caller's transaction, so the entry and whatever caused it commit together.
    """
    inserted = await _insert_entry(
        session,
        shop_id=shop_id,
        amount=amount,
        kind=kind,
        idempotency_key=idempotency_key,
        campaign_id=campaign_id,
        messages=messages,
        note=note,
    )
    if inserted:
        await move_wallet(session, shop_id, balance=amount)
    return inserted


async def grant_credits(
    session: AsyncSession, *, shop_id: int, amount: int, idempotency_key: str, note: str | None = None
) -> bool:
    """An operator's adjustment (`smslab credits grant`). Own transaction."""
    if amount < 1:
        raise ValueError("a grant adds at least one credit")
    async with session.begin():
        return await append_entry(
            session,
            shop_id=shop_id,
            amount=amount,
            kind=LedgerKind.ADJUSTMENT,
            idempotency_key=idempotency_key,
            note=note,
        )


CORRECTION_KEY_PREFIX = "correction:"  # an operator's key, kept apart from grants' and the pipeline's
MAX_NOTE = 200  # credit_ledger.note


class AdjustmentRefused(ValueError):
    """An operator's correction that cannot be recorded as asked (the message says why, in one line)."""


@dataclass(frozen=True)
class Adjustment:
    recorded: bool  # False: this key had already recorded this correction; nothing changed now
    amount: int
    balance: int  # the wallet's balance afterwards
    available: int  # balance less reserved, afterwards


async def adjust_credits(
    session: AsyncSession, *, shop_id: int, amount: int, reason: str, idempotency_key: str
) -> Adjustment:
    """An operator's correction (`smslab credits adjust`): one `correction` entry, added or deducted,
    the wallet moved with it. Own transaction.

    Idempotent on the key through the ledger's unique `(shop, idempotency_key)`: repeating a correction
    changes nothing, and the same key with another amount is refused rather than taken as the first. A
    deduction may not leave the shop less than it has reserved (I4: available credits never negative).
    """
    reason = reason.strip()
    if amount == 0:
        raise AdjustmentRefused("an adjustment of 0 changes nothing")
    if not reason or len(reason) > MAX_NOTE:
        raise AdjustmentRefused(f"--reason must say why, in 1 to {MAX_NOTE} characters")
    if not idempotency_key.strip():
        raise AdjustmentRefused("--key must not be empty")
    key = CORRECTION_KEY_PREFIX + idempotency_key
    async with session.begin():
        inserted = await _insert_entry(
            session,
            shop_id=shop_id,
            amount=amount,
            kind=LedgerKind.CORRECTION,
            idempotency_key=key,
            campaign_id=None,
            messages=0,
            note=reason,
        )
        if not inserted:
            earlier = await session.scalar(
                select(CreditLedgerEntry.amount).where(
                    CreditLedgerEntry.shop_id == shop_id, CreditLedgerEntry.idempotency_key == key
                )
            )
            if earlier != amount:
                raise AdjustmentRefused(
                    f"key {idempotency_key!r} already recorded a correction of {earlier}, not {amount}"
                )
            wallet = await wallet_of(session, shop_id)
            return Adjustment(False, amount, wallet.balance, wallet.balance - wallet.reserved)
        # One conditional statement checks and moves, so a deduction racing a reservation cannot both win.
        moved = (
            await session.execute(
                update(Wallet)
                .where(Wallet.shop_id == shop_id, Wallet.balance - Wallet.reserved + amount >= 0)
                .values(balance=Wallet.balance + amount, updated_at=utcnow())
                .returning(Wallet.balance, Wallet.reserved)
            )
        ).first()
        if moved is None:
            wallet = await wallet_of(session, shop_id)
            available = wallet.balance - wallet.reserved
            raise AdjustmentRefused(  # raising rolls the entry back with it
                f"a deduction of {-amount} would leave {available + amount} credits available (balance "
                f"{wallet.balance}, reserved {wallet.reserved}); available credits never go below zero"
            )
        return Adjustment(True, amount, moved.balance, moved.balance - moved.reserved)


@dataclass(frozen=True)
class Recomputed:
    balance_before: int
    balance: int  # = the sum of the shop's ledger entries
    reserved_before: int
    reserved: int  # = the remaining credits of its active reservations

    @property
    def changed(self) -> bool:
        return (self.balance_before, self.reserved_before) != (self.balance, self.reserved)


async def recompute_wallet(session: AsyncSession, *, shop_id: int) -> Recomputed:
    """Put a wallet's running totals back to what they total (`smslab credits recompute`): `balance` to
    the sum of its ledger entries, `reserved` to its active reservations' remaining credits. Writes no
    entry (the ledger already holds the truth; an entry would move the balance with it and keep the gap).
    Own transaction.

    The wallet row is locked first. Everything that writes an entry or changes a reservation moves this
    row in the same transaction, so with the row held no such change can commit unseen between the sums
    and the update: one that committed before is in the sums (READ COMMITTED reads it in the next
    statement), one still open waits for the row and moves the recomputed totals afterwards.
    """
    async with session.begin():
        wallet = await session.scalar(for_update(select(Wallet).where(Wallet.shop_id == shop_id)))
        if wallet is None:
            raise LookupError(f"shop {shop_id} has no wallet")
        before = (wallet.balance, wallet.reserved)
        ledger_sum = int(
            await session.scalar(
                select(func.coalesce(func.sum(CreditLedgerEntry.amount), 0)).where(
                    CreditLedgerEntry.shop_id == shop_id
                )
            )
            or 0
        )
        active = int(
            await session.scalar(
                select(func.coalesce(func.sum(CreditReservation.remaining), 0)).where(
                    CreditReservation.shop_id == shop_id,
                    CreditReservation.status == ReservationStatus.ACTIVE,
                )
            )
            or 0
        )
        if before != (ledger_sum, active):
            await session.execute(
                update(Wallet)
                .where(Wallet.shop_id == shop_id)
                .values(balance=ledger_sum, reserved=active, updated_at=utcnow())
            )
    return Recomputed(before[0], ledger_sum, before[1], active)


async def debit_sent_messages(
    session: AsyncSession,
    *,
    shop_id: int,
    campaign_id: int,
    messages: int,
    credits: int,
    idempotency_key: str,
) -> bool:
    """Charge for messages the provider accepted, out of the campaign's reservation. Caller's transaction."""
    if messages <= 0:
        return False
    # The ledger row goes first: its unique key is what makes a second attempt with the same key a no-op.
    inserted = await _insert_entry(
        session,
        shop_id=shop_id,
        amount=-credits,
        kind=LedgerKind.DEBIT,
        idempotency_key=idempotency_key,
        campaign_id=campaign_id,
        messages=messages,
        note=None,
    )
    if not inserted:
        return False
    from_reservation = await reservations.take(session, campaign_id=campaign_id, credits=credits)
    await move_wallet(session, shop_id, balance=-credits, reserved=-from_reservation)
    return True


_BALANCE = select(Wallet.balance, Wallet.reserved).where(Wallet.shop_id == bindparam("shop_id"))


async def wallet_balance(connection: AsyncConnection, shop_id: int) -> tuple[int, int]:
    """A wallet's balance and reserved credits, as one row stands (the read a merchant polls)."""
    row = (await connection.execute(_BALANCE, {"shop_id": shop_id})).first()
    if row is None:
        raise LookupError(f"shop {shop_id} has no wallet")
    return int(row.balance), int(row.reserved)


async def wallet_of(session: AsyncSession, shop_id: int) -> Wallet:
    wallet = await session.scalar(select(Wallet).where(Wallet.shop_id == shop_id))
    if wallet is None:
        raise LookupError(f"shop {shop_id} has no wallet")
    return wallet


async def ledger_page(
    connection: AsyncConnection, shop_id: int, page: Page
) -> tuple[list[Row[Any]], int | None]:
    """The shop's ledger entries, oldest first."""
    query = select(CreditLedgerEntry).where(CreditLedgerEntry.shop_id == shop_id)
    return await keyset_page(connection, query, CreditLedgerEntry.id, page)

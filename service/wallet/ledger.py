"""The append-only credit ledger and the wallet balance that moves with it.

Invariant I4: a wallet's `balance` equals the sum of its ledger entries. Both change in the same
transaction, and an entry is written at most once per `(shop, idempotency_key)`: a repeated grant,
purchase or debit with the same key changes nothing.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.dialect import insert_ignoring_conflicts
from service.db.models import CreditLedgerEntry, LedgerKind, Wallet, utcnow
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


async def wallet_of(session: AsyncSession, shop_id: int) -> Wallet:
    wallet = await session.scalar(select(Wallet).where(Wallet.shop_id == shop_id))
    if wallet is None:
        raise LookupError(f"shop {shop_id} has no wallet")
    return wallet


async def ledger_page(
    session: AsyncSession, shop_id: int, page: Page
) -> tuple[list[CreditLedgerEntry], int | None]:
    """The shop's ledger entries, oldest first."""
    query = select(CreditLedgerEntry).where(CreditLedgerEntry.shop_id == shop_id)
    return await keyset_page(session, query, CreditLedgerEntry.id, page)

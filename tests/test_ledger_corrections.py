"""An operator's corrections to a wallet, at the domain level, on both databases and while the service
writes to the same wallet.

`recompute_wallet` puts a wallet back to its ledger; it must not lose an entry committed while it runs
(a debit of a send in flight), which a single `UPDATE ... SET balance = (SELECT SUM ...)` would on
PostgreSQL. `adjust_credits` records a correction once per key, even when the operator's retry runs
beside the first attempt, and never takes available credits below zero.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select, update

from service.db.models import CreditLedgerEntry, LedgerKind, Wallet
from service.wallet.ledger import AdjustmentRefused, adjust_credits, append_entry, recompute_wallet
from tests.support.lab import Lab


async def _balance_and_ledger(lab: Lab, shop_id: int) -> tuple[int, int]:
    async with lab.sessions() as session, session.begin():
        balance = await session.scalar(select(Wallet.balance).where(Wallet.shop_id == shop_id))
        ledger = await session.scalar(
            select(func.coalesce(func.sum(CreditLedgerEntry.amount), 0)).where(
                CreditLedgerEntry.shop_id == shop_id
            )
        )
    assert balance is not None
    return int(balance), int(ledger or 0)


async def test_recompute_puts_the_wallet_back_to_its_ledger_and_keeps_an_entry_committed_meanwhile(
    lab: Lab,
) -> None:
    shop_id = await lab.shop(credits=100)
    async with lab.sessions() as session, session.begin():
        await session.execute(  # the bug: the wallet moved without an entry
            update(Wallet).where(Wallet.shop_id == shop_id).values(balance=Wallet.balance - 7)
        )
    assert await _balance_and_ledger(lab, shop_id) == (93, 100)
    async with lab.sessions() as writer, lab.sessions() as operator:
        await writer.begin()
        # A grant in flight: its entry written and the wallet moved, not yet committed (row lock held).
        await append_entry(writer, shop_id=shop_id, amount=5, kind=LedgerKind.ADJUSTMENT, idempotency_key="x")
        recompute = asyncio.create_task(recompute_wallet(operator, shop_id=shop_id))
        await asyncio.sleep(0.5)
        assert not recompute.done(), "the recompute waits for the wallet row"
        await writer.commit()
        done = await recompute
    assert (done.balance_before, done.balance) == (98, 105)
    assert await _balance_and_ledger(lab, shop_id) == (105, 105)
    async with lab.sessions() as session:
        assert not (await recompute_wallet(session, shop_id=shop_id)).changed


async def test_a_correction_retried_beside_itself_is_recorded_once(lab: Lab) -> None:
    shop_id = await lab.shop(credits=100)

    async def correct() -> bool:
        async with lab.sessions() as session:
            done = await adjust_credits(
                session, shop_id=shop_id, amount=-30, reason="double debit", idempotency_key="inc-1"
            )
            return done.recorded

    outcomes = await asyncio.gather(correct(), correct(), correct())
    assert sorted(outcomes) == [False, False, True]
    assert await _balance_and_ledger(lab, shop_id) == (70, 70)


async def test_a_deduction_never_takes_available_credits_below_zero(lab: Lab) -> None:
    shop_id, _ = await lab.sending_campaign(recipients=40, credits=50)  # 40 of the 50 reserved
    async with lab.sessions() as session:
        with pytest.raises(AdjustmentRefused, match="would leave -1 credits available"):
            await adjust_credits(session, shop_id=shop_id, amount=-11, reason="x", idempotency_key="k1")
        done = await adjust_credits(session, shop_id=shop_id, amount=-10, reason="x", idempotency_key="k2")
    assert (done.balance, done.available) == (40, 0)
    assert await _balance_and_ledger(lab, shop_id) == (40, 40)
    async with lab.sessions() as session, session.begin():
        keys = (await session.scalars(select(CreditLedgerEntry.idempotency_key))).all()
    assert "correction:k1" not in keys  # the refused deduction left no entry behind

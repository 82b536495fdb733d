"""Fulfilment: credits granted once per paid session, removed once per refund, never below zero (I5, I4).

Grant: one conditional update moves the billing row to `paid` only if nothing was granted yet, and the
ledger entry is keyed `purchase:{session}`: any number of `checkout.session.completed` and
`async_payment_succeeded` deliveries, in any order or at once, credit the session once.
Refund: each refund (`re_...`) is a row unique by its id and a ledger entry keyed `refund:{re_...}`. Its
credits are the refunded share of the purchase (floor(credits x refund amount / charge amount)). Only what
is available (balance minus reserved) is taken; the rest is recorded as a shortfall and flagged, so the
balance never goes negative. A refund that arrives before its purchase was granted waits on the billing
row and is taken right after the grant.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service import safeguards
from service.db.apply_once import EffectResult, effect_key
from service.db.dialect import for_update, insert_ignoring_conflicts
from service.db.models import BillingRefund, BillingStatus, BillingTransaction, LedgerKind, Wallet, utcnow
from service.settings import Settings
from service.wallet import ledger


@dataclass(frozen=True)
class StripeRefund:
    refund_id: str
    amount_cents: int


async def billing_by_session(session: AsyncSession, session_id: str) -> BillingTransaction | None:
    return await session.scalar(
        for_update(select(BillingTransaction).where(BillingTransaction.provider_ref == session_id))
    )


async def grant_purchase(
    session: AsyncSession, settings: Settings, *, session_id: str, payment_intent: str | None
) -> EffectResult:
    """Credit a paid Checkout Session. Caller's transaction."""
    billing = await billing_by_session(session, session_id)
    if billing is None:
        return EffectResult("unknown_session", flagged=True)
    if safeguards.is_on(settings, safeguards.WEBHOOK_EFFECT_ONCE):
        granted = await session.scalar(
            update(BillingTransaction)
            .where(BillingTransaction.id == billing.id, BillingTransaction.credits_granted == 0)
            .values(
                status=BillingStatus.PAID,
                credits_granted=billing.credits,
                payment_intent=payment_intent or billing.payment_intent,
                paid_at=utcnow(),
                updated_at=utcnow(),
            )
            .returning(BillingTransaction.id)
        )
        if granted is None:
            return EffectResult("already_granted")
    else:
        # Unsafe variant (lab only): every delivery adds the credits.
        await session.execute(
            update(BillingTransaction)
            .where(BillingTransaction.id == billing.id)
            .values(
                status=BillingStatus.PAID,
                credits_granted=BillingTransaction.credits_granted + billing.credits,
                payment_intent=payment_intent or billing.payment_intent,
                paid_at=utcnow(),
            )
        )
    await ledger.append_entry(
        session,
        shop_id=billing.shop_id,
        amount=billing.credits,
        kind=LedgerKind.PURCHASE,
        idempotency_key=effect_key(settings, f"purchase:{session_id}"),
        note=f"stripe {session_id}",
    )
    waiting = list(
        await session.scalars(
            select(BillingRefund).where(
                BillingRefund.billing_id == billing.id, BillingRefund.applied.is_(False)
            )
        )
    )
    flagged = False
    for refund in waiting:
        flagged |= await _take_refund(session, settings, billing, refund)
    return EffectResult("granted", flagged=flagged)


async def mark_payment_failed(session: AsyncSession, *, session_id: str) -> EffectResult:
    billing = await billing_by_session(session, session_id)
    if billing is None:
        return EffectResult("unknown_session", flagged=True)
    failed = await session.scalar(
        update(BillingTransaction)
        .where(BillingTransaction.id == billing.id, BillingTransaction.status == BillingStatus.PENDING)
        .values(status=BillingStatus.FAILED, updated_at=utcnow())
        .returning(BillingTransaction.id)
    )
    return EffectResult("payment_failed" if failed else "ignored_not_pending")


async def apply_refunds(
    session: AsyncSession,
    settings: Settings,
    *,
    billing_id: int,
    charge_amount_cents: int,
    refunds: list[StripeRefund],
    fully_refunded: bool,
) -> EffectResult:
    """Record each refund once and take its credits (now, or once the purchase is granted)."""
    billing = await session.scalar(
        for_update(select(BillingTransaction).where(BillingTransaction.id == billing_id))
    )
    if billing is None:
        return EffectResult("unknown_billing", flagged=True)
    new = 0
    flagged = False
    for stripe_refund in refunds:
        credits = billing.credits * stripe_refund.amount_cents // max(1, charge_amount_cents)
        refund_row = await session.scalar(
            insert_ignoring_conflicts(session, BillingRefund, ["refund_id"])
            .values(
                billing_id=billing.id,
                refund_id=effect_key(settings, stripe_refund.refund_id),
                amount_cents=stripe_refund.amount_cents,
                credits=credits,
                deducted=0,
                shortfall=0,
                applied=False,
                created_at=utcnow(),
            )
            .returning(BillingRefund.id)
        )
        if refund_row is None:
            continue  # this refund was taken before
        new += 1
        if billing.credits_granted:
            refund = await session.get(BillingRefund, refund_row)
            assert refund is not None
            flagged |= await _take_refund(session, settings, billing, refund)
    if fully_refunded:
        await session.execute(
            update(BillingTransaction)
            .where(BillingTransaction.id == billing.id, BillingTransaction.status == BillingStatus.PAID)
            .values(status=BillingStatus.REFUNDED, updated_at=utcnow())
        )
    if not new:
        return EffectResult("already_refunded")
    return EffectResult(
        "refunded" if billing.credits_granted else "refund_waits_for_purchase", flagged=flagged
    )


async def _take_refund(
    session: AsyncSession, settings: Settings, billing: BillingTransaction, refund: BillingRefund
) -> bool:
    """Take a refund's credits from what is available; record the rest as a shortfall. True if flagged."""
    wallet = await session.scalar(for_update(select(Wallet).where(Wallet.shop_id == billing.shop_id)))
    available = max(0, wallet.balance - wallet.reserved) if wallet else 0
    taken = min(refund.credits, available)
    shortfall = refund.credits - taken
    if taken:
        await ledger.append_entry(
            session,
            shop_id=billing.shop_id,
            amount=-taken,
            kind=LedgerKind.REFUND,
            idempotency_key=effect_key(settings, f"refund:{refund.refund_id}"),
            note=f"stripe refund of {billing.provider_ref}",
        )
    await session.execute(
        update(BillingRefund)
        .where(BillingRefund.id == refund.id)
        .values(applied=True, deducted=taken, shortfall=shortfall)
    )
    await session.execute(
        update(BillingTransaction)
        .where(BillingTransaction.id == billing.id)
        .values(
            credits_refunded=BillingTransaction.credits_refunded + taken,
            refund_shortfall=BillingTransaction.refund_shortfall + shortfall,
            updated_at=utcnow(),
        )
    )
    return shortfall > 0

"""Enqueue a campaign: draft -> sending, recipient snapshot, credit reservation, stored response.

Safeguard 1 (enqueue_idempotency, I6): the Idempotency-Key table (see `idempotency`) and, independent of
keys, the draft -> sending move as one conditional UPDATE, so two racing enqueues cannot both win.
Safeguard 2 (enqueue_transaction, I4): all four effects and the stored response commit together. The seed
committed them separately; a failure half-way (e.g. credits found short after the recipients were
written) then left a `sending` campaign with recipients and no reservation. Send jobs are queued only
after the commit, with deterministic keys; a crash before they are queued is healed by the reconciler.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service import failpoints, input_rules, safeguards
from service.campaigns import idempotency
from service.campaigns.drafts import get_campaign
from service.db.models import Campaign, CampaignRecipient, CampaignStatus, Contact, RecipientStatus, utcnow
from service.errors import CampaignNotDraft, NoRecipients, ProblemError, replayed_problem
from service.settings import Settings
from service.shops import require_installed
from service.wallet import reservations

ENQUEUE_ACCEPTED = 202


class EnqueueAccepted(msgspec.Struct):
    """The 202 answer, as stored under the Idempotency-Key and replayed to a retry."""

    campaign_id: int
    status: str
    recipient_count: int
    batch_count: int
    segments: int
    reserved_credits: int
    enqueued_at: datetime


@dataclass
class EnqueueOutcome:
    status: int
    body: EnqueueAccepted
    replayed: bool = False
    batches_to_queue: list[int] = field(default_factory=list)


async def enqueue_campaign(
    session: AsyncSession,
    settings: Settings,
    *,
    shop_id: int,
    campaign_id: int,
    idempotency_key: str | None,
    request_body: Any = None,
) -> EnqueueOutcome:
    """Run the enqueue; the caller queues `batches_to_queue` after this returns (i.e. after commit)."""
    keyed = idempotency_key is not None and safeguards.is_on(settings, safeguards.ENQUEUE_IDEMPOTENCY)
    if keyed:
        assert idempotency_key is not None
        key = input_rules.idempotency_key(idempotency_key)
        async with session.begin():
            await get_campaign(session, shop_id, campaign_id)  # 404 before a key is spent on nothing
        stored = await idempotency.claim_key(
            session,
            settings,
            shop_id=shop_id,
            key=key,
            campaign_id=campaign_id,
            fingerprint=idempotency.fingerprint(campaign_id, request_body),
        )
        if stored is not None:
            if stored.status >= 400:
                raise replayed_problem(stored.body)
            return EnqueueOutcome(stored.status, msgspec.convert(stored.body, EnqueueAccepted), replayed=True)
        await failpoints.hit("enqueue.after_key_claimed")
    try:
        outcome = await _enqueue_effects(
            session, settings, shop_id=shop_id, campaign_id=campaign_id, key=key if keyed else None
        )
    except ProblemError as refusal:
        if keyed:
            # The request ran and was refused: that is its answer, kept under the key like a 202
            # (Stripe's rule). Nothing of the effects was committed.
            await session.rollback()
            await idempotency.store_refusal(
                session, shop_id=shop_id, key=key, status=refusal.status, problem=refusal.to_problem()
            )
        raise
    return outcome


def _steps(
    session: AsyncSession, atomic: bool
) -> tuple[AbstractAsyncContextManager[Any], Callable[[], AbstractAsyncContextManager[Any]]]:
    """(outer, step): one transaction around all steps, or (unsafe) one transaction per step."""
    if atomic:
        return session.begin(), lambda: nullcontext()
    return nullcontext(), session.begin


async def _enqueue_effects(
    session: AsyncSession, settings: Settings, *, shop_id: int, campaign_id: int, key: str | None
) -> EnqueueOutcome:
    atomic = safeguards.is_on(settings, safeguards.ENQUEUE_TRANSACTION)
    outer, step = _steps(session, atomic)
    now = utcnow()
    async with outer:
        async with step():
            await require_installed(session, shop_id)  # an uninstall racing this enqueue: see shops
            campaign = await get_campaign(session, shop_id, campaign_id)
            await _move_to_sending(session, settings, campaign)
        await failpoints.hit("enqueue.after_status_change")
        async with step():
            recipient_count = await snapshot_recipients(session, settings, campaign)
            if recipient_count == 0:
                raise NoRecipients("no contact of this shop has consented to SMS")
        await failpoints.hit("enqueue.after_recipients")
        credits = recipient_count * campaign.segments
        batch_count = -(-recipient_count // settings.batch_size)
        async with step():
            await reservations.reserve_credits(
                session,
                shop_id=shop_id,
                campaign_id=campaign_id,
                credits=credits,
                expires_at=now + timedelta(seconds=settings.reservation_ttl_seconds),
            )
            await session.execute(
                update(Campaign)
                .where(Campaign.id == campaign_id)
                .values(recipient_count=recipient_count, batch_count=batch_count)
            )
        body = EnqueueAccepted(
            campaign_id=campaign_id,
            status=CampaignStatus.SENDING.value,
            recipient_count=recipient_count,
            batch_count=batch_count,
            segments=campaign.segments,
            reserved_credits=credits,
            enqueued_at=now,
        )
        if key is not None:
            async with step():
                await idempotency.store_response(
                    session, shop_id=shop_id, key=key, status=ENQUEUE_ACCEPTED, body=msgspec.to_builtins(body)
                )
        await failpoints.hit("enqueue.before_commit")
    return EnqueueOutcome(ENQUEUE_ACCEPTED, body, batches_to_queue=list(range(batch_count)))


async def _move_to_sending(session: AsyncSession, settings: Settings, campaign: Campaign) -> None:
    values = {"status": CampaignStatus.SENDING, "enqueued_at": utcnow(), "last_activity_at": utcnow()}
    if safeguards.is_on(settings, safeguards.ENQUEUE_IDEMPOTENCY):
        moved = await session.scalar(
            update(Campaign)
            .where(Campaign.id == campaign.id, Campaign.status == CampaignStatus.DRAFT)
            .values(**values)
            .returning(Campaign.id)
        )
        if moved is None:
            raise CampaignNotDraft(f"campaign {campaign.id} is {campaign.status}, not a draft")
        return
    # Unsafe variant (lab only): check, then write. Two racing requests both pass the check.
    if campaign.status != CampaignStatus.DRAFT:
        raise CampaignNotDraft(f"campaign {campaign.id} is {campaign.status}, not a draft")
    await session.execute(update(Campaign).where(Campaign.id == campaign.id).values(**values))


async def snapshot_recipients(session: AsyncSession, settings: Settings, campaign: Campaign) -> int:
    """One set-based INSERT ... SELECT of the consenting contacts, numbered into batches as it goes."""
    batch_no = (func.row_number().over(order_by=Contact.id) - 1) // settings.batch_size
    source = select(
        literal(campaign.id),
        literal(campaign.shop_id),
        Contact.id,
        Contact.phone_e164,
        batch_no,
        literal(RecipientStatus.PENDING.value),
        literal(0),
    ).where(Contact.shop_id == campaign.shop_id, Contact.sms_consent.is_(True))
    statement = insert(CampaignRecipient).from_select(
        ["campaign_id", "shop_id", "contact_id", "phone_e164", "batch_no", "status", "attempts"], source
    )
    result = await session.execute(statement)
    return int(result.rowcount)  # type: ignore[attr-defined]

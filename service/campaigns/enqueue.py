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
from typing import Any, cast

import msgspec
from sqlalchemy import Integer, Table, bindparam, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service import failpoints, input_rules, safeguards
from service.campaigns import idempotency
from service.campaigns.drafts import get_campaign
from service.db.dialect import binds, bound
from service.db.models import Campaign, CampaignRecipient, CampaignStatus, Contact, RecipientStatus, utcnow
from service.errors import CampaignNotDraft, NoRecipients, NotFound, ProblemError, replayed_problem
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
        async with session.begin():  # the claim commits before the effects' transaction begins
            if await session.scalar(_EXISTS, {"e_campaign": campaign_id, "e_shop": shop_id}) is None:
                raise NotFound(f"campaign {campaign_id} not found")  # before a key is spent on nothing
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
            segments = await _move_to_sending(session, settings, shop_id, campaign_id)
        await failpoints.hit("enqueue.after_status_change")
        async with step():
            recipient_count = await snapshot_recipients(session, settings, shop_id, campaign_id)
            if recipient_count == 0:
                raise NoRecipients("no contact of this shop has consented to SMS")
        await failpoints.hit("enqueue.after_recipients")
        credits = recipient_count * segments
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
                _COUNTS,
                {
                    "c_campaign": campaign_id,
                    **bound("c_", recipient_count=recipient_count, batch_count=batch_count),
                },
            )
        body = EnqueueAccepted(
            campaign_id=campaign_id,
            status=CampaignStatus.SENDING.value,
            recipient_count=recipient_count,
            batch_count=batch_count,
            segments=segments,
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


# The enqueue's statements, built once (each call only binds its values): see `db.dialect.binds`.
_CAMPAIGNS = cast(Table, Campaign.__table__)
_CONTACTS = cast(Table, Contact.__table__)
_EXISTS = select(_CAMPAIGNS.c.id).where(
    _CAMPAIGNS.c.id == bindparam("e_campaign"), _CAMPAIGNS.c.shop_id == bindparam("e_shop")
)
_SENDING = {
    "status": CampaignStatus.SENDING.value,
    **binds(_CAMPAIGNS, "m_", "enqueued_at", "last_activity_at"),
}
# Safeguard 1's race decider: draft -> sending as one conditional UPDATE (only one request can win it).
_TO_SENDING = (
    update(_CAMPAIGNS)
    .where(
        _CAMPAIGNS.c.id == bindparam("m_campaign"),
        _CAMPAIGNS.c.shop_id == bindparam("m_shop"),
        _CAMPAIGNS.c.status == CampaignStatus.DRAFT.value,
    )
    .values(_SENDING)
    .returning(_CAMPAIGNS.c.segments)
)
_TO_SENDING_UNCHECKED = update(_CAMPAIGNS).where(_CAMPAIGNS.c.id == bindparam("m_campaign")).values(_SENDING)
_COUNTS = (
    update(_CAMPAIGNS)
    .where(_CAMPAIGNS.c.id == bindparam("c_campaign"))
    .values(binds(_CAMPAIGNS, "c_", "recipient_count", "batch_count"))
)
_SNAPSHOT = insert(cast(Table, CampaignRecipient.__table__)).from_select(
    ["campaign_id", "shop_id", "contact_id", "phone_e164", "batch_no", "status", "attempts"],
    select(
        bindparam("s_campaign", type_=_CAMPAIGNS.c.id.type),
        bindparam("s_shop", type_=_CAMPAIGNS.c.shop_id.type),
        _CONTACTS.c.id,
        _CONTACTS.c.phone_e164,
        (func.row_number().over(order_by=_CONTACTS.c.id) - 1) // bindparam("s_batch_size", type_=Integer),
        literal(RecipientStatus.PENDING.value),
        literal(0),
    ).where(_CONTACTS.c.shop_id == bindparam("s_shop"), _CONTACTS.c.sms_consent.is_(True)),
)


async def _move_to_sending(session: AsyncSession, settings: Settings, shop_id: int, campaign_id: int) -> int:
    """Draft -> sending; the campaign's segments per message. 404 for none of this shop's, 409 for a
    campaign that is no longer a draft."""
    now = utcnow()
    values = {
        "m_campaign": campaign_id,
        "m_shop": shop_id,
        **bound("m_", enqueued_at=now, last_activity_at=now),
    }
    if safeguards.is_on(settings, safeguards.ENQUEUE_IDEMPOTENCY):
        segments = await session.scalar(_TO_SENDING, values)
        if segments is None:
            campaign = await get_campaign(session, shop_id, campaign_id)  # 404, or what it is instead
            raise CampaignNotDraft(f"campaign {campaign_id} is {campaign.status}, not a draft")
        return int(segments)
    # Unsafe variant (lab only): check, then write. Two racing requests both pass the check.
    campaign = await get_campaign(session, shop_id, campaign_id)
    if campaign.status != CampaignStatus.DRAFT:
        raise CampaignNotDraft(f"campaign {campaign.id} is {campaign.status}, not a draft")
    await session.execute(_TO_SENDING_UNCHECKED, values)
    return campaign.segments


async def snapshot_recipients(
    session: AsyncSession, settings: Settings, shop_id: int, campaign_id: int
) -> int:
    """One set-based INSERT ... SELECT of the consenting contacts, numbered into batches as it goes."""
    result = await session.execute(
        _SNAPSHOT, {"s_campaign": campaign_id, "s_shop": shop_id, "s_batch_size": settings.batch_size}
    )
    return int(result.rowcount)  # type: ignore[attr-defined]

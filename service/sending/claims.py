"""Claim before send (safeguard 3, invariant I1).

A batch job first moves its recipients `pending -> sending` with a fresh attempt id and a lease, and
commits, before it calls the provider. A second run of the same job (SAQ may run a job twice: a retry of a
job aborted while still running, a sweep after a worker died) then finds nothing to claim, and a worker
killed after the provider accepted leaves `sending` rows, which are never resent blindly: the reconciler
resolves them by reference (safeguard 4).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service import safeguards
from service.db.models import (
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    RecipientStatus,
    Shop,
    recipient_status_is,
    utcnow,
)
from service.db.session import reads_need_no_transaction
from service.settings import Settings

_CAMPAIGNS = cast(Table, Campaign.__table__)
_SHOPS = cast(Table, Shop.__table__)
# The campaign as a claim needs it, and whether its shop is installed, holding the shop's row FOR SHARE
# (nothing on SQLite, whose single writer orders the claim and an uninstall the same way).
_CLAIMABLE = (
    select(
        _CAMPAIGNS.c.status, _CAMPAIGNS.c.shop_id, _CAMPAIGNS.c.body, _CAMPAIGNS.c.segments, _SHOPS.c.active
    )
    .join_from(_CAMPAIGNS, _SHOPS, _SHOPS.c.id == _CAMPAIGNS.c.shop_id)
    .where(_CAMPAIGNS.c.id == bindparam("claim_campaign"))
    .with_for_update(read=True, of=_SHOPS)
)


@dataclass
class Claim:
    attempt_id: str
    campaign_id: int
    shop_id: int
    body: str
    segments: int
    # recipient id -> phone (E.164); None once the customer's data was erased
    recipients: dict[int, str | None] = field(default_factory=dict)
    # False only in the lab's unsafe variant: rows were read, not claimed, and are still `pending`.
    claimed: bool = True


async def claim_batch(
    session: AsyncSession, settings: Settings, campaign_id: int, batch_no: int
) -> Claim | None:
    """Claim the batch's pending recipients for one attempt.

    None if the campaign is not sending or nothing is left to claim.
    """
    async with session.begin():
        # No lock on the campaign: a cancel racing this claim is settled by the conditional updates (a
        # row is either cancelled or claimed), and a claim that wins is recorded like any other.
        # The shop's row is held FOR SHARE in the same statement (`shops.holds_installed_shop`, one round
        # trip for both): an uninstall that committed first is seen here (it also stopped the campaign);
        # one that comes later waits for this claim to commit, then cancels what is left (see `shops`).
        found = (await session.execute(_CLAIMABLE, {"claim_campaign": campaign_id})).first()
        if found is None or found.status != CampaignStatus.SENDING or not found.active:
            return None
        claim = Claim(
            attempt_id=str(uuid.uuid4()),
            campaign_id=campaign_id,
            shop_id=found.shop_id,
            body=found.body,
            segments=found.segments,
        )
        pending = (
            CampaignRecipient.campaign_id == campaign_id,
            CampaignRecipient.batch_no == batch_no,
            recipient_status_is(RecipientStatus.PENDING),
        )
        if not safeguards.is_on(settings, safeguards.CLAIM_BEFORE_SEND):
            # Unsafe variant (lab only): read the pending rows and send them as they are.
            rows = await session.execute(
                select(CampaignRecipient.id, CampaignRecipient.phone_e164).where(*pending)
            )
            claim.claimed = False
        else:
            now = utcnow()
            rows = await session.execute(
                update(CampaignRecipient)
                .where(*pending)
                .values(
                    status=RecipientStatus.SENDING,
                    attempt_id=claim.attempt_id,
                    attempts=CampaignRecipient.attempts + 1,
                    claimed_at=now,
                    lease_expires_at=now + timedelta(seconds=settings.send_lease_seconds),
                    status_updated_at=now,
                )
                .returning(CampaignRecipient.id, CampaignRecipient.phone_e164)
            )
        claim.recipients = {rid: phone for rid, phone in rows}
    return claim if claim.recipients else None


async def still_sending(session: AsyncSession, campaign_id: int) -> bool:
    """Right before the provider call: is the campaign (and so its shop) still sending? Own transaction.

    A claim can commit just before an uninstall or a cancel does; this re-check keeps the window in which
    a stopped campaign still sends down to the provider call itself. One statement, so no transaction of
    its own around it (`reads_need_no_transaction`): on PostgreSQL one round trip instead of three
    (BEGIN, the read, COMMIT), for each of a campaign's batches."""
    async with session.begin():
        await reads_need_no_transaction(session)
        status = await session.scalar(select(Campaign.status).where(Campaign.id == campaign_id))
    return status == CampaignStatus.SENDING

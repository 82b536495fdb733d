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

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service import safeguards
from service.db.models import (
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    RecipientStatus,
    recipient_status_is,
    utcnow,
)
from service.settings import Settings
from service.shops import holds_installed_shop


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
        campaign = await session.scalar(select(Campaign).where(Campaign.id == campaign_id))
        if campaign is None or campaign.status != CampaignStatus.SENDING:
            return None
        # An uninstall that committed first is seen here (it also stopped the campaign); one that comes
        # later waits for this claim to commit, then cancels what is left (see `shops`).
        if not await holds_installed_shop(session, campaign.shop_id):
            return None
        claim = Claim(
            attempt_id=str(uuid.uuid4()),
            campaign_id=campaign_id,
            shop_id=campaign.shop_id,
            body=campaign.body,
            segments=campaign.segments,
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
    a stopped campaign still sends down to the provider call itself."""
    async with session.begin():
        status = await session.scalar(select(Campaign.status).where(Campaign.id == campaign_id))
    return status == CampaignStatus.SENDING

"""Campaign progress: counters kept with every outcome, completion, and settling the reservation.

A campaign is `completed` once every recipient has a send outcome (sent or failed). A cancelled or failed
campaign keeps its reservation until no recipient is still `sending`, because a claimed message may yet
turn out to have been accepted and must then be paid from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Update, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.db.dialect import for_update
from service.db.models import (
    ACCEPTED_RECIPIENT_STATUSES,
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    RecipientStatus,
    ReservationStatus,
    recipient_status_is,
    utcnow,
)
from service.wallet import reservations


async def lock_campaign(session: AsyncSession, campaign_id: int) -> Campaign | None:
    """Lock the campaign row. Then reservation, then wallet: every writer takes them in that order.

    Recipient rows come before the campaign lock when a writer touches only rows of its own claim
    (recording a batch), and after it when it touches rows of the whole campaign (cancel, expiry); the
    two sets never overlap (`sending` rows of one attempt vs `pending` rows), so the orders cannot deadlock.
    """
    return await session.scalar(for_update(select(Campaign).where(Campaign.id == campaign_id)))


def _outcomes_update(campaign_id: int, sent: int, failed: int) -> Update:
    return (
        update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(
            sent_count=Campaign.sent_count + sent,
            failed_count=Campaign.failed_count + failed,
            last_activity_at=utcnow(),
        )
    )


async def add_outcomes(session: AsyncSession, campaign_id: int, *, sent: int = 0, failed: int = 0) -> None:
    await session.execute(_outcomes_update(campaign_id, sent, failed))


@dataclass(frozen=True)
class Progress:
    """The campaign row as an outcome update left it (see `lock_and_add_outcomes`)."""

    status: str
    shop_id: int
    sent_count: int
    failed_count: int
    recipient_count: int


async def lock_and_add_outcomes(
    session: AsyncSession, campaign_id: int, *, sent: int, failed: int
) -> Progress | None:
    """`add_outcomes` as the statement that takes the campaign's row lock, returning what settling needs.

    A recorded batch holds the campaign row from here to its commit, and every batch of the campaign
    waits for it: one round trip here instead of three (lock, counters, re-read) shortens the part of a
    batch that cannot run beside the others. An UPDATE locks `FOR NO KEY UPDATE`, which other batches'
    ledger inserts (their foreign-key checks lock the row `FOR KEY SHARE`) do not wait for, while a
    cancel's `lock_campaign` still does.
    """
    row = (
        await session.execute(
            _outcomes_update(campaign_id, sent, failed).returning(
                Campaign.status,
                Campaign.shop_id,
                Campaign.sent_count,
                Campaign.failed_count,
                Campaign.recipient_count,
            )
        )
    ).first()
    return None if row is None else Progress(*row)


async def status_counts(connection: AsyncConnection | AsyncSession, campaign_id: int) -> dict[str, int]:
    rows = await connection.execute(
        select(CampaignRecipient.status, func.count())
        .where(CampaignRecipient.campaign_id == campaign_id)
        .group_by(CampaignRecipient.status)
    )
    counts = {status.value: 0 for status in RecipientStatus}
    counts.update({status: count for status, count in rows})
    return counts


async def settle_if_finished(
    session: AsyncSession, campaign_id: int, known: Progress | None = None
) -> str | None:
    """Complete the campaign / release its reservation when nothing is left in flight. Caller's transaction.

    The caller holds the campaign row lock. Returns the campaign's status after settling. `known`: the row
    as the caller's own locked update returned it, which spares re-reading a campaign still sending.
    """
    if (
        known is not None
        and known.status == CampaignStatus.SENDING
        and known.sent_count + known.failed_count < known.recipient_count
    ):
        return known.status
    campaign = await session.get(Campaign, campaign_id, populate_existing=True)
    if campaign is None:
        return None
    if campaign.status == CampaignStatus.SENDING:
        if campaign.sent_count + campaign.failed_count < campaign.recipient_count:
            return campaign.status
        await session.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.SENDING)
            .values(status=CampaignStatus.COMPLETED, finished_at=utcnow(), last_activity_at=utcnow())
        )
        await reservations.release(session, shop_id=campaign.shop_id, campaign_id=campaign_id)
        return CampaignStatus.COMPLETED
    stopped = campaign.status in (CampaignStatus.CANCELLED, CampaignStatus.FAILED)
    if stopped and not await has_in_flight(session, campaign_id):
        await reservations.release(
            session, shop_id=campaign.shop_id, campaign_id=campaign_id, status=ReservationStatus.SETTLED
        )
    return campaign.status


async def has_in_flight(session: AsyncSession, campaign_id: int) -> bool:
    """Whether any recipient is claimed with an unknown outcome (it may still turn out accepted)."""
    found = await session.scalar(
        select(CampaignRecipient.id)
        .where(CampaignRecipient.campaign_id == campaign_id, recipient_status_is(RecipientStatus.SENDING))
        .limit(1)
    )
    return found is not None


async def recompute_counters(session: AsyncSession, campaign_id: int) -> dict[str, Any]:
    """Set the counters from the recipient rows (the source of truth); returns what changed."""
    counts = await status_counts(session, campaign_id)
    sent = sum(counts[s.value] for s in ACCEPTED_RECIPIENT_STATUSES)
    failed = counts[RecipientStatus.FAILED.value] + counts[RecipientStatus.CANCELLED.value]
    total = sum(counts.values())
    campaign = await session.get(Campaign, campaign_id, populate_existing=True)
    if campaign is None:
        return {}
    changes: dict[str, Any] = {}
    for field, value in (("sent_count", sent), ("failed_count", failed), ("recipient_count", total)):
        if getattr(campaign, field) != value:
            changes[field] = value
    if changes:
        await session.execute(update(Campaign).where(Campaign.id == campaign_id).values(**changes))
    return changes


async def stop_campaign(
    session: AsyncSession, campaign_id: int, status: CampaignStatus, reason: str, from_draft: bool = True
) -> int | None:
    """Stop a draft or sending campaign: unsent recipients cancelled, their credits released. Caller's
    transaction. Returns how many recipients were cancelled, or None if the campaign had already finished.

    Recipients already claimed (`sending`) may have been accepted by the provider; they keep their share of
    the reservation until they resolve, after which the reconciler releases the rest.
    """
    campaign = await lock_campaign(session, campaign_id)
    stoppable = [CampaignStatus.SENDING, CampaignStatus.DRAFT] if from_draft else [CampaignStatus.SENDING]
    if campaign is None or campaign.status not in stoppable:
        return None
    await session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(status=status, status_reason=reason, finished_at=utcnow(), last_activity_at=utcnow())
    )
    result = await session.execute(
        update(CampaignRecipient)
        .where(CampaignRecipient.campaign_id == campaign_id, recipient_status_is(RecipientStatus.PENDING))
        .values(status=RecipientStatus.CANCELLED, failure_reason=reason, status_updated_at=utcnow())
    )
    cancelled = int(result.rowcount)  # type: ignore[attr-defined]
    await add_outcomes(session, campaign_id, failed=cancelled)
    await reservations.release_part(
        session, shop_id=campaign.shop_id, campaign_id=campaign_id, credits=cancelled * campaign.segments
    )
    await settle_if_finished(session, campaign_id)
    return cancelled


async def cancel_recipients_of_contact(session: AsyncSession, contact_id: int, reason: str) -> int:
    """Take a contact out of every campaign not yet sent to it (consent withdrawn, data erased).

    Caller's transaction; locks each affected campaign first, like every campaign-wide writer.
    """
    campaign_ids = list(
        await session.scalars(
            select(CampaignRecipient.campaign_id)
            .where(
                CampaignRecipient.contact_id == contact_id,
                recipient_status_is(RecipientStatus.PENDING),
            )
            .distinct()
        )
    )
    total = 0
    for campaign_id in sorted(campaign_ids):
        campaign = await lock_campaign(session, campaign_id)
        if campaign is None:
            continue
        result = await session.execute(
            update(CampaignRecipient)
            .where(
                CampaignRecipient.campaign_id == campaign_id,
                CampaignRecipient.contact_id == contact_id,
                recipient_status_is(RecipientStatus.PENDING),
            )
            .values(status=RecipientStatus.CANCELLED, failure_reason=reason, status_updated_at=utcnow())
        )
        cancelled = int(result.rowcount)  # type: ignore[attr-defined]
        if not cancelled:
            continue
        total += cancelled
        await add_outcomes(session, campaign_id, failed=cancelled)
        await reservations.release_part(
            session, shop_id=campaign.shop_id, campaign_id=campaign_id, credits=cancelled * campaign.segments
        )
        await settle_if_finished(session, campaign_id)
    return total

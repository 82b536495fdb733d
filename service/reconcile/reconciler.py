"""The reconciler (safeguard 8, invariant I2): nothing stays stuck.

A SAQ cron job runs `reconcile_once` every `SMSLAB_RECONCILE_INTERVAL_SECONDS`. Each pass:
1. expires reservations past their expiry: the campaign fails, its unsent recipients are cancelled;
2. resolves claims whose lease expired by looking up their references (safeguard 4): accepted -> sent and
   debited; never accepted -> pending again; lookup failing past `SMSLAB_UNRESOLVED_GIVE_UP_SECONDS` ->
   the configured policy (at-most-once: failed, not debited; at-least-once: pending, may be resent);
3. for every sending campaign: recomputes its counters from the recipient rows, completes it when every
   recipient has an outcome (releasing the leftover reservation), and re-enqueues each batch that still
   has pending recipients with its deterministic job key;
4. settles reservations of cancelled or failed campaigns once nothing of theirs is in flight;
5. forgets Idempotency-Keys older than their 24 h;
6. applies kept delivery reports whose message id was recorded by a transaction that raced them.
Every write is a conditional update inside a transaction, so two passes at once do no harm.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from saq.queue.redis import RedisQueue
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import failpoints, logs, safeguards
from service.campaigns import idempotency, progress
from service.db.models import (
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    CreditReservation,
    RecipientStatus,
    ReservationStatus,
    utcnow,
)
from service.queue import enqueue_send_batches
from service.sending import delivery_reports
from service.sending.claims import Claim
from service.sending.mitto import MittoClient
from service.sending.record import Outcomes, record_outcomes
from service.sending.references import reference_for
from service.sending.resolve import resolve_references
from service.settings import Settings
from service.wallet import reservations

log = logs.get_logger(__name__)

EXPIRED_LEASES_PER_PASS = 5_000
CAMPAIGNS_PER_PASS = 1_000


@dataclass
class ReconcileReport:
    expired_reservations: int = 0
    resolved_sent: int = 0
    resolved_unsent: int = 0
    unresolved: int = 0
    gave_up: int = 0
    counters_fixed: int = 0
    completed: list[int] = field(default_factory=list)
    requeued_batches: int = 0
    settled_reservations: int = 0
    pending_reports_applied: int = 0
    purged_keys: int = 0
    skipped: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def actions(self) -> dict[str, int]:
        """What the pass did, by kind, for `smslab_reconcile_actions_total` (only the kinds it did)."""
        counts = {
            k: len(v) if isinstance(v, list) else int(v) for k, v in asdict(self).items() if k != "skipped"
        }
        return {kind: count for kind, count in counts.items() if count}


async def reconcile_once(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    mitto: MittoClient,
    queue: RedisQueue | None,
) -> ReconcileReport:
    report = ReconcileReport()
    if not safeguards.is_on(settings, safeguards.RECONCILER):
        report.skipped = True  # unsafe variant (lab only): nothing is ever healed
        return report
    async with sessions() as session:
        await _expire_reservations(session, report)
        await _resolve_expired_claims(session, settings, mitto, report)
        to_queue = await _advance_campaigns(session, report)
        await _settle_stopped_campaigns(session, report)
        await _apply_kept_delivery_reports(session, settings, report)
        async with session.begin():
            report.purged_keys = await idempotency.purge_expired(session)
    if queue is not None:
        for campaign_id, batch_nos in to_queue.items():
            report.requeued_batches += await enqueue_send_batches(
                queue, settings, campaign_id, batch_nos, None
            )
    if any(v for k, v in report.as_dict().items() if k != "skipped"):
        log.info("reconciled", **report.as_dict())
    return report


async def _expire_reservations(session: AsyncSession, report: ReconcileReport) -> None:
    async with session.begin():
        expired = list(
            await session.execute(
                select(CreditReservation.campaign_id, CreditReservation.shop_id).where(
                    CreditReservation.status == ReservationStatus.ACTIVE,
                    CreditReservation.expires_at <= utcnow(),
                )
            )
        )
    for campaign_id, shop_id in expired:
        if campaign_id is None:
            continue
        async with session.begin():
            campaign = await progress.lock_campaign(session, campaign_id)
            if campaign is None:
                continue
            await progress.stop_campaign(
                session, campaign_id, CampaignStatus.FAILED, "reservation_expired", from_draft=False
            )
            if not await progress.has_in_flight(session, campaign_id):
                await reservations.release(
                    session, shop_id=shop_id, campaign_id=campaign_id, status=ReservationStatus.EXPIRED
                )
            report.expired_reservations += 1


async def _resolve_expired_claims(
    session: AsyncSession, settings: Settings, mitto: MittoClient, report: ReconcileReport
) -> None:
    now = utcnow()
    async with session.begin():
        rows = list(
            await session.execute(
                select(
                    CampaignRecipient.id,
                    CampaignRecipient.campaign_id,
                    CampaignRecipient.attempt_id,
                    CampaignRecipient.lease_expires_at,
                    Campaign.shop_id,
                    Campaign.segments,
                )
                .join(Campaign, Campaign.id == CampaignRecipient.campaign_id)
                .where(
                    CampaignRecipient.status == RecipientStatus.SENDING,
                    CampaignRecipient.lease_expires_at <= now,
                )
                .order_by(CampaignRecipient.id)
                .limit(EXPIRED_LEASES_PER_PASS)
            )
        )
    claims: dict[tuple[int, str], Claim] = {}
    expired_at: dict[int, Any] = {}
    for rid, campaign_id, attempt_id, lease_expires_at, shop_id, segments in rows:
        key = (campaign_id, attempt_id or "")
        claim = claims.get(key)
        if claim is None:
            claim = claims[key] = Claim(
                attempt_id=attempt_id or "",
                campaign_id=campaign_id,
                shop_id=shop_id,
                body="",
                segments=segments,
            )
        claim.recipients[rid] = None
        expired_at[rid] = lease_expires_at
    give_up_before = now - timedelta(seconds=settings.unresolved_give_up_seconds)
    for claim in claims.values():
        outcomes = Outcomes()
        if not safeguards.is_on(settings, safeguards.RESOLVE_AMBIGUOUS_SENDS):
            outcomes.not_sent = set(claim.recipients)  # unsafe variant (lab only): assume never sent
        else:
            references = {reference_for(claim.campaign_id, rid): rid for rid in claim.recipients}
            resolution = await resolve_references(mitto, references)
            outcomes.accepted = resolution.found
            outcomes.not_sent = resolution.missing
            for rid in resolution.failed:
                if expired_at[rid] > give_up_before:
                    outcomes.unknown.add(rid)
                elif settings.unresolved_send_policy == "at-least-once":
                    outcomes.not_sent.add(rid)
                    report.gave_up += 1
                else:
                    outcomes.rejected[rid] = (None, "unresolved")
                    report.gave_up += 1
            report.unresolved += len(outcomes.unknown)
        await failpoints.hit("reconcile.after_lookup")
        recorded = await record_outcomes(session, settings, claim, outcomes)
        report.resolved_sent += recorded.sent
        report.resolved_unsent += recorded.back_to_pending + recorded.cancelled
        if recorded.campaign_status == CampaignStatus.COMPLETED:
            report.completed.append(claim.campaign_id)


async def _advance_campaigns(session: AsyncSession, report: ReconcileReport) -> dict[int, list[int]]:
    async with session.begin():
        campaign_ids = list(
            await session.scalars(
                select(Campaign.id)
                .where(Campaign.status == CampaignStatus.SENDING)
                .order_by(Campaign.last_activity_at)
                .limit(CAMPAIGNS_PER_PASS)
            )
        )
    to_queue: dict[int, list[int]] = defaultdict(list)
    for campaign_id in campaign_ids:
        async with session.begin():
            campaign = await progress.lock_campaign(session, campaign_id)
            if campaign is None or campaign.status != CampaignStatus.SENDING:
                continue
            if await progress.recompute_counters(session, campaign_id):
                report.counters_fixed += 1
            status = await progress.settle_if_finished(session, campaign_id)
            if status == CampaignStatus.COMPLETED:
                report.completed.append(campaign_id)
                continue
            batches = await session.scalars(
                select(CampaignRecipient.batch_no)
                .where(
                    CampaignRecipient.campaign_id == campaign_id,
                    CampaignRecipient.status == RecipientStatus.PENDING,
                )
                .distinct()
            )
            to_queue[campaign_id].extend(sorted(batches))
    return {cid: batches for cid, batches in to_queue.items() if batches}


async def _settle_stopped_campaigns(session: AsyncSession, report: ReconcileReport) -> None:
    async with session.begin():
        stopped = list(
            await session.scalars(
                select(CreditReservation.campaign_id)
                .join(Campaign, Campaign.id == CreditReservation.campaign_id)
                .where(
                    CreditReservation.status == ReservationStatus.ACTIVE,
                    Campaign.status.in_(
                        [CampaignStatus.CANCELLED, CampaignStatus.FAILED, CampaignStatus.COMPLETED]
                    ),
                )
            )
        )
    for campaign_id in stopped:
        if campaign_id is None:
            continue
        async with session.begin():
            campaign = await progress.lock_campaign(session, campaign_id)
            if campaign is None or await progress.has_in_flight(session, campaign_id):
                continue
            if await reservations.release(session, shop_id=campaign.shop_id, campaign_id=campaign_id):
                report.settled_reservations += 1


async def _apply_kept_delivery_reports(
    session: AsyncSession, settings: Settings, report: ReconcileReport
) -> None:
    """Reports kept because they beat their message id, and whose id was recorded in a racing transaction."""
    async with session.begin():
        campaign_ids = await delivery_reports.campaigns_with_pending_reports(session)
    for campaign_id in campaign_ids:
        async with session.begin():
            report.pending_reports_applied += await delivery_reports.apply_pending(
                session, settings, campaign_id
            )

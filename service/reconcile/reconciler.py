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

Each pass then leaves its own account as a `reconcile_passes` row (what it found and did, by kind, how
long it took, the error if it raised): the lab saves those rows with a run's snapshot and its notebooks
show them on the run's time axis; an operator can read them with SQL.
"""

from __future__ import annotations

import os
import socket
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from saq.queue.redis import RedisQueue
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import failpoints, logs, safeguards
from service.campaigns import idempotency, progress
from service.db.models import (
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    CreditReservation,
    RecipientStatus,
    ReconcilePass,
    ReservationStatus,
    recipient_status_is,
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
PASSES_KEPT = timedelta(days=7)  # older `reconcile_passes` rows are deleted: a 30 s interval adds 2,880 a day
# What a pass found rather than did: in its row, not among `smslab_reconcile_actions_total`'s actions.
FINDINGS = ("expired_leases", "stuck_campaigns")


@dataclass
class ReconcileReport:
    expired_leases: int = 0
    stuck_campaigns: int = 0
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
            k: len(v) if isinstance(v, list) else int(v)
            for k, v in asdict(self).items()
            if k != "skipped" and k not in FINDINGS
        }
        return {kind: count for kind, count in counts.items() if count}

    def row(self, started_at: datetime, duration_s: float, error: str | None) -> ReconcilePass:
        """The pass as a `reconcile_passes` row."""
        return ReconcilePass(
            started_at=started_at,
            duration_s=round(duration_s, 4),
            process=f"{socket.gethostname()[:40]}:{os.getpid()}",
            expired_leases=self.expired_leases,
            resolved_accepted=self.resolved_sent,
            resolved_not_accepted=self.resolved_unsent,
            left_unresolved=self.unresolved,
            gave_up=self.gave_up,
            batches_requeued=self.requeued_batches,
            campaigns_completed=len(self.completed),
            counters_fixed=self.counters_fixed,
            reservations_released=self.settled_reservations,
            reservations_expired=self.expired_reservations,
            reports_applied=self.pending_reports_applied,
            keys_purged=self.purged_keys,
            stuck_campaigns=self.stuck_campaigns,
            error=error[:100] if error else None,
        )


async def reconcile_once(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    mitto: MittoClient,
    queue: RedisQueue | None,
) -> ReconcileReport:
    report = ReconcileReport()
    if not safeguards.is_on(settings, safeguards.RECONCILER):
        report.skipped = True  # unsafe variant (lab only): nothing is ever healed, no pass is recorded
        return report
    started_at, clock = utcnow(), time.monotonic()
    try:
        await _pass(sessions, settings, mitto, queue, report)
    except Exception as exc:
        # What it did before the error committed: its row says so, and which error ended it.
        await _record_pass(sessions, report, started_at, time.monotonic() - clock, type(exc).__name__)
        raise
    await _record_pass(sessions, report, started_at, time.monotonic() - clock, None)
    return report


async def _pass(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    mitto: MittoClient,
    queue: RedisQueue | None,
    report: ReconcileReport,
) -> None:
    async with sessions() as session:
        await _expire_reservations(session, report)
        await _resolve_expired_claims(session, settings, mitto, report)
        to_queue = await _advance_campaigns(session, settings, report)
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


async def _record_pass(
    sessions: async_sessionmaker[AsyncSession],
    report: ReconcileReport,
    started_at: datetime,
    duration_s: float,
    error: str | None,
) -> None:
    """The pass's row, and old rows deleted, in one transaction of its own. The pass's work has already
    committed: if the database refuses this too, the account is lost (logged), the work is not."""
    try:
        async with sessions() as session, session.begin():
            session.add(report.row(started_at, duration_s, error))
            await session.execute(
                delete(ReconcilePass).where(ReconcilePass.started_at < started_at - PASSES_KEPT)
            )
    except Exception as exc:  # noqa: BLE001 - the database is down: the next pass records itself
        log.warning("reconcile_pass_not_recorded", error=type(exc).__name__)


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
                    recipient_status_is(RecipientStatus.SENDING),
                    CampaignRecipient.lease_expires_at <= now,
                )
                .order_by(CampaignRecipient.id)
                .limit(EXPIRED_LEASES_PER_PASS)
            )
        )
    report.expired_leases += len(rows)
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


async def _advance_campaigns(
    session: AsyncSession, settings: Settings, report: ReconcileReport
) -> dict[int, list[int]]:
    # Stuck: sending, and nothing touched it for a whole send lease (no batch can still be working on it).
    idle_since = utcnow() - timedelta(seconds=settings.send_lease_seconds)
    async with session.begin():
        sending = list(
            await session.execute(
                select(Campaign.id, Campaign.last_activity_at)
                .where(Campaign.status == CampaignStatus.SENDING)
                .order_by(Campaign.last_activity_at)
                .limit(CAMPAIGNS_PER_PASS)
            )
        )
    report.stuck_campaigns += sum(1 for _, last_activity in sending if last_activity < idle_since)
    campaign_ids = [campaign_id for campaign_id, _ in sending]
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
                    recipient_status_is(RecipientStatus.PENDING),
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

"""The send-batch job's domain logic: claim, deliver with retries, record and debit.

Retries inside one attempt: 429 waits for `Retry-After`; a failed connection backs off and resends; an
ambiguous failure (timeout, reset, 5xx) is resolved by reference lookup before anything is resent
(safeguard 4). The attempt stops before its lease runs out, leaving whatever is still unknown `sending`
for the reconciler, which owns the rows from then on.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from service import failpoints, logs, safeguards
from service.sending.claims import Claim, claim_batch, still_sending
from service.sending.mitto import (
    MittoClient,
    MittoOutcomeUnknown,
    MittoRateLimited,
    MittoRequestRefused,
    MittoUnavailable,
    OutgoingMessage,
)
from service.sending.record import Outcomes, Recorded, record_outcomes
from service.sending.references import reference_for
from service.sending.resolve import resolve_references
from service.settings import SEND_LEASE_USABLE_SHARE, Settings

log = logs.get_logger(__name__)

BACKOFF_BASE_SECONDS = 0.2
BACKOFF_CAP_SECONDS = 5.0


class BatchIncomplete(Exception):
    """Some recipients could not be sent yet (rate limits, provider down): the job should run again."""


@dataclass
class BatchReport:
    campaign_id: int
    batch_no: int
    claimed: int = 0
    provider_calls: int = 0
    recorded: Recorded | None = None

    def as_dict(self) -> dict[str, object]:
        recorded = self.recorded or Recorded()
        return {
            "campaign_id": self.campaign_id,
            "batch_no": self.batch_no,
            "claimed": self.claimed,
            "provider_calls": self.provider_calls,
            "sent": recorded.sent,
            "failed": recorded.failed,
            "back_to_pending": recorded.back_to_pending,
            "debited_credits": recorded.debited_credits,
            "campaign_status": recorded.campaign_status,
        }


def backoff(tries: int) -> float:
    return float(
        min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (tries - 1)) * (0.5 + random.random() / 2)
    )


async def send_batch(
    session: AsyncSession, settings: Settings, mitto: MittoClient, *, campaign_id: int, batch_no: int
) -> BatchReport:
    report = BatchReport(campaign_id, batch_no)
    started = time.monotonic()
    claim = await claim_batch(session, settings, campaign_id, batch_no)
    if claim is None:
        return report
    report.claimed = len(claim.recipients)
    await failpoints.hit("send.after_claim")
    if await still_sending(session, campaign_id):
        outcomes = await deliver(mitto, settings, claim, started, report)
    else:
        # Stopped since the claim (cancelled, the shop uninstalled): send none; the record cancels them.
        outcomes = Outcomes(not_sent=set(claim.recipients))
    await failpoints.hit("send.after_provider_accepted")
    report.recorded = await record_outcomes(session, settings, claim, outcomes)
    log.info(
        "batch_recorded",
        campaign_id=campaign_id,
        batch_no=batch_no,
        claimed=report.claimed,
        sent=report.recorded.sent,
        failed=report.recorded.failed,
        unknown=len(outcomes.unknown),
        # Not `back_to_pending`: a field named `to` (or `..._to_...`) is redacted as a phone number.
        pending_again=report.recorded.back_to_pending,
        provider_calls=report.provider_calls,
    )
    if report.recorded.back_to_pending:
        raise BatchIncomplete(f"{report.recorded.back_to_pending} recipients wait for another attempt")
    return report


async def deliver(
    mitto: MittoClient, settings: Settings, claim: Claim, started: float, report: BatchReport
) -> Outcomes:
    """Send the claim's messages until each has an outcome, tries run out, or the lease is nearly over.

    After an ambiguous failure the references are looked up before anything is resent. If the provider
    answered (a 5xx), "not found" is conclusive and those messages are resent. If no answer came, the
    provider may still be processing the request: what the lookup finds is recorded, the rest stays
    `sending` and is resolved by the reconciler once the lease has expired.
    """
    outcomes = Outcomes()
    remaining: dict[str, OutgoingMessage] = {}
    recipient_of: dict[str, int] = {}
    for rid, phone in claim.recipients.items():
        if not phone:
            outcomes.rejected[rid] = (None, "no_phone")  # erased customer: nothing to send to
            continue
        reference = reference_for(claim.campaign_id, rid)
        remaining[reference] = OutgoingMessage(to=phone, text=claim.body, reference=reference)
        recipient_of[reference] = rid
    # A new provider call starts only if it can finish (timeout included) well inside the lease.
    lease_end = started + settings.send_lease_seconds * SEND_LEASE_USABLE_SHARE
    resolve = safeguards.is_on(settings, safeguards.RESOLVE_AMBIGUOUS_SENDS)
    unknown: set[str] = set()
    tries = 0
    while remaining:
        if tries >= settings.send_max_tries or time.monotonic() + settings.mitto_timeout_seconds > lease_end:
            break
        tries += 1
        report.provider_calls += 1
        try:
            bulk = await mitto.send_bulk(list(remaining.values()))
        except MittoRateLimited as exc:
            await asyncio.sleep(min(exc.retry_after, max(0.0, lease_end - time.monotonic() - 1)))
            continue
        except MittoUnavailable:
            await asyncio.sleep(backoff(tries))
            continue
        except MittoOutcomeUnknown as exc:
            if not resolve:
                # Unsafe variant (lab only): assume the lost request did nothing and send again.
                await asyncio.sleep(backoff(tries))
                continue
            resolution = await resolve_references(mitto, {ref: recipient_of[ref] for ref in remaining})
            for rid, message_id in resolution.found.items():
                outcomes.accepted[rid] = message_id
            for ref in list(remaining):
                rid = recipient_of[ref]
                if rid in resolution.found:
                    del remaining[ref]
                elif rid in resolution.failed or not exc.provider_finished:
                    unknown.add(ref)
            if unknown:
                break  # cannot tell yet: resend none of these; the reconciler resolves them later
            await asyncio.sleep(backoff(tries))
            continue
        except MittoRequestRefused as exc:
            log.error("provider_refused_request", status=exc.status, campaign_id=claim.campaign_id)
            if exc.status == 400:
                for ref in remaining:
                    outcomes.rejected[recipient_of[ref]] = (None, "provider_refused_request")
                remaining.clear()
            break  # 401/403: configuration; the rows go back to pending and wait for a fix
        outcomes.bulk_ids.append(bulk.bulk_id)
        for result in bulk.results:
            rid = recipient_of[result.reference]
            if result.accepted and result.message_id:
                outcomes.accepted[rid] = result.message_id
            else:
                outcomes.rejected[rid] = (result.error_code, "provider_rejected")
            remaining.pop(result.reference, None)
    for ref in remaining:
        (outcomes.unknown if ref in unknown else outcomes.not_sent).add(recipient_of[ref])
    return outcomes

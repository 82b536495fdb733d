"""I2: after quiescence every enqueued campaign and every recipient of it is terminal.

Ground truth: the database after the run has healed and the quiescence bound has passed. A draft
(never enqueued) is not "stuck". Safeguard: the reconciler (8).
"""

from __future__ import annotations

from collections import Counter

from chaos.checker.evidence import DatabaseSnapshot, column
from chaos.checker.result import CheckResult
from service.db.models import CampaignStatus, RecipientStatus

ID = "I2"
TITLE = "after quiescence every campaign and recipient is terminal"
UNSETTLED_CAMPAIGN = {CampaignStatus.SENDING.value}
UNSETTLED_RECIPIENT = {RecipientStatus.PENDING.value, RecipientStatus.SENDING.value}


def check(snapshot: DatabaseSnapshot) -> CheckResult:
    result = CheckResult(ID, TITLE, True)
    stuck_campaigns = [c for c in snapshot.campaigns.values() if c["status"] in UNSETTLED_CAMPAIGN]
    recipient_rows = list(snapshot.recipients.values())
    stuck_recipients = [
        row
        for row, status in zip(recipient_rows, column(recipient_rows, "status"), strict=True)
        if status in UNSETTLED_RECIPIENT
    ]
    unsettled: dict[int, Counter[str]] = {}
    for row in stuck_recipients:
        unsettled.setdefault(row["campaign_id"], Counter())[row["status"]] += 1
    for campaign in stuck_campaigns:
        left = unsettled.get(campaign["id"], Counter())
        result.witness(
            {
                "campaign_id": campaign["id"],
                "status": campaign["status"],
                "last_activity_at": str(campaign["last_activity_at"]),
                "unsettled_recipients": sum(left.values()),
                "why": _why(left),
            }
        )
    by_status = Counter(r["status"] for r in stuck_recipients)
    for recipient in stuck_recipients[:5]:
        result.witness(
            {
                "recipient_id": recipient["id"],
                "campaign_id": recipient["campaign_id"],
                "status": recipient["status"],
            }
        )
    result.counts = {
        "campaigns": len(snapshot.campaigns),
        "campaigns_not_terminal": len(stuck_campaigns),
        "recipients": len(snapshot.recipients),
        "recipients_pending": by_status.get(RecipientStatus.PENDING.value, 0),
        "recipients_sending": by_status.get(RecipientStatus.SENDING.value, 0),
    }
    result.valid = not stuck_campaigns and not stuck_recipients
    return result


def _why(left: Counter[str]) -> str:
    """What holds the campaign: which of its recipients, and what only the reconciler would do for them."""
    reasons = []
    if left[RecipientStatus.SENDING.value]:
        reasons.append(
            f"{left[RecipientStatus.SENDING.value]} recipient(s) claimed for sending and never resolved (the "
            "send's answer lost, or its worker died; looking them up is the reconciler's job)"
        )
    if left[RecipientStatus.PENDING.value]:
        reasons.append(
            f"{left[RecipientStatus.PENDING.value]} recipient(s) never sent (their batch's job lost or never "
            "queued; queueing it again is the reconciler's job)"
        )
    return "; ".join(reasons) or "every recipient is final, yet nothing marked the campaign completed"

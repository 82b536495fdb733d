"""I1: at most one provider acceptance per campaign recipient (no double sends).

Ground truth: the fake Mitto's ledger. Acceptances are grouped by client reference (one per recipient)
and, independently of references, by (campaign, phone), so a double send is caught even if a defect
made up a second reference. Safeguards: claim before send (3), resolve ambiguous sends (4).
"""

from __future__ import annotations

from collections import defaultdict

from chaos.checker.evidence import Acceptance, DatabaseSnapshot
from chaos.checker.result import CheckResult

ID = "I1"
TITLE = "at most one provider acceptance per campaign recipient"


def check(acceptances: list[Acceptance], snapshot: DatabaseSnapshot) -> CheckResult:
    result = CheckResult(ID, TITLE, True)
    by_reference: dict[str, list[Acceptance]] = defaultdict(list)
    by_phone: dict[tuple[int | None, str], set[str]] = defaultdict(set)
    unexpected = 0
    for acceptance in acceptances:
        by_reference[acceptance.reference].append(acceptance)
        by_phone[(acceptance.campaign_id, acceptance.to)].add(acceptance.reference)
        if acceptance.recipient_id is None or acceptance.recipient_id not in snapshot.recipients:
            unexpected += 1
    doubled = 0
    extra = 0
    for reference, group in by_reference.items():
        if len(group) > 1:
            doubled += 1
            extra += len(group) - 1
            recipient = snapshot.recipients.get(group[0].recipient_id or -1, {})
            result.witness(
                {
                    "reference": reference,
                    "campaign_id": group[0].campaign_id,
                    "recipient_id": group[0].recipient_id,
                    "acceptances": len(group),
                    "message_ids": [a.message_id for a in group],
                    "accepted_at": [round(a.at, 3) for a in group],
                    "recipient_status": recipient.get("status"),
                    "attempts": recipient.get("attempts"),
                }
            )
    same_phone = sum(1 for refs in by_phone.values() if len(refs) > 1)
    for (campaign_id, _phone), refs in by_phone.items():
        if len(refs) > 1:
            result.witness({"campaign_id": campaign_id, "references_for_one_phone": sorted(refs)})
    result.counts = {
        "acceptances": len(acceptances),
        "recipients_accepted": len(by_reference),
        "recipients_accepted_more_than_once": doubled,
        "extra_acceptances": extra,
        "phones_sent_twice_under_other_references": same_phone,
        "acceptances_for_unknown_recipients": unexpected,
    }
    result.valid = doubled == 0 and same_phone == 0
    return result

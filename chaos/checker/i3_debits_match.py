"""I3: credits debited per campaign = messages the provider accepted for it (times their segments).

Ground truth: the fake Mitto's ledger on one side, the service's credit ledger on the other. Both
directions are violations: an overcharge (a double debit) and an undercharge (a message sent and never
paid for, e.g. a debit lost between two transactions). Safeguard: debit with the result, once (5).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import cast

from chaos.checker.evidence import Acceptance, DatabaseSnapshot
from chaos.checker.result import CheckResult
from service.db.models import LedgerKind

ID = "I3"
TITLE = "credits debited per campaign = messages the provider accepted for it"


def check(acceptances: list[Acceptance], snapshot: DatabaseSnapshot) -> CheckResult:
    result = CheckResult(ID, TITLE, True)
    counted = Counter(a.campaign_id for a in acceptances)
    counted.pop(None, None)  # a reference this service never made: I1 counts those
    accepted: Counter[int] = cast("Counter[int]", counted)
    debited: dict[int, int] = defaultdict(int)
    debit_entries: Counter[int] = Counter()
    for entry in snapshot.ledger:
        if entry["kind"] == LedgerKind.DEBIT.value and entry["campaign_id"] is not None:
            debited[entry["campaign_id"]] -= entry["amount"]
            debit_entries[entry["campaign_id"]] += 1
    over = under = 0
    over_credits = under_credits = 0
    for campaign_id in sorted(set(accepted) | set(debited)):
        campaign = snapshot.campaigns.get(campaign_id)
        segments = int(campaign["segments"]) if campaign else 1
        expected = accepted.get(campaign_id, 0) * segments
        actual = debited.get(campaign_id, 0)
        if actual == expected:
            continue
        if actual > expected:
            over += 1
            over_credits += actual - expected
        else:
            under += 1
            under_credits += expected - actual
        result.witness(
            {
                "campaign_id": campaign_id,
                "accepted_messages": accepted.get(campaign_id, 0),
                "segments": segments,
                "expected_debit": expected,
                "debited": actual,
                "debit_entries": debit_entries.get(campaign_id, 0),
                "difference": actual - expected,
            }
        )
    result.counts = {
        "campaigns_checked": len(set(accepted) | set(debited)),
        "accepted_messages": sum(accepted.values()),
        "debited_credits": sum(debited.values()),
        "campaigns_overcharged": over,
        "credits_overcharged": over_credits,
        "campaigns_undercharged": under,
        "credits_undercharged": under_credits,
    }
    result.valid = over == 0 and under == 0
    return result

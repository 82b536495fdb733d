"""I3: credits debited per campaign = messages the provider accepted for it (times their segments).

Ground truth: the fake Mitto's ledger on one side, the service's credit ledger on the other. Both
directions are violations: an overcharge (a double debit) and an undercharge (a message sent and never
paid for, e.g. a debit lost between two transactions). Safeguard: debit with the result, once (5).
Each witness says which it was: an undercharge made of second acceptances of recipients already paid for
is a double send (I1 says so too) that the service never knew it made, not a lost debit; the rest of it is
messages sent and recorded whose debit never came. (A seed-profile swarm's I3 failure was all the first.)
"""

from __future__ import annotations

import operator
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import cast

from chaos.checker.evidence import AcceptedLike, DatabaseSnapshot
from chaos.checker.result import CheckResult
from service.db.models import LedgerKind

_CAMPAIGN = operator.attrgetter("campaign_id")

ID = "I3"
TITLE = "credits debited per campaign = messages the provider accepted for it"


def check(acceptances: Sequence[AcceptedLike], snapshot: DatabaseSnapshot) -> CheckResult:
    result = CheckResult(ID, TITLE, True)
    counted = Counter(map(_CAMPAIGN, acceptances))
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
    differing: list[tuple[int, int, int, int]] = []  # (campaign, segments, expected, debited)
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
        differing.append((campaign_id, segments, expected, actual))
    # The distinct recipients reached, only of campaigns that differ: a clean run (a million
    # acceptances) pays nothing for the witnesses' explanation.
    reached: dict[int, set[int | None]] = {campaign_id: set() for campaign_id, *_ in differing}
    if reached:
        for acceptance in acceptances:
            if acceptance.campaign_id in reached:
                reached[acceptance.campaign_id].add(acceptance.recipient_id)
    for campaign_id, segments, expected, actual in differing:
        double_sent = (accepted.get(campaign_id, 0) - len(reached[campaign_id])) * segments
        kind, why = _explain(actual - expected, double_sent)
        result.witness(
            {
                "campaign_id": campaign_id,
                "accepted_messages": accepted.get(campaign_id, 0),
                "recipients_reached": len(reached[campaign_id]),
                "segments": segments,
                "expected_debit": expected,
                "debited": actual,
                "debit_entries": debit_entries.get(campaign_id, 0),
                "difference": actual - expected,
                "kind": kind,
                "why": why,
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


def _explain(difference: int, double_sent_credits: int) -> tuple[str, str]:
    """What the difference is made of, as far as the two ledgers tell: the witness's kind (which
    `smslab shrink` keeps failing) and its why."""
    if difference > 0:
        return "double_debit", f"{difference} credit(s) debited for no accepted message: a double debit"
    short = -difference
    if double_sent_credits >= short:
        return "double_send", (
            f"the {short} credit(s) not debited are second acceptances of recipients already paid for: a "
            "double send (see I1) the service never recorded, not a lost debit"
        )
    lost = short - double_sent_credits
    why = f"{lost} credit(s) of messages accepted once were never debited: a debit lost after the send"
    if double_sent_credits:
        why += f"; {double_sent_credits} more are double sends (see I1)"
    return "lost_debit", why

"""I5: each succeeded payment credited exactly once; each refund deducted once.

Ground truth: the fake Stripe's ledger (payments taken, refunds made). Against it, the service's credit
ledger entries for each Checkout Session (`purchase:{session}`) and each refund (`refund:{re_...}`), and
its refund records: a refund's expected credits are floor(credits x refund amount / charge amount), and
what was not deducted must be recorded as a shortfall, never silently dropped. A payment whose events the
service never acknowledged is not the service's fault: it is counted apart, and makes the verdict
unknown rather than invalid. Safeguard: webhooks take effect once (6).
"""

from __future__ import annotations

from collections import defaultdict

from chaos.checker.evidence import DatabaseSnapshot, Row, StripeTruth
from chaos.checker.result import CheckResult
from service.db.models import LedgerKind

ID = "I5"
TITLE = "each succeeded payment credited exactly once; each refund deducted once"


def _key_subject(key: str, prefix: str) -> str | None:
    if not key.startswith(prefix):
        return None
    return key[len(prefix) :].split(":delivery:")[0]


def check(truth: StripeTruth, snapshot: DatabaseSnapshot, stripe_acknowledged: bool) -> CheckResult:
    """`stripe_acknowledged`: whether the service acknowledged any Stripe event at all (without that,
    a missing credit may be the lab's unreachable service, not a missing safeguard)."""
    result = CheckResult(ID, TITLE, True)
    credited: dict[str, list[int]] = defaultdict(list)
    deducted: dict[str, list[int]] = defaultdict(list)
    for entry in snapshot.ledger:
        key = str(entry.get("idempotency_key") or "")
        if entry["kind"] == LedgerKind.PURCHASE.value and (session := _key_subject(key, "purchase:")):
            credited[session].append(int(entry["amount"]))
        elif entry["kind"] == LedgerKind.REFUND.value and (refund_key := _key_subject(key, "refund:")):
            deducted[refund_key].append(-int(entry["amount"]))
    counts = {
        "payments": len(truth.payments),
        "payments_credited_once": 0,
        "payments_credited_more_than_once": 0,
        "payments_credited_wrong_amount": 0,
        "payments_not_credited": 0,
        "refunds": len(truth.refunds),
        "refunds_deducted_once": 0,
        "refunds_deducted_more_than_once": 0,
        "refunds_missing": 0,
        "refund_shortfalls_flagged": 0,
    }
    for session_id, payment in truth.payments.items():
        entries = credited.get(session_id, [])
        if len(entries) == 1 and entries[0] == payment.credits:
            counts["payments_credited_once"] += 1
            continue
        if not entries:
            counts["payments_not_credited"] += 1
        elif len(entries) > 1:
            counts["payments_credited_more_than_once"] += 1
        else:
            counts["payments_credited_wrong_amount"] += 1
        result.witness(
            {"session": session_id, "purchased_credits": payment.credits, "ledger_entries": entries}
        )
    # A refund's records by the refund they are for: the unsafe variant stores one per delivery, under
    # the delivery's own key (`re_...:delivery:...`), so a record is found by its refund, not its key.
    records: dict[str, list[Row]] = defaultdict(list)
    for row in snapshot.refunds.values():
        records[str(row["refund_id"]).split(":delivery:")[0]].append(row)
    for refund in truth.refunds:
        paid = truth.charges.get(refund.charge_id)
        expected = paid.credits * refund.amount_cents // max(1, paid.amount_cents) if paid else 0
        entries = deducted.get(refund.refund_id, [])
        kept = records.get(refund.refund_id, [])
        applied = [row for row in kept if row.get("applied")]
        shortfall = sum(int(row["shortfall"]) for row in applied)
        counts["refund_shortfalls_flagged"] += 1 if shortfall else 0
        if len(entries) > 1 or len(applied) > 1:
            # Taken twice, or taken once and then again as a shortfall (nothing was left the second time)
            counts["refunds_deducted_more_than_once"] += 1
            why = "applied by more than one delivery"
        elif not kept:
            counts["refunds_missing"] += 1
            why = "no record of the refund: the service never applied it"
        elif sum(entries) + shortfall != expected:
            counts["refunds_missing"] += 1
            why = "deducted and flagged short add up to less or more than the refund's credits"
        else:
            counts["refunds_deducted_once"] += 1
            continue
        result.witness(
            {
                "refund": refund.refund_id,
                "charge": refund.charge_id,
                "expected_credits": expected,
                "ledger_deductions": entries,
                "recorded_shortfall": shortfall,
                "records": len(kept),
                "applied_records": len(applied),
                "why": why,
            }
        )
    result.counts = counts
    doubled = counts["payments_credited_more_than_once"] + counts["refunds_deducted_more_than_once"]
    wrong = counts["payments_credited_wrong_amount"]
    missing = counts["payments_not_credited"] + counts["refunds_missing"]
    if doubled or wrong:
        result.valid = False
    elif missing:
        # Missing effects are violations only if the service acknowledged Stripe's events at all;
        # otherwise the lab could not reach it and cannot tell.
        result.valid = False if stripe_acknowledged else "unknown"
        if not stripe_acknowledged:
            result.note = "no Stripe event was ever acknowledged by the service"
    return result

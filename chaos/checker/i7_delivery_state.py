"""I7: a message's final delivery state is the last state the provider reported (and the service heard).

Ground truth: which of the fake Mitto's delivery reports the service acknowledged
(`webhook_deliveries.jsonl`), and, for a message with two different final reports, the order the
provider made them in (`mitto_dlr.jsonl`). For every message the service recorded, the expected state
is the final status of the last acknowledged final report; if none was acknowledged, `sent` (lost
reports cannot count against the service), or the status of a final report whose delivery reached the
service and went unanswered (it may have committed before the answer was lost). A regression (a final
state overwritten by a late intermediate report) or a report dropped because it came early shows here.
Safeguard: delivery reports forward-only and never lost (7).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from chaos.checker.evidence import DatabaseSnapshot, DeliveryAttempt, ProviderReport, columns
from chaos.checker.result import CheckResult
from service.sending.delivery_reports import FINAL_STATUSES

ID = "I7"
TITLE = "final delivery state = last state the provider reported"


def check(
    reports: Callable[[], list[ProviderReport]], deliveries: list[DeliveryAttempt], snapshot: DatabaseSnapshot
) -> CheckResult:
    """`reports` loads the provider's report ledger, needed only when one message was reported twice."""
    result = CheckResult(ID, TITLE, True)
    final_state = {f"dlr.{status}": state.value for status, state in FINAL_STATUSES.items()}
    # What the service heard: the final reports it acknowledged, from the delivery ledger (one
    # comprehension and a dict build: this runs over two million deliveries in a big run).
    finals = [
        (d.message, state)
        for d in deliveries
        if d.acknowledged
        and (state := final_state.get(d.type or "")) is not None
        and d.provider == "mitto"
        and d.message is not None
    ]
    heard: dict[str, str] = dict(finals)
    # Final reports whose delivery went unanswered after reaching the service: applied or not, no one
    # can tell (Jepsen's "info"). A message none of whose final reports was acknowledged may show one of
    # these, or still `sent`.
    maybe_applied: dict[str, set[str]] = {}
    unacknowledged = [d for d in deliveries if not d.acknowledged]  # few: a cheap first cut of millions
    for d in unacknowledged:
        if d.may_have_taken_effect and d.provider == "mitto" and d.message is not None:
            state = final_state.get(d.type or "")
            if state is not None:
                maybe_applied.setdefault(d.message, set()).add(state)
    contested: set[str] = set()
    if len(set(finals)) != len(heard):
        seen: dict[str, str] = {}
        contested = {m for m, state in finals if seen.setdefault(m, state) != state}
    expected = heard
    if contested:
        # Two different final reports heard for one message: the provider's order decides which one
        # counts (the last it reported), so those messages are settled from its report ledger.
        acknowledged = {d.event for d in deliveries if d.provider == "mitto" and d.acknowledged}
        for report in reports():
            state = final_state.get(f"dlr.{report.status}")
            if (
                report.message_id in contested
                and state is not None
                and f"{report.message_id}:{report.status}" in acknowledged
            ):
                expected[report.message_id] = state
    outcomes: Counter[str] = Counter()
    recorded = 0
    for message_id, recipient_id, have in columns(
        snapshot.recipients.values(), "provider_message_id", "id", "status"
    ):
        if not message_id:
            continue
        recorded += 1
        want = expected.get(message_id)
        if want is None:
            if have == "sent":
                continue
            if have in maybe_applied.get(message_id, ()):
                outcomes["applied_unacknowledged"] += 1
                continue
            want = "sent"
        if have == want:
            continue
        kind = "regressed" if have == "sent" else "wrong_final_state"
        outcomes[kind] += 1
        result.witness(
            {"message_id": message_id, "recipient_id": recipient_id, "expected": want, "recorded": have}
        )
    outcomes["matching"] = recorded - outcomes["regressed"] - outcomes["wrong_final_state"]
    outcomes["final_reports_acknowledged"] = len(expected)
    outcomes["messages_with_two_final_reports"] = len(contested)
    outcomes["messages_recorded"] = recorded
    result.counts = {
        "messages_recorded": outcomes["messages_recorded"],
        "final_reports_acknowledged": outcomes["final_reports_acknowledged"],
        "matching": outcomes["matching"],
        "regressed_or_missing_final": outcomes["regressed"],
        "wrong_final_state": outcomes["wrong_final_state"],
        "messages_with_two_final_reports": outcomes["messages_with_two_final_reports"],
        "final_applied_without_acknowledgement": outcomes["applied_unacknowledged"],
    }
    result.valid = not (outcomes["regressed"] or outcomes["wrong_final_state"])
    return result

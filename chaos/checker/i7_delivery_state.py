"""I7: a message's final delivery state is the last state the provider reported (and the service heard).

Ground truth: which of the fake Mitto's delivery reports the service acknowledged
(`webhook_deliveries.jsonl`), and, for a message with two different final reports, the order the
provider made them in (`mitto_dlr.jsonl`). For every message the service recorded, the expected state
is the final status of the last acknowledged final report, or `sent` if none was acknowledged (lost
reports cannot count against the service). A regression (a final state overwritten
by a late intermediate report) or a report dropped because it came early shows here. Safeguard:
delivery reports forward-only and never lost (7).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from chaos.checker.evidence import DatabaseSnapshot, DeliveryAttempt, ProviderReport
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
    # What the service heard: the final reports it acknowledged, from the delivery ledger.
    heard: dict[str, str] = {}
    contested: set[str] = set()
    for d in deliveries:
        if d.acknowledged and d.provider == "mitto" and d.message is not None:
            state = final_state.get(d.type or "")
            if state is not None and heard.setdefault(d.message, state) != state:
                contested.add(d.message)
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
    recorded = {
        r["provider_message_id"]: r for r in snapshot.recipients.values() if r.get("provider_message_id")
    }
    outcomes: Counter[str] = Counter()
    for message_id, recipient in recorded.items():
        want = expected.get(message_id, "sent")
        have = recipient["status"]
        if have == want:
            continue
        kind = "regressed" if have == "sent" else "wrong_final_state"
        outcomes[kind] += 1
        result.witness(
            {"message_id": message_id, "recipient_id": recipient["id"], "expected": want, "recorded": have}
        )
    outcomes["matching"] = len(recorded) - outcomes["regressed"] - outcomes["wrong_final_state"]
    outcomes["final_reports_acknowledged"] = len(expected)
    outcomes["messages_with_two_final_reports"] = len(contested)
    outcomes["messages_recorded"] = len(recorded)
    result.counts = {
        "messages_recorded": outcomes["messages_recorded"],
        "final_reports_acknowledged": outcomes["final_reports_acknowledged"],
        "matching": outcomes["matching"],
        "regressed_or_missing_final": outcomes["regressed"],
        "wrong_final_state": outcomes["wrong_final_state"],
        "messages_with_two_final_reports": outcomes["messages_with_two_final_reports"],
    }
    result.valid = not (outcomes["regressed"] or outcomes["wrong_final_state"])
    return result

"""I7: a message's final delivery state is the last state the provider reported (and the service heard).

Ground truth: the fake Mitto's delivery reports in the order they happened (`mitto_dlr.jsonl`) and which
of them the service acknowledged (`webhook_deliveries.jsonl`). For every message the service recorded,
the expected state is the final status of the last acknowledged final report, or `sent` if none was
acknowledged (lost reports cannot count against the service). A regression (a final state overwritten
by a late intermediate report) or a report dropped because it came early shows here. Safeguard:
delivery reports forward-only and never lost (7).
"""

from __future__ import annotations

from collections import Counter

from chaos.checker.evidence import DatabaseSnapshot, DeliveryAttempt, ProviderReport
from chaos.checker.result import CheckResult
from service.sending.delivery_reports import FINAL_STATUSES

ID = "I7"
TITLE = "final delivery state = last state the provider reported"


def check(
    reports: list[ProviderReport], deliveries: list[DeliveryAttempt], snapshot: DatabaseSnapshot
) -> CheckResult:
    result = CheckResult(ID, TITLE, True)
    acknowledged = {d.event for d in deliveries if d.provider == "mitto" and d.acknowledged}
    final_state = {status: state.value for status, state in FINAL_STATUSES.items()}
    expected: dict[str, str] = {}
    for report in reports:
        state = final_state.get(report.status)
        if state is not None and f"{report.message_id}:{report.status}" in acknowledged:
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
    outcomes["messages_recorded"] = len(recorded)
    result.counts = {
        "messages_recorded": outcomes["messages_recorded"],
        "final_reports_acknowledged": outcomes["final_reports_acknowledged"],
        "matching": outcomes["matching"],
        "regressed_or_missing_final": outcomes["regressed"],
        "wrong_final_state": outcomes["wrong_final_state"],
    }
    result.valid = not (outcomes["regressed"] or outcomes["wrong_final_state"])
    return result

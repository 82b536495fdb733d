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

import operator
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import compress, filterfalse

from chaos.checker.evidence import (
    DatabaseSnapshot,
    DeliveryAttempt,
    DeliveryOutcome,
    ProviderReport,
    Row,
    column,
    columns,
)
from chaos.checker.result import CheckResult
from service.sending.delivery_reports import FINAL_STATUSES

ID = "I7"
TITLE = "final delivery state = last state the provider reported"

# A final report's delivery type (`dlr.Delivered`) -> the recipient state it must leave (one shared string
# per state, however many messages hear it).
FINAL_STATE = {f"dlr.{status}": state.value for status, state in FINAL_STATUSES.items()}
_MESSAGE = operator.attrgetter("message")
_TYPE = operator.attrgetter("type")
_ACKNOWLEDGED = operator.attrgetter("acknowledged")
_HAS_STATE = operator.itemgetter(1)  # of (message, state) pairs: filter() keeps those with a state


@dataclass
class HeardReports:
    """What the service heard of the provider's final reports, gathered from the delivery ledger a block
    at a time (two million deliveries need not be held at once)."""

    heard: dict[str, str] = field(default_factory=dict)  # message -> state of its last acknowledged final
    contested: set[str] = field(default_factory=set)  # two different final states acknowledged
    # Final reports whose delivery went unanswered after reaching the service: applied or not, no one
    # can tell (Jepsen's "info"). A message none of whose final reports was acknowledged may show one of
    # these, or still `sent`.
    maybe_applied: dict[str, set[str]] = field(default_factory=dict)

    def add(self, deliveries: Sequence[DeliveryOutcome]) -> None:
        """The next deliveries, in ledger order."""
        # (message, state) of every acknowledged final report, built by C-level maps and filters: no
        # Python frame per delivery. Only Mitto's types are `dlr.*`, so a state names a Mitto report.
        pairs = zip(map(_MESSAGE, deliveries), map(FINAL_STATE.get, map(_TYPE, deliveries)), strict=True)
        acknowledged = compress(pairs, map(_ACKNOWLEDGED, deliveries))
        finals: list[tuple[str, str]] = list(filter(_HAS_STATE, acknowledged))  # type: ignore[arg-type]
        latest = dict(finals)
        latest.pop(None, None)  # type: ignore[call-overload]  # a report without a message id
        # One message with two different final states in this block? Only when some message is in it
        # twice (a redelivery), and then only if its pairs are not all the same.
        if len(finals) != len(latest) and len(set(finals)) != len(latest):
            seen: dict[str, str] = {}
            self.contested |= {m for m, state in finals if seen.setdefault(m, state) != state}
            self.contested.discard(None)
        if self.heard:
            # Messages heard in an earlier block too: found by a set intersection in C; the states are
            # compared only for those (a message's reports mostly land in one block).
            earlier = self.heard
            again = latest.keys() & earlier.keys()
            self.contested |= {m for m in again if earlier[m] != latest[m]}
        self.heard.update(latest)
        for d in filterfalse(_ACKNOWLEDGED, deliveries):  # few: found in C among millions
            if d.may_have_taken_effect and d.provider == "mitto" and d.message is not None:
                state = FINAL_STATE.get(d.type or "")
                if state is not None:
                    self.maybe_applied.setdefault(d.message, set()).add(state)


def acknowledged_events(blocks: Iterable[Sequence[DeliveryAttempt]], messages: set[str]) -> set[str]:
    """The Mitto events (`message:status`) the service acknowledged, for these messages only."""
    return {
        d.event
        for block in blocks
        for d in block
        if d.acknowledged and d.provider == "mitto" and d.message in messages and d.event is not None
    }


def check(
    reports: Callable[[], list[ProviderReport]], deliveries: list[DeliveryAttempt], snapshot: DatabaseSnapshot
) -> CheckResult:
    """I7 from deliveries held in memory (`reports` loads the provider's report ledger, needed only
    when one message was reported twice)."""
    heard = HeardReports()
    heard.add(deliveries)
    return check_heard(
        heard,
        lambda: [reports()],
        lambda messages: acknowledged_events([deliveries], messages),
        [snapshot.recipients.values()],
    )


def check_heard(
    heard: HeardReports,
    reports: Callable[[], Iterable[Sequence[ProviderReport]]],
    acknowledged: Callable[[set[str]], set[str]],
    recipients: Iterable[Collection[Row]],
) -> CheckResult:
    """I7 from what was heard, against every recipient the service recorded (`recipients`: blocks of
    rows, so a saved table can be read a block at a time). Only for messages with two different final
    reports heard are the provider's report ledger (`reports`, blocks in its order) and the acknowledged
    events read again."""
    result = CheckResult(ID, TITLE, True)
    expected = heard.heard
    maybe_applied = heard.maybe_applied
    contested = heard.contested
    if contested:
        # Two different final reports heard for one message: the provider's order decides which one
        # counts (the last it reported), so those messages are settled from its report ledger.
        events = acknowledged(contested)
        for block in reports():
            for report in block:
                state = FINAL_STATE.get(f"dlr.{report.status}")
                if (
                    report.message_id in contested
                    and state is not None
                    and f"{report.message_id}:{report.status}" in events
                ):
                    expected[report.message_id] = state
    outcomes: Counter[str] = Counter()
    recorded = 0
    wanted = expected.get
    for rows in recipients:
        messages = list(column(rows, "provider_message_id"))
        recorded += len(messages) - messages.count(None) - messages.count("")
        # One lean pass finds the rows that are not what was heard (nothing heard: `sent`); only those
        # go through the rules below.
        odd = {
            m
            for m, have in zip(messages, column(rows, "status"), strict=True)
            if m and wanted(m, "sent") != have
        }
        if odd:
            _judge(
                (row for row in columns(rows, "provider_message_id", "id", "status") if row[0] in odd),
                expected,
                maybe_applied,
                outcomes,
                result,
            )
    outcomes["matching"] = (
        recorded - outcomes["regressed"] - outcomes["wrong_final_state"] - outcomes["final_unheard"]
    )
    outcomes["final_reports_acknowledged"] = len(expected)
    outcomes["messages_with_two_final_reports"] = len(contested)
    outcomes["messages_recorded"] = recorded
    result.counts = {
        "messages_recorded": outcomes["messages_recorded"],
        "final_reports_acknowledged": outcomes["final_reports_acknowledged"],
        "matching": outcomes["matching"],
        "regressed_or_missing_final": outcomes["regressed"],
        "wrong_final_state": outcomes["wrong_final_state"],
        "final_state_no_delivery_brought": outcomes["final_unheard"],
        "messages_with_two_final_reports": outcomes["messages_with_two_final_reports"],
        "final_applied_without_acknowledgement": outcomes["applied_unacknowledged"],
    }
    result.valid = not (outcomes["regressed"] or outcomes["wrong_final_state"] or outcomes["final_unheard"])
    return result


WHY = {
    "regressed": "a final report was acknowledged, yet the message is recorded `sent`: the report was "
    "dropped or overwritten by a late one",
    "wrong_final_state": "the recorded final state is not that of the last final report acknowledged",
    "final_unheard": "a final state that no acknowledged delivery brought (in a run stopped with deliveries "
    "queued, one may have been in flight)",
}


def _judge(
    rows: Iterable[tuple[str, int, str]],
    expected: dict[str, str],
    maybe_applied: dict[str, set[str]],
    outcomes: Counter[str],
    result: CheckResult,
) -> None:
    """The rules for recorded messages whose state is not the one heard (or `sent`, when none was)."""
    for message_id, recipient_id, have in rows:
        want = expected.get(message_id)
        unheard = want is None
        if want is None:
            if have == "sent":
                continue
            if have in maybe_applied.get(message_id, ()):
                outcomes["applied_unacknowledged"] += 1
                continue
            want = "sent"
        if have == want:
            continue
        # A final state no delivery of the ledger brought: when the run stopped with deliveries still
        # queued, the one that brought it may have been in flight (applied, its attempt not yet written).
        kind = "regressed" if have == "sent" else "final_unheard" if unheard else "wrong_final_state"
        outcomes[kind] += 1
        row = {
            "message_id": message_id,
            "recipient_id": recipient_id,
            "expected": want,
            "recorded": have,
            "why": WHY[kind],
        }
        # a regression may be explained by a run that did not settle; the others must be seen, not
        # crowded out by twenty of those
        result.witness(row, None if kind == "regressed" else lambda kept: kept["recorded"] == "sent")

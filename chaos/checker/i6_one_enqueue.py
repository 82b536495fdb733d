"""I6: one enqueue per campaign; the same Idempotency-Key always gets the same response.

Ground truth: the history the clients recorded (what the API actually answered). Violations:
- two different keys both got 202 for one campaign (two enqueues won);
- one key got 202 responses with different bodies (the stored response was not replayed);
- one key got a 202 and, before or after it, a definite refusal (`campaign-not-draft`, 402, 422):
  a request with that key was executed again instead of being answered from the stored response.
A 409 `idempotency-key-in-flight` (the first request still running), a 429 `rate-limited` or a 503
`overloaded` (refused before the key was claimed, so a retry with it may well succeed) and outcomes
that are unknown (timeouts, 5xx) are not violations. Order does not matter: with the key stored, no
request with it can ever be refused for a reason its twin did not meet. Safeguard: the idempotent enqueue (1).

Enqueues were sent but not one was decided (every answer a timeout, a cut connection, a 5xx, a 429 or an
in-flight 409): then nothing was judged, and I6 is unknown, not valid. A CI matrix run once passed
`enqueue_idempotency` off as "I6 valid" because a SQLite-held lock and API kills left all 60 enqueues of
its six seconds unanswered.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from chaos.checker.result import CheckResult
from chaos.history import FAIL, INVOKE, OK

ID = "I6"
TITLE = "one enqueue per campaign; same key, same response"
IN_FLIGHT = "idempotency-key-in-flight"
RATE_LIMITED = "rate-limited"
OVERLOADED = "overloaded"  # a full API process's 503, before any handler ran (service/admission.py)
NOT_A_DECISION = {IN_FLIGHT, RATE_LIMITED, OVERLOADED}  # answers that decided nothing about the key


def check(history: list[dict[str, Any]]) -> CheckResult:
    result = CheckResult(ID, TITLE, True)
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    winners: dict[tuple[str, int], set[str]] = defaultdict(set)
    enqueue_ops = 0
    attempts = 0
    decided = 0
    for entry in history:
        if entry.get("f") != "enqueue":
            continue
        if entry["type"] == INVOKE:
            attempts += 1
        if entry["type"] not in (OK, FAIL):
            continue
        enqueue_ops += 1
        if entry["type"] == OK or entry["value"].get("problem") not in NOT_A_DECISION:
            decided += 1
        value = entry["value"]
        by_key[(value["shop"], value["key"])].append(entry)
        if entry["type"] == OK and value.get("status") == 202:
            winners[(value["shop"], value["campaign"])].add(value["key"])
    two_winners = 0
    for (shop, campaign), keys in winners.items():
        if len(keys) > 1:
            two_winners += 1
            result.witness({"shop": shop, "campaign": campaign, "keys_that_won": sorted(keys)})
    answered_differently = 0
    for (shop, key), entries in by_key.items():
        accepted = [e for e in entries if e["type"] == OK]
        if not accepted:
            continue
        bodies = {repr(e["value"].get("response")) for e in accepted}
        refusals = [
            e for e in entries if e["type"] == FAIL and e["value"].get("problem") not in NOT_A_DECISION
        ]
        if len(bodies) == 1 and not refusals:
            continue
        answered_differently += 1
        odd = refusals[0] if refusals else accepted[-1]
        result.witness(
            {
                "shop": shop,
                "key": key,
                "campaign": accepted[0]["value"]["campaign"],
                "accepted": {"index": accepted[0]["index"], "status": accepted[0]["value"].get("status")},
                "also_answered": {
                    "index": odd["index"],
                    "status": odd["value"].get("status"),
                    "problem": odd["value"].get("problem"),
                    "different_body": len(bodies) > 1,
                },
            }
        )
    result.counts = {
        "enqueue_attempts": attempts,
        "enqueue_outcomes": enqueue_ops,
        "enqueue_outcomes_decided": decided,
        "keys": len(by_key),
        "campaigns_enqueued": len(winners),
        "campaigns_with_two_winners": two_winners,
        "keys_answered_differently": answered_differently,
    }
    result.valid = not two_winners and not answered_differently
    if result.valid and attempts and not decided:
        result.valid = "unknown"
        result.note = (
            f"{attempts} enqueue(s) sent and none decided (timed out, cut off, 5xx, 429 or in flight): "
            "nothing to judge"
        )
    return result

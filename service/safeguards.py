"""The safeguard registry: each safeguard, the invariant it protects, the fault it survives, and its switch.

One hop from any of them to all the others: each entry names the lab checker that proves its invariant,
the runbook section an operator follows when that invariant fails, and the test file that holds its
switched-off twin (`tests/test_registry.py` fails when one of them is missing or does not mention it).

Every safeguard is on in production. The lab may switch one off (`SMSLAB_SAFEGUARDS_OFF=name,...`, only
with `SMSLAB_LAB_ALLOW_UNSAFE=true`) to show that the checker notices its absence. Code that implements a
safeguard asks `is_on(settings, NAME)` at the exact place where the unsafe variant diverges, so a reader can
grep a safeguard's name and find its implementation, its unsafe variant, its test and its runbook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.settings import Settings


@dataclass(frozen=True)
class Safeguard:
    number: int
    name: str
    invariant: str
    protects: str
    survives: str
    unsafe_variant: str
    test: str  # holds a test with this safeguard switched off, showing its invariant fail
    checker: str  # the lab's checker module for `invariant`
    runbook: str  # the runbook with a section for `invariant`


ENQUEUE_IDEMPOTENCY = "enqueue_idempotency"
ENQUEUE_TRANSACTION = "enqueue_transaction"
CLAIM_BEFORE_SEND = "claim_before_send"
RESOLVE_AMBIGUOUS_SENDS = "resolve_ambiguous_sends"
DEBIT_WITH_RESULT = "debit_with_result"
RECONCILER = "reconciler"
TENANT_RATE_LIMITS = "tenant_rate_limits"
LOG_REDACTION = "log_redaction"
WEBHOOK_EFFECT_ONCE = "webhook_effect_once"
DELIVERY_REPORTS_FORWARD_ONLY = "delivery_reports_forward_only"
ERASURE_IS_FINAL = "erasure_is_final"

REGISTRY: dict[str, Safeguard] = {
    sg.name: sg
    for sg in (
        Safeguard(
            1,
            ENQUEUE_IDEMPOTENCY,
            "I6",
            "one enqueue per campaign; the same Idempotency-Key always gets the same response",
            "client retries after a timeout, duplicate submits, two enqueues racing",
            "keys ignored and the draft check is a read followed by a write",
            "tests/test_enqueue.py",
            "chaos/checker/i6_one_enqueue.py",
            "docs/runbooks/double-send-suspected.md",
        ),
        Safeguard(
            2,
            ENQUEUE_TRANSACTION,
            "I4",
            "status change, recipient snapshot, credit reservation and stored response commit together",
            "a crash or an error half-way through enqueue (e.g. insufficient credits found late)",
            "each step commits on its own, as in the seed",
            "tests/test_enqueue.py",
            "chaos/checker/i4_credits_conserved.py",
            "docs/runbooks/credit-reconciliation.md",
        ),
        Safeguard(
            3,
            CLAIM_BEFORE_SEND,
            "I1",
            "a recipient is claimed (pending -> sending, attempt id, lease) and committed before any "
            "provider call",
            "a batch job run twice at once, a worker killed after the provider accepted",
            "the job selects pending rows and sends them without claiming",
            "tests/test_sending.py",
            "chaos/checker/i1_single_acceptance.py",
            "docs/runbooks/double-send-suspected.md",
        ),
        Safeguard(
            4,
            RESOLVE_AMBIGUOUS_SENDS,
            "I1",
            "a send whose outcome is unknown is resolved by looking up its reference before any resend",
            "the provider accepted but the response was lost (timeout, reset, worker killed)",
            "an expired claim is assumed unsent and goes back to pending",
            "tests/test_sending.py",
            "chaos/checker/i1_single_acceptance.py",
            "docs/runbooks/double-send-suspected.md",
        ),
        Safeguard(
            5,
            DEBIT_WITH_RESULT,
            "I3",
            "rows marked sent, the debit, the reservation decrement and campaign counters commit in one "
            "transaction, conditional on the rows still being claimed by the same attempt",
            "a crash between recording and debiting; a slow worker finishing after the reconciler resolved",
            "rows are marked sent in one transaction and debited in a second, keyed by the provider's "
            "bulk id",
            "tests/test_sending.py",
            "chaos/checker/i3_debits_match.py",
            "docs/runbooks/credit-reconciliation.md",
        ),
        Safeguard(
            6,
            WEBHOOK_EFFECT_ONCE,
            "I5",
            "a provider event is recorded (unique per provider and event id) in the same transaction as its "
            "effect, and each effect is keyed by its business object (checkout session, refund)",
            "duplicate, concurrent and out-of-order deliveries; a crash half-way through a delivery",
            "each delivery is checked, recorded and applied in separate steps, and applied with no key of "
            "its own (the seed's replay service, unwired)",
            "tests/test_webhooks_stripe.py",
            "chaos/checker/i5_payments_once.py",
            "docs/runbooks/webhook-failures.md",
        ),
        Safeguard(
            7,
            DELIVERY_REPORTS_FORWARD_ONLY,
            "I7",
            "a delivery status only moves forward (sent -> delivered | undelivered | expired), and a report "
            "that arrives before its message id was recorded is kept and applied when it appears",
            "reordered, duplicated and early delivery reports",
            "every report overwrites the status; a report for an unknown message id is dropped",
            "tests/test_webhooks_mitto.py",
            "chaos/checker/i7_delivery_state.py",
            "docs/runbooks/webhook-failures.md",
        ),
        Safeguard(
            8,
            RECONCILER,
            "I2",
            "a periodic job resolves expired claims, re-enqueues pending batches, completes finished "
            "campaigns, releases leftover and expired reservations",
            "lost queue jobs (Redis restarted empty), killed workers, a crash between commit and job enqueue",
            "the reconcile job does nothing",
            "tests/test_reconcile.py",
            "chaos/checker/i2_nothing_stuck.py",
            "docs/runbooks/stuck-campaigns.md",
        ),
        Safeguard(
            9,
            TENANT_RATE_LIMITS,
            "I9",
            "each shop has a budget per route class, counted in Redis by every API process (GCRA, one "
            "atomic script); a request over it is refused with 429 and Retry-After before its body is read",
            "one tenant flooding the API with imports, checkouts and lists",
            "no limits: every request of every shop is served as it comes",
            "tests/test_rate_limits.py",
            "chaos/checker/i9_tenant_isolation.py",
            "docs/runbooks/rate-limiting.md",
        ),
        Safeguard(
            10,
            LOG_REDACTION,
            "I8",
            "every log line, ours and the libraries', passes one redaction step: phones, emails, tokens, "
            "secrets and Authorization headers never reach a log",
            "a handler or library that logs a request, a payload or an exception text",
            "log lines are rendered as they come",
            "tests/test_units.py",
            "chaos/checker/i8_no_pii.py",
            "docs/runbooks/personal-data-in-logs.md",
        ),
        Safeguard(
            11,
            ERASURE_IS_FINAL,
            "I8",
            "a customer's events are serialised on a per-customer row, and an erasure leaves a tombstone "
            "there: no customer webhook delivered after it brings the customer's data back",
            "a customer update retried by Shopify (or delayed) past the customer's redaction",
            "customer webhooks ignore the tombstone and re-create the contact",
            "tests/test_webhooks_shopify.py",
            "chaos/checker/i8_no_pii.py",
            "docs/runbooks/personal-data-in-logs.md",
        ),
    )
}


def is_on(settings: Settings, name: str) -> bool:
    """True unless the lab explicitly switched this safeguard off (settings validation guards the switch)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown safeguard {name!r}")
    return name not in settings.safeguards_off

"""Pure functions: segments, phones, log redaction, failpoint specs, cron intervals, references, checkers."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from pathlib import Path

import hypothesis
import hypothesis.strategies
import pytest
import structlog

from chaos.checker import i1_single_acceptance, i2_nothing_stuck, i3_debits_match, i4_credits_conserved
from chaos.checker.evidence import Acceptance, DatabaseSnapshot
from chaos.checker.result import CheckResult, compose, guarded
from service import failpoints, logs
from service.campaigns.segments import count_segments
from service.contacts.phones import InvalidPhone, normalize_phone
from service.sending.references import parse_reference, reference_for
from service.worker import cron_for_interval


@pytest.mark.parametrize(
    ("body", "segments"),
    [
        ("hi", 1),
        ("x" * 160, 1),
        ("x" * 161, 2),
        ("x" * 306, 2),
        ("x" * 307, 3),
        ("{" * 80, 1),  # extension characters count twice
        ("{" * 81, 2),
        ("é" * 160, 1),  # é is in the GSM alphabet
        ("ç" * 70, 1),  # ç is not (only Ç is): UCS-2
        ("ç" * 71, 2),
        ("🎉" * 35, 1),  # two UTF-16 units each
        ("🎉" * 36, 2),
    ],
)
def test_segments_follow_gsm_and_ucs2_rules(body: str, segments: int) -> None:
    assert count_segments(body) == segments


def test_phones_are_normalised_to_e164() -> None:
    assert normalize_phone("(202) 555-0143", "US") == "+12025550143"
    assert normalize_phone("+44 20 7946 0958", "US") == "+442079460958"
    assert normalize_phone("691 234 5678", "GR") == "+306912345678"
    for bad in ("", "12345", "+1999", "not a phone", "+" + "1" * 40):
        with pytest.raises(InvalidPhone):
            normalize_phone(bad, "US")


def test_redaction_masks_pii_and_secrets_wherever_they_appear() -> None:
    logs.register_secrets(["super-secret-dlr-token"])
    text = (
        "to +1 (202) 555-0143 and 2025550143 mail ada@example.com auth Bearer abc.def "
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig url /dlr?token=xyz&x=1 key whsec_abc123 "
        "raw super-secret-dlr-token"
    )
    redacted = logs.redact_text(text)
    for leaked in (
        "555-0143",
        "2025550143",
        "ada@example.com",
        "abc.def",
        "eyJ",
        "xyz",
        "whsec_abc123",
        "super-secret",
    ):
        assert leaked not in redacted, leaked
    assert logs.redact_text("campaign 42 batch 3") == "campaign 42 batch 3"
    event = logs.redact(None, "info", {"event": "x", "phone": "+12025550143", "nested": {"email": "a@b.co"}})
    assert event == {"event": "x", "phone": logs.REDACTED, "nested": {"email": logs.REDACTED}}


@pytest.mark.parametrize(
    "text",
    [
        "call (202) 555-0143 now",
        "call (202)555-0143 now",
        "call 202-555-0143 now",
        "call 202.555.0143 now",
        "uri tel:+1-202-555-0143",
        "uri tel:2025550143",
        "mail o'brien!x#@exämple.co.uk now",  # every form the contacts validator accepts
        "mail ada+tag@mail.example.com",
    ],
)
def test_redaction_catches_each_form_a_phone_or_email_is_typed_in(text: str) -> None:
    redacted = logs.redact_text(text)
    for digits in ("555-0143", "555.0143", "5550143", "exämple", "example.com"):
        assert digits not in redacted, (text, redacted)
    assert logs.redact_text("at 2026-12-01T10:00:00Z, request 1234-5678, uuid 123e4567-e89b") == (
        "at 2026-12-01T10:00:00Z, request 1234-5678, uuid 123e4567-e89b"
    )


def _redacted_by_every_pattern(text: str) -> str:
    """redact_text without its shortcut: every pattern applied, whatever the text."""
    for secret in logs._known_secrets:
        text = text.replace(secret, logs.REDACTED)
    for pattern, replacement in logs._TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


_PII_ALPHABET = "0123456789+-.() @=?&;:_/abcdeEJklnorstxyzBTLW\n\tä"


@hypothesis.settings(max_examples=3000, deadline=None)
@hypothesis.given(
    hypothesis.strategies.text(alphabet=_PII_ALPHABET, max_size=40)
    | hypothesis.strategies.sampled_from(
        [
            "Bearer x",
            "bearer  y",
            "tel:+1202",
            "TEL:555",
            "eyJa.eyJb.c",
            "whsec_1",
            "sk_live_a",
            "rk_test_b",
            "shpss_c",
            "shpat_d",
            "a@b.co",
            "?token=z",
            "x=1",
            "request",
            "/webhooks/mitto/dlr",
            "api_started",
        ]
    )
)
def test_redactions_shortcut_never_changes_what_is_masked(text: str) -> None:
    """Text the shortcut lets through unchanged must be text no pattern would have changed."""
    assert logs.redact_text(text) == _redacted_by_every_pattern(text)


def test_redaction_masks_sensitive_keys_in_any_spelling_and_sql_parameters() -> None:
    event = logs.redact(
        None,
        "info",
        {"event": "x", "firstName": "Ada", "phoneNumber": "1", "X-Shopify-Hmac-Sha256": "s", "batch_no": 3},
    )
    assert event == {
        "event": "x",
        "firstName": logs.REDACTED,
        "phoneNumber": logs.REDACTED,
        "X-Shopify-Hmac-Sha256": logs.REDACTED,
        "batch_no": 3,
    }
    logs.configure_logging("info", "json", process="unit")
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:  # what SQLAlchemy's engine logs with SMSLAB_LOG_SQL: a name is free text no pattern knows
        logging.getLogger("sqlalchemy.engine.Engine").warning("[%s] %r", "generated in 0.1s", ("Ada", 7))
    finally:
        handler.setStream(__import__("sys").stderr)
    assert "Ada" not in stream.getvalue()
    assert "generated in 0.1s" in stream.getvalue()


def test_library_log_lines_go_through_the_same_redaction() -> None:
    logs.configure_logging("info", "json", process="unit")
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        logging.getLogger("saq").info("Enqueuing job for %s", "+12025550143")
        structlog.get_logger("x").info("sent", to="+12025550143", authorization="Bearer t")
    finally:
        handler.setStream(__import__("sys").stderr)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert "+12025550143" not in stream.getvalue()
    assert lines[1]["to"] == logs.REDACTED


def test_saq_job_times_are_not_taken_for_phone_numbers() -> None:
    """Found writing the personal-data alert: every SAQ job line (`queued: 1764639793166`) was masked
    and counted as personal data found in text, so `smslab_log_redactions_total{kind="text"}` rose with
    every job and an alert on it could never be quiet. A phone in a SAQ line is still masked and counted."""
    from service.metrics import LOG_REDACTIONS

    logs.configure_logging("info", "json", process="unit")
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    text_redactions = LOG_REDACTIONS.labels(kind="text")
    before = text_redactions._value.get()
    try:
        job = "Job<function: send_batch, key: send:1:0, scheduled: 1764639793, queued: 1764639793166>"
        logging.getLogger("saq").info("Processing %s", job)
        counted_for_job = text_redactions._value.get() - before
        logging.getLogger("saq").info("Enqueuing job for %s", "12025550143")
    finally:
        handler.setStream(__import__("sys").stderr)
    first, second = (json.loads(line)["event"] for line in stream.getvalue().splitlines())
    assert first.endswith("scheduled: 2025-12-02T01:43:13.000Z, queued: 2025-12-02T01:43:13.166Z>")
    assert counted_for_job == 0
    assert second == f"Enqueuing job for {logs.REDACTED}"
    assert text_redactions._value.get() - before == 1


def test_without_log_redaction_personal_data_reaches_the_log() -> None:
    from service.settings import Settings, validate

    unsafe = validate(
        Settings(lab_allow_unsafe=True, safeguards_off=frozenset({"log_redaction"}), log_format="json")
    )
    logs.configure_for(unsafe, "unit")
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        structlog.get_logger("x").info("sent", to="+12025550143")
    finally:
        handler.setStream(__import__("sys").stderr)
        logs.configure_logging("info", "json", process="unit")
    assert "+12025550143" in stream.getvalue()


def test_failpoint_specs_are_validated() -> None:
    assert failpoints.parse_spec("send.after_claim=kill@0.25*3")["send.after_claim"].probability == 0.25
    assert set(failpoints.parse_spec("send.after_claim=raise,enqueue.before_commit=sleep:0.5*2")) == {
        "send.after_claim",
        "enqueue.before_commit",
    }
    for bad in (
        "nowhere=raise",
        "send.after_claim",
        "send.after_claim=explode",
        "send.after_claim=raise*0",
        "send.after_claim=raise@2",
    ):
        with pytest.raises(ValueError, match=r"."):
            failpoints.parse_spec(bad)


async def test_an_armed_failpoint_fires_only_as_often_as_asked() -> None:
    with failpoints.armed("send.after_claim", "raise", count=1):
        with pytest.raises(failpoints.SimulatedCrash):
            await failpoints.hit("send.after_claim")
        await failpoints.hit("send.after_claim")  # spent
    await failpoints.hit("send.after_claim")  # disarmed


async def test_each_process_start_draws_its_own_failpoint_sequence() -> None:
    """A restarted process must not draw what its killed predecessor drew: it would die on the same hit,
    and so would every restart after it (a crash loop instead of a fault at the asked probability)."""

    async def fired(stream: str) -> list[bool]:
        failpoints.configure("send.after_claim=raise@0.3", seed=7, stream=stream)
        outcomes = []
        for _ in range(40):
            try:
                await failpoints.hit("send.after_claim")
                outcomes.append(False)
            except failpoints.SimulatedCrash:
                outcomes.append(True)
        return outcomes

    try:
        first, again, restarted = await fired("api:0"), await fired("api:0"), await fired("api:1")
        assert first == again  # the same run's same process start replays
        assert first != restarted
        assert 0 < sum(restarted) < 40
    finally:
        failpoints.configure("")


def test_the_lab_names_each_process_start_for_its_failpoint_stream(tmp_path: Path) -> None:
    from chaos.processes import ManagedProcess

    script = "import os, sys; print(os.environ['SMSLAB_FAILPOINT_STREAM'], flush=True)"
    process = ManagedProcess("worker-1", [sys.executable, "-c", script], tmp_path / "worker.log")
    for _ in range(2):
        process.start()
        assert process.process is not None
        process.process.wait(30)
    assert (tmp_path / "worker.log").read_text().split() == ["worker-1:0", "worker-1:1"]


def test_cron_expressions_for_intervals() -> None:
    assert cron_for_interval(5) == "* * * * * */5"
    assert cron_for_interval(0.2) == "* * * * * */1"
    assert cron_for_interval(300) == "*/5 * * * *"
    assert cron_for_interval(7200) == "0 */2 * * *"


def test_references_round_trip() -> None:
    assert parse_reference(reference_for(12, 3456)) == (12, 3456)
    assert parse_reference("someone-elses-ref") is None


# --- checkers on hand-made evidence -----------------------------------------------------------------


def _acceptance(recipient: int, n: int = 0, campaign: int = 1) -> Acceptance:
    return Acceptance(
        f"c{campaign}-r{recipient}", f"m{recipient}-{n}", f"+1202555{recipient:04d}", 0.0, campaign, recipient
    )


def _world(recipients: int = 3, status: str = "sent", debited: int = 3) -> DatabaseSnapshot:
    snapshot = DatabaseSnapshot()
    snapshot.campaigns[1] = {
        "id": 1,
        "status": "completed",
        "segments": 1,
        "recipient_count": recipients,
        "last_activity_at": None,
    }
    for rid in range(1, recipients + 1):
        snapshot.recipients[rid] = {"id": rid, "campaign_id": 1, "status": status, "attempts": 1}
    snapshot.ledger = [
        {"shop_id": 1, "amount": 10, "kind": "adjustment", "campaign_id": None},
        {"shop_id": 1, "amount": -debited, "kind": "debit", "campaign_id": 1},
    ]
    snapshot.wallets[1] = {"shop_id": 1, "balance": 10 - debited, "reserved": 0}
    snapshot.reservations = [
        {"id": 1, "shop_id": 1, "campaign_id": 1, "amount": 3, "remaining": 0, "status": "settled"}
    ]
    return snapshot


def test_checkers_accept_a_clean_history() -> None:
    acceptances = [_acceptance(r) for r in (1, 2, 3)]
    snapshot = _world()
    results = [
        i1_single_acceptance.check(acceptances, snapshot),
        i2_nothing_stuck.check(snapshot),
        i3_debits_match.check(acceptances, snapshot),
        i4_credits_conserved.check(snapshot),
    ]
    assert compose(results) is True, [r.as_dict() for r in results if r.valid is not True]


def test_i1_catches_a_double_send_with_its_witness() -> None:
    result = i1_single_acceptance.check([_acceptance(1), _acceptance(1, n=1), _acceptance(2)], _world())
    assert result.valid is False
    assert result.counts["extra_acceptances"] == 1
    assert result.witnesses[0]["reference"] == "c1-r1"


def test_i2_catches_stuck_work() -> None:
    snapshot = _world(status="sending")
    snapshot.campaigns[1]["status"] = "sending"
    result = i2_nothing_stuck.check(snapshot)
    assert (result.valid, result.counts["recipients_sending"], result.counts["campaigns_not_terminal"]) == (
        False,
        3,
        1,
    )


@pytest.mark.parametrize(("debited", "field"), [(4, "credits_overcharged"), (2, "credits_undercharged")])
def test_i3_catches_over_and_undercharges(debited: int, field: str) -> None:
    acceptances = [_acceptance(r) for r in (1, 2, 3)]
    result = i3_debits_match.check(acceptances, _world(debited=debited))
    assert (result.valid, result.counts[field]) == (False, 1)


def test_i4_catches_a_balance_that_is_not_the_ledger_sum_and_a_live_reservation() -> None:
    snapshot = _world()
    snapshot.wallets[1]["balance"] = 99
    snapshot.reservations[0].update(status="active", remaining=2)
    result = i4_credits_conserved.check(snapshot)
    assert result.valid is False
    assert result.counts["balance_not_ledger_sum"] == 1
    assert result.counts["live_reservations_on_finished_campaigns"] == 1
    assert result.counts["reserved_not_matching_reservations"] == 1


def test_a_checker_that_throws_is_unknown_never_valid() -> None:
    def broken() -> CheckResult:
        raise RuntimeError("boom")

    result = guarded("I9", "broken", broken)
    assert result.valid == "unknown"
    assert compose([CheckResult("a", "", True), result]) == "unknown"
    assert compose([result, CheckResult("b", "", False)]) is False


def test_a_replayed_refusal_is_raised_as_its_own_kind_with_its_body() -> None:
    from service.errors import InsufficientCredits, replayed_problem

    original = InsufficientCredits("needs 30", needed=30, available=10)
    again = replayed_problem(original.to_problem())
    assert isinstance(again, InsufficientCredits)
    assert (again.detail, again.extra, again.headers) == (
        "needs 30",
        {"needed": 30, "available": 10},
        {"Idempotent-Replayed": "true"},
    )
    gone = replayed_problem({"type": "https://x/problems/retired-kind", "title": "Old", "status": 418})
    assert (gone.status, gone.slug, gone.title) == (418, "retired-kind", "Old")


def test_a_request_id_is_made_clean_where_it_is_bound_and_left_alone_on_every_line() -> None:
    """`redact` skips `request_id` on every line, so the id bound is one redaction would not change: a
    client's `X-Request-Id` that is a phone number (or not a plain token) is replaced by a fresh one."""
    assert logs.request_id_from("trace-me-123") == "trace-me-123"
    for unsafe in ("12025550143", "+12025550143", "ada@example.com", "a b", "x" * 65, "", None):
        fresh = logs.request_id_from(unsafe)
        assert fresh != unsafe
        assert re.fullmatch(r"[0-9a-f]{32}", fresh)
    line = logs.redact(None, "info", {"event": "request", "request_id": "0123456789abcdef0123456789abcdef"})
    assert line["request_id"] == "0123456789abcdef0123456789abcdef"


def test_bind_names_of_statements_built_once_never_name_a_column() -> None:
    """An UPDATE executed with a parameter named after a column of its table also SETs that column, so
    `binds` refuses a prefix that makes a bind name one of the table's columns."""
    from typing import cast

    from sqlalchemy import Table

    from service.db.dialect import binds, bound
    from service.db.models import Campaign

    campaigns = cast(Table, Campaign.__table__)
    assert set(binds(campaigns, "c_", "recipient_count")) == {"recipient_count"}
    assert bound("c_", recipient_count=3) == {"c_recipient_count": 3}
    with pytest.raises(ValueError, match="are columns of campaigns"):
        binds(campaigns, "", "recipient_count")

"""The checker on hand-made run folders: a clean one holds every invariant; each violation, slipped in
alone, makes exactly its invariant fail, with a witness that points at it."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chaos.checker import i5_payments_once, i6_one_enqueue, i7_delivery_state, i8_no_pii
from chaos.checker.causes import Causes, attach, concerned
from chaos.checker.evidence import (
    DatabaseSnapshot,
    DeliveryAttempt,
    DeliveryOutcome,
    Payment,
    Refund,
    StripeTruth,
    iter_lines,
    load_acceptances,
)
from chaos.checker.result import MAX_WITNESSES, CheckResult
from chaos.checker.run import VERDICT, check_run
from chaos.checker.synthetic import SECRETS, phone, write_synthetic_run
from service.sending.references import parse_reference

SHOP = "shop-1.myshopify.com"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    write_synthetic_run(folder, messages=300, campaign_size=100, shops=2, batch_size=50)
    return folder


def rows(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_rows(path: Path, items: list[Any]) -> None:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))


def append(path: Path, *items: Any) -> None:
    with path.open("a") as handle:
        for item in items:
            handle.write(json.dumps(item) + "\n")


def edit_rows(path: Path, change: Callable[[list[Any]], object]) -> None:
    items = rows(path)
    change(items)
    write_rows(path, items)


def verdicts(run_dir: Path) -> dict[str, Any]:
    verdict = check_run(run_dir)
    return {item["id"]: item for item in verdict["invariants"]}


def only_invalid(run_dir: Path) -> dict[str, Any]:
    """The one invariant that failed (and that no other did)."""
    results = verdicts(run_dir)
    failed = {k: v for k, v in results.items() if v["valid"] is not True}
    assert len(failed) == 1, {k: (v["valid"], v["counts"]) for k, v in failed.items()}
    (item,) = failed.values()
    assert item["valid"] is False
    return dict(item)


def test_a_clean_run_holds_every_invariant_and_writes_the_verdict(run_dir: Path) -> None:
    verdict = check_run(run_dir)
    assert verdict["valid"] is True, [i for i in verdict["invariants"] if i["valid"] is not True]
    saved = json.loads((run_dir / VERDICT).read_text())
    assert [item["id"] for item in saved["invariants"]] == [f"I{n}" for n in range(1, 10)]
    for item in saved["invariants"]:
        assert set(item) >= {"id", "valid", "counts", "witnesses"}
    assert saved["evidence"]["acceptances"] == 300


def test_the_checking_process_holds_recipients_without_what_only_i7_reads(run_dir: Path) -> None:
    """`leave_out` frees the columns the checking process never reads (I7 reads its own copy of the
    table in the delivery helper); every other column is as saved."""
    from chaos.checker.run import RECIPIENT_COLUMNS_FOR_I7_ONLY
    from chaos.checker.snapshot_io import load_saved_snapshot

    whole = load_saved_snapshot(run_dir / "database")
    lean = load_saved_snapshot(run_dir / "database", leave_out=RECIPIENT_COLUMNS_FOR_I7_ONLY)
    assert len(lean.recipients) == len(whole.recipients) == 300
    for key, row in whole.recipients.items():
        kept = lean.recipients[key]
        assert kept["phone_e164"] is None
        assert kept["provider_message_id"] is None
        assert row["phone_e164"] is not None
        for column in ("id", "campaign_id", "status", "attempts", "failure_reason"):
            assert kept[column] == row[column]
    assert lean.campaigns == whole.campaigns


def test_i1_a_double_send(run_dir: Path) -> None:
    accepted = run_dir / "simulator" / "mitto_accepted.jsonl"
    first = rows(accepted)[0]
    append(accepted, {**first, "message_id": "msg-again", "t": first["t"] + 5})
    results = verdicts(run_dir)
    assert {k for k, v in results.items() if v["valid"] is not True} == {"I1", "I3"}  # sent twice, paid once
    item = results["I1"]
    assert item["counts"]["extra_acceptances"] == 1
    assert item["witnesses"][0]["reference"] == first["reference"]
    assert item["witnesses"][0]["message_ids"] == [first["message_id"], "msg-again"]
    assert "a double send (see I1)" in results["I3"]["witnesses"][0]["why"]  # not a lost debit


def test_i1_the_same_phone_under_a_made_up_second_reference(run_dir: Path) -> None:
    accepted = run_dir / "simulator" / "mitto_accepted.jsonl"
    first = rows(accepted)[0]
    append(accepted, {**first, "message_id": "msg-other", "reference": "c1-r999999"})
    results = verdicts(run_dir)
    assert results["I1"]["valid"] is False
    assert results["I1"]["counts"]["phones_sent_twice_under_other_references"] == 1
    assert results["I1"]["counts"]["acceptances_for_unknown_recipients"] == 1  # no recipient 999999


def test_i2_a_campaign_left_sending(run_dir: Path) -> None:
    database = run_dir / "database"

    def stuck(items: list[Any]) -> None:
        items[0][2] = "sending"

    edit_rows(database / "campaigns.jsonl", stuck)
    edit_rows(database / "recipients.jsonl", lambda items: items[0].__setitem__(3, "pending"))
    results = verdicts(run_dir)
    assert results["I2"]["valid"] is False
    assert results["I2"]["counts"]["campaigns_not_terminal"] == 1
    assert results["I2"]["counts"]["recipients_pending"] == 1
    assert results["I2"]["witnesses"][0]["why"].startswith("1 recipient(s) never sent")


def test_i4_a_campaign_sending_without_its_reservation_shows_its_enqueues_answers(run_dir: Path) -> None:
    """An enqueue refused half-way (402 after the status change, safeguard 2 off) left it sending."""
    database = run_dir / "database"
    campaigns = rows(database / "campaigns.jsonl")
    campaign = campaigns[0][0]
    edit_rows(database / "reservations.jsonl", lambda items: items.clear())
    edit_rows(database / "campaigns.jsonl", lambda items: items[0].__setitem__(2, "sending"))
    refused = {
        "shop": SHOP,
        "campaign": campaign,
        "key": "k9",
        "status": 402,
        "problem": "insufficient-credits",
    }
    append(
        run_dir / "history.jsonl",
        {"index": 9000, "type": "fail", "f": "enqueue", "process": "c", "value": refused},
    )
    item = verdicts(run_dir)["I4"]
    witness = next(w for w in item["witnesses"] if "enqueued_campaign_without_reservation" in w)
    assert witness["why"].startswith("moved to sending, yet no reservation was ever written")
    assert {"history_index": 9000, "type": "fail", "status": 402, "problem": "insufficient-credits"} in (
        witness["causes"]["enqueue_answers"]
    )


def test_i3_a_double_debit(run_dir: Path) -> None:
    database = run_dir / "database"
    ledger = rows(database / "ledger.jsonl")
    debit = next(row for row in ledger if row[3] == "debit")
    append(database / "ledger.jsonl", [len(ledger) + 1, debit[1], -1, "debit", debit[4], 1, "debit:again"])
    edit_rows(
        database / "wallets.jsonl",
        lambda items: [row.__setitem__(1, row[1] - 1) for row in items if row[0] == debit[1]],
    )
    item = only_invalid(run_dir)
    assert (item["id"], item["counts"]["credits_overcharged"]) == ("I3", 1)
    assert item["witnesses"][0]["campaign_id"] == debit[4]
    assert item["witnesses"][0]["why"] == "1 credit(s) debited for no accepted message: a double debit"


def test_i3_a_debit_lost_after_the_send(run_dir: Path) -> None:
    database = run_dir / "database"
    ledger = rows(database / "ledger.jsonl")
    debit = next(row for row in ledger if row[3] == "debit")
    edit_rows(database / "ledger.jsonl", lambda items: items.remove(debit))
    edit_rows(
        database / "wallets.jsonl",
        lambda items: [row.__setitem__(1, row[1] - debit[2]) for row in items if row[0] == debit[1]],
    )
    item = only_invalid(run_dir)
    assert (item["id"], item["counts"]["credits_undercharged"]) == ("I3", -debit[2])
    why = item["witnesses"][0]["why"]
    assert why.startswith(f"{-debit[2]} credit(s) of messages accepted once were never debited"), why
    assert item["witnesses"][0]["kind"] == "lost_debit"  # what `smslab shrink` keeps failing


def test_i4_a_balance_that_is_not_its_ledger(run_dir: Path) -> None:
    edit_rows(run_dir / "database" / "wallets.jsonl", lambda items: items[0].__setitem__(1, items[0][1] + 7))
    item = only_invalid(run_dir)
    assert (item["id"], item["counts"]["balance_not_ledger_sum"]) == ("I4", 1)


def test_i4_a_live_reservation_left_on_a_finished_campaign(run_dir: Path) -> None:
    database = run_dir / "database"
    reservation = rows(database / "reservations.jsonl")[0]
    shop_id = reservation[1]

    def left_live(items: list[Any]) -> None:
        items[0][4], items[0][5] = 5, "active"

    edit_rows(database / "reservations.jsonl", left_live)
    edit_rows(
        database / "wallets.jsonl",
        lambda items: [row.__setitem__(2, row[2] + 5) for row in items if row[0] == shop_id],
    )
    item = only_invalid(run_dir)
    assert (item["id"], item["counts"]["live_reservations_on_finished_campaigns"]) == ("I4", 1)
    assert item["witnesses"][0]["live_reservation_on_finished_campaign"]["campaign_id"] == reservation[2]


def test_i5_a_payment_never_credited(run_dir: Path) -> None:
    database = run_dir / "database"
    ledger = rows(database / "ledger.jsonl")
    purchase = next(row for row in ledger if row[3] == "purchase")
    write_rows(database / "ledger.jsonl", [row for row in ledger if row is not purchase])
    edit_rows(
        database / "wallets.jsonl",
        lambda items: [row.__setitem__(1, row[1] - purchase[2]) for row in items if row[0] == purchase[1]],
    )
    results = verdicts(run_dir)
    item = results["I5"]
    assert (item["valid"], item["counts"]["payments_not_credited"]) == (False, 1)
    assert item["witnesses"][0]["ledger_entries"] == []
    assert results["I4"]["counts"]["negative_balances"] == 1  # the debits went ahead of the credit


def test_i5_a_payment_credited_twice(run_dir: Path) -> None:
    database = run_dir / "database"
    ledger = rows(database / "ledger.jsonl")
    purchase = next(row for row in ledger if row[3] == "purchase")
    append(database / "ledger.jsonl", [len(ledger) + 1, *purchase[1:6], purchase[6] + ":delivery:2"])
    edit_rows(
        database / "wallets.jsonl",
        lambda items: [row.__setitem__(1, row[1] + purchase[2]) for row in items if row[0] == purchase[1]],
    )
    item = only_invalid(run_dir)
    assert (item["id"], item["counts"]["payments_credited_more_than_once"]) == ("I5", 1)


def _refunds_judged(records: list[dict[str, Any]], deductions: list[tuple[str, int]]) -> CheckResult:
    """I5 on one paid session (1,000 credits for $10.00) refunded $5.00 as `re_1`, with these refund
    records and these ledger deductions (key, credits)."""
    payment = Payment("cs_1", "ch_1", 1000, 1000)
    truth = StripeTruth({"cs_1": payment}, [Refund("re_1", "ch_1", 500)], {"ch_1": payment})
    snapshot = DatabaseSnapshot()
    snapshot.ledger = [
        {"kind": "purchase", "amount": 1000, "idempotency_key": "purchase:cs_1"},
        *({"kind": "refund", "amount": -credits, "idempotency_key": key} for key, credits in deductions),
    ]
    snapshot.refunds = {str(r["refund_id"]): r for r in records}
    return i5_payments_once.check(truth, snapshot, stripe_acknowledged=True)


def _refund_record(key: str, deducted: int, shortfall: int = 0) -> dict[str, Any]:
    return {"refund_id": key, "credits": 500, "deducted": deducted, "shortfall": shortfall, "applied": True}


def test_i5_a_refund_is_judged_by_what_was_taken_whatever_key_its_record_is_under() -> None:
    # As the unsafe variant stores it (one record per delivery, under the delivery's key), taken once:
    # deducted once, not "missing" (the record is found by its refund)
    once = _refunds_judged(
        [_refund_record("re_1:delivery:a", 500)], [("refund:re_1:delivery:a:delivery:b", 500)]
    )
    assert once.valid is True
    assert once.counts["refunds_deducted_once"] == 1
    # Two deliveries applied it: taken twice, or taken once and flagged short the second time
    twice = _refunds_judged(
        [_refund_record("re_1:delivery:a", 500), _refund_record("re_1:delivery:b", 500)],
        [("refund:re_1:delivery:a", 500), ("refund:re_1:delivery:b", 500)],
    )
    short = _refunds_judged(
        [_refund_record("re_1:delivery:a", 500), _refund_record("re_1:delivery:b", 0, shortfall=500)],
        [("refund:re_1:delivery:a", 500)],
    )
    for doubled in (twice, short):
        assert doubled.valid is False
        assert doubled.counts["refunds_deducted_more_than_once"] == 1
        assert doubled.witnesses[0]["why"] == "applied by more than one delivery"
        assert doubled.witnesses[0]["charge"] == "ch_1"  # what Stripe's refund events are about
    # ... so its causes are the charge's deliveries (a refund id is in no delivery of the ledger)
    delivery = DeliveryAttempt(
        provider="stripe", acknowledged=True, type="charge.refunded", status=200, attempt=1, t=5.0,
        event="evt_1", object="ch_1", delivery=1,
    )  # fmt: skip
    assert concerned([twice], [])(delivery)
    attach([twice], Causes.of(Path("/nonexistent"), {}, [delivery], []))
    assert twice.witnesses[0]["causes"]["deliveries"][0]["type"] == "charge.refunded"
    # Never applied: missing, and the witness says so
    missing = _refunds_judged([], [])
    assert missing.valid is False
    assert missing.counts["refunds_missing"] == 1
    assert missing.witnesses[0]["why"].startswith("no record of the refund")
    # The safe variant's own key, partly taken and the rest flagged: once
    flagged = _refunds_judged([_refund_record("re_1", 200, shortfall=300)], [("refund:re_1", 200)])
    assert flagged.valid is True
    assert flagged.counts["refund_shortfalls_flagged"] == 1


def test_i7_a_final_state_overwritten_by_a_late_report(run_dir: Path) -> None:
    recipients = run_dir / "database" / "recipients.jsonl"
    edit_rows(recipients, lambda items: items[0].__setitem__(3, "sent"))
    item = only_invalid(run_dir)
    assert (item["id"], item["counts"]["regressed_or_missing_final"]) == ("I7", 1)
    assert item["witnesses"][0]["recorded"] == "sent"


def mitto_deliveries(items: list[Any]) -> list[Any]:
    """The delivery reports' deliveries, in order (message 1's intermediate, then its final, ...)."""
    return [item for item in items if item["provider"] == "mitto"]


def test_i7_a_report_the_service_never_heard_does_not_count_against_it(run_dir: Path) -> None:
    deliveries = run_dir / "simulator" / "webhook_deliveries.jsonl"
    edit_rows(deliveries, lambda items: mitto_deliveries(items)[1].update(acknowledged=False, status=None))
    edit_rows(run_dir / "database" / "recipients.jsonl", lambda items: items[0].__setitem__(3, "sent"))
    assert verdicts(run_dir)["I7"]["valid"] is True


@pytest.mark.parametrize(
    ("error", "valid"),
    [("IncompleteReadError", True), ("ConnectionRefusedError", False)],
    ids=["answer-lost-after-reaching-the-service", "never-reached-the-service"],
)
def test_i7_a_final_report_applied_but_never_acknowledged(run_dir: Path, error: str, valid: bool) -> None:
    """The API killed after its commit and before its answer: the report took effect, unacknowledged.
    Only a delivery that reached the service can explain a final state; a refused connection cannot."""
    deliveries = run_dir / "simulator" / "webhook_deliveries.jsonl"
    edit_rows(
        deliveries,
        lambda items: mitto_deliveries(items)[1].update(acknowledged=False, status=None, error=error),
    )
    item = verdicts(run_dir)["I7"]
    assert item["valid"] is valid
    assert item["counts"]["final_applied_without_acknowledgement"] == (1 if valid else 0)
    assert item["counts"]["final_state_no_delivery_brought"] == (0 if valid else 1)


def test_i7_a_final_state_no_delivery_brought_may_be_in_flight_when_reports_were_still_queued(
    run_dir: Path,
) -> None:
    deliveries = run_dir / "simulator" / "webhook_deliveries.jsonl"
    edit_rows(
        deliveries,
        lambda items: mitto_deliveries(items)[1].update(
            acknowledged=False, status=None, error="ConnectionRefusedError"
        ),
    )
    manifest = json.loads((run_dir / "run.json").read_text())
    manifest["quiescence"] = {"reached": False, "bound_s": 30, "deliveries_pending": 40}
    (run_dir / "run.json").write_text(json.dumps(manifest))
    item = verdicts(run_dir)["I7"]
    assert item["valid"] == "unknown"
    assert "no acknowledged delivery brought" in item["witnesses"][0]["why"]


def test_i7_two_final_reports_heard_the_providers_last_one_counts(run_dir: Path) -> None:
    simulator = run_dir / "simulator"
    first = rows(simulator / "mitto_dlr.jsonl")[1]  # message 1's final report
    later = {**first, "t": first["t"] + 1, "status": "Expired"}
    append(simulator / "mitto_dlr.jsonl", later)
    delivery = mitto_deliveries(rows(simulator / "webhook_deliveries.jsonl"))[1]  # message 1's final
    append(
        simulator / "webhook_deliveries.jsonl",
        {**delivery, "delivery": 10**6, "event": f"{first['message_id']}:Expired", "type": "dlr.Expired"},
    )
    item = only_invalid(run_dir)
    assert (item["id"], item["counts"]["messages_with_two_final_reports"]) == ("I7", 1)
    assert item["witnesses"][0]["expected"] == "expired"


def test_i8_a_phone_in_a_log_line_and_an_erased_customer_left_in_the_database(run_dir: Path) -> None:
    with (run_dir / "logs" / "worker-0.log").open("a") as handle:
        handle.write(json.dumps({"event": "sent", "to": phone(5)}) + "\n")
    item = only_invalid(run_dir)
    assert (item["id"], item["counts"]["lines_with_phones"]) == ("I8", 1)
    assert item["witnesses"] == [{"log": "worker-0.log", "line": 7, "contains": ["phone"]}]
    assert phone(5) not in json.dumps(item)  # a witness names where, never the value


def test_i8_an_erased_customer_still_stored(run_dir: Path) -> None:
    value = {"shop": SHOP, "customer": 42, "phone": "+12025550143", "email": "ada@example.com"}
    append(
        run_dir / "history.jsonl",
        {"index": 9000, "process": "client-0", "type": "invoke", "f": "redact", "value": value},
        {"index": 9001, "process": "client-0", "type": "ok", "f": "redact", "op": 9000, "value": value},
    )
    append(run_dir / "database" / "personal_data.jsonl", ["contacts", "email", 17, "ada@example.com"])
    item = only_invalid(run_dir)
    assert item["counts"]["erased_values_still_stored"] == 1
    witness = item["witnesses"][0]
    assert {k: v for k, v in witness.items() if k != "causes"} == {
        "erased_customer": 42,
        "still_in": "contacts.email",
        "row": 17,
    }
    assert witness["causes"]["erasure_requested"][0]["history_index"] == 9001


def test_a_shortfall_in_a_run_that_did_not_settle_is_unknown_but_an_overcharge_is_not(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "run.json").read_text())
    manifest["quiescence"] = {"reached": False, "bound_s": 30}
    (run_dir / "run.json").write_text(json.dumps(manifest))
    accepted = run_dir / "simulator" / "mitto_accepted.jsonl"
    extra = {**rows(accepted)[0], "message_id": "m-new", "reference": "c1-r99999", "to": "+12025550199"}
    append(accepted, extra)  # accepted, not yet debited: may still be in flight
    results = verdicts(run_dir)
    assert results["I3"]["valid"] == "unknown"
    assert "did not settle" in results["I3"]["note"]
    ledger = rows(run_dir / "database" / "ledger.jsonl")
    append(run_dir / "database" / "ledger.jsonl", [len(ledger) + 1, 1, -5, "debit", 1, 5, "debit:x"])
    assert verdicts(run_dir)["I3"]["valid"] is False  # charged for more than was sent: no wait fixes that


def test_a_debit_missing_when_nothing_was_left_in_flight_is_lost_not_unknown(run_dir: Path) -> None:
    """Unsettled by queued webhooks and a campaign not yet marked completed: no send was unfinished, so no
    debit was still coming."""
    manifest = json.loads((run_dir / "run.json").read_text())
    quiescence = {"reached": False, "bound_s": 30, "still_sending_campaigns": 1, "deliveries_pending": 1218}
    manifest["quiescence"] = {**quiescence, "still_unsettled_recipients": 0, "delivery_reports_parked": 0}
    (run_dir / "run.json").write_text(json.dumps(manifest))
    accepted = run_dir / "simulator" / "mitto_accepted.jsonl"
    extra = {**rows(accepted)[0], "message_id": "m-new", "reference": "c1-r99999", "to": "+12025550199"}
    append(accepted, extra)
    assert verdicts(run_dir)["I3"]["valid"] is False
    manifest["quiescence"]["still_unsettled_recipients"] = 3  # a send unfinished: its debit may come
    (run_dir / "run.json").write_text(json.dumps(manifest))
    assert verdicts(run_dir)["I3"]["valid"] == "unknown"


def test_a_torn_last_line_is_left_out_not_fatal(run_dir: Path) -> None:
    with (run_dir / "simulator" / "mitto_accepted.jsonl").open("a") as handle:
        handle.write('{"seq": 1, "reference": "c1-r1", "message_id": "torn')
    assert check_run(run_dir)["valid"] is True


@pytest.mark.parametrize(
    "odd",
    ["c007-r1", "made-up", "c1-r1\n", ""],
    ids=["leading-zero", "not-ours", "newline-inside", "empty"],
)
def test_acceptances_name_their_recipients_whatever_else_the_ledger_holds(tmp_path: Path, odd: str) -> None:
    """References are parsed a block at a time by a fast path; one reference it cannot take sends the
    block down the one-by-one rule (`parse_reference`), with the same answer for every other one."""
    lines = [
        {"reference": f"c{c}-r{r}", "message_id": f"m{c}-{r}", "to": phone(r), "t": 1.0}
        for c, r in [(1, 1), (1, 2), (12, 340)]
    ]
    lines.insert(1, {"reference": odd, "message_id": "m-odd", "to": phone(9), "t": 1.0})
    (tmp_path / "mitto_accepted.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    named = [(a.reference, a.campaign_id, a.recipient_id) for a in load_acceptances(tmp_path)]
    assert [n for n in named if n[0] != odd] == [("c1-r1", 1, 1), ("c1-r2", 1, 2), ("c12-r340", 12, 340)]
    assert named[1][1:] == (parse_reference(odd) or (None, None))


def test_a_saved_status_the_checker_does_not_know_is_judged_not_fatal(run_dir: Path) -> None:
    """Statuses decode as the service's known values (one shared string each); a row with another one
    (the provider's own casing, stored as it came) must still reach I7, as a wrong final state."""
    recipients = run_dir / "database" / "recipients.jsonl"
    saved = rows(recipients)
    saved[3][3] = "Delivered"
    write_rows(recipients, saved)
    verdict = check_run(run_dir)
    i7 = next(i for i in verdict["invariants"] if i["id"] == "I7")
    assert (i7["valid"], i7["counts"]["wrong_final_state"]) == (False, 1)
    assert i7["witnesses"][0]["recorded"] == "Delivered"


def test_a_ledger_read_a_block_at_a_time_yields_every_whole_line_once(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text(
        "".join(json.dumps({"n": n, "pad": "x" * (n % 7)}) + "\n" for n in range(50)) + '{"n": 5'
    )
    for block_bytes in (1, 7, 64, 1 << 20):
        blocks = list(iter_lines(ledger, dict[str, Any], block_bytes))
        assert [row["n"] for block in blocks for row in block] == list(range(50)), block_bytes


def _heard_by_the_rules(
    deliveries: list[DeliveryOutcome],
) -> tuple[dict[str, str], set[str], dict[str, set[str]]]:
    """I7's rules written plainly, one delivery at a time, to hold the block-wise version to."""
    heard: dict[str, str] = {}
    states: dict[str, set[str]] = {}
    maybe: dict[str, set[str]] = {}
    for d in deliveries:
        state = i7_delivery_state.FINAL_STATE.get(d.type or "")
        if state is None or d.provider != "mitto" or d.message is None:
            continue
        if d.acknowledged:
            heard[d.message] = state
            states.setdefault(d.message, set()).add(state)
        elif d.may_have_taken_effect:
            maybe.setdefault(d.message, set()).add(state)
    return heard, {m for m, s in states.items() if len(s) > 1}, maybe


@pytest.mark.parametrize("seed", range(40))
def test_what_the_service_heard_does_not_depend_on_where_the_ledger_is_cut(seed: int) -> None:
    rng = random.Random(seed)
    types = ["dlr.Delivered", "dlr.Expired", "dlr.Failed", "dlr.Rejected", "dlr.Sent", None]
    deliveries = [
        DeliveryOutcome(
            provider=rng.choice(["mitto", "mitto", "mitto", "stripe"]),
            acknowledged=rng.random() < 0.7,
            type=rng.choice(types),
            message=rng.choice([f"m{n}" for n in range(8)] + ["", None]),
            status=rng.choice([None, 200, 503]),
            error=rng.choice([None, "ConnectionRefusedError", "ReadTimeout"]),
        )
        for _ in range(rng.randint(0, 60))
    ]
    for d in deliveries:  # the ledger's own shape: only Mitto's deliveries carry dlr types and messages
        if d.provider != "mitto":
            d.type, d.message = "checkout.session.completed", None
    cuts = sorted(rng.sample(range(len(deliveries) + 1), k=min(3, len(deliveries) + 1)))
    heard = i7_delivery_state.HeardReports()
    for start, end in zip([0, *cuts], [*cuts, len(deliveries)], strict=True):
        heard.add(deliveries[start:end])
    assert (heard.heard, heard.contested, heard.maybe_applied) == _heard_by_the_rules(deliveries)


def test_log_scan_finds_each_kind_and_only_real_ones(tmp_path: Path) -> None:
    log = tmp_path / "api.log"
    log.write_text(
        "\n".join(
            [
                '{"event": "request", "path": "/api/wallet", "duration_ms": 1.5}',
                '{"event": "sent", "to": "+12025550143"}',
                '{"event": "x", "email": "ada@example.com"}',
                '{"event": "x", "auth": "Bearer abcdefghijklmnop"}',
                '{"event": "x", "auth": "Bearer [redacted]"}',
                '{"event": "x", "token": "eyJhbGciOiJIUzI1NiJ9.eyJkZXN0IjoiYWxwaGEifQ.sig"}',
                '{"event": "x", "raw": "12025550143"}',
                f'{{"event": "x", "key": "{SECRETS[1]}"}}',
                '{"event": "x", "id": "1234567890123456789", "at": "@handle.com"}',
                '{"event": "no newline at the end", "to": "+12025550143"}',
            ]
        )
    )
    result = CheckResult("I8", "", True)
    found = i8_no_pii.scan_logs([log], {"+12025550143"}, SECRETS, result)
    assert found == {"lines": 10, "email": 1, "jwt": 1, "bearer": 1, "phone": 3, "secret": 1, "name": 0}
    assert [w["line"] for w in result.witnesses] == [2, 3, 4, 6, 7, 8, 10]


def test_log_scan_finds_national_phones_unusual_emails_and_customer_names(tmp_path: Path) -> None:
    """The forms a phone, an email or a name really take in logs: the checker's own patterns, never the
    service's redactor's (a blind spot shared by both would hide in both)."""
    log = tmp_path / "worker.log"
    lines = [
        '{"event": "x", "phone": "(202) 555-0143"}',
        '{"event": "x", "phone": "(202)555-0143"}',
        '{"event": "x", "phone": "202-555-0143"}',
        '{"event": "x", "uri": "tel:202.555.0143"}',
        '{"event": "x", "bare": "2025550143"}',
        '{"event": "x", "email": "o\'brien!x@ex\u00e4mple.co.uk"}',
        '{"event": "x", "email": "ada@b\\u00fccher.de"}',  # as JSON logs write a non-ASCII domain
        "Ada Lovelace wrote in",
        '{"event": "x", "other": "(303) 555-0100", "date": "2026-12-01", "uuid": "123e4567-e89b-12d3"}',
        # A hex request id whose digits happen to spell the phone's national number is not a phone.
        '{"event": "request", "request_id": "df300ea52d2c2025550143f5febe6cc"}',
        '{"event": "request", "request_id": "2025550143df300ea52d2cf5febe6cc"}',
        # Nor one whose digit groups, split by hex letters, read as 202 555 0143.
        '{"event": "request", "span": "202a555b0143"}',
    ]
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = CheckResult("I8", "", True)
    scan = i8_no_pii.scan_log_files([log], SECRETS, ["Ada Lovelace"])
    found = i8_no_pii.tally(scan, {"+12025550143"}, result)
    assert (found["phone"], found["email"], found["name"]) == (5, 2, 1)
    assert [w["line"] for w in result.witnesses] == [1, 2, 3, 4, 5, 6, 7, 8]


# --- I6 on hand-made histories ----------------------------------------------------------------------------


def enqueue(index: int, kind: str, key: str, **value: Any) -> dict[str, Any]:
    campaign = value.pop("campaign", 1)
    return {
        "index": index,
        "type": kind,
        "f": "enqueue",
        "process": "client-0",
        "value": {"shop": SHOP, "campaign": campaign, "key": key, **value},
    }


ACCEPTED: dict[str, Any] = {"status": 202, "response": {"campaign_id": 1, "recipient_count": 3}}


def test_i6_clean_history_with_retries_in_flight_conflicts_and_unknowns() -> None:
    history = [
        enqueue(0, "invoke", "k1"),
        enqueue(1, "invoke", "k1", duplicate=True),
        enqueue(2, "fail", "k1", duplicate=True, status=409, problem="idempotency-key-in-flight"),
        enqueue(3, "info", "k1", error="ReadTimeout"),
        enqueue(4, "ok", "k1", **ACCEPTED),  # the retry, answered from the stored response
        enqueue(5, "ok", "k1", **ACCEPTED),
        enqueue(6, "fail", "k2", campaign=2, status=402, problem="insufficient-credits"),
        # refused by a full API process before the key was claimed, then retried with it and accepted
        enqueue(7, "fail", "k3", campaign=3, status=503, problem="overloaded"),
        enqueue(8, "ok", "k3", campaign=3, status=202, response={"campaign_id": 3, "recipient_count": 2}),
    ]
    result = i6_one_enqueue.check(history)
    assert result.valid is True, result.witnesses
    assert result.counts["campaigns_enqueued"] == 2


@pytest.mark.parametrize(
    ("history", "count"),
    [
        # two keys both won one campaign
        (
            [enqueue(0, "ok", "k1", **ACCEPTED), enqueue(1, "ok", "k2", **ACCEPTED)],
            "campaigns_with_two_winners",
        ),
        # a retry with the key was run again instead of replayed
        (
            [
                enqueue(0, "ok", "k1", **ACCEPTED),
                enqueue(1, "fail", "k1", status=409, problem="campaign-not-draft"),
            ],
            "keys_answered_differently",
        ),
        # the same, the refusal arriving first
        (
            [
                enqueue(0, "fail", "k1", status=402, problem="insufficient-credits"),
                enqueue(1, "ok", "k1", **ACCEPTED),
            ],
            "keys_answered_differently",
        ),
        # a replay with another body
        (
            [
                enqueue(0, "ok", "k1", **ACCEPTED),
                enqueue(1, "ok", "k1", status=202, response={"campaign_id": 1, "recipient_count": 4}),
            ],
            "keys_answered_differently",
        ),
    ],
)
def test_i6_violations(history: list[dict[str, Any]], count: str) -> None:
    result = i6_one_enqueue.check(history)
    assert result.valid is False
    assert result.counts[count] == 1
    assert result.witnesses


def test_i6_with_enqueues_sent_and_none_decided_is_unknown_not_valid() -> None:
    """A matrix run with enqueue_idempotency off once read "I6 valid": all its enqueues went unanswered."""
    history = [
        enqueue(0, "invoke", "k1"),
        enqueue(1, "invoke", "k1", duplicate=True),
        enqueue(2, "info", "k1", error="ReadTimeout"),
        enqueue(3, "fail", "k1", duplicate=True, status=409, problem="idempotency-key-in-flight"),
        enqueue(4, "invoke", "k1"),
        enqueue(5, "fail", "k1", status=429, problem="rate-limited"),
    ]
    result = i6_one_enqueue.check(history)
    assert result.valid == "unknown"
    assert "3 enqueue(s) sent and none decided" in (result.note or "")
    assert (result.counts["enqueue_attempts"], result.counts["enqueue_outcomes_decided"]) == (3, 0)
    # one decided answer is something to judge; no enqueue at all is nothing to doubt
    assert i6_one_enqueue.check([*history, enqueue(6, "ok", "k1", **ACCEPTED)]).valid is True
    assert i6_one_enqueue.check([]).valid is True


def test_an_undecided_invariant_gives_its_reason_in_the_verdict(run_dir: Path) -> None:
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    kept = []
    for line in lines:
        entry = json.loads(line)
        if entry.get("f") == "enqueue" and entry["type"] != "invoke":
            entry = {**entry, "type": "info", "value": {**entry["value"], "error": "ReadTimeout"}}
        kept.append(json.dumps(entry))
    (run_dir / "history.jsonl").write_text("\n".join(kept) + "\n")
    verdict = check_run(run_dir)
    assert verdict["valid"] == "unknown"
    assert [r for r in verdict["unknown_because"] if r.startswith("I6: ")], verdict["unknown_because"]


def test_i6_in_a_whole_run_folder(run_dir: Path) -> None:
    # The synthetic run enqueued campaign 1 (shop 1) with key enqueue-1; a retry was then run again.
    append(
        run_dir / "history.jsonl",
        enqueue(9000, "fail", "enqueue-1", status=409, problem="campaign-not-draft"),
    )
    item = only_invalid(run_dir)
    assert (item["id"], item["counts"]["keys_answered_differently"]) == ("I6", 1)


@pytest.mark.parametrize("other_thread", [False, True], ids=["forked", "spawned"])
def test_a_big_run_checked_by_three_processes_gets_the_same_verdict(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, other_thread: bool
) -> None:
    import threading

    from chaos.checker import run as checker_run

    accepted = run_dir / "simulator" / "mitto_accepted.jsonl"
    first = rows(accepted)[0]
    append(accepted, {**first, "message_id": "msg-again", "t": first["t"] + 5})
    serial = {item["id"]: (item["valid"], item["counts"]) for item in check_run(run_dir)["invariants"]}
    monkeypatch.setattr(checker_run, "PARALLEL_BYTES", 0)
    stop = threading.Event()
    waiting = threading.Thread(target=stop.wait)  # a live thread: the pool must spawn, not fork
    if other_thread:
        waiting.start()
    try:
        expected = "spawn" if threading.active_count() > 1 else "fork"  # another test may leave a thread
        assert checker_run._process_context().get_start_method() == expected
        parallel = check_run(run_dir)
    finally:
        stop.set()
        if other_thread:
            waiting.join()
    assert {item["id"]: (item["valid"], item["counts"]) for item in parallel["invariants"]} == serial
    assert [item["id"] for item in parallel["invariants"]] == [f"I{n}" for n in range(1, 10)]
    assert serial["I1"][0] is False


# --- coverage: a run that did not exercise its scenario never reads as a pass ------------------------------


def test_a_run_whose_workload_ended_early_is_unknown_with_the_reason(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "run.json").read_text())
    manifest["chaos"] = {"planned_s": 25.0, "achieved_s": 2.1, "started_at": 0.0}
    (run_dir / "run.json").write_text(json.dumps(manifest))
    verdict = check_run(run_dir)
    assert all(item["valid"] is True for item in verdict["invariants"])  # nothing wrong was seen...
    assert verdict["valid"] == "unknown"  # ...but too little was done for that to count
    assert verdict["unknown_because"] == [
        "the workload ran 2.1 of its 25 s (8%; the scenario's minimum is 90%)"
    ]
    assert verdict["coverage"]["workload"]["share"] == 0.084


def test_a_run_whose_faults_never_fired_is_unknown_with_the_reason(run_dir: Path) -> None:
    (run_dir / "nemesis.plan.json").write_text(
        json.dumps([{"at": 3.0, "action": "kill_worker", "target": "worker-0", "hold_s": 1.0, "params": {}}])
    )
    rules = [{"id": "r1", "target": "mitto.send", "kind": "accept_then_lose", "probability": 0.1, "fired": 0}]
    (run_dir / "simulator" / "fault_rules.json").write_text(json.dumps(rules))
    (run_dir / "simulator" / "counters.json").write_text(
        json.dumps({"endpoints": {"mitto.send": {"requests": 120}}})
    )
    verdict = check_run(run_dir)
    assert verdict["valid"] == "unknown"
    assert verdict["unknown_because"] == [
        "1 planned nemesis event(s) did not fire: kill_worker at 3 s",
        "fault rule r1 (accept_then_lose on mitto.send) never fired, though expected 12 times "
        "(120 requests x 0.1)",
    ]
    rule = verdict["coverage"]["faults"]["provider_rules"][0]
    assert (rule["requests_seen"], rule["expected"], rule["fired"]) == (120, 12.0, 0)


def test_a_rule_expected_to_fire_less_than_ten_times_may_stay_silent(run_dir: Path) -> None:
    """Expected 7.2 times, zero fires happen by chance alone once in 1,300 runs: not a shortfall."""
    rules = [{"id": "r1", "target": "mitto.send", "kind": "status", "probability": 0.12, "fired": 0}]
    (run_dir / "simulator" / "fault_rules.json").write_text(json.dumps(rules))
    (run_dir / "simulator" / "counters.json").write_text(
        json.dumps({"endpoints": {"mitto.send": {"requests": 60}}})
    )
    assert check_run(run_dir)["valid"] is True


def test_a_run_that_never_started_is_unknown_for_every_invariant(tmp_path: Path) -> None:
    """What a run whose API failed to start leaves: a folder, empty ledgers, no history, no database."""
    folder = tmp_path / "never"
    for sub in ("simulator", "database", "logs"):
        (folder / sub).mkdir(parents=True)
    (folder / "simulator" / "mitto_accepted.jsonl").write_text("")
    (folder / "history.jsonl").write_text("")
    verdict = check_run(folder)
    assert verdict["valid"] == "unknown"
    assert all(item["valid"] == "unknown" for item in verdict["invariants"]), verdict["invariants"]
    assert any("no run.json" in reason for reason in verdict["unknown_because"])
    from typer.testing import CliRunner

    from chaos.cli import app

    assert CliRunner().invoke(app, ["check", str(folder)]).exit_code == 1


def test_a_webhook_the_provider_gave_up_on_is_named_in_the_witness_with_its_attempts(run_dir: Path) -> None:
    """An erasure Shopify gave up delivering (the API was down past its retry horizon): the witness is the
    contact still stored, and its causes name the delivery, its attempts and the give-up; the verdict says
    it is unavailability, not a missing safeguard."""
    value = {"shop": SHOP, "customer": 42, "phone": "+12025550143", "email": "ada@example.com"}
    answer = {**value, "status": 201, "response": {"event_id": "evt-redact-42"}}
    append(
        run_dir / "history.jsonl",
        {"index": 9000, "time": 5.0, "process": "client-0", "type": "invoke", "f": "redact", "value": value},
        {
            "index": 9001,
            "time": 5.1,
            "process": "client-0",
            "type": "ok",
            "f": "redact",
            "op": 9000,
            "value": answer,
        },
    )
    append(run_dir / "database" / "personal_data.jsonl", ["contacts", "email", 17, "ada@example.com"])
    attempts = [
        {
            "t": 1000.0 + n,
            "delivery": 77,
            "provider": "shopify",
            "attempt": n,
            "status": None,
            "error": "ConnectionRefusedError",
            "acknowledged": False,
            "event": "evt-redact-42",
            "type": "customers/redact",
            "shop": SHOP,
            **({"gave_up": True} if n == 9 else {}),
        }
        for n in range(1, 10)
    ]
    append(run_dir / "simulator" / "webhook_deliveries.jsonl", *attempts)
    item = verdicts(run_dir)["I8"]
    assert item["valid"] == "unknown"
    assert "gave up" in item["note"]
    [delivery] = item["witnesses"][0]["causes"]["deliveries"]
    assert (delivery["type"], delivery["provider_gave_up"], len(delivery["attempts"])) == (
        "customers/redact",
        True,
        9,
    )
    assert delivery["attempts"][0]["error"] == "ConnectionRefusedError"


def test_a_witness_that_must_be_seen_displaces_a_lesser_one_when_the_list_is_full() -> None:
    result = CheckResult("I7", "t", False)
    for n in range(MAX_WITNESSES + 5):
        result.witness({"n": n, "recorded": "sent"})
    result.witness({"n": "decisive", "recorded": "delivered"}, lambda kept: kept["recorded"] == "sent")
    result.witness({"n": "lost", "recorded": "sent"})  # a lesser one, the list full: dropped
    assert len(result.witnesses) == MAX_WITNESSES
    assert result.witnesses[-1]["n"] == "decisive"
    assert [w["n"] for w in result.witnesses[:-1]] == list(range(MAX_WITNESSES - 1))


def test_a_process_killed_at_its_stop_is_named_under_the_verdict_which_it_does_not_change(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from chaos.report import print_verdict

    manifest = json.loads((run_dir / "run.json").read_text())
    manifest["stops_overran"] = {"worker-1": 1}
    (run_dir / "run.json").write_text(json.dumps(manifest))
    verdict = check_run(run_dir)
    assert verdict["valid"] is True
    assert verdict["observations"]["stops_overran"] == {"worker-1": 1}
    print_verdict(verdict, str(run_dir))
    assert "slow to stop: worker-1 (1x) did not stop within the grace period" in capsys.readouterr().out

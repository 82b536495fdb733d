"""Outbound faults (duplicate, drop, reorder, bad signatures, stale timestamps, reports before the send
answer), fault windows, determinism across runs, and scenario files, each observed from the outside."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from simulator.ledger import read_ledger
from tests.support.infra import ROOT, SimulatorProcess
from tests.support.receiver import Received, Receiver

MITTO_KEY = {"X-Mitto-API-Key": "lab-mitto-key"}
STRIPE_KEY = {"Authorization": "Bearer sk_test_lab_change_me_in_production"}
WEBHOOK_SECRET = "whsec_lab_change_me_in_production"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def ledger_lines(path: Path, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The ledger's records once it holds `count` of them (it is written just after each event)."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(read_ledger(path))
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def simulator_to(receiver: Receiver, tmp_path: Path, seed: int = 7, name: str = "sim") -> SimulatorProcess:
    sim = SimulatorProcess(tmp_path / name, seed=seed, target_port=receiver.start())
    sim.start()
    return sim


def send_messages(sim: SimulatorProcess, count: int, prefix: str = "r") -> dict[str, str]:
    bulk = {
        "messages": [
            {"from": "Lab", "to": f"+1202555{i:04d}", "text": "hi", "reference": f"{prefix}{i}"}
            for i in range(count)
        ]
    }
    response = httpx.post(
        f"{sim.base_url}/mitto/api/v1.1/Messages/sendmessagesbulk", json=bulk, headers=MITTO_KEY
    )
    return {m["messageId"]: m["reference"] for m in response.json()["messages"]}


def reports(received: list[Received]) -> list[tuple[str, str]]:
    return [(json.loads(r.body)["messageId"], json.loads(r.body)["status"]) for r in received]


def test_duplicated_reports_arrive_twice_with_the_same_body(tmp_path: Path, receiver: Receiver) -> None:
    sim = simulator_to(receiver, tmp_path)
    try:
        sim.add_fault(target="mitto.dlr", kind="duplicate", params={"copies": 1, "spread_ms": 20})
        send_messages(sim, 3)
        got = receiver.wait_for(12)
        counters = sim.control("GET", "/deliveries")
    finally:
        sim.stop()
    assert len(got) == 12  # 3 messages x 2 reports x 2 copies
    bodies = [r.body for r in got]
    assert all(bodies.count(b) == 2 for b in bodies)
    assert counters["duplicated"] == 6


def test_dropped_reports_never_arrive_but_the_lookup_knows_the_truth(
    tmp_path: Path, receiver: Receiver
) -> None:
    sim = simulator_to(receiver, tmp_path)
    try:
        sim.add_fault(target="mitto.dlr", kind="drop")
        send_messages(sim, 2)
        time.sleep(0.5)
        looked_up = httpx.get(
            f"{sim.base_url}/mitto/api/v1/Messages", params={"reference": "r0"}, headers=MITTO_KEY
        )
    finally:
        sim.stop()
    assert receiver.received == []
    assert looked_up.json()["messages"][0]["deliveryStatus"] == "Delivered"
    ledger = list(read_ledger(sim.data_dir / "webhook_deliveries.jsonl"))
    assert len(ledger) == 4
    assert all(r["dropped"] and not r["acknowledged"] for r in ledger)


def test_latency_spread_reorders_a_messages_reports(tmp_path: Path, receiver: Receiver) -> None:
    sim = simulator_to(receiver, tmp_path)
    try:
        sim.add_fault(target="mitto.dlr", kind="latency", params={"min_ms": 0, "max_ms": 300})
        send_messages(sim, 20)
        got = receiver.wait_for(40)
    finally:
        sim.stop()
    first_seen: dict[str, str] = {}
    for message_id, status in reports(got):
        first_seen.setdefault(message_id, status)
    assert "Delivered" in first_seen.values()  # some final report overtook its intermediate one


def test_bad_signatures_and_stale_timestamps_fail_once_then_the_retry_verifies(
    tmp_path: Path, receiver: Receiver
) -> None:
    def stripe_judge(got: Received) -> int:
        try:
            stripe.Webhook.construct_event(got.body, got.headers.get("stripe-signature", ""), WEBHOOK_SECRET)
        except (stripe.SignatureVerificationError, ValueError):
            return 400
        return 200

    receiver.judge = stripe_judge
    sim = simulator_to(receiver, tmp_path)
    try:
        sim.add_fault(target="stripe.webhook", kind="bad_signature", count=1)
        sim.add_fault(target="stripe.webhook", kind="stale_timestamp", count=1, params={"seconds": 900})
        form = {
            "mode": "payment",
            "success_url": "http://x",
            "line_items[0][price_data][currency]": "usd",
            "line_items[0][price_data][unit_amount]": "100",
        }
        session = httpx.post(
            f"{sim.base_url}/stripe/v1/checkout/sessions", data=form, headers=STRIPE_KEY
        ).json()
        sim.control("POST", f"/stripe/sessions/{session['id']}/pay", json={})
        got = receiver.wait_for(2)
        # The receiver answered; the simulator writes the attempt's outcome a moment later.
        ledger = ledger_lines(sim.data_dir / "webhook_deliveries.jsonl", 2)
    finally:
        sim.stop()
    assert [r.status for r in got[:2]] == [400, 200]
    assert set(ledger[0]["faults"]) == {"bad_signature", "stale_timestamp"}
    assert (ledger[1]["attempt"], ledger[1]["acknowledged"]) == (2, True)


def test_shopify_stale_timestamps_move_triggered_at_back(tmp_path: Path, receiver: Receiver) -> None:
    sim = simulator_to(receiver, tmp_path)
    try:
        sim.add_fault(target="shopify.webhook", kind="stale_timestamp", params={"seconds": 3600})
        sent = sim.control(
            "POST",
            "/shopify/webhooks",
            json={"shop": "a.myshopify.com", "topic": "customers/update", "payload": {"id": 1}},
        )
        [got] = receiver.wait_for(1)
    finally:
        sim.stop()
    assert got.headers["x-shopify-triggered-at"] < sent["triggered_at"]


def test_reports_can_beat_the_send_answer(tmp_path: Path, receiver: Receiver) -> None:
    sim = simulator_to(receiver, tmp_path)
    try:
        sim.add_fault(target="mitto.send", kind="report_first", count=1)
        send_messages(sim, 2)
        answered_at = time.time()
        early = [r for r in receiver.received if r.at < answered_at]
    finally:
        sim.stop()
    assert len(early) == 4  # both reports of both messages were delivered before the answer came


def test_a_fault_window_applies_only_inside_it(tmp_path: Path) -> None:
    sim = SimulatorProcess(tmp_path / "sim")
    sim.start()
    try:
        sim.control("POST", "/reset")  # the window's clock starts now
        sim.add_fault(target="mitto.send", kind="status", start_s=0.6, end_s=1.2, params={"status": 503})
        statuses = []
        for _ in range(8):
            response = httpx.post(
                f"{sim.base_url}/mitto/api/v1.1/Messages/sendmessagesbulk",
                json={"messages": [{"from": "L", "to": "+12025550143", "text": "x", "reference": "w"}]},
                headers=MITTO_KEY,
            )
            statuses.append(response.status_code)
            time.sleep(0.25)
    finally:
        sim.stop()
    assert statuses[0] == 200
    assert 503 in statuses
    assert statuses[-1] == 200


def dropped_references(tmp_path: Path, seed: int, name: str) -> set[str]:
    receiver = Receiver()
    sim = simulator_to(receiver, tmp_path, seed, name)
    try:
        sim.add_fault(target="mitto.dlr", kind="drop", probability=0.5)
        references = send_messages(sim, 30)
        time.sleep(0.6)
    finally:
        sim.stop()
        receiver.stop()
    return {
        references[r["message"]] + ":" + r["type"]
        for r in read_ledger(sim.data_dir / "webhook_deliveries.jsonl")
        if r["dropped"]
    }


def test_the_same_seed_drops_the_same_reports(tmp_path: Path) -> None:
    first = dropped_references(tmp_path, seed=11, name="a")
    assert first == dropped_references(tmp_path, seed=11, name="b")
    assert first != dropped_references(tmp_path, seed=12, name="c")
    assert 0 < len(first) < 60


def run_simulator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulator", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ('seed = "seven"', "scenario.seed: must be a whole number"),
        ("speed = 3", "scenario.speed: unknown field"),
        ('[dlr]\nfinal = "Lost=1"', "scenario.dlr.final:"),
        (
            '[[faults]]\ntarget = "mitto.send"\nkind = "drop"',
            "scenario.faults[0].kind: for mitto.send must be one of",
        ),
        ('[[faults]]\ntarget = "fax.send"\nkind = "reset"', "scenario.faults[0].target: must be one of"),
        (
            '[[faults]]\ntarget = "mitto.dlr"\nkind = "duplicate"\nparams = { copies = "two" }',
            "scenario.faults[0].params.copies: must be a number",
        ),
        ("seed = ", "is not valid TOML"),
    ],
)
def test_a_malformed_scenario_is_refused_naming_the_field(
    tmp_path: Path, scenario: str, message: str
) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text(scenario)
    result = run_simulator("--scenario", str(path), "--port", "1")
    assert result.returncode == 2
    assert message in result.stderr


def test_a_malformed_fault_flag_is_refused_naming_the_field() -> None:
    result = run_simulator("--fault", '{"target": "mitto.dlr", "kind": "reset"}', "--port", "1")
    assert result.returncode == 2
    assert "--fault[0].kind: for mitto.dlr must be one of" in result.stderr


def test_a_scenarios_faults_are_active_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text(
        'seed = 5\n[dlr]\ndelay_ms = 10\nfinal = "Expired=1"\n'
        '[[faults]]\ntarget = "mitto.lookup"\nkind = "status"\nparams = { status = 503 }\n'
    )
    sim = SimulatorProcess(tmp_path / "sim", scenario=path)
    sim.start()
    try:
        rules = sim.control("GET", "/faults")["faults"]
        lookup = httpx.get(
            f"{sim.base_url}/mitto/api/v1/Messages", params={"reference": "x"}, headers=MITTO_KEY
        )
        health = sim.control("GET", "/health")
    finally:
        sim.stop()
    assert [(r["target"], r["kind"]) for r in rules] == [("mitto.lookup", "status")]
    assert lookup.status_code == 503
    assert health["seed"] == 5

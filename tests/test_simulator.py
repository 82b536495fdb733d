"""The fake Mitto over real HTTP: the contract's shapes, the ground-truth ledger, faults and determinism."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulator.ledger import read_ledger
from simulator.mitto import ACCEPTED_LEDGER
from tests.support.infra import SimulatorProcess

KEY = {"X-Mitto-API-Key": "lab-mitto-key"}
SEND = "/mitto/api/v1.1/Messages/sendmessagesbulk"
LOOKUP = "/mitto/api/v1/Messages"


def bulk(*numbers: str, prefix: str = "ref") -> dict[str, Any]:
    return {
        "messages": [
            {"from": "SMSLab", "to": n, "text": "hello", "reference": f"{prefix}-{i}"}
            for i, n in enumerate(numbers)
        ]
    }


def send(sim: SimulatorProcess, payload: dict[str, Any], timeout: float = 5.0) -> httpx.Response:
    return httpx.post(sim.base_url + SEND, json=payload, headers=KEY, timeout=timeout)


def test_bulk_send_answers_one_result_per_message_in_order(simulator: SimulatorProcess) -> None:
    response = send(simulator, bulk("+12025550143", "12345", "+306912345678"))
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body["bulkId"], str)
    assert [(m["reference"], m["status"], m["errorCode"]) for m in body["messages"]] == [
        ("ref-0", "Accepted", None),
        ("ref-1", "Rejected", 8),
        ("ref-2", "Accepted", None),
    ]
    assert body["messages"][1]["messageId"] is None
    looked_up = httpx.get(simulator.base_url + LOOKUP, params={"reference": "ref-0"}, headers=KEY).json()
    [found] = looked_up["messages"]
    assert (found["messageId"], found["reference"], found["to"]) == (
        body["messages"][0]["messageId"],
        "ref-0",
        "+12025550143",
    )
    # The carrier moves the message on by itself: Accepted, then Sent, then its final status.
    assert found["deliveryStatus"] in ("Accepted", "Sent", "Delivered")
    never = httpx.get(simulator.base_url + LOOKUP, params={"reference": "ref-1"}, headers=KEY).json()
    assert never == {"messages": []}


def test_it_never_deduplicates_so_double_sends_stay_visible(simulator: SimulatorProcess) -> None:
    send(simulator, bulk("+12025550143"))
    send(simulator, bulk("+12025550143"))
    found = httpx.get(simulator.base_url + LOOKUP, params={"reference": "ref-0"}, headers=KEY).json()[
        "messages"
    ]
    assert len(found) == 2
    assert found[0]["messageId"] != found[1]["messageId"]


@pytest.mark.parametrize(
    ("payload", "headers", "status"),
    [
        (bulk("+12025550143"), {"X-Mitto-API-Key": "wrong"}, 401),
        (b"not json", KEY, 400),
        ({"messages": []}, KEY, 400),
        ({"messages": [{"to": "+12025550143"}]}, KEY, 400),
    ],
)
def test_malformed_or_unauthorised_requests_get_the_providers_error_shape(
    simulator: SimulatorProcess, payload: Any, headers: dict[str, str], status: int
) -> None:
    kwargs: dict[str, Any] = {"content": payload} if isinstance(payload, bytes) else {"json": payload}
    response = httpx.post(simulator.base_url + SEND, headers=headers, timeout=5, **kwargs)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"code", "message"}


def test_the_ledger_is_on_disk_before_the_answer_and_outlives_the_process(
    simulator: SimulatorProcess,
) -> None:
    first = send(simulator, bulk("+12025550143", "+12025550144")).json()
    records = list(read_ledger(simulator.data_dir / ACCEPTED_LEDGER))
    assert [r["message_id"] for r in records] == [m["messageId"] for m in first["messages"]]
    assert "text" not in records[0]  # a hash of the text, not the text
    simulator.kill()
    simulator.start()
    found = httpx.get(simulator.base_url + LOOKUP, params={"reference": "ref-1"}, headers=KEY).json()[
        "messages"
    ]
    assert [m["messageId"] for m in found] == [first["messages"][1]["messageId"]]
    later = send(simulator, bulk("+12025550145", prefix="later")).json()
    assert later["messages"][0]["messageId"] not in {m["messageId"] for m in first["messages"]}


def test_fault_rules_are_validated_field_by_field(simulator: SimulatorProcess) -> None:
    control = simulator.base_url + "/control/faults"
    for rule, field in [
        ({"target": "mitto.send", "kind": "explode"}, "fault.kind"),
        ({"target": "mitto.send", "kind": "status", "params": {"status": 418}}, "fault.params.status"),
        ({"target": "mitto.send", "kind": "latency", "probability": 2}, "fault.probability"),
        ({"target": "mitto.send", "kind": "latency", "params": {"ms": "slow"}}, "fault.params.ms"),
        ({"kind": "reset"}, "fault.target"),
        ({"target": "mitto.send", "kind": "reset", "colour": "red"}, "fault.colour"),
    ]:
        response = httpx.post(control, json=rule)
        assert response.status_code == 422, rule
        assert response.json()["detail"].startswith(field), response.json()
    batch = [{"target": "mitto.send", "kind": "reset"}, {"target": "mitto.send", "kind": "nope"}]
    assert httpx.post(control, json=batch).json()["detail"].startswith("faults[1].kind")
    assert httpx.get(control).json()["faults"] == []  # all or nothing


def test_each_fault_kind_is_observable_from_a_client(simulator: SimulatorProcess) -> None:
    simulator.add_fault(target="mitto.send", kind="latency", count=1, params={"ms": 400})
    started = time.monotonic()
    assert send(simulator, bulk("+12025550143", prefix="a")).status_code == 200
    assert time.monotonic() - started >= 0.4

    simulator.add_fault(target="mitto.send", kind="status", count=1, params={"status": 429, "retry_after": 3})
    limited = send(simulator, bulk("+12025550143", prefix="b"))
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")

    simulator.add_fault(target="mitto.send", kind="status", count=1, params={"status": 503})
    assert send(simulator, bulk("+12025550143", prefix="c")).status_code == 503

    simulator.add_fault(target="mitto.send", kind="reset", count=1)
    with pytest.raises(httpx.TransportError):
        send(simulator, bulk("+12025550143", prefix="d"))

    simulator.add_fault(target="mitto.send", kind="timeout", count=1, params={"seconds": 2})
    with pytest.raises(httpx.ReadTimeout):
        send(simulator, bulk("+12025550143", prefix="e"), timeout=0.5)

    simulator.add_fault(target="mitto.send", kind="accept_then_lose", count=1)
    with pytest.raises(httpx.TransportError):
        send(simulator, bulk("+12025550143", prefix="f"))

    time.sleep(2)  # let the held "timeout" answer go
    accepted = {r["reference"] for r in read_ledger(simulator.data_dir / ACCEPTED_LEDGER)}
    # Status and reset faults did no work; timeout and accept-then-lose did the work and lost the answer.
    assert accepted == {"a-0", "e-0", "f-0"}
    counters = simulator.counters()["endpoints"]["mitto.send"]
    assert counters == {
        "requests": 6,
        "latency": 1,
        "status": 2,
        "reset": 1,
        "timeout": 1,
        "accept_then_lose": 1,
    }


def _fault_pattern(data_dir: Path, seed: int) -> list[int]:
    sim = SimulatorProcess(data_dir, seed=seed)
    sim.start()
    try:
        sim.add_fault(target="mitto.send", kind="status", probability=0.5, params={"status": 503})
        return [send(sim, bulk("+12025550143", prefix=f"p{i}")).status_code for i in range(24)]
    finally:
        sim.stop()


def test_the_same_seed_gives_the_same_faults(tmp_path: Path) -> None:
    first = _fault_pattern(tmp_path / "a", seed=42)
    assert first == _fault_pattern(tmp_path / "b", seed=42)
    assert first != _fault_pattern(tmp_path / "c", seed=43)
    assert 0 < first.count(503) < 24

"""The verdict as printed: under the table, what the run exercised and whether its metrics told the truth."""

from __future__ import annotations

from typing import Any

from chaos.report import coverage_lines


def verdict(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "coverage": {
            "workload": {
                "planned_s": 15.0,
                "achieved_s": 15.2,
                "operations": {"enqueue": {"ok": 10, "info": 2}, "create_campaign": {"ok": 12}},
                "campaigns_enqueued": 10,
                "campaigns_completed": 9,
                "messages_accepted": 1,
            },
            "faults": {
                "nemesis": [{"fired": True}, {"fired": False}],
                "provider_rules": [{"target": "mitto.send", "kind": "status", "fired": 4, "expected": 3.6}],
                "crashes": 1,
            },
        },
        "observations": {"metrics": metrics},
    }


def test_the_run_behind_a_verdict_is_shown_with_it() -> None:
    agree = {
        "available": True,
        "comparisons": [{"what": "messages sent", "metric": 5, "truth": 5, "agrees": True}],
    }
    exercised, faults, observed = coverage_lines(verdict(agree))
    assert exercised == (
        "exercised: chaos 15.2 of 15 s; 24 operations (info 2, ok 22); 10 campaigns enqueued, 9 completed; "
        "1 message accepted"
    )
    assert faults == (
        "faults: nemesis 1/2 events fired; mitto.send status fired 4 (expected 3.6); "
        "1 crash seen by the supervisor"
    )
    assert observed == "observed: the service's metrics agree with ground truth (1 counters)"


def test_metrics_that_lie_are_said_to_with_both_figures() -> None:
    lying = {
        "available": True,
        "comparisons": [{"what": "credits debited", "metric": 7, "truth": 9, "agrees": False, "off_by": -2}],
    }
    assert coverage_lines(verdict(lying))[-1] == (
        "observed: the service's METRICS DISAGREE with ground truth: credits debited 7 vs 9"
    )
    assert (
        coverage_lines(verdict({"available": False, "why": "no scrape"}))[-1]
        == "observed: no metrics (no scrape)"
    )

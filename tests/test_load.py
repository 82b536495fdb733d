"""Load runs: the locustfile's users against a live API (both databases), the gate failing on a 5xx,
`smslab load` end to end, and Locust's distributed mode. Locust always runs as a process of its own (its
gevent never enters the test process); no assertion depends on how fast anything was."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chaos.history import History, read_history
from chaos.load import LOCUSTFILE, for_load, merge_histories, world_document
from chaos.load_gate import StatRow, Thresholds, evaluate
from chaos.scenario import ScenarioError, load_scenario, parse_scenario
from chaos.workload import Workload
from tests.support.api import Api, start_api
from tests.support.infra import ROOT
from tests.support.lab import Lab

SMSLAB = str(Path(sys.executable).with_name("smslab"))
TINY_WORLD = {
    "workload": {"shops": 1, "contacts_per_shop": 5, "customers_per_shop": 1, "credits_per_shop": 2000}
}


# --- the scenario's [load] table and the gate, as plain functions ----------------------------------------
@pytest.mark.parametrize(
    ("load", "message"),
    [
        ({"users": 0}, "scenario.load.users: must be a whole number >= 1"),
        ({"spawn_rate": 0}, "scenario.load.spawn_rate: must be a number >= 0.1"),
        ({"user_classes": {"AdminUser": 1}}, "scenario.load.user_classes.AdminUser: unknown field"),
        ({"user_classes": {"MerchantUser": 0, "WebhookStormUser": 0}}, "some weight must be > 0"),
        ({"thresholds": {"max_failure_ratio": 2}}, "scenario.load.thresholds.max_failure_ratio: must be"),
        ({"stages": [{"duration_s": 5, "users": 3}]}, r"scenario.load.stages\[0\].spawn_rate: is required"),
        ({"rps": 3}, "scenario.load.rps: unknown field"),
    ],
)
def test_a_bad_load_table_is_refused_naming_the_field(load: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario({"name": "x", "load": load})


def test_the_command_lines_overrides_and_the_chaos_phase_follow_the_load() -> None:
    scenario = for_load(load_scenario("load_quick"), users=3, duration_s=7)
    assert (scenario.load.users, scenario.load.duration_s, scenario.workload.duration_s) == (3, 7.0, 7.0)
    spike = load_scenario("load_spike")
    assert (
        for_load(spike).workload.duration_s
        == spike.load.total_s
        == sum(s.duration_s for s in spike.load.stages)
    )
    with pytest.raises(ScenarioError, match="--duration: the scenario's \\[load\\] has stages"):
        for_load(spike, duration_s=5)


def test_the_gate_fails_on_failures_and_slow_classes_but_not_on_the_noisy_tenants_latency() -> None:
    ok = StatRow("GET", "/api/wallet", 100, 0, 50.0, 10, 20, 30)
    noisy = StatRow("GET", "/api/contacts (noisy tenant)", 100, 0, 50.0, 900, 5000, 9000)
    thresholds = Thresholds(max_failure_ratio=0.01, p99_ms=100)
    assert evaluate([ok, noisy], None, thresholds).passed
    failing = StatRow("POST", "/api/campaigns/{id}/enqueue", 100, 5, 50.0, 10, 20, 30)
    result = evaluate([ok, failing], None, thresholds)
    assert not result.passed
    assert "failure ratio 2.50%" in result.why[0]
    slow = StatRow("POST", "/api/campaigns", 10, 0, 5.0, 10, 20, 300)
    assert "POST /api/campaigns: p99 300 ms above 100 ms" in evaluate([slow], None, thresholds).why
    assert evaluate([], None, thresholds).why == ["Locust made no request"]
    # A table whose classes lost their figures (Locust 2.47 empties them when it writes --json-file)
    # judged no class's latency: it fails, however good the total looks.
    emptied = [StatRow("POST", "/api/campaigns", 0, 0, 0.0, 0, 0, 0)]
    total = StatRow("", "Aggregated", 1475, 0, 97.0, 74, 350, 490)
    assert not evaluate(emptied, total, thresholds).passed
    assert "request classes hold 0 of its 1475 requests" in evaluate(emptied, total, thresholds).why[0]
    assert evaluate([*emptied, ok], StatRow("", "Aggregated", 100, 0, 50.0, 10, 20, 30), thresholds).passed


def test_the_gate_holds_unreachable_requests_apart_from_5xx_and_timeouts() -> None:
    rows = [StatRow("GET", "/api/wallet", 1000, 60, 50.0, 10, 20, 30)]
    # 60 failures, 50 of them refused or cut while no API process was there: 1% left, within 1%.
    killing = Thresholds(max_failure_ratio=0.01, max_unreachable_ratio=0.1, p99_ms=0)
    assert evaluate(rows, None, killing, unanswerable=50).passed
    # The same 50 in a scenario that never kills the API: the gate fails, naming them.
    strict = Thresholds(max_failure_ratio=0.01, p99_ms=0)
    result = evaluate(rows, None, strict, unanswerable=50)
    assert not result.passed
    assert any(why.startswith("unreachable 5.00%") for why in result.why)
    # 5xx and timeouts are never excused by a kill: 60 of them is 6%.
    assert not evaluate(rows, None, killing, unanswerable=0).passed


def test_the_gate_counts_503_overloaded_apart_and_bounds_it_only_where_the_scenario_says(
    tmp_path: Path,
) -> None:
    """A full API process's 503 overloaded is a success in Locust's table (the answer owed past
    saturation); the gate bounds the share of them by `max_shed_ratio`, from `load_shed.json` when it
    judges a run folder again."""
    from chaos.load_gate import SHED_JSON, evaluate_folder, summary

    rows = [StatRow("GET", "/api/wallet", 1000, 0, 50.0, 10, 20, 30)]
    shed = {"GET /api/wallet": 40}
    assert evaluate(rows, None, Thresholds(p99_ms=0), shed=shed).passed  # past saturation: owed
    below = Thresholds(p99_ms=0, max_shed_ratio=0.01)
    result = evaluate(rows, None, below, shed=shed)
    assert not result.passed
    assert result.why == [
        "shed 4.00%, above 1.00% (40 of 1000 requests refused 503 overloaded: the API was past saturation)"
    ]
    (tmp_path / "load_stats.csv").write_text(
        "Type,Name,Request Count,Failure Count,Requests/s,50%,95%,99%\n"
        "GET,/api/wallet,1000,0,50.0,10,20,30\n,Aggregated,1000,0,50.0,10,20,30\n"
    )
    assert evaluate_folder(tmp_path, below).passed  # no load_shed.json: none counted
    (tmp_path / SHED_JSON).write_text(json.dumps(shed))
    assert not evaluate_folder(tmp_path, below).passed
    assert [row["shed"] for row in summary(tmp_path)] == [40, 40]


def test_the_metrics_observation_counts_the_storms_posts_exactly(tmp_path: Path) -> None:
    from chaos.checker.load_run import storm_deliveries
    from chaos.checker.observations import DeliveryTally, metrics_against_truth
    from chaos.checker.snapshot_io import load_saved_snapshot

    folder = tmp_path / "load_history"
    folder.mkdir()
    (folder / "storm-1.json").write_text(json.dumps({"posts": {"mitto": {"2xx": 70, "no_answer": 2}}}))
    (folder / "storm-2.json").write_text(json.dumps({"posts": {"mitto": {"2xx": 30, "other": 5}}}))
    storm = storm_deliveries(tmp_path)
    assert storm == DeliveryTally({"mitto": 100}, {"mitto": 2})
    samples = {'smslab_webhook_events_total{outcome="applied",provider="mitto"}': 0.0}

    def observed(counted: float) -> dict[str, Any]:
        samples['smslab_webhook_events_total{outcome="applied",provider="mitto"}'] = counted
        line = json.dumps({"t": 1.0, "samples": {k.replace('"', ""): v for k, v in samples.items()}})
        (tmp_path / "metrics.jsonl").write_text(line + "\n")
        (tmp_path / "database").mkdir(exist_ok=True)
        result = metrics_against_truth(
            tmp_path, [], load_saved_snapshot(tmp_path / "database"), DeliveryTally({"mitto": 900}), storm
        )
        row: dict[str, Any] = result["comparisons"][-1]
        assert row["of_which_load"] == {"answered": 100, "unanswered": 2}
        return row

    assert observed(1000)["agrees"]  # the providers' 900 and the storm's 100
    assert observed(1002)["agrees"]  # the storm's 2 without an answer may have been counted
    assert not observed(1003)["agrees"]
    assert not observed(999)["agrees"]


def test_sends_a_killed_worker_never_counted_are_excused_only_as_far_as_its_deaths_reach(
    tmp_path: Path,
) -> None:
    """A worker counts a batch just after committing it: a SIGKILL in between loses that increment, and
    each death can lose at most the batches it had in flight. Without a death the count must be exact."""
    from chaos.checker.evidence import Acceptance
    from chaos.checker.observations import metrics_against_truth
    from chaos.checker.snapshot_io import load_saved_snapshot

    (tmp_path / "database").mkdir()
    (tmp_path / "scenario.toml").write_text(
        'name = "kills"\nseed = 1\n[services]\nworker_concurrency = 2\nbatch_size = 5\n'
    )
    acceptances = [Acceptance(f"c1-r{n}", f"m{n}", "+12025550143", 1.0, 1, n) for n in range(100)]

    def messages_sent(counted: float) -> dict[str, Any]:
        sample = {"smslab_messages_sent_total": counted, "smslab_credits_debited_total": counted}
        (tmp_path / "metrics.jsonl").write_text(json.dumps({"t": 1.0, "samples": sample}) + "\n")
        result = metrics_against_truth(
            tmp_path, acceptances, load_saved_snapshot(tmp_path / "database"), None
        )
        row: dict[str, Any] = result["comparisons"][0]
        return row

    assert messages_sent(100)["agrees"]
    assert not messages_sent(99)["agrees"]  # no worker died: nothing may go uncounted
    deaths = [
        {
            "t": 1.0,
            "action": "kill_worker",
            "target": "worker-0",
            "phase": "start",
            "outcome": "SIGKILL pid 7",
        },
        {"t": 1.5, "action": "kill_worker", "target": "worker-0", "phase": "end", "outcome": "restarted"},
        {"t": 2.0, "action": "crash", "target": "worker-1", "phase": "start", "outcome": "exited -9"},
        {"t": 3.0, "action": "kill_api", "target": "api", "phase": "start", "outcome": "SIGKILL pid 8"},
    ]
    (tmp_path / "nemesis.jsonl").write_text("".join(json.dumps(e) + "\n" for e in deaths))
    within = messages_sent(80)  # two worker deaths x 2 batches x 5 messages
    assert (within["agrees"], within["off_by"], within["may_be_lost"]) == (True, -20, 20)
    assert within["lost_because"].startswith("2 worker deaths")
    assert not messages_sent(79)["agrees"]
    assert not messages_sent(101)["agrees"]  # counting more than was sent is never excused


def test_each_locust_processs_history_merges_into_one_index_sequence(tmp_path: Path) -> None:
    folder = tmp_path / "load_history"
    folder.mkdir()
    lines = {
        "locust-1.jsonl": [
            {
                "index": 0,
                "wall": 100.0,
                "process": "a",
                "type": "invoke",
                "f": "enqueue",
                "value": {"key": "k1"},
            },
            {
                "index": 1,
                "wall": 100.3,
                "process": "a",
                "type": "ok",
                "f": "enqueue",
                "op": 0,
                "value": {"key": "k1"},
            },
        ],
        "locust-2.jsonl": [
            {
                "index": 0,
                "wall": 100.1,
                "process": "b",
                "type": "invoke",
                "f": "enqueue",
                "value": {"key": "k2"},
            },
            {
                "index": 1,
                "wall": 100.2,
                "process": "b",
                "type": "fail",
                "f": "enqueue",
                "op": 0,
                "value": {"key": "k2"},
            },
        ],
    }
    for name, entries in lines.items():
        (folder / name).write_text("".join(json.dumps(e) + "\n" for e in entries))
    history = History(tmp_path / "history.jsonl")
    counts = merge_histories(folder, history.path, started_at=99.0)
    history.close()
    merged = read_history(tmp_path / "history.jsonl")
    assert [(e["index"], e["process"], e["type"], e.get("op")) for e in merged] == [
        (0, "a", "invoke", None),
        (1, "b", "invoke", None),
        (2, "b", "fail", 1),
        (3, "a", "ok", 0),
    ]
    assert merged[0]["time"] == pytest.approx(1.0)
    assert counts == {"enqueue:ok": 1, "enqueue:fail": 1}


# --- the users against a live API --------------------------------------------------------------------------
async def _world(lab: Lab, api: Api, path: Path) -> Path:
    scenario = load_scenario("load_quick").with_changes(TINY_WORLD)
    workload = Workload(
        scenario, lab.settings, api.base_url, lab.simulator.base_url, History(path.with_suffix(".tmp"))
    )
    await workload.setup()
    document = world_document(workload, lab.settings, api.base_url, lab.simulator.base_url, ["+12025550143"])
    path.write_text(json.dumps(document))
    return path


def _locust_argv(
    world: Path, out: Path, host: str, classes: tuple[str, ...], seconds: int, users: int
) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
        "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "-s", "5",
        "--csv", str(out / "load"), "--world", str(world), "--history-dir", str(out / "load_history"),
        "--gate-file", str(out / "load_gate.json"), "--p99-ms", "0", "--think", "0,0.05", *classes,
        "--json-file", str(out / "load_stats"),  # as `smslab load` runs it (chaos.load.locust_argv)
    ]  # fmt: skip


def _locust(
    world: Path, out: Path, host: str, *classes: str, seconds: int = 4, users: int = 4
) -> subprocess.CompletedProcess[str]:
    argv = _locust_argv(world, out, host, classes, seconds, users)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)


def _history_entries(out: Path) -> list[dict[str, Any]]:
    entries = []
    for path in (out / "load_history").glob("locust-*.jsonl"):
        text = path.read_text()
        complete = text[: text.rfind("\n") + 1]  # a line still being written has no newline yet
        entries += [json.loads(line) for line in complete.splitlines()]
    return entries


def _locust_until(
    world: Path, out: Path, host: str, *classes: str, until: Callable[[list[dict[str, Any]]], bool]
) -> subprocess.CompletedProcess[str]:
    """Locust runs until its history shows what the test is about (on a starved machine three seconds
    may hold no enqueue at all), then is stopped as an operator stops it: SIGTERM, and Locust's own
    shutdown (the gate, the final CSV files)."""
    argv = _locust_argv(world, out, host, classes, seconds=90, users=4)
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    ) as locust:
        deadline = time.monotonic() + 80
        while locust.poll() is None and time.monotonic() < deadline:
            if until(_history_entries(out)):
                break
            time.sleep(0.2)
        locust.send_signal(signal.SIGTERM)
        stdout, stderr = locust.communicate(timeout=60)
        return subprocess.CompletedProcess(argv, locust.returncode, stdout, stderr)


def _rows(out: Path) -> dict[str, dict[str, str]]:
    """`load_stats.csv` by request class; its classes must add up to its total, as Locust counted it."""
    with (out / "load_stats.csv").open() as handle:
        rows = {f"{r['Type']} {r['Name']}".strip(): r for r in csv.DictReader(handle)}
    classes = sum(int(row["Request Count"]) for name, row in rows.items() if name != "Aggregated")
    assert classes == int(rows["Aggregated"]["Request Count"]) > 0
    return rows


@pytest.mark.webhooks_to_api
async def test_the_users_drive_a_live_api_and_record_every_enqueue(
    lab: Lab, api: Api, tmp_path: Path
) -> None:
    world = await _world(lab, api, tmp_path / "world.json")
    done = _locust(
        world, tmp_path, api.base_url, "MerchantUser", "WebhookStormUser", "NoisyTenantUser", users=6
    )
    gate = json.loads((tmp_path / "load_gate.json").read_text())
    assert done.returncode == 0, (gate["why"], done.stderr[-3000:])
    rows = _rows(tmp_path)
    assert int(rows["POST /api/campaigns/{id}/enqueue"]["Request Count"]) > 0
    assert any(name.endswith("(noisy tenant)") for name in rows)
    assert any(name.startswith("POST /webhooks/") for name in rows)
    (history_file,) = (tmp_path / "load_history").glob("locust-*.jsonl")
    entries = [json.loads(line) for line in history_file.read_text().splitlines()]
    accepted = [
        e for e in entries if e["f"] == "enqueue" and e["type"] == "ok" and e["value"]["status"] == 202
    ]
    assert accepted
    assert all({"shop", "campaign", "key", "response"} <= set(e["value"]) for e in accepted)
    # Every API call is in the history too, the noisy tenant's marked as a flood with its route class
    # (what I9 judges), and each storm post counted by provider (what the metrics observation adds).
    assert {"create_campaign", "wallet", "get_campaign"} <= {e["f"] for e in entries}
    flood = [e for e in entries if e["type"] == "invoke" and e["value"].get("flood")]
    assert flood
    assert {e["value"]["route_class"] for e in flood} <= {"reports", "imports", "billing"}
    (storm_file,) = (tmp_path / "load_history").glob("storm-*.json")
    posts = json.loads(storm_file.read_text())["posts"]
    assert sum(posts.get("mitto", {}).values()) + sum(posts.get("shopify", {}).values()) > 0


@pytest.mark.webhooks_to_api
async def test_the_gate_fails_locusts_exit_code_on_a_5xx(lab: Lab, api: Api, tmp_path: Path) -> None:
    world = await _world(lab, api, tmp_path / "world.json")
    broken = start_api(
        lab.settings,
        tmp_path / "broken-logs",
        SMSLAB_LAB_ALLOW_UNSAFE="true",
        SMSLAB_ENV="lab",
        SMSLAB_FAILPOINTS="enqueue.before_commit=raise",
    )
    try:
        host = f"http://127.0.0.1:{broken.argv[broken.argv.index('--port') + 1]}"
        done = _locust_until(
            world,
            tmp_path,
            host,
            "MerchantUser",
            until=lambda entries: any(
                e["f"] == "enqueue" and e["type"] == "info" and e["value"].get("status") == 500
                for e in entries
            ),
        )
    finally:
        broken.stop()
    gate = json.loads((tmp_path / "load_gate.json").read_text())
    assert done.returncode == 1, done.stderr[-3000:]
    assert not gate["passed"]
    assert any(check["check"] == "failure_ratio" and not check["passed"] for check in gate["checks"])
    rows = _rows(tmp_path)
    assert int(rows["POST /api/campaigns/{id}/enqueue"]["Failure Count"]) > 0
    # The CSV files are final: every request the gate counted is in them (Locust itself writes them once
    # a second, never at exit)
    requests = next(check["value"] for check in gate["checks"] if check["check"] == "requests")
    assert int(rows["Aggregated"]["Request Count"]) >= requests


@pytest.mark.webhooks_to_api
async def test_a_full_api_processs_503_overloaded_is_obeyed_counted_apart_and_gated(
    lab: Lab, api: Api, tmp_path: Path
) -> None:
    """An API process that serves one request at a time and lets none wait: merchants see 503
    overloaded with Retry-After, which is their owed answer (no failure in Locust's table), is recorded
    as a definite refusal (an enqueue retried with its key), and is counted by class for the gate."""
    from chaos.load_gate import SHED_JSON, evaluate_folder

    world = await _world(lab, api, tmp_path / "world.json")
    full = start_api(
        lab.settings,
        tmp_path / "full-logs",
        SMSLAB_API_MAX_IN_FLIGHT="1",
        SMSLAB_API_ADMISSION_WAIT_SECONDS="0",
    )
    try:
        host = f"http://127.0.0.1:{full.argv[full.argv.index('--port') + 1]}"
        done = _locust_until(
            world,
            tmp_path,
            host,
            "MerchantUser",
            until=lambda entries: sum(1 for e in entries if e["value"].get("problem") == "overloaded") >= 5,
        )
    finally:
        full.stop()
    gate = json.loads((tmp_path / "load_gate.json").read_text())
    assert done.returncode == 0, (gate["why"], done.stderr[-3000:])
    shed = json.loads((tmp_path / SHED_JSON).read_text())
    assert sum(shed.values()) >= 5
    assert set(shed) <= set(_rows(tmp_path))
    refused = [e for e in _history_entries(tmp_path) if e["value"].get("problem") == "overloaded"]
    assert {(e["type"], e["value"]["status"], e["value"]["retry_after"]) for e in refused} == {
        ("fail", 503, "1")
    }
    by_check = {check["check"]: check for check in gate["checks"]}
    assert by_check["failure_ratio"]["value"] == 0
    assert by_check["shed_ratio"]["value"] > 0
    assert not evaluate_folder(tmp_path, Thresholds(p99_ms=0, max_shed_ratio=0.0001)).passed


# --- `smslab load` end to end ----------------------------------------------------------------------------
def _smslab_load(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SMSLAB_REDIS_URL"}
    return subprocess.run(
        [SMSLAB, "load", *args], capture_output=True, text=True, timeout=280, cwd=ROOT, env=env, check=False
    )


def _verdict(out: Path) -> tuple[Path, dict[str, Any]]:
    run_dir = (out / "latest").resolve()
    return run_dir, json.loads((run_dir / "verdict.json").read_text())


@pytest.mark.slow
def test_smslab_load_load_quick_end_to_end_on_sqlite(tmp_path: Path) -> None:
    done = _smslab_load("load_quick", "--out", str(tmp_path))
    run_dir, verdict = _verdict(tmp_path)
    for name in (
        "load_stats.csv", "load_stats_history.csv", "load_failures.csv", "load_exceptions.csv",
        "load_report.html", "world.json", "history.jsonl", "verdict.json",
    ):  # fmt: skip
        assert (run_dir / name).exists(), name
    assert verdict["valid"] is True, (verdict["unknown_because"], done.stdout[-4000:])
    assert {item["id"] for item in verdict["invariants"]} == {f"I{n}" for n in range(1, 10)}
    assert verdict["invariants"][5]["counts"]["campaigns_enqueued"] > 0  # I6 judged Locust's enqueues
    # Exit 0 exactly when the invariants and the gate both passed (how fast it ran decides the gate).
    assert done.returncode == (0 if verdict["passed"] else 1), done.stderr[-2000:]
    assert "load (Locust)" in done.stdout
    assert "load gate:" in done.stdout
    _rows(run_dir)  # every request class's figures, not only the total


@pytest.mark.slow
def test_a_load_scenario_with_two_locust_worker_processes(tmp_path: Path) -> None:
    scenario = tmp_path / "two_workers.toml"
    scenario.write_text(
        """
name = "two_workers"
quiescence_s = 30
[services]
workers = 1
rate_limits = "strict=30000/minute burst=1000,campaigns=60000/minute burst=2000"
[workload]
shops = 2
contacts_per_shop = 5
customers_per_shop = 1
credits_per_shop = 5000
[load]
duration_s = 6
users = 4
spawn_rate = 4
user_classes = { MerchantUser = 1, WebhookStormUser = 0 }
thresholds = { p99_ms = 0 }
"""
    )
    assert tomllib.loads(scenario.read_text())
    done = _smslab_load(str(scenario), "--locust-processes", "2", "--out", str(tmp_path / "runs"))
    run_dir, verdict = _verdict(tmp_path / "runs")
    argv = json.loads((run_dir / "locust.argv.json").read_text())
    assert argv[argv.index("--processes") + 1] == "2"
    assert len(list((run_dir / "load_history").glob("locust-*.jsonl"))) == 2  # each worker's own file
    assert verdict["valid"] is True, (verdict["unknown_because"], done.stdout[-4000:])
    assert verdict["load"]["gate"]["passed"], verdict["load"]["gate"]["why"]
    assert done.returncode == 0

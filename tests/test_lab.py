"""The lab itself: scenario files, the nemesis plan, the matrix table, and `smslab run`, `check` and
`replay` end to end as a user runs them (real processes, the embedded defaults and PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import tomli_w

from chaos.matrix import load_matrix, plan_runs
from chaos.nemesis import plan
from chaos.scenario import SCENARIOS_DIR, ScenarioError, load_scenario, parse_scenario
from service import safeguards
from tests.support.infra import POSTGRES_URL, ROOT, plain_postgres_url, postgres_or_skip

TINY = """
name = "tiny"
seed = 5
quiescence_s = 25

[services]
workers = 1
worker_concurrency = 4
lease_s = 2
mitto_timeout_s = 1
reconcile_interval_s = 1
batch_size = 10

[workload]
duration_s = 4
shops = 1
contacts_per_shop = 30
customers_per_shop = 2
clients = 2
credits_per_shop = 1000

[workload.mix]
campaign = 10
buy = 1
refund = 1
consent = 1
redact = 0

[[simulator.faults]]
target = "mitto.send"
kind = "accept_then_lose"
probability = 0.2

[[nemesis]]
action = "kill_worker"
at_s = 1.5
restart_after_s = [0.3, 0.5]
"""


# --- scenario files -------------------------------------------------------------------------------------


def test_every_shipped_scenario_is_valid_and_quick_fits_in_a_minute() -> None:
    names = sorted(p.stem for p in SCENARIOS_DIR.glob("*.toml"))
    assert {"quick", "soak", "worker_kills", "api_kills", "redis_loss", "lost_answers"} <= set(names)
    for name in names:
        scenario = load_scenario(name)
        assert scenario.name == name
    quick = load_scenario("quick")
    assert quick.backend == "any"
    assert quick.workload.duration_s + quick.quiescence_s <= 50
    assert quick.nemesis  # real faults, on the embedded defaults
    assert quick.simulator.faults


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"workload": {"clients": 0}}, "scenario.workload.clients: must be a whole number >= 1"),
        ({"workload": {"speed": 3}}, "scenario.workload.speed: unknown field"),
        ({"workload": {"think_s": [2, 1]}}, "scenario.workload.think_s: high must not be below low"),
        (
            {"workload": {"consent_before_redact": 1.5}},
            "scenario.workload.consent_before_redact: must be a number between 0.0 and 1.0",
        ),
        ({"nemesis": [{"action": "explode", "at_s": 1}]}, "scenario.nemesis[0].action: must be one of"),
        ({"nemesis": [{"action": "kill_api"}]}, "give exactly one of every_s"),
        (
            {"nemesis": [{"action": "cut_db_connections", "at_s": 1}]},
            "scenario.nemesis[0].action: cut_db_connections needs backend",
        ),
        ({"services": {"lease_s": 1, "mitto_timeout_s": 1}}, "scenario.services.lease_s: must leave room"),
        ({"services": {"safeguards_off": ["seatbelts"]}}, "scenario.services.safeguards_off"),
        ({"services": {"worker_failpoints": "nowhere=kill"}}, "scenario.services.worker_failpoints"),
        (
            {"simulator": {"faults": [{"target": "mitto.send", "kind": "explode"}]}},
            "scenario.simulator.faults[0]",
        ),
        (
            {"nemesis": [{"action": "toxic", "proxy": "redis", "at_s": 1, "toxic": {"type": "gremlin"}}]},
            "scenario.nemesis[0].toxic.type",
        ),
    ],
)
def test_a_bad_scenario_is_refused_naming_the_field(change: dict[str, Any], message: str) -> None:
    base = tomllib.loads(TINY)
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_scenario({**base, **change} if "nemesis" in change else _merge(base, change))


def _merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in change.items():
        merged[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


def test_a_scenario_with_changes_round_trips_through_its_file() -> None:
    scenario = parse_scenario(tomllib.loads(TINY)).with_safeguards_off(("reconciler",)).with_seed(9)
    again = parse_scenario(tomllib.loads(scenario.as_toml()))
    assert again == scenario
    assert (again.seed, again.services.safeguards_off) == (9, ("reconciler",))


def test_the_nemesis_plan_is_a_function_of_the_seed() -> None:
    scenario = load_scenario("soak")
    first, again, other = plan(scenario, 1), plan(scenario, 1), plan(scenario, 2)
    assert first == again
    assert first != other
    assert all(0 <= event.at < scenario.workload.duration_s for event in first)
    assert {e.action for e in first} == {"kill_worker", "kill_api", "restart_redis", "toxic"}
    assert [e.at for e in first] == sorted(e.at for e in first)


def test_the_matrix_exposes_every_safeguard_and_controls_every_scenario() -> None:
    rows = load_matrix()
    assert {row.safeguard for row in rows} == set(safeguards.REGISTRY)
    for row in rows:
        assert row.fails == safeguards.REGISTRY[row.safeguard].invariant
    runs = plan_runs(rows, short=True)
    off = [r for r in runs if r.kind == "safeguard_off"]
    controls = [r for r in runs if r.kind == "all_on"]
    assert len(off) == len(rows)
    assert all(r.scenario.services.safeguards_off == (r.row.safeguard,) for r in off if r.row)
    assert sorted(s for r in controls for s in r.controls) == sorted(row.safeguard for row in rows)
    assert all(not r.scenario.services.safeguards_off for r in controls)
    # short runs last a few seconds, or what their row says it needs (and never longer than in full)
    for run in runs:
        row = run.row or next(r for r in rows if r.safeguard == run.controls[0])
        assert run.scenario.workload.duration_s == min(
            row.short_duration_s, load_scenario(row.scenario).workload.duration_s
        )
    assert max(r.scenario.workload.duration_s for r in runs) <= 12


# --- smslab run, check, replay ----------------------------------------------------------------------------


def smslab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSLAB_") or k.startswith("SMSLAB_TEST")}
    return subprocess.run(
        [sys.executable, "-m", "chaos.cli", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def invariants(run_dir: Path) -> dict[str, Any]:
    verdict = json.loads((run_dir / "verdict.json").read_text())
    return {item["id"]: item["valid"] for item in verdict["invariants"]}


def test_run_check_and_replay_a_scenario_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "tiny.toml").write_text(TINY)
    done = smslab("run", "tiny.toml", "--out", "runs", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "every invariant holds" in done.stdout
    run_dir = (tmp_path / "runs" / "latest").resolve()
    assert invariants(run_dir) == {f"I{n}": True for n in range(1, 10)}
    for name in ("scenario.toml", "run.json", "history.jsonl", "nemesis.plan.json", "nemesis.jsonl"):
        assert (run_dir / name).is_file(), name
    assert {p.name for p in (run_dir / "logs").iterdir()} == {"api.log", "worker-0.log", "simulator.log"}
    assert (run_dir / "simulator" / "mitto_accepted.jsonl").stat().st_size > 0
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["seed"] == 5
    assert manifest["quiescence"]["reached"] is True
    assert manifest["commit"]
    timeline = [json.loads(line) for line in (run_dir / "nemesis.jsonl").read_text().splitlines()]
    assert [(e["action"], e["phase"]) for e in timeline if e["action"] == "kill_worker"] == [
        ("kill_worker", "start"),
        ("kill_worker", "end"),
    ]
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    invoked = {e["index"] for e in history if e["type"] == "invoke"}
    completed = [e for e in history if e["type"] != "invoke"]
    assert completed
    assert {e["op"] for e in completed} <= invoked
    assert any(e["f"] == "enqueue" and e["type"] == "ok" for e in completed)

    checked = smslab("check", str(run_dir), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout[-2000:]

    replayed = smslab("replay", str(run_dir), "--out", "runs", cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stdout[-3000:] + replayed.stderr[-3000:]
    again = (tmp_path / "runs" / "latest").resolve()
    assert again != run_dir
    assert json.loads((again / "run.json").read_text())["replayed_plan"] is True
    assert (again / "nemesis.plan.json").read_text() == (run_dir / "nemesis.plan.json").read_text()


def test_a_run_with_a_safeguard_off_exits_1_naming_the_invariant(tmp_path: Path) -> None:
    scenario = tomllib.loads(TINY)
    scenario["services"].update(safeguards_off=["log_redaction"], log_sql=True)
    scenario["nemesis"] = []
    scenario["simulator"] = {}
    (tmp_path / "leaky.toml").write_text(tomli_w.dumps(scenario))
    done = smslab("run", "leaky.toml", "--out", "runs", cwd=tmp_path)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    verdicts = invariants((tmp_path / "runs" / "latest").resolve())
    assert verdicts.pop("I8") is False
    assert set(verdicts.values()) == {True}


def test_an_unknown_scenario_is_one_clear_line(tmp_path: Path) -> None:
    done = smslab("run", "no-such-scenario", cwd=tmp_path)
    assert done.returncode == 2
    assert "no scenario 'no-such-scenario' (known: " in done.stderr
    assert "Traceback" not in done.stderr


async def test_a_run_on_postgresql_gets_a_fresh_schema_and_drops_it(tmp_path: Path) -> None:
    await postgres_or_skip()
    scenario = tomllib.loads(TINY)
    scenario["nemesis"].append({"action": "cut_db_connections", "at_s": 2.5})
    scenario["backend"] = "postgresql"
    (tmp_path / "pg.toml").write_text(tomli_w.dumps(scenario))
    done = smslab("run", "pg.toml", "--database", POSTGRES_URL, "--out", "runs", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = (tmp_path / "runs" / "latest").resolve()
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["backend"] == "postgresql"
    schema = manifest["database_schema"]
    connection = await asyncpg.connect(plain_postgres_url(POSTGRES_URL))
    try:
        left = await connection.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema)
    finally:
        await connection.close()
    assert left == 0
    assert not (run_dir / "service.db").exists()

"""`smslab swarm` and `smslab shrink`: the draw (deterministic, every fault kind reachable, each drawn
scenario a valid scenario file), delta debugging against a known oracle, and both commands end to end
with a safeguard off: the swarm must find its invariant's failure and the shrink must cut it down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from chaos.nemesis import NemesisEvent
from chaos.scenario import ScenarioError, load_scenario, parse_scenario
from chaos.shrink import (
    Schedule,
    Shrinker,
    ShrinkOptions,
    Unit,
    event_rule,
    regression_scenarios,
    save_seed_gap,
    seed_gap_scenarios,
    smaller_units,
    smaller_workloads,
    witness_kinds,
)
from chaos.swarm import (
    FAULT_KINDS,
    KINDS_BY_NAME,
    PROFILES,
    RunResult,
    base_scenarios,
    draw_run,
    kinds_of,
    read_result,
    resolve_safeguards_off,
    run_seed,
    summarize,
)
from service import safeguards
from tests.support.infra import ROOT

SCENARIOS = Path(__file__).parent / "support" / "scenarios"


def smslab(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSLAB_") or k.startswith("SMSLAB_TEST")}
    return subprocess.run(
        [sys.executable, "-m", "chaos.cli", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- the draw -------------------------------------------------------------------------------------------


def test_the_same_seed_draws_the_same_run_and_other_seeds_other_mixes() -> None:
    base = load_scenario("quick")
    first = draw_run(1, 123, base, False, ())
    again = draw_run(1, 123, base, False, ())
    assert first.scenario.as_toml() == again.scenario.as_toml()
    mixes = {draw_run(i, run_seed(1, i), base, False, ()).kinds for i in range(1, 30)}
    assert len(mixes) > 20


def test_every_drawn_scenario_is_a_valid_scenario_file_and_every_kind_is_reachable() -> None:
    bases = base_scenarios((), postgresql=False)
    drawn_kinds: set[str] = set()
    for index in range(1, 301):
        seed = run_seed(7, index)
        run = draw_run(index, seed, bases[index % len(bases)], False, ())
        # What the swarm writes is what `smslab run FILE` reads back, unchanged
        reread = parse_scenario(tomllib.loads(run.scenario.as_toml()))
        assert reread.as_toml() == run.scenario.as_toml()
        assert run.kinds
        assert set(run.kinds) <= set(KINDS_BY_NAME)
        assert run.scenario.backend != "postgresql"
        drawn_kinds |= set(run.kinds)
        assert run.scenario.quiescence_s >= 60
    sqlite_kinds = {k.name for k in FAULT_KINDS if not k.postgresql_only}
    assert drawn_kinds == sqlite_kinds  # never a PostgreSQL-only kind on SQLite, and every other one


def test_postgresql_runs_draw_database_faults_too() -> None:
    base = load_scenario("db_cuts")
    kinds = {k for i in range(1, 60) for k in draw_run(i, run_seed(3, i), base, True, ()).kinds}
    assert {"cut_db_connections", "db_latency"} <= kinds
    # From any base: a database fault drawn on a base written for either backend still makes a valid
    # scenario (it once killed a whole PostgreSQL swarm at its fifth run: "needs backend = postgresql")
    bases = base_scenarios((), postgresql=True)
    for index in range(1, 121):
        run = draw_run(index, run_seed(11, index), bases[index % len(bases)], True, ())
        reread = parse_scenario(tomllib.loads(run.scenario.as_toml()))
        if {"cut_db_connections", "db_latency"} & set(run.kinds):
            assert reread.backend == "postgresql"
    assert [s.name for s in base_scenarios((), postgresql=False)].count("db_cuts") == 0


def test_always_kinds_safeguards_off_and_short_reach_every_run() -> None:
    base = load_scenario("worker_kills")
    for index in range(1, 20):
        run = draw_run(index, run_seed(2, index), base, False, ("claim_before_send",), ("kill_worker",), True)
        assert "kill_worker" in run.kinds
        assert run.scenario.services.safeguards_off == ("claim_before_send",)
        assert run.scenario.workload.duration_s <= 6


def test_workload_kinds_reshape_the_clients_and_keep_the_bases_other_settings() -> None:
    base = load_scenario("quick")
    plain = draw_run(1, 5, base, False, ())
    drawn = draw_run(1, 5, base, False, (), ("enqueue_duplicates", "credit_shortage"))
    workload = drawn.scenario.workload
    assert 0.5 <= workload.duplicate_enqueue <= 1.0
    assert 150 <= workload.credits_per_shop <= 600
    assert dict(workload.mix)["buy"] == 0
    # The rest of the base's mix stays as the base wrote it
    others = {k: v for k, v in dict(workload.mix).items() if k != "buy"}
    assert others == {k: v for k, v in dict(plain.scenario.workload.mix).items() if k != "buy"}
    assert {"enqueue_duplicates", "credit_shortage"} <= kinds_of(drawn.scenario)
    assert not {"enqueue_duplicates", "credit_shortage"} & kinds_of(base)


def test_a_base_scenarios_own_faults_are_named_in_the_swarms_terms() -> None:
    assert kinds_of(load_scenario("quick")) == {
        "kill_worker",
        "kill_api",
        "restart_redis",
        "providers_latency",
        "mitto_accept_then_lose",
        "mitto_503",
        "dlr_duplicate",
        "dlr_latency",
        "stripe_duplicate",
    }
    assert {"crash_after_provider_accepted", "crash_between_record_and_debit"} <= kinds_of(
        load_scenario("worker_kills")
    )


def test_safeguards_off_takes_names_and_the_seed_profile() -> None:
    assert resolve_safeguards_off(["seed"]) == PROFILES["seed"]
    assert set(PROFILES["seed"]) <= set(safeguards.REGISTRY)
    assert resolve_safeguards_off(["claim_before_send", "claim_before_send"]) == ("claim_before_send",)
    with pytest.raises(ScenarioError, match="no safeguard or profile 'nope'"):
        resolve_safeguards_off(["nope"])


def test_the_summary_counts_runs_per_fault_kind_and_invariant() -> None:
    ok = RunResult(1, 1, "quick", ("kill_worker",), "", invariants={"I1": True, "I2": True})
    bad = RunResult(2, 2, "quick", ("kill_worker", "dlr_drop"), "", invariants={"I1": False, "I2": True})
    unknown = RunResult(3, 3, "quick", ("dlr_drop",), "", invariants={"I1": True, "I2": None})
    lost = RunResult(4, 4, "quick", ("kill_api",), "", error="no verdict")
    summary = summarize([ok, bad, unknown, lost])
    assert summary["failed"] == 3
    assert summary["fault_kinds"]["kill_worker"] == {"runs": 2, "failed": 1}
    assert summary["fault_kinds"]["dlr_drop"] == {"runs": 2, "failed": 2}
    assert summary["invariants"]["I2"] == {"valid": 2, "invalid": 0, "unknown": 1}
    assert not ok.failed
    assert bad.failed
    assert unknown.failed
    assert lost.failed


# --- shrinking against a known oracle ---------------------------------------------------------------------


class OracleShrinker(Shrinker):
    """The shrinker's search with a known answer in place of real runs: fails while `needed` remain."""

    needed: set[str] = set()

    def fails(self, schedule: Schedule, change: str) -> bool:
        self.runs_used += 1
        accepted = self.needed <= {u.describe() for u in schedule.units}
        self._record(change, schedule, [], accepted, "")
        return accepted


def _schedule(count: int) -> Schedule:
    units = [
        Unit("faults", {"target": "mitto.dlr", "kind": "drop", "probability": 0.01 * (i + 1)})
        for i in range(count)
    ]
    return Schedule({"name": "x", "workload": {"duration_s": 12.0, "clients": 3}}, units)


@pytest.mark.parametrize("needed", [[3], [0, 9], [2, 5, 7]])
def test_delta_debugging_finds_exactly_the_faults_that_matter(tmp_path: Path, needed: list[int]) -> None:
    schedule = _schedule(10)
    shrinker = OracleShrinker(ShrinkOptions(tmp_path, max_runs=200), "I1", 1, tmp_path)
    shrinker.needed = {schedule.units[i].describe() for i in needed}
    smallest = shrinker.ddmin(schedule)
    assert {u.describe() for u in smallest.units} == shrinker.needed
    assert shrinker.runs_used < 60


def test_the_budget_stops_the_search(tmp_path: Path) -> None:
    schedule = _schedule(10)
    shrinker = OracleShrinker(ShrinkOptions(tmp_path, max_runs=3), "I1", 1, tmp_path)
    shrinker.needed = {schedule.units[4].describe()}
    shrinker.ddmin(schedule)
    assert shrinker.runs_used == 3


def test_a_candidate_must_fail_for_the_runs_reason_not_just_fail_the_same_invariant(tmp_path: Path) -> None:
    """A shrink of a lost debit (I3, kind lost_debit) once kept a candidate without the crash that lost
    it: I3 failed there by a double send. The kinds of witness are what the shrink keeps."""

    def failed(kinds: set[str]) -> RunResult:
        return RunResult(0, 1, "x", (), "", invariants={"I3": False}, witness_kinds={"I3": kinds})

    lost = Shrinker(ShrinkOptions(tmp_path), "I3", 1, tmp_path, witness_kinds=frozenset({"lost_debit"}))
    assert lost.breaks(failed({"lost_debit", "double_send"}))
    assert not lost.breaks(failed({"double_send"}))
    assert not lost.breaks(RunResult(0, 1, "x", (), "", invariants={"I3": True}))
    anything = Shrinker(ShrinkOptions(tmp_path), "I3", 1, tmp_path)  # a run whose witnesses named no kind
    assert anything.breaks(failed(set()))
    # and a run folder's verdict gives each invalid invariant's kinds
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    witnesses = [{"campaign_id": 1, "kind": "lost_debit"}, {"campaign_id": 2, "kind": "double_send"}]
    verdict = {
        "invariants": [{"id": "I3", "valid": False, "witnesses": witnesses}, {"id": "I1", "valid": True}]
    }
    (run / "verdict.json").write_text(json.dumps(verdict))
    result = read_result(RunResult(0, 1, "x", (), ""), tmp_path / "runs")
    assert result.witness_kinds == {"I3": {"lost_debit", "double_send"}}
    assert witness_kinds(run, "I3") == {"lost_debit", "double_send"}


def test_faults_and_workloads_get_smaller() -> None:
    kill = Unit("nemesis", event_rule(NemesisEvent(3.0, "kill_worker", "worker-0", 1.2)))
    assert kill.item == {"action": "kill_worker", "at_s": 3.0, "restart_after_s": [1.2, 1.2]}
    assert [u.item["restart_after_s"] for u in smaller_units(kill)] == [[0.6, 0.6]]
    toxic = Unit(
        "nemesis",
        event_rule(
            NemesisEvent(1.0, "toxic", "providers", 3.0, {"toxic": {"type": "latency", "attributes": {}}})
        ),
    )
    assert [u.item["duration_s"] for u in smaller_units(toxic)] == [1.5]
    assert [u.item for u in smaller_units(Unit("worker_failpoints", "send.after_claim=kill@0.04*3"))] == [
        "send.after_claim=kill@0.02*3"
    ]
    assert list(smaller_units(Unit("worker_failpoints", "send.after_claim=kill*1"))) == []
    changes = [change for change, _ in smaller_workloads(_schedule(1))]
    assert changes == ["chaos phase 12.0 -> 6.0 s", "clients 3 -> 2"]


# --- end to end -------------------------------------------------------------------------------------------


def _verdict(run_dir: str) -> dict[str, Any]:
    return {
        i["id"]: i["valid"] for i in json.loads((Path(run_dir) / "verdict.json").read_text())["invariants"]
    }


@pytest.mark.slow
def test_with_claim_before_send_off_the_swarm_finds_a_double_send(tmp_path: Path) -> None:
    done = smslab(
        "swarm",
        "--runs", "3",
        "--seed", "4",
        "--parallel", "1",
        "--base", "worker_kills",
        "--safeguards-off", "claim_before_send",
        "--with", "crash_after_provider_accepted",
        "--with", "kill_worker",
        "--short",
        "--stop-on-failure",
        "--out", "swarm",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    swarm = json.loads((tmp_path / "swarm" / "swarm.json").read_text())
    assert swarm["safeguards_off"] == ["claim_before_send"]
    first = swarm["runs"][0]  # failing runs first
    assert first["failed"], first
    assert first["invariants"]["I1"] is False, first
    assert _verdict(first["run"])["I1"] is False  # the run folder says so on its own
    assert Path(first["scenario_file"]).is_file()
    assert "swarm with claim_before_send off" in done.stdout
    # The run is an ordinary run folder: `smslab check` reads it alone
    assert smslab("check", first["run"], cwd=tmp_path).returncode == 1


@pytest.mark.slow
def test_shrink_drops_the_faults_that_do_not_matter_and_keeps_the_double_send(tmp_path: Path) -> None:
    done = smslab("run", str(SCENARIOS / "one_crash_double_send.toml"), "--out", "runs", cwd=tmp_path)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = (tmp_path / "runs" / "latest").resolve()
    assert _verdict(str(run_dir))["I1"] is False
    shrunk = smslab(
        "shrink", str(run_dir), "--invariant", "I1", "--tries", "1", "--need", "1", "--max-runs", "4",
        "--out", "shrink", cwd=tmp_path,
    )  # fmt: skip
    assert shrunk.returncode == 0, shrunk.stdout[-3000:] + shrunk.stderr[-3000:]
    result = json.loads((tmp_path / "shrink" / "shrink.json").read_text())
    assert result["reproduced"] is True
    assert result["before"]["faults"] == 5  # two provider rules, two nemesis events, one failpoint
    assert result["after"]["faults"] < result["before"]["faults"]
    assert "failpoint send.after_provider_accepted=kill*1" in result["after"]["fault_list"]
    assert result["runs_used"] <= 4
    kept = [c for c in result["candidates"] if c["accepted"]]
    assert all(_verdict(r["run"])["I1"] is False for c in kept for r in c["runs"])  # each kept one failed I1
    scenario = parse_scenario(tomllib.loads((tmp_path / "shrink" / "shrunk.toml").read_text()))
    assert scenario.services.safeguards_off == ("claim_before_send",)
    assert len(scenario.nemesis) + len(scenario.simulator.faults) < 4
    assert "smallest failing scenario" in shrunk.stdout


def test_every_regression_scenario_runs_with_every_safeguard_on_and_says_what_it_broke() -> None:
    scenarios = regression_scenarios()
    assert scenarios  # CI runs them; an empty folder would prove nothing
    for scenario in scenarios:
        assert scenario.services.safeguards_off == ()
        assert scenario.regression["invariant"].startswith("I")
        assert scenario.regression["fixed_by"]


def test_a_shrunk_seed_gap_is_kept_with_its_safeguards_off_and_says_what_it_breaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("chaos.shrink.SEED_GAPS_DIR", tmp_path / "seed_gaps")
    shrunk = tmp_path / "shrunk.toml"
    shrunk.write_text((SCENARIOS / "one_crash_double_send.toml").read_text())
    path = save_seed_gap(shrunk, "double_send", "I1", "run-7", "no reconciler", "shrunk from 5 faults to 1")
    scenario = parse_scenario(tomllib.loads(path.read_text()))
    assert path == tmp_path / "seed_gaps" / "double_send.toml"
    assert scenario.name == "double_send"
    assert scenario.services.safeguards_off == ("claim_before_send",)  # still off: it is the seed's behaviour
    assert scenario.seed_gap == {
        "invariant": "I1",
        "gap": "no reconciler",
        "found": "run-7",
        "why": "shrunk from 5 faults to 1",
    }
    everything_on = tmp_path / "on.toml"
    everything_on.write_text(path.read_text().replace('safeguards_off = [\n    "claim_before_send",\n]', ""))
    with pytest.raises(ScenarioError, match="no safeguard is off"):
        save_seed_gap(everything_on, "x", "I1", "run-7", "gap", "why")
    with pytest.raises(ScenarioError, match=r"seed_gap\.invariant"):
        parse_scenario({**tomllib.loads(path.read_text()), "seed_gap": {"invariant": "double sends"}})


def test_every_seed_gap_keeps_only_the_seeds_own_gaps_off_and_is_in_the_report() -> None:
    scenarios = seed_gap_scenarios()
    assert scenarios  # docs/seed-gaps.md rests on them
    report = (Path(__file__).parents[1] / "docs" / "seed-gaps.md").read_text()
    for scenario in scenarios:
        assert scenario.services.safeguards_off, scenario.name
        assert set(scenario.services.safeguards_off) <= set(PROFILES["seed"]), scenario.name
        assert scenario.seed_gap["invariant"].startswith("I")
        assert scenario.seed_gap["gap"]
        assert f"chaos/seed_gaps/{scenario.name}.toml" in report, scenario.name


@pytest.mark.slow
def test_the_seeds_missing_redaction_still_puts_phones_and_emails_in_the_logs(tmp_path: Path) -> None:
    """The quickest seed gap (about 15 s, no fault): run as a user would, it must still break I8 from the
    logs, each witness naming the line and what it holds."""
    scenario = ROOT / "chaos" / "seed_gaps" / "personal_data_in_the_logs.toml"
    done = smslab("run", str(scenario), "--out", "runs", cwd=tmp_path)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    verdict = json.loads(((tmp_path / "runs" / "latest").resolve() / "verdict.json").read_text())
    i8 = next(item for item in verdict["invariants"] if item["id"] == "I8")
    assert i8["valid"] is False
    assert i8["counts"]["lines_with_phones"] > 0
    assert i8["counts"]["lines_with_emails"] > 0
    assert {"log", "line", "contains"} <= set(i8["witnesses"][0])

"""`smslab`: one command for the whole lab.

Service: `db upgrade`, `api`, `worker`, `token`, `shops install`, `credits grant|adjust|recompute`;
simulator: `simulator`; together: `up`.
Lab: `run`, `load`, `world`, `check`, `report`, `replay`, `matrix`, `fuzz`, `swarm`, `shrink`, `regressions`,
`seed-gaps`.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from chaos.processes import (
    ManagedProcess,
    ProcessFailed,
    provider_secrets,
    service_argv,
    smslab_argv,
    stop_all,
)
from service import cli as service_cli
from service.cli import fail, load_or_exit, redis_url_for
from simulator.cli import simulator

app = service_cli.command_app(
    "smslab",
    "SMS-pipeline reliability lab: reference service, provider simulator, chaos harness and checker.",
)
app.command()(simulator)


@app.command()
def up(
    host: str = typer.Option("127.0.0.1", help="Interface for the API and the simulator."),
    port: int = typer.Option(8000, help="API port."),
    simulator_port: int = typer.Option(8025, help="Simulator port (fake Mitto under /mitto)."),
    workers: int = typer.Option(1, min=1, help="Worker processes."),
    concurrency: int = typer.Option(10, min=1, help="Jobs per worker process."),
    with_simulator: bool = typer.Option(True, "--simulator/--no-simulator", help="Also run the fake Mitto."),
) -> None:
    """Migrations, then API + workers (+ the fake Mitto) on the embedded defaults, until Ctrl-C."""
    settings = load_or_exit(starts_service=True)
    from service.db import migrate
    from service.lifetime import exit_on_sigterm
    from service.metrics import prepare_directory

    exit_on_sigterm()  # SIGTERM stops everything as Ctrl-C does

    logs_dir = settings.var_dir / "logs"
    with redis_url_for(settings) as redis_url:
        try:
            migrate.upgrade(settings)
        except (OSError, ConnectionError) as exc:
            raise fail(f"cannot reach the database: {exc}") from None
        env = {"SMSLAB_REDIS_URL": redis_url}
        # One scrape of the API shows the counters of every process started here (emptied first).
        metrics_dir = settings.metrics_dir or settings.var_dir / "metrics"
        prepare_directory(str(metrics_dir))
        env["SMSLAB_METRICS_DIR"] = str(metrics_dir)
        if with_simulator and "SMSLAB_MITTO_BASE_URL" not in os.environ:
            env["SMSLAB_MITTO_BASE_URL"] = f"http://{host}:{simulator_port}/mitto"
        if with_simulator and "SMSLAB_STRIPE_API_BASE" not in os.environ:
            env["SMSLAB_STRIPE_API_BASE"] = f"http://{host}:{simulator_port}/stripe"
        processes: list[ManagedProcess] = []
        if with_simulator:
            processes.append(
                ManagedProcess(
                    "simulator",
                    smslab_argv(
                        "simulator",
                        "--host",
                        host,
                        "--port",
                        str(simulator_port),
                        "--data-dir",
                        str(settings.var_dir / "simulator"),
                        "--target",
                        f"http://{host}:{port}",
                    ),
                    logs_dir / "simulator.log",
                    {**env, **provider_secrets(settings)},
                    ready_url=f"http://{host}:{simulator_port}/control/health",
                )
            )
        processes.append(
            ManagedProcess(
                "api",
                service_argv("api", "--host", host, "--port", str(port)),
                logs_dir / "api.log",
                env,
                ready_url=f"http://{host}:{port}/health",
            )
        )
        processes.extend(
            ManagedProcess(
                f"worker-{i}",
                service_argv("worker", "--concurrency", str(concurrency)),
                logs_dir / f"worker-{i}.log",
                env,
            )
            for i in range(workers)
        )
        try:
            for process in processes:
                process.start()
                process.wait_ready()
            typer.echo(f"API        http://{host}:{port}   (OpenAPI: http://{host}:{port}/schema)")
            if with_simulator:
                typer.echo(f"fake Mitto http://{host}:{simulator_port}/mitto   control: /control")
            typer.echo(f"database   {settings.database_url}")
            typer.echo(f"logs       {logs_dir}/")
            typer.echo("token      smslab token my-shop.myshopify.com")
            typer.echo("shop       smslab shops install my-shop.myshopify.com")
            typer.echo("credits    smslab credits grant my-shop.myshopify.com 1000")
            typer.echo("Ctrl-C stops everything.")
            while all(p.alive for p in processes):
                time.sleep(0.5)
            dead = [p.name for p in processes if not p.alive]
            raise fail(f"{', '.join(dead)} exited; see {logs_dir}", code=1)
        except ProcessFailed as exc:
            raise fail(str(exc), code=1) from None
        except KeyboardInterrupt:
            typer.echo("stopping", err=True)
        finally:
            stop_all(processes)


@app.command()
def run(
    scenario: str = typer.Argument(..., help="A scenario name (chaos/scenarios/NAME.toml) or a path."),
    seed: int | None = typer.Option(None, help="Seed for every random choice (default: the scenario's)."),
    database: str | None = typer.Option(
        None,
        help="A PostgreSQL URL for the run (a fresh schema in it), or `testcontainers` (needs Docker); "
        "default: SQLite in the run folder.",
    ),
    out: Path = typer.Option(
        Path("runs"), help="Where run folders go (a `latest` link points at the newest)."
    ),
    keep_database: bool = typer.Option(False, help="Keep the run's PostgreSQL schema afterwards."),
    report: bool = typer.Option(False, "--report", help="Then write RUN_DIR/report.html (`smslab report`)."),
) -> None:
    """Run a chaos scenario end to end and print the verdict (exit 0 only if every invariant holds)."""
    from chaos.scenario import ScenarioError, load_scenario

    load_or_exit()  # a mistyped or bad SMSLAB_* setting: one line and exit 2, before anything starts
    try:
        plan = load_scenario(scenario)
    except ScenarioError as exc:
        raise fail(str(exc)) from None
    _run_and_report(
        plan, plan.seed if seed is None else seed, database, out, keep_database, None, report=report
    )


@app.command("report")
def report_command(
    run_dir: Path = typer.Argument(
        ..., help="A run folder (e.g. runs/latest), a matrix folder, or a folder of run folders."
    ),
    open_it: bool = typer.Option(False, "--open", help="Open report.html in a browser afterwards."),
    code: bool = typer.Option(False, "--code", help="Show the notebooks' code cells too."),
) -> None:
    """Execute the notebooks that fit a folder and write FOLDER/report.html and FOLDER/report/*.png
    (exit 1 if a notebook cell raised, 2 if the folder is not one the notebooks read)."""
    made = _make_report(run_dir, code)
    if made is None:
        raise typer.Exit(1)
    if open_it:
        from chaos.notebooks import open_in_browser

        open_in_browser(made)


def _make_report(folder: Path, code: bool = False) -> Path | None:
    """The report of a folder, one line said about it; None if it could not be made (said why)."""
    try:
        from chaos.notebooks import ReportError, build_report
    except ImportError as exc:  # the notebooks' libraries are an extra
        typer.echo(f"report: needs the notebooks extra (pip install -e '.[notebooks]'): {exc}", err=True)
        return None
    try:
        made = build_report(folder, include_code=code)
    except ReportError as exc:
        typer.echo(f"report FAILED: {exc}", err=True)
        return None
    typer.echo(
        f"report: {made.html} ({', '.join(made.notebooks)}; {len(made.figures)} figures in "
        f"{made.html.parent / 'report'}; {made.seconds} s)"
    )
    return made.html


@app.command()
def load(
    scenario: str = typer.Argument(..., help="A scenario name (chaos/scenarios/NAME.toml) or a path."),
    seed: int | None = typer.Option(
        None, help="Seed for the nemesis and the world (default: the scenario's)."
    ),
    database: str | None = typer.Option(None, help="As for `run`: a PostgreSQL URL, else SQLite."),
    out: Path = typer.Option(
        Path("runs"), help="Where run folders go (a `latest` link points at the newest)."
    ),
    users: int | None = typer.Option(None, min=1, help="Locust users (default: the scenario's [load])."),
    spawn_rate: float | None = typer.Option(None, min=0.1, help="Users started per second."),
    duration: float | None = typer.Option(None, min=1, help="Seconds Locust runs (and the nemesis with it)."),
    locust_processes: int | None = typer.Option(
        None, min=0, help="Locust worker processes beside its master (Locust's --processes); 0: one process."
    ),
    keep_database: bool = typer.Option(False, help="Keep the run's PostgreSQL schema afterwards."),
    report: bool = typer.Option(False, help="Then write the run's report (smslab report; load.ipynb too)."),
) -> None:
    """Run a scenario with Locust as its workload: faults, heal, settle, the verdict and the load gate
    (exit 0 only if every invariant holds and the gate passed)."""
    from chaos.load import LoadRun, for_load
    from chaos.scenario import ScenarioError, load_scenario

    load_or_exit()
    try:
        plan = for_load(load_scenario(scenario), users, spawn_rate, duration, locust_processes)
    except ScenarioError as exc:
        raise fail(str(exc)) from None
    _run_and_report(
        plan, plan.seed if seed is None else seed, database, out, keep_database, None, LoadRun, report
    )


@app.command()
def world(
    out: Path = typer.Option(Path("world.json"), help="Where the world file goes."),
    api: str = typer.Option("http://127.0.0.1:8000", help="The API (`smslab up`'s by default)."),
    simulator_url: str = typer.Option(
        "http://127.0.0.1:8025", "--simulator", help="The fake providers (`smslab up`'s by default)."
    ),
    scenario: str = typer.Option("load_quick", help="Whose [workload] sizes the world (shops, contacts...)."),
) -> None:
    """Set up a load test's world on a running service (`smslab up`) and write its world file, for
    `locust -f loadtests/locustfile.py --world FILE` by hand (docs/load.md)."""
    import asyncio

    from chaos.history import History
    from chaos.load import NOISY_PHONES, world_document
    from chaos.scenario import ScenarioError, load_scenario
    from chaos.workload import Workload, valid_phones

    settings = load_or_exit()
    try:
        plan = load_scenario(scenario)
    except ScenarioError as exc:
        raise fail(str(exc)) from None
    scratch = out.with_suffix(".setup.jsonl")
    workload = Workload(plan, settings, api, simulator_url, History(scratch))
    try:
        asyncio.run(workload.setup())
    except Exception as exc:  # noqa: BLE001 - one line for the user, whatever went wrong
        raise fail(f"could not set up the world on {api}: {type(exc).__name__}: {exc}", code=3) from None
    finally:
        scratch.unlink(missing_ok=True)
    w = plan.workload
    noisy = valid_phones(NOISY_PHONES, w.shops * (w.contacts_per_shop + w.customers_per_shop))
    out.write_text(json.dumps(world_document(workload, settings, api, simulator_url, noisy), indent=1))
    typer.echo(f"world: {len(workload.world)} shops on {api}; written to {out}")


@app.command()
def check(run_dir: Path = typer.Argument(..., help="A run folder (e.g. runs/latest).")) -> None:
    """Check a finished run again, from its folder alone (exit 0 only if every invariant holds)."""
    from chaos.checker.run import check_run
    from chaos.report import print_verdict

    if not (run_dir / "history.jsonl").exists() and not (run_dir / "simulator").exists():
        raise fail(f"{run_dir} is not a run folder")
    verdict = check_run(run_dir)
    print_verdict(verdict, str(run_dir.resolve()))
    raise typer.Exit(0 if _passed(verdict) else 1)


def _passed(verdict: dict[str, Any]) -> bool:
    """Every invariant valid; for a load run, and the load gate passed."""
    return bool(verdict.get("passed")) if "load" in verdict else verdict["valid"] is True


@app.command()
def replay(
    run_dir: Path = typer.Argument(..., help="A finished run folder."),
    database: str | None = typer.Option(None, help="As for `run` (a fresh database again)."),
    out: Path = typer.Option(Path("runs"), help="Where the new run folder goes."),
) -> None:
    """Run a finished run's scenario again, with its seed and its very fault schedule."""
    from chaos.nemesis import load_plan
    from chaos.scenario import ScenarioError, parse_scenario

    load_or_exit()
    try:
        manifest = json.loads((run_dir / "run.json").read_text())
        source = (run_dir / "scenario.toml").read_text()
        plan = parse_scenario(tomllib.loads(source), source)
        events = load_plan(run_dir / "nemesis.plan.json")
    except (OSError, ValueError, ScenarioError) as exc:
        raise fail(f"cannot replay {run_dir}: {exc}") from None
    _run_and_report(plan, int(manifest["seed"]), database, out, False, events)


@app.command()
def matrix(
    out: Path | None = typer.Option(
        None, help="Output folder: every run's folder and matrix.json (default: runs/matrix-TIME)."
    ),
    short: bool = typer.Option(False, help="Cap each run's workload at a few seconds (for CI)."),
    database: str | None = typer.Option(None, help="As for `run`: a PostgreSQL URL, else SQLite."),
    only: list[str] = typer.Option([], help="Only this safeguard's row (repeatable)."),
    with_report: bool = typer.Option(
        True, "--report/--no-report", help="Write the matrix report (report.html) beside matrix.json."
    ),
) -> None:
    """Switch each safeguard off in the scenario that exposes it; expect its invariant to fail, and
    every invariant to hold with all safeguards on (exit 0 only if every row came out as expected)."""
    from datetime import UTC, datetime

    from chaos.harness import RunOptions, run_scenario
    from chaos.matrix import Outcome, run_matrix
    from chaos.report import Progress, print_matrix, print_outcome
    from chaos.scenario import Scenario, ScenarioError

    load_or_exit()
    out_dir = out or Path("runs") / f"matrix-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"

    def run_one(scenario: Scenario, where: Path) -> tuple[Path, dict[str, Any]]:
        options = RunOptions(
            scenario, scenario.seed, where, database_url=database, on_progress=Progress(quiet=True)
        )
        return run_scenario(options)

    def report(outcome: Outcome, index: int, total: int) -> None:
        print_outcome(outcome, index, total)

    try:
        result = run_matrix(out_dir, short, database, run_one, report, tuple(only))
    except ScenarioError as exc:
        raise fail(str(exc)) from None
    print_matrix(result, str(out_dir / "matrix.json"))
    reported = _make_report(out_dir) is not None if with_report else True
    raise typer.Exit(0 if result["as_expected"] and reported else 1)


@app.command()
def fuzz(
    database: str | None = typer.Option(
        None, help="A PostgreSQL URL (a fresh schema in it); default: SQLite in the fuzz folder."
    ),
    out: Path = typer.Option(Path("runs"), help="Where the fuzz folder goes."),
    seed: int = typer.Option(7, help="Schemathesis' seed: the same seed, the same requests."),
    max_examples: int = typer.Option(30, min=1, help="Examples per operation and phase (longer: more)."),
    max_time: float | None = typer.Option(None, help="A time budget in seconds for each of the two runs."),
) -> None:
    """Fuzz the live API with schemathesis against its OpenAPI (every check, the stateful phase too),
    then its webhooks without signatures (every answer must be 4xx); exit 0 only if both are clean."""
    import asyncio

    from chaos.environment import LabError
    from chaos.fuzz.runner import FuzzOptions, run_fuzz

    load_or_exit()
    options = FuzzOptions(out, seed, max_examples, database, max_time_s=max_time)
    try:
        folder, report = asyncio.run(run_fuzz(options))
    except LabError as exc:
        raise fail(str(exc), code=3) from None
    for run in report["runs"]:
        verdict = "clean" if run["exit_code"] == 0 else f"FAILURES (exit {run['exit_code']})"
        typer.echo(f"schemathesis {run['name']:<9} {verdict} in {run['seconds']} s; log: {run['log']}")
        if run["exit_code"] != 0:
            typer.echo("\n".join(run["summary"][-20:]))
    if report["service_logs_with_tracebacks"]:
        typer.echo(f"tracebacks in the service's logs: {', '.join(report['service_logs_with_tracebacks'])}")
    outcome = "clean" if report["clean"] else "FOUND PROBLEMS"
    typer.echo(f"fuzz ({report['backend']}, seed {report['seed']}): {outcome}; {folder}")
    raise typer.Exit(0 if report["clean"] else 1)


@app.command()
def swarm(
    runs: int | None = typer.Option(None, min=1, help="How many runs (default 20 unless --minutes)."),
    minutes: float | None = typer.Option(None, min=0.1, help="Start runs for this long, then finish."),
    parallel: int = typer.Option(0, min=0, help="Runs at once (0: sized to the machine's cores)."),
    base: list[str] = typer.Option([], help="A base scenario (repeatable; default: one per fault class)."),
    database: str | None = typer.Option(None, help="A PostgreSQL URL (a fresh schema per run), else SQLite."),
    out: Path | None = typer.Option(None, help="The swarm folder (default: runs/swarm-TIME)."),
    seed: int = typer.Option(1, help="The swarm's seed: the same seed, the same runs drawn."),
    safeguards_off: list[str] = typer.Option(
        [], help="A safeguard (or profile: seed) to switch off in every run (repeatable)."
    ),
    stop_on_failure: bool = typer.Option(False, help="Stop at the first failing run (detection power)."),
    with_kind: list[str] = typer.Option(
        [], "--with", help="A fault kind every run switches on (repeatable)."
    ),
    short: bool = typer.Option(
        False, help="Cap each run's chaos phase at a few seconds (as matrix --short)."
    ),
) -> None:
    """Many seeded runs, each with a random mix of the lab's fault kinds; exit 0 only if no run had an
    invalid or unknown invariant."""
    from datetime import UTC, datetime

    from chaos.scenario import ScenarioError
    from chaos.swarm import RunResult, SwarmOptions, resolve_safeguards_off, run_swarm
    from chaos.swarm_report import print_swarm, run_line

    load_or_exit()
    out_dir = out or Path("runs") / f"swarm-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    try:
        options = SwarmOptions(
            out_dir,
            seed=seed,
            runs=runs,
            minutes=minutes,
            parallel=parallel,
            bases=tuple(base),
            database_url=database,
            safeguards_off=resolve_safeguards_off(safeguards_off),
            stop_on_failure=stop_on_failure,
            always=tuple(with_kind),
            short=short,
        )

        def report(result: RunResult, done: list[RunResult]) -> None:
            typer.echo(run_line(result, done, options.runs))

        document = run_swarm(options, report)
    except ScenarioError as exc:
        raise fail(str(exc)) from None
    print_swarm(document, str(out_dir / "swarm.json"))
    raise typer.Exit(0 if document["summary"]["failed"] == 0 else 1)


@app.command()
def shrink(
    run_dir: Path = typer.Argument(..., help="A failing run folder (e.g. one a swarm found)."),
    invariant: str | None = typer.Option(None, help="The invariant to keep failing (default: the first)."),
    max_runs: int = typer.Option(40, min=1, help="At most this many runs in all."),
    tries: int = typer.Option(3, min=1, help="Runs of each candidate ..."),
    need: int = typer.Option(2, min=1, help="... of which this many must fail for it to be kept."),
    database: str | None = typer.Option(None, help="As for `run`: a PostgreSQL URL, else SQLite."),
    out: Path | None = typer.Option(None, help="Where candidates go (default: RUN_DIR-shrink beside it)."),
    save: str | None = typer.Option(
        None, help="Keep the result in chaos/regressions/NAME.toml (every safeguard on; must then hold)."
    ),
    fixed_by: str = typer.Option("", help="With --save: the commit or safeguard that fixed it."),
    save_gap: str | None = typer.Option(
        None,
        help="Keep the result in chaos/seed_gaps/NAME.toml, its safeguards still off: the smallest "
        "reproduction of a gap the seed admits (`smslab seed-gaps` expects it to fail).",
    ),
    gap: str = typer.Option("", help="With --save-gap: the gap, in the seed's words."),
) -> None:
    """Cut a failing run down to the fewest, weakest faults and the smallest workload that still break
    the same invariant (delta debugging, each candidate kept only if it fails NEED of TRIES runs)."""
    from chaos.scenario import ScenarioError
    from chaos.shrink import ShrinkOptions, save_regression, save_seed_gap
    from chaos.shrink import shrink as shrink_run
    from chaos.swarm_report import candidate_line, print_shrink

    load_or_exit()
    if need > tries:
        raise fail("--need: must not exceed --tries")
    if save_gap and not gap:
        raise fail("--save-gap: say which gap of the seed it reproduces with --gap")
    if not (run_dir / "verdict.json").exists():
        raise fail(f"{run_dir} is not a checked run folder (no verdict.json)")
    options = ShrinkOptions(run_dir, invariant, max_runs, tries, need, out, database)
    try:
        result = shrink_run(options, lambda entry: typer.echo(candidate_line(entry)))
    except ScenarioError as exc:
        raise fail(str(exc)) from None
    print_shrink(result)
    shrunk, found = result["scenario_file"], run_dir.resolve().name
    why = f"shrunk from {result['before']['faults']} faults to {result['after']['faults']}"
    if save and shrunk:
        fixed = fixed_by or "not yet fixed"
        path = save_regression(Path(shrunk), save, result["invariant"], found, fixed, why)
        typer.echo(f"saved as regression scenario {path}")
    if save_gap and shrunk:
        path = save_seed_gap(Path(shrunk), save_gap, result["invariant"], found, gap, why)
        typer.echo(f"saved as seed gap {path}")
    raise typer.Exit(0 if result["reproduced"] else 1)


def _run_each(
    scenarios: list[Any], database: str | None, out: Path
) -> Iterator[tuple[Any, Path, dict[str, Any]]]:
    """Each scenario of a folder run once with its own seed (a PostgreSQL-only one skipped without a
    database URL): the scenario, its run folder and its verdict."""
    from chaos.harness import LabError, RunOptions, run_scenario
    from chaos.report import Progress

    for scenario in scenarios:
        if scenario.backend == "postgresql" and not database:
            typer.echo(f"{scenario.name}: skipped (needs PostgreSQL)")
            continue
        options = RunOptions(
            scenario, scenario.seed, out, database_url=database, on_progress=Progress(quiet=True)
        )
        try:
            run_dir, verdict = run_scenario(options)
        except LabError as exc:
            raise fail(str(exc), code=3) from None
        yield scenario, run_dir, verdict


@app.command()
def regressions(
    database: str | None = typer.Option(None, help="As for `run`: a PostgreSQL URL, else SQLite."),
    out: Path = typer.Option(Path("runs/regressions"), help="Where their run folders go."),
) -> None:
    """Run every scenario in chaos/regressions/ (each once broke an invariant); exit 0 only if all hold."""
    from chaos.shrink import regression_scenarios

    load_or_exit()
    failed = []
    scenarios = regression_scenarios()
    for scenario, run_dir, verdict in _run_each(scenarios, database, out):
        word = "holds" if verdict["valid"] is True else "FAILS AGAIN"
        regression = scenario.regression
        once = f"once broke {regression.get('invariant')}, fixed by {regression.get('fixed_by')}"
        typer.echo(f"{scenario.name} ({once}): {word}; {run_dir}")
        if verdict["valid"] is not True:
            failed.append(scenario.name)
    typer.echo(f"{len(scenarios)} regression scenarios, {len(failed)} failing")
    raise typer.Exit(1 if failed else 0)


@app.command("seed-gaps")
def seed_gaps(
    database: str | None = typer.Option(None, help="As for `run`: a PostgreSQL URL, else SQLite."),
    out: Path = typer.Option(Path("runs/seed-gaps"), help="Where their run folders go."),
) -> None:
    """Run every scenario in chaos/seed_gaps/ (the seed's gaps, each shrunk, its safeguards off); exit 0
    only if each still breaks its invariant: the cost of the seed as written, reproduced."""
    from chaos.shrink import seed_gap_scenarios

    load_or_exit()
    held = []
    scenarios = seed_gap_scenarios()
    for scenario, run_dir, verdict in _run_each(scenarios, database, out):
        invariant = scenario.seed_gap.get("invariant", "")
        broke = any(item["id"] == invariant and item["valid"] is False for item in verdict["invariants"])
        word = f"breaks {invariant}" if broke else f"DOES NOT BREAK {invariant}"
        typer.echo(f"{scenario.name} ({scenario.seed_gap.get('gap')}): {word}; {run_dir}")
        if not broke:
            held.append(scenario.name)
    typer.echo(f"{len(scenarios)} seed gaps, {len(held)} no longer reproduced")
    raise typer.Exit(1 if held else 0)


def _run_and_report(
    plan: Any,
    seed: int,
    database: str | None,
    out: Path,
    keep_database: bool,
    events: Any,
    kind: Any = None,
    report: bool = False,
) -> None:
    from chaos.harness import LabError, RunOptions, run_scenario
    from chaos.report import Progress, print_verdict
    from chaos.throwaway_postgres import NoDocker, database_url

    try:
        with database_url(database) as url:
            options = RunOptions(
                plan,
                seed,
                out,
                database_url=url,
                plan=events,
                on_progress=Progress(),
                keep_database=keep_database,
            )
            run_dir, verdict = run_scenario(options) if kind is None else run_scenario(options, kind)
    except NoDocker as exc:
        raise fail(str(exc)) from None
    except LabError as exc:
        raise fail(str(exc), code=3) from None
    print_verdict(verdict, str(run_dir))
    reported = _make_report(Path(run_dir)) is not None if report else True
    raise typer.Exit(0 if _passed(verdict) and reported else 1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

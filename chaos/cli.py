"""`smslab`: one command for the whole lab.

Service: `db upgrade`, `api`, `worker`, `token`, `shops install`, `credits grant|adjust|recompute`;
simulator: `simulator`; together: `up`.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from pathlib import Path
from typing import Any

import typer

from chaos.processes import ManagedProcess, ProcessFailed, provider_secrets, smslab_argv, stop_all
from service import cli as service_cli
from service.cli import fail, load_or_exit, redis_url_for
from simulator.cli import simulator

app = typer.Typer(
    name="smslab",
    help="SMS-pipeline reliability lab: reference service, provider simulator, chaos harness and checker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
service_cli.register(app)
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
                smslab_argv("api", "--host", host, "--port", str(port)),
                logs_dir / "api.log",
                env,
                ready_url=f"http://{host}:{port}/health",
            )
        )
        processes.extend(
            ManagedProcess(
                f"worker-{i}",
                smslab_argv("worker", "--concurrency", str(concurrency)),
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
) -> None:
    """Run a chaos scenario end to end and print the verdict (exit 0 only if every invariant holds)."""
    from chaos.scenario import ScenarioError, load_scenario

    load_or_exit()  # a mistyped or bad SMSLAB_* setting: one line and exit 2, before anything starts
    try:
        plan = load_scenario(scenario)
    except ScenarioError as exc:
        raise fail(str(exc)) from None
    _run_and_report(plan, plan.seed if seed is None else seed, database, out, keep_database, None)


@app.command()
def check(run_dir: Path = typer.Argument(..., help="A run folder (e.g. runs/latest).")) -> None:
    """Check a finished run again, from its folder alone (exit 0 only if every invariant holds)."""
    from chaos.checker.run import check_run
    from chaos.report import print_verdict

    if not (run_dir / "history.jsonl").exists() and not (run_dir / "simulator").exists():
        raise fail(f"{run_dir} is not a run folder")
    verdict = check_run(run_dir)
    print_verdict(verdict, str(run_dir.resolve()))
    raise typer.Exit(0 if verdict["valid"] is True else 1)


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
    raise typer.Exit(0 if result["as_expected"] else 1)


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


def _run_and_report(
    plan: Any, seed: int, database: str | None, out: Path, keep_database: bool, events: Any
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
            run_dir, verdict = run_scenario(options)
    except NoDocker as exc:
        raise fail(str(exc)) from None
    except LabError as exc:
        raise fail(str(exc), code=3) from None
    print_verdict(verdict, str(run_dir))
    raise typer.Exit(0 if verdict["valid"] is True else 1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

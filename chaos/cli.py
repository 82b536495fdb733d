"""`smslab`: one command for the whole lab.

Service: `db upgrade`, `api`, `worker`, `token`, `credits grant`; simulator: `simulator`; together: `up`.
"""

from __future__ import annotations

import os
import time

import typer

from chaos.processes import ManagedProcess, ProcessFailed, smslab_argv, stop_all
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
    settings = load_or_exit()
    from service.db import migrate

    logs_dir = settings.var_dir / "logs"
    with redis_url_for(settings) as redis_url:
        try:
            migrate.upgrade(settings)
        except (OSError, ConnectionError) as exc:
            raise fail(f"cannot reach the database: {exc}") from None
        env = {"SMSLAB_REDIS_URL": redis_url}
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
                        "--stripe-webhook-secret",
                        settings.stripe_webhook_secret[0],
                    ),
                    logs_dir / "simulator.log",
                    env,
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()

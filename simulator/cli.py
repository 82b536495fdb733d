"""`smslab simulator`: run the fake providers as their own process."""

from __future__ import annotations

from pathlib import Path

import typer
import uvicorn

from simulator.app import SimulatorApp, SimulatorConfig


def simulator(
    port: int = typer.Option(8025, help="Port to listen on (the fakes live under /mitto, /control)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    data_dir: Path = typer.Option(Path("var/simulator"), help="Where the ground-truth ledgers are written."),
    seed: int = typer.Option(0, help="Seed for every random decision (faults, ids)."),
    mitto_api_key: str = typer.Option(
        "lab-mitto-key", envvar="SMSLAB_MITTO_API_KEY", help="Key the fake Mitto accepts."
    ),
    fsync: bool = typer.Option(
        False, help="fsync each ledger write (survives a machine crash, not just a kill)."
    ),
) -> None:
    """Run the fake Mitto (and later Stripe and Shopify) with their ground-truth ledgers."""
    app = SimulatorApp(
        SimulatorConfig(data_dir=data_dir.resolve(), seed=seed, mitto_api_key=mitto_api_key, fsync=fsync)
    )
    typer.echo(f"simulator: seed {seed}, ledgers in {data_dir.resolve()}", err=True)
    typer.echo(f"simulator: fake Mitto   http://{host}:{port}/mitto", err=True)
    typer.echo(f"simulator: control API  http://{host}:{port}/control", err=True)
    uvicorn.run(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=30
    )

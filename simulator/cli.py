"""`smslab simulator`: run the fake providers as their own process."""

from __future__ import annotations

from pathlib import Path

import typer
import uvicorn

from simulator.app import SimulatorApp, SimulatorConfig
from simulator.mitto import DlrConfig, parse_final_mix


def simulator(
    port: int = typer.Option(8025, help="Port to listen on (/mitto, /stripe, /control)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    target: str = typer.Option(
        "", help="The service's base URL, where webhooks are delivered (none: not sent)."
    ),
    data_dir: Path = typer.Option(Path("var/simulator"), help="Where the ground-truth ledgers are written."),
    seed: int = typer.Option(0, help="Seed for every random decision (faults, ids, delivery outcomes)."),
    time_scale: float = typer.Option(
        0.001, min=0.0, help="Provider retry schedules compressed by this factor."
    ),
    dlr_delay_ms: float = typer.Option(50.0, min=0.0, help="Delay between a message's delivery reports."),
    dlr_final: str = typer.Option(
        "Delivered=1", help="Final statuses and weights, e.g. Delivered=0.9,Expired=0.1"
    ),
    mitto_api_key: str = typer.Option("lab-mitto-key", envvar="SMSLAB_MITTO_API_KEY"),
    mitto_dlr_token: str = typer.Option(DlrConfig.callback_token, envvar="SMSLAB_MITTO_DLR_TOKEN"),
    stripe_secret_key: str = typer.Option(
        SimulatorConfig.stripe_secret_key, envvar="SMSLAB_STRIPE_SECRET_KEY"
    ),
    stripe_webhook_secret: str = typer.Option(
        SimulatorConfig.stripe_webhook_secret, help="Signs Stripe events."
    ),
    shopify_api_secret: str = typer.Option(
        SimulatorConfig.shopify_api_secret, envvar="SMSLAB_SHOPIFY_API_SECRET"
    ),
    fsync: bool = typer.Option(
        False, help="fsync each ledger write (survives a machine crash, not just a kill)."
    ),
) -> None:
    """Run the fake Mitto, Stripe and Shopify with their ground-truth ledgers."""
    try:
        dlr = DlrConfig(dlr_delay_ms / 1000, parse_final_mix(dlr_final), mitto_dlr_token)
    except ValueError as exc:
        typer.echo(f"simulator: {exc}", err=True)
        raise typer.Exit(2) from None
    config = SimulatorConfig(
        data_dir=data_dir.resolve(),
        seed=seed,
        target=target or None,
        public_url=f"http://{host}:{port}",
        time_scale=time_scale,
        mitto_api_key=mitto_api_key,
        dlr=dlr,
        stripe_secret_key=stripe_secret_key,
        stripe_webhook_secret=stripe_webhook_secret,
        shopify_api_secret=shopify_api_secret,
        fsync=fsync,
    )
    app = SimulatorApp(config)
    typer.echo(f"simulator: seed {seed}, ledgers in {config.data_dir}", err=True)
    for name, prefix in (("fake Mitto ", "/mitto"), ("fake Stripe", "/stripe"), ("control API", "/control")):
        typer.echo(f"simulator: {name}  http://{host}:{port}{prefix}", err=True)
    typer.echo(f"simulator: webhooks to  {target or '(nowhere: --target not set)'}", err=True)
    uvicorn.run(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=30
    )

"""`smslab simulator`: run the fake providers as their own process."""

from __future__ import annotations

import os
from pathlib import Path

import typer
import uvicorn

from simulator.app import SimulatorApp, SimulatorConfig
from simulator.mitto import DlrConfig, parse_final_mix
from simulator.outbound import DEFAULT_OUTBOUND_CLIENT, OUTBOUND_CLIENTS
from simulator.scenario import ScenarioError, SimulatorScenario, load_scenario, parse_fault_flag


def simulator(
    port: int = typer.Option(8025, help="Port to listen on (/mitto, /stripe, /shopify, /control)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    target: str = typer.Option(
        "", help="The service's base URL, where webhooks are delivered (none: not sent)."
    ),
    data_dir: Path = typer.Option(Path("var/simulator"), help="Where the ground-truth ledgers are written."),
    scenario: Path | None = typer.Option(None, help="A scenario file (TOML or JSON): seed, faults, ..."),
    fault: list[str] = typer.Option([], help="A fault rule as JSON; repeatable; added to the scenario's."),
    seed: int | None = typer.Option(
        None, help="Seed for every random decision [default: the scenario's, or 0]."
    ),
    time_scale: float | None = typer.Option(
        None, min=0.0, help="Provider retry schedules compressed [0.001]."
    ),
    dlr_delay_ms: float | None = typer.Option(None, min=0.0, help="Delay between a message's reports [50]."),
    dlr_final: str | None = typer.Option(None, help="Final statuses and weights [Delivered=1]."),
    fsync: bool = typer.Option(
        False, help="fsync each ledger write (survives a machine crash, not just a kill)."
    ),
    retry_horizon: float = typer.Option(
        0.0,
        min=0.0,
        help="Keep retrying failed webhooks until this many seconds after their first attempt, even past "
        "the providers' (compressed) schedules [0: the schedules alone].",
    ),
    webhook_timeout: float = typer.Option(
        10.0,
        min=0.1,
        help="Seconds one webhook attempt may take, connecting included, before it counts as failed and "
        "is retried [10].",
    ),
    outbound_client: str = typer.Option(
        DEFAULT_OUTBOUND_CLIENT, help=f"HTTP client for webhooks: {' or '.join(OUTBOUND_CLIENTS)}."
    ),
) -> None:
    """Run the fake Mitto, Stripe and Shopify with their ground-truth ledgers.

    Secrets come from the environment only, never the command line (where every local user sees them in
    `ps`): SMSLAB_MITTO_API_KEY, SMSLAB_MITTO_DLR_TOKEN, SMSLAB_STRIPE_SECRET_KEY,
    SMSLAB_STRIPE_WEBHOOK_SECRET (the first, if several), SMSLAB_SHOPIFY_API_SECRET, and
    SMSLAB_SIMULATOR_CONTROL_TOKEN: without it the control API answers loopback clients only.
    """
    env = os.environ
    try:
        plan = load_scenario(scenario) if scenario else SimulatorScenario()
        faults = plan.faults + [parse_fault_flag(text, i) for i, text in enumerate(fault)]
        final_mix = parse_final_mix(dlr_final or plan.dlr_final or "Delivered=1")
        if outbound_client not in OUTBOUND_CLIENTS:
            raise ValueError(f"--outbound-client: must be one of {', '.join(OUTBOUND_CLIENTS)}")
        if outbound_client == "lean" and (target or plan.target or "").startswith("https://"):
            raise ValueError("--outbound-client lean: speaks plain http:// only; use aiohttp for https://")
    except (ScenarioError, ValueError) as exc:
        typer.echo(f"simulator: {exc}", err=True)
        raise typer.Exit(2) from None
    delay_ms = (
        dlr_delay_ms
        if dlr_delay_ms is not None
        else plan.dlr_delay_ms
        if plan.dlr_delay_ms is not None
        else 50.0
    )
    config = SimulatorConfig(
        data_dir=data_dir.resolve(),
        seed=seed if seed is not None else plan.seed or 0,
        target=target or plan.target,
        public_url=f"http://{host}:{port}",
        time_scale=time_scale
        if time_scale is not None
        else plan.time_scale
        if plan.time_scale is not None
        else 0.001,
        mitto_api_key=env.get("SMSLAB_MITTO_API_KEY", SimulatorConfig.mitto_api_key),
        dlr=DlrConfig(
            delay_ms / 1000, final_mix, env.get("SMSLAB_MITTO_DLR_TOKEN", DlrConfig.callback_token)
        ),
        stripe_secret_key=env.get("SMSLAB_STRIPE_SECRET_KEY", SimulatorConfig.stripe_secret_key),
        stripe_webhook_secret=env.get(
            "SMSLAB_STRIPE_WEBHOOK_SECRET", SimulatorConfig.stripe_webhook_secret
        ).split(",")[0],
        shopify_api_secret=env.get("SMSLAB_SHOPIFY_API_SECRET", SimulatorConfig.shopify_api_secret),
        control_token=env.get("SMSLAB_SIMULATOR_CONTROL_TOKEN") or None,
        faults=faults,
        fsync=fsync,
        outbound_client=outbound_client,
        retry_horizon_s=retry_horizon,
        webhook_timeout_s=webhook_timeout,
    )
    app = SimulatorApp(config)
    typer.echo(f"simulator: seed {config.seed}, ledgers in {config.data_dir}", err=True)
    for name, prefix in (
        ("fake Mitto  ", "/mitto"),
        ("fake Stripe ", "/stripe"),
        ("fake Shopify", "/shopify"),
        ("control API ", "/control"),
    ):
        typer.echo(f"simulator: {name} http://{host}:{port}{prefix}", err=True)
    typer.echo(f"simulator: webhooks to   {config.target or '(nowhere: --target not set)'}", err=True)
    if faults:
        typer.echo(f"simulator: {len(faults)} fault rule(s) active", err=True)
    uvicorn.run(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=30
    )

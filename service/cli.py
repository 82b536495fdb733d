"""The service's commands: `db upgrade`, `api`, `worker`, `token`, `credits grant`.

A bad setting stops a command with one line naming the variable, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import typer

from service import logs
from service.embedded_redis import EmbeddedRedisError, SharedEmbeddedRedis
from service.settings import Settings, SettingsError, load_settings

db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
shops_app = typer.Typer(help="Shops: installing one (again).", no_args_is_help=True)
credits_app = typer.Typer(help="Credit adjustments.", no_args_is_help=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"smslab: {message}", err=True)
    return typer.Exit(code)


def load_or_exit(starts_service: bool = False) -> Settings:
    """The settings, or exit 2 with one line. A command that starts the service (`api`, `worker`, `up`)
    in production also exits 2, with one line per setting production refuses (see `deployment`)."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise fail(str(exc)) from None
    if starts_service and settings.env == "production":
        from service.deployment import production_problems

        problems = production_problems(settings)
        for problem in problems:
            typer.echo(f"smslab: refusing to start in production: {problem}", err=True)
        if problems:
            raise typer.Exit(2)
    return settings


@contextlib.contextmanager
def redis_url_for(settings: Settings) -> Iterator[str]:
    """SMSLAB_REDIS_URL if set; otherwise the var dir's embedded Redis (started here if not running)."""
    if settings.redis_url:
        yield settings.redis_url
        return
    try:
        with SharedEmbeddedRedis(settings.var_dir) as url:
            yield url
    except EmbeddedRedisError as exc:
        raise fail(str(exc)) from None


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Option("head", help="Target revision.")) -> None:
    """Apply migrations (safe to repeat)."""
    settings = load_or_exit()
    logs.configure_for(settings, "migrate")
    from service.db import migrate

    try:
        migrate.upgrade(settings, revision)
    except (OSError, ConnectionError) as exc:
        raise fail(f"cannot reach the database: {exc}") from None
    typer.echo(f"database at {revision}", err=True)


def api(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, help="Port to listen on."),
    workers: int = typer.Option(1, min=1, help="API processes sharing the port (uvicorn workers)."),
) -> None:
    """Run the HTTP API (Litestar on uvicorn)."""
    settings = load_or_exit(starts_service=True)
    logs.configure_for(settings, "api")
    import os

    import uvicorn

    from service.app import create_app

    common: dict[str, object] = {
        "host": host,
        "port": port,
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": 5,
    }
    with redis_url_for(settings) as redis_url:
        if workers == 1:
            uvicorn.run(create_app(settings, redis_url), **common)  # type: ignore[arg-type]
            return
        os.environ["SMSLAB_REDIS_URL"] = redis_url
        uvicorn.run("service.app:app_from_environment", factory=True, workers=workers, **common)  # type: ignore[arg-type]


def worker(
    concurrency: int = typer.Option(10, min=1, help="Jobs each worker process runs at once."),
    processes: int = typer.Option(1, min=1, help="Worker processes to run."),
) -> None:
    """Run SAQ worker processes (send batches, the reconcile cron)."""
    settings = load_or_exit(starts_service=True)
    with redis_url_for(settings) as redis_url:
        if processes == 1:
            logs.configure_for(settings, "worker")
            from service.worker import main

            main(settings, redis_url, concurrency)
            return
        _run_worker_processes(redis_url, concurrency, processes)


def _run_worker_processes(redis_url: str, concurrency: int, processes: int) -> None:
    import os

    env = {**os.environ, "SMSLAB_REDIS_URL": redis_url}
    argv = [sys.executable, "-m", "chaos.cli", "worker", "--concurrency", str(concurrency)]
    children = [subprocess.Popen(argv, env=env) for _ in range(processes)]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.wait()


def token(
    shop_domain: str = typer.Argument(..., help="e.g. my-shop.myshopify.com"),
    ttl: int = typer.Option(
        300,
        min=1,
        help="Seconds until the token expires (at most SMSLAB_SESSION_TOKEN_MAX_LIFETIME_SECONDS).",
    ),
) -> None:
    """Print a session token for a shop, as Shopify's App Bridge would give the merchant's browser."""
    settings = load_or_exit()
    from service.auth import issue_session_token

    if ttl > settings.session_token_max_lifetime_seconds:
        raise fail(
            f"--ttl {ttl}: the API refuses tokens living longer than "
            f"{settings.session_token_max_lifetime_seconds:g} s (SMSLAB_SESSION_TOKEN_MAX_LIFETIME_SECONDS)"
        )

    try:
        typer.echo(issue_session_token(settings, shop_domain, ttl))
    except ValueError as exc:
        raise fail(str(exc)) from None


@credits_app.command("grant")
def credits_grant(
    shop_domain: str = typer.Argument(..., help="e.g. my-shop.myshopify.com"),
    amount: int = typer.Argument(..., min=1, help="Credits to add."),
    key: str = typer.Option("", help="Idempotency key: repeating a grant with the same key adds nothing."),
    note: str = typer.Option("operator grant", help="Why (kept on the ledger entry)."),
) -> None:
    """Add credits to a shop's wallet as a ledger adjustment (installs the shop if new)."""
    settings = load_or_exit()
    logs.configure_for(settings, "cli")
    from service.auth import is_shop_domain

    if not is_shop_domain(shop_domain):
        raise fail(f"not a shop domain: {shop_domain!r} (expected NAME.myshopify.com)")
    added, balance = asyncio.run(_grant(settings, shop_domain, amount, key or f"grant:{uuid.uuid4()}", note))
    typer.echo(
        f"{'granted' if added else 'already granted with this key;'} {amount} credits; balance {balance}"
    )


async def _grant(settings: Settings, shop_domain: str, amount: int, key: str, note: str) -> tuple[bool, int]:
    from service.db.session import create_engine, create_sessionmaker
    from service.shops import install_shop
    from service.wallet.ledger import grant_credits, wallet_of

    engine = create_engine(settings, "cli", pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session:
            shop = await install_shop(session, shop_domain)
            added = await grant_credits(
                session, shop_id=shop.id, amount=amount, idempotency_key=key, note=note
            )
            async with session.begin():
                wallet = await wallet_of(session, shop.id)
            return added, wallet.balance
    finally:
        await engine.dispose()


@shops_app.command("install")
def shops_install(shop_domain: str = typer.Argument(..., help="e.g. my-shop.myshopify.com")) -> None:
    """Install a shop, or reinstall one that uninstalled the app (what the app's OAuth install does).

    A shop that uninstalled stays refused, whatever tokens it presents, until it is installed again here.
    """
    settings = load_or_exit()
    logs.configure_for(settings, "cli")
    from service.auth import is_shop_domain

    if not is_shop_domain(shop_domain):
        raise fail(f"not a shop domain: {shop_domain!r} (expected NAME.myshopify.com)")
    again = asyncio.run(_install(settings, shop_domain))
    typer.echo(f"{shop_domain} {'installed again' if again else 'installed'}")


async def _install(settings: Settings, shop_domain: str) -> bool:
    from service.db.session import create_engine, create_sessionmaker
    from service.shops import reinstall_shop

    engine = create_engine(settings, "cli", pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session:
            return await reinstall_shop(session, shop_domain)
    finally:
        await engine.dispose()


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.add_typer(shops_app, name="shops")
    app.command()(api)
    app.command()(worker)
    app.command()(token)
    app.add_typer(credits_app, name="credits")

"""Settings from `SMSLAB_*` environment variables.

One frozen object, read once at start-up. A bad value raises `SettingsError` naming the variable, so a
command can stop with one clear line instead of a traceback deep inside a connection attempt.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

PREFIX = "SMSLAB_"
NOT_THE_SERVICES = ("SMSLAB_TEST_", "SMSLAB_SIMULATOR_")
T = TypeVar("T")


class SettingsError(ValueError):
    """A setting that cannot be used; `str()` is the one line to show the user."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"bad setting {name}: {problem}")
        self.name = name


UNRESOLVED_POLICIES = ("at-most-once", "at-least-once")
LOG_FORMATS = ("auto", "json", "console")
ENVIRONMENTS = ("development", "lab", "production")


@dataclass(frozen=True)
class Settings:
    # development (the default), lab (what `smslab run`, `load` and `matrix` set for their processes) or
    # production, where the service refuses to start with the lab's secrets or switches (`deployment`).
    env: str = "development"
    var_dir: Path = Path("var")
    database_url: str = ""
    database_schema: str | None = None
    # PostgreSQL ends a session left idle inside a transaction this long, releasing its locks: a client
    # that vanished mid-transaction (killed, or cut off without a reset) must not hold rows forever.
    database_idle_transaction_timeout_seconds: float = 30.0
    # Every connection names itself `{this}-{role}` (api, worker, cli, ...) in pg_stat_activity. The lab
    # gives each run its own, so a fault that ends "the service's connections" ends only that run's.
    database_application_name: str = "smslab"
    # PostgreSQL connections each process may hold: opened when first needed, then kept (no overflow
    # connections opened for a burst and closed after it: that churn cost the API a fifth of its CPU).
    database_pool_size: int = 20
    redis_url: str | None = None
    queue_name: str = "smslab"

    mitto_base_url: str = "http://127.0.0.1:8025/mitto"
    mitto_api_key: str = "lab-mitto-key"
    mitto_dlr_token: str = "lab-dlr-token-change-me-in-production"  # noqa: S105 - lab default; production sets its own
    mitto_sender: str = "SMSLab"
    mitto_timeout_seconds: float = 10.0

    stripe_api_base: str = "http://127.0.0.1:8025/stripe"
    stripe_secret_key: str = "sk_test_lab_change_me_in_production"  # noqa: S105 - lab default
    stripe_webhook_secret: tuple[str, ...] = ("whsec_lab_change_me_in_production",)
    credit_packages: tuple[tuple[int, int], ...] = ((100, 1_000), (1_000, 8_000), (10_000, 60_000))
    credit_currency: str = "usd"
    checkout_return_url: str = "http://127.0.0.1:8000/billing/return"

    shopify_api_key: str = "lab-api-key"
    shopify_api_secret: str = "lab-shopify-secret-change-me-in-production"  # noqa: S105 - lab default; production sets its own
    # A Shopify webhook triggered longer ago than this is refused (a replay); Shopify stops retrying
    # after about 4 h, and deliveries can come up to a day late.
    shopify_webhook_horizon_seconds: float = 86_400.0
    # Shopify's session tokens live one minute; one that lives longer than this is refused.
    session_token_max_lifetime_seconds: float = 300.0

    batch_size: int = 500
    send_lease_seconds: float = 60.0
    send_max_tries: int = 5
    reconcile_interval_seconds: float = 30.0
    # How often a worker says it is alive, and looks for jobs a dead worker left active (whole seconds:
    # Redis keeps the worker's entry this long plus one). See `service.worker.watch_for_orphaned_jobs`.
    worker_heartbeat_seconds: int = 2
    reservation_ttl_seconds: float = 86_400.0
    enqueue_key_ttl_seconds: float = 86_400.0
    enqueue_lock_timeout_seconds: float = 60.0
    unresolved_send_policy: str = "at-most-once"
    unresolved_give_up_seconds: float = 600.0
    default_phone_region: str = "US"

    # Safeguard 9: each shop's budget per route class, counted in Redis across every API process
    # (`service.rate_limits`); the webhooks' own guard against floods, per provider; and what to do when
    # Redis cannot be asked (allow: serve unlimited and say so; deny: 503).
    rate_limits: str = ""  # over the defaults of `rate_limits.DEFAULT_LIMITS`, e.g. "strict=30/minute"
    webhook_rate_limit: str = "5000/second"
    rate_limit_when_redis_down: str = "allow"
    # Admission control (`service.admission`): the requests one API process serves at once, and how long
    # a request waits for a slot before it is answered 503 overloaded with Retry-After. 0: no cap.
    api_max_in_flight: int = 32
    api_admission_wait_seconds: float = 0.5

    # Prometheus: the directory every process of this host writes its counters to (multiprocess mode:
    # one scrape shows them all; empty it before the processes start), a token that /metrics then
    # requires, and a port to serve /metrics and /health* on besides the API's own.
    metrics_dir: Path | None = None
    metrics_token: str = ""
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"

    log_format: str = "auto"
    log_level: str = "info"
    # Every SQL statement with its parameters (SQLAlchemy's engine log at INFO), as an operator turns on
    # to debug an incident. Parameters hold phones and emails: the redaction step (safeguard 10) masks them.
    log_sql: bool = False

    lab_allow_unsafe: bool = False
    safeguards_off: frozenset[str] = field(default_factory=frozenset)
    failpoints: str = ""
    failpoint_seed: int = 0
    failpoint_stream: str = ""  # which process start this is (the lab sets it): see service/failpoints.py

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields changed, re-validated like the original."""
        return validate(replace(self, **changes))


# A send attempt starts provider calls only within this share of its lease, so that it finishes (and
# records) before the lease expires and the reconciler takes the rows over.
SEND_LEASE_USABLE_SHARE = 0.8


def lease_problem(lease_seconds: float, provider_timeout_seconds: float) -> str | None:
    """Why a send lease this long cannot work with this provider timeout, or None if it can.

    The one rule behind both the settings' check and a lab scenario's: a batch starts a provider call only
    while the call can end (timeout included) inside the usable share of its lease, so a lease that does
    not exceed the timeout by that margin never sends anything."""
    usable = lease_seconds * SEND_LEASE_USABLE_SHARE
    if provider_timeout_seconds < usable:
        return None
    return (
        f"must leave room for one provider call: {SEND_LEASE_USABLE_SHARE:.0%} of the lease "
        f"({usable:g} s) must exceed the provider timeout ({provider_timeout_seconds:g} s)"
    )


def normalize_database_url(url: str) -> str:
    """Accept the URLs users actually type and return the async driver's form."""
    for plain, async_form in (
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgresql+psycopg://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return async_form + url[len(plain) :]
    return url


def _text(name: str, raw: str) -> str:
    if not raw.strip():
        raise SettingsError(name, "must not be empty")
    return raw.strip()


def _number(
    kind: type[int] | type[float], low: float, *, exclusive: bool = False
) -> Callable[[str, str], Any]:
    """A parser for a whole number (`int`) or seconds (`float`) from `low` on (or above it, `exclusive`)."""
    bound = (
        f"{'a whole number' if kind is int else 'a number of seconds'} {'>' if exclusive else '>='} {low:g}"
    )

    def parse(name: str, raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(name, f"expected {bound}, got {raw!r}") from None
        if not (value > low if exclusive else value >= low):  # NaN fails both
            raise SettingsError(name, f"expected {bound}, got {raw!r}")
        return value

    return parse


_positive_int = _number(int, 1)
_whole_number = _number(int, 0)
_positive_float = _number(float, 0, exclusive=True)
_non_negative_float = _number(float, 0)


def _boolean(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(name, f"expected true or false, got {raw!r}")


def _choice(choices: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise SettingsError(name, f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _name_set(name: str, raw: str) -> frozenset[str]:
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def _http_url(name: str, raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(name, f"expected an http(s) URL, got {raw!r}")
    return raw.strip().rstrip("/")


def _database_url(name: str, raw: str) -> str:
    url = normalize_database_url(raw.strip())
    if not (url.startswith("sqlite+aiosqlite://") or url.startswith("postgresql+asyncpg://")):
        raise SettingsError(
            name, f"expected a sqlite+aiosqlite:// or postgresql+asyncpg:// URL, got {url.split(':')[0]!r}"
        )
    return url


def _redis_url(name: str, raw: str) -> str:
    url = raw.strip()
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(name, "expected a redis://, rediss:// or unix:// URL")
    return url


def _secrets(name: str, raw: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not values:
        raise SettingsError(name, "expected one or more secrets, comma-separated (several while rotating)")
    return values


def _credit_packages(name: str, raw: str) -> tuple[tuple[int, int], ...]:
    packages: list[tuple[int, int]] = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        credits, sep, cents = part.partition(":")
        if not sep or not credits.strip().isdigit() or not cents.strip().isdigit() or int(credits) < 1:
            raise SettingsError(name, f"expected CREDITS:PRICE_IN_CENTS[,...], e.g. 1000:8000, got {part!r}")
        packages.append((int(credits), int(cents)))
    if not packages or len({c for c, _ in packages}) != len(packages):
        raise SettingsError(name, "expected at least one package and no credit count twice")
    return tuple(packages)


def _application_name(name: str, raw: str) -> str:
    value = raw.strip()
    # PostgreSQL keeps 63 bytes of it; leave room for "-{role}". LIKE patterns must not match by accident.
    if not value or len(value) > 48 or not all(c.isalnum() or c in "-_." for c in value):
        raise SettingsError(name, f"expected 1 to 48 letters, digits, '-', '_' or '.', got {raw!r}")
    return value


def _rate_limits(name: str, raw: str) -> str:
    from service.rate_limits import parse_limits

    try:
        parse_limits(raw)
    except ValueError as exc:
        raise SettingsError(name, str(exc)) from None
    return raw.strip()


def _one_rate_limit(name: str, raw: str) -> str:
    from service.rate_limits import parse_limit

    try:
        parse_limit(raw)
    except ValueError as exc:
        raise SettingsError(name, str(exc)) from None
    return raw.strip()


def _schema_name(name: str, raw: str) -> str:
    value = raw.strip()
    if not value.replace("_", "").isalnum() or value[0].isdigit():
        raise SettingsError(name, f"expected a plain identifier, got {raw!r}")
    return value


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "env": _choice(ENVIRONMENTS),
    "var_dir": lambda _n, raw: Path(raw),
    "database_url": _database_url,
    "database_schema": _schema_name,
    "database_idle_transaction_timeout_seconds": _positive_float,
    "database_application_name": _application_name,
    "database_pool_size": _positive_int,
    "redis_url": _redis_url,
    "queue_name": _text,
    "mitto_base_url": _http_url,
    "mitto_api_key": _text,
    "mitto_dlr_token": _text,
    "mitto_sender": _text,
    "mitto_timeout_seconds": _positive_float,
    "stripe_api_base": _http_url,
    "stripe_secret_key": _text,
    "stripe_webhook_secret": _secrets,
    "credit_packages": _credit_packages,
    "credit_currency": lambda n, raw: _text(n, raw).lower(),
    "checkout_return_url": _http_url,
    "shopify_api_key": _text,
    "shopify_api_secret": _text,
    "session_token_max_lifetime_seconds": _positive_float,
    "shopify_webhook_horizon_seconds": _positive_float,
    "batch_size": _positive_int,
    "send_lease_seconds": _positive_float,
    "send_max_tries": _positive_int,
    "reconcile_interval_seconds": _positive_float,
    "worker_heartbeat_seconds": _positive_int,
    "reservation_ttl_seconds": _positive_float,
    "enqueue_key_ttl_seconds": _positive_float,
    "enqueue_lock_timeout_seconds": _positive_float,
    "unresolved_send_policy": _choice(UNRESOLVED_POLICIES),
    "unresolved_give_up_seconds": _positive_float,
    "default_phone_region": lambda n, raw: _text(n, raw).upper(),
    "rate_limits": _rate_limits,
    "webhook_rate_limit": _one_rate_limit,
    "rate_limit_when_redis_down": _choice(("allow", "deny")),
    "api_max_in_flight": _whole_number,
    "api_admission_wait_seconds": _non_negative_float,
    "metrics_dir": lambda _n, raw: Path(raw),
    "metrics_token": lambda _n, raw: raw.strip(),
    "metrics_port": _whole_number,
    "metrics_host": _text,
    "log_format": _choice(LOG_FORMATS),
    "log_level": _choice(("debug", "info", "warning", "error")),
    "log_sql": _boolean,
    "lab_allow_unsafe": _boolean,
    "safeguards_off": _name_set,
    "failpoints": lambda _n, raw: raw.strip(),
    "failpoint_seed": _whole_number,
    "failpoint_stream": lambda _n, raw: raw.strip(),
}


def env_name(field_name: str) -> str:
    return PREFIX + field_name.upper()


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every `SMSLAB_*` variable; unknown ones are an error so typos do not pass silently."""
    env = os.environ if environ is None else environ
    known = {env_name(name) for name in _PARSERS}
    # SMSLAB_TEST_* belong to the test suite, SMSLAB_SIMULATOR_* to the fake providers: not the service's.
    unknown = sorted(
        key
        for key in env
        if key.startswith(PREFIX) and key not in known and not key.startswith(NOT_THE_SERVICES)
    )
    if unknown:
        raise SettingsError(unknown[0], "unknown setting (see docs/settings.md for the list)")
    values: dict[str, Any] = {}
    for name, parse in _PARSERS.items():
        raw = env.get(env_name(name))
        if raw is not None:
            values[name] = parse(env_name(name), raw)
    return validate(Settings(**values))


def validate(settings: Settings) -> Settings:
    """Cross-field checks and defaults that depend on other fields."""
    from service import failpoints, safeguards  # late: both import nothing from here at module level

    var_dir = settings.var_dir.resolve()
    database_url = (
        normalize_database_url(settings.database_url) or f"sqlite+aiosqlite:///{var_dir / 'smslab.db'}"
    )
    settings = replace(settings, var_dir=var_dir, database_url=database_url)

    unknown = sorted(settings.safeguards_off - set(safeguards.REGISTRY))
    if unknown:
        raise SettingsError(
            env_name("safeguards_off"),
            f"unknown safeguard {unknown[0]!r}; known: {', '.join(safeguards.REGISTRY)}",
        )
    if settings.safeguards_off and not settings.lab_allow_unsafe:
        raise SettingsError(
            env_name("safeguards_off"),
            "switching safeguards off is refused unless SMSLAB_LAB_ALLOW_UNSAFE=true (lab runs only)",
        )
    if settings.failpoints:
        if not settings.lab_allow_unsafe:
            raise SettingsError(
                env_name("failpoints"),
                "failpoints are refused unless SMSLAB_LAB_ALLOW_UNSAFE=true (lab runs only)",
            )
        try:
            failpoints.parse_spec(settings.failpoints)
        except ValueError as exc:
            raise SettingsError(env_name("failpoints"), str(exc)) from None
    if settings.database_schema and not settings.is_postgres:
        raise SettingsError(env_name("database_schema"), "only applies to a PostgreSQL database URL")
    problem = lease_problem(settings.send_lease_seconds, settings.mitto_timeout_seconds)
    if problem:
        raise SettingsError(env_name("send_lease_seconds"), f"{problem} (SMSLAB_MITTO_TIMEOUT_SECONDS)")
    return settings


def settings_as_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces these settings in a child process."""
    env: dict[str, str] = {}
    for name in _PARSERS:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, frozenset):
            value = ",".join(sorted(value))
        elif name == "credit_packages":
            value = ",".join(f"{credits}:{cents}" for credits, cents in value)
        elif isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[env_name(name)] = str(value)
    return env

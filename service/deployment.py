"""Where the service runs, and what production refuses: the lab's public secrets and its unsafe switches.

The repository ships working defaults for every secret so that the lab runs with no set-up; they are
public, so a production service using one would let anyone mint a session token for any shop or forge a
paid Stripe checkout. `SMSLAB_ENV=production` makes such a configuration fatal: `production_problems`
names every offending setting, one line each, and `smslab api`, `worker` and `up` stop with exit status 2
before anything starts. In `development` and `lab` the service starts, and says once, in one warning line,
which default secrets it is using and whether unsafe lab mode is on.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from service.settings import Settings, env_name

MIN_SECRET_LENGTH = 32
SECRETS = (
    "shopify_api_secret",
    "stripe_secret_key",
    "stripe_webhook_secret",
    "mitto_api_key",
    "mitto_dlr_token",
)
PROVIDER_URLS = ("mitto_base_url", "stripe_api_base")


def _values(settings: Settings, name: str) -> tuple[str, ...]:
    value = getattr(settings, name)
    return value if isinstance(value, tuple) else (value,)


def default_secrets(settings: Settings) -> list[str]:
    """The secret settings still at the repository's shipped (public) value."""
    shipped = {n: set(_values(Settings(), n)) for n in SECRETS}
    return [env_name(n) for n in SECRETS if set(_values(settings, n)) & shipped[n]]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def production_problems(settings: Settings) -> list[str]:
    """Every reason this configuration must not run in production, one line per setting."""
    problems = [
        f"{name}: is the repository's public default; set your own" for name in default_secrets(settings)
    ]
    for name in SECRETS:
        if env_name(name) in default_secrets(settings):
            continue
        if any(len(value) < MIN_SECRET_LENGTH for value in _values(settings, name)):
            problems.append(f"{env_name(name)}: shorter than {MIN_SECRET_LENGTH} characters")
    for name in PROVIDER_URLS:
        url = urlsplit(getattr(settings, name))
        if url.scheme == "http" and not _loopback(url.hostname or ""):
            problems.append(f"{env_name(name)}: plain http:// to {url.hostname}; use https://")
    if settings.lab_allow_unsafe:
        problems.append(f"{env_name('lab_allow_unsafe')}: unsafe lab mode is for the lab only")
    if settings.safeguards_off:
        off = ", ".join(sorted(settings.safeguards_off))
        problems.append(f"{env_name('safeguards_off')}: safeguards switched off ({off})")
    if settings.failpoints:
        problems.append(f"{env_name('failpoints')}: failpoints are for the lab only")
    if settings.log_sql:
        problems.append(
            f"{env_name('log_sql')}: SQL statements with their parameters (personal data) in the logs"
        )
    return problems


def unsafe_mode(settings: Settings) -> dict[str, Any]:
    """What of unsafe lab mode is on, as `/health/full` and the start-up line show it (empty: none)."""
    mode: dict[str, Any] = {}
    if settings.lab_allow_unsafe:
        mode["lab_allow_unsafe"] = True
    if settings.safeguards_off:
        mode["safeguards_off"] = sorted(settings.safeguards_off)
    if settings.failpoints:
        mode["failpoints"] = settings.failpoints
    if settings.log_sql:
        mode["log_sql"] = True
    return mode


def announce(settings: Settings, process: str) -> None:
    """At start, outside production: one warning line for default secrets, one for unsafe lab mode."""
    from service import logs

    log = logs.get_logger("service.deployment")
    in_use = default_secrets(settings)
    if in_use:
        log.warning("default_secrets_in_use", process=process, env=settings.env, settings=in_use)
    mode = unsafe_mode(settings)
    if mode:
        log.warning("unsafe_lab_mode", process=process, env=settings.env, **mode)

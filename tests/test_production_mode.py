"""Production refuses the lab's public secrets and its unsafe switches; development says what it uses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.deployment import production_problems, unsafe_mode
from service.settings import load_settings
from tests.support.api import Api
from tests.support.infra import ROOT

STRONG = "s" * 40
SAFE_PRODUCTION = {
    "SMSLAB_ENV": "production",
    "SMSLAB_SHOPIFY_API_SECRET": STRONG,
    "SMSLAB_STRIPE_SECRET_KEY": "sk_live_" + STRONG,
    "SMSLAB_STRIPE_WEBHOOK_SECRET": "whsec_" + STRONG,
    "SMSLAB_MITTO_API_KEY": STRONG,
    "SMSLAB_MITTO_DLR_TOKEN": STRONG,
    "SMSLAB_MITTO_BASE_URL": "https://rest.mittoapi.net",
    "SMSLAB_STRIPE_API_BASE": "https://api.stripe.com",
}


def _smslab(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SMSLAB_")}
    return subprocess.run(
        [sys.executable, "-m", "chaos.cli", *args],
        env={**clean, "SMSLAB_VAR_DIR": str(tmp_path / "var"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_a_safe_production_configuration_has_no_problems() -> None:
    assert production_problems(load_settings(SAFE_PRODUCTION)) == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            {"SMSLAB_SHOPIFY_API_SECRET": "lab-shopify-secret-change-me-in-production"},
            "SMSLAB_SHOPIFY_API_SECRET",
        ),
        (
            {"SMSLAB_STRIPE_WEBHOOK_SECRET": f"whsec_{STRONG},whsec_lab_change_me_in_production"},
            "SMSLAB_STRIPE_WEBHOOK_SECRET",
        ),
        ({"SMSLAB_MITTO_DLR_TOKEN": "short"}, "SMSLAB_MITTO_DLR_TOKEN: shorter than 32"),
        ({"SMSLAB_MITTO_BASE_URL": "http://mitto.example.com"}, "SMSLAB_MITTO_BASE_URL: plain http://"),
        ({"SMSLAB_LAB_ALLOW_UNSAFE": "true"}, "SMSLAB_LAB_ALLOW_UNSAFE"),
        ({"SMSLAB_LOG_SQL": "true"}, "SMSLAB_LOG_SQL"),
        (
            {"SMSLAB_LAB_ALLOW_UNSAFE": "true", "SMSLAB_FAILPOINTS": "send.after_claim=raise"},
            "SMSLAB_FAILPOINTS",
        ),
    ],
)
def test_production_names_each_setting_it_refuses(change: dict[str, str], named: str) -> None:
    problems = production_problems(load_settings({**SAFE_PRODUCTION, **change}))
    assert any(line.startswith(named) for line in problems), problems


def test_loopback_provider_urls_over_plain_http_are_fine() -> None:
    env = {**SAFE_PRODUCTION, "SMSLAB_MITTO_BASE_URL": "http://127.0.0.1:8025/mitto"}
    assert production_problems(load_settings(env)) == []


@pytest.mark.parametrize("command", [["api"], ["worker"], ["up"]])
def test_the_service_refuses_to_start_in_production_with_the_shipped_secrets(
    tmp_path: Path, command: list[str]
) -> None:
    done = _smslab(tmp_path, *command, SMSLAB_ENV="production")
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("smslab: refusing")]
    named = {line.split(": ")[2] for line in lines}
    assert named >= {
        "SMSLAB_SHOPIFY_API_SECRET",
        "SMSLAB_STRIPE_SECRET_KEY",
        "SMSLAB_STRIPE_WEBHOOK_SECRET",
        "SMSLAB_MITTO_API_KEY",
        "SMSLAB_MITTO_DLR_TOKEN",
    }, done.stderr
    assert not (tmp_path / "var" / "smslab.db").exists()  # nothing started


async def test_development_announces_its_default_secrets_and_unsafe_mode(api: Api) -> None:
    health = httpx.get(f"{api.base_url}/health/full", timeout=10).json()
    assert (health["env"], health["unsafe_lab_mode"]) == ("development", {})
    api.process.stop()
    log = api.process.log_path.read_text()
    warning = next(line for line in log.splitlines() if "default_secrets_in_use" in line)
    assert "SMSLAB_SHOPIFY_API_SECRET" in warning
    assert api.settings.shopify_api_secret not in log


def test_unsafe_lab_mode_is_shown() -> None:
    settings = load_settings(
        {"SMSLAB_LAB_ALLOW_UNSAFE": "true", "SMSLAB_SAFEGUARDS_OFF": "reconciler", "SMSLAB_ENV": "lab"}
    )
    assert unsafe_mode(settings) == {"lab_allow_unsafe": True, "safeguards_off": ["reconciler"]}


def test_without_docker_testcontainers_stops_with_one_line(tmp_path: Path) -> None:
    done = _smslab(tmp_path, "run", "quick", "--database", "testcontainers", "--out", str(tmp_path / "runs"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "testcontainers" in done.stderr
    assert "Docker" in done.stderr or "pip install" in done.stderr


def test_the_suite_with_testcontainers_and_no_docker_stops_with_one_line(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SMSLAB_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_docs.py"],
        env={**clean, "SMSLAB_TEST_POSTGRES_URL": "testcontainers"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stderr.startswith("SMSLAB_TEST_POSTGRES_URL=testcontainers: ")

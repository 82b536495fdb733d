"""Settings refuse bad values with one clear line; the smslab commands do what they say."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from service.settings import SettingsError, load_settings, normalize_database_url
from tests.support.infra import ROOT


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SMSLAB_BATCH_SIZE": "abc"}, "SMSLAB_BATCH_SIZE: expected a whole number >= 1, got 'abc'"),
        ({"SMSLAB_BATCH_SIZE": "0"}, "SMSLAB_BATCH_SIZE"),
        ({"SMSLAB_SEND_LEASE_SECONDS": "-1"}, "SMSLAB_SEND_LEASE_SECONDS"),
        ({"SMSLAB_DATABASE_URL": "mysql://x/y"}, "SMSLAB_DATABASE_URL"),
        ({"SMSLAB_REDIS_URL": "http://localhost"}, "SMSLAB_REDIS_URL"),
        ({"SMSLAB_MITTO_BASE_URL": "localhost:8025"}, "SMSLAB_MITTO_BASE_URL"),
        ({"SMSLAB_UNRESOLVED_SEND_POLICY": "maybe"}, "SMSLAB_UNRESOLVED_SEND_POLICY"),
        ({"SMSLAB_BATCHSIZE": "10"}, "SMSLAB_BATCHSIZE: unknown setting"),
        ({"SMSLAB_SAFEGUARDS_OFF": "reconciler"}, "refused unless SMSLAB_LAB_ALLOW_UNSAFE=true"),
        ({"SMSLAB_FAILPOINTS": "send.after_claim=raise"}, "refused unless SMSLAB_LAB_ALLOW_UNSAFE=true"),
        (
            {"SMSLAB_LAB_ALLOW_UNSAFE": "true", "SMSLAB_SAFEGUARDS_OFF": "seatbelts"},
            "unknown safeguard 'seatbelts'",
        ),
        ({"SMSLAB_LAB_ALLOW_UNSAFE": "true", "SMSLAB_FAILPOINTS": "nowhere=raise"}, "unknown failpoint"),
        ({"SMSLAB_DATABASE_SCHEMA": "lab"}, "only applies to a PostgreSQL"),
        (
            {"SMSLAB_SEND_LEASE_SECONDS": "2", "SMSLAB_MITTO_TIMEOUT_SECONDS": "2"},
            "SMSLAB_SEND_LEASE_SECONDS: must leave room for one provider call",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match="bad setting") as refused:
        load_settings(env)
    assert message in str(refused.value)


def test_database_urls_are_accepted_as_users_type_them() -> None:
    assert normalize_database_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalize_database_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalize_database_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    settings = load_settings({"SMSLAB_VAR_DIR": "/tmp/lab"})
    assert settings.database_url == "sqlite+aiosqlite:////tmp/lab/smslab.db"
    assert settings.redis_url is None  # embedded


def smslab(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SMSLAB_")}
    return subprocess.run(
        [sys.executable, "-m", "chaos.cli", *args],
        env={**clean, **(env or {})},
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_bad_setting_stops_a_command_with_one_line(tmp_path: Path) -> None:
    result = smslab("api", env={"SMSLAB_BATCH_SIZE": "lots"}, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "smslab: bad setting SMSLAB_BATCH_SIZE: expected a whole number >= 1, got 'lots'"
    ]


def test_token_prints_a_session_token_for_the_shop(tmp_path: Path) -> None:
    result = smslab("token", "demo.myshopify.com", cwd=tmp_path)
    claims = jwt.decode(
        result.stdout.strip(),
        load_settings({}).shopify_api_secret,
        algorithms=["HS256"],
        audience="lab-api-key",
    )
    assert claims["dest"] == "https://demo.myshopify.com"
    assert smslab("token", "not a shop", cwd=tmp_path).returncode == 2


def test_db_upgrade_and_credit_grants_on_the_embedded_default(tmp_path: Path) -> None:
    assert smslab("db", "upgrade", cwd=tmp_path).returncode == 0
    assert smslab("db", "upgrade", cwd=tmp_path).returncode == 0  # nothing left to apply
    assert (tmp_path / "var" / "smslab.db").exists()
    assert smslab("shops", "install", "demo.myshopify.com", cwd=tmp_path).returncode == 0
    first = smslab("credits", "grant", "demo.myshopify.com", "500", "--key", "welcome", cwd=tmp_path)
    assert first.stdout.strip() == "granted 500 credits; balance 500"
    repeat = smslab("credits", "grant", "demo.myshopify.com", "500", "--key", "welcome", cwd=tmp_path)
    assert repeat.stdout.strip() == "already granted with this key; 500 credits; balance 500"
    other = smslab("credits", "grant", "demo.myshopify.com", "250", cwd=tmp_path)
    assert other.stdout.strip() == "granted 250 credits; balance 750"


def test_credit_commands_refuse_a_shop_that_is_not_installed(tmp_path: Path) -> None:
    """Found in the runbook review: a grant to a mistyped domain silently installed a new shop and
    credited it, so the real shop never got its credits and nobody was told."""
    assert smslab("db", "upgrade", cwd=tmp_path).returncode == 0
    assert smslab("shops", "install", "demo.myshopify.com", cwd=tmp_path).returncode == 0
    commands = [
        ("credits", "grant", "dmeo.myshopify.com", "500"),
        ("credits", "adjust", "dmeo.myshopify.com", "-5", "--reason", "typo", "--key", "k"),
        ("credits", "recompute", "dmeo.myshopify.com"),
    ]
    for command in commands:
        refused = smslab(*command, cwd=tmp_path)
        assert refused.returncode == 2, command
        assert refused.stderr.strip().splitlines() == [
            "smslab: no shop dmeo.myshopify.com in this database (check the domain; a new shop is "
            "installed with `smslab shops install dmeo.myshopify.com`)"
        ]
    shops = sqlite3.connect(tmp_path / "var" / "smslab.db").execute("SELECT domain FROM shops").fetchall()
    assert shops == [("demo.myshopify.com",)]


def test_credits_adjust_deducts_once_per_key_and_never_below_zero_available(tmp_path: Path) -> None:
    assert smslab("db", "upgrade", cwd=tmp_path).returncode == 0
    assert smslab("shops", "install", "demo.myshopify.com", cwd=tmp_path).returncode == 0
    assert (
        smslab("credits", "grant", "demo.myshopify.com", "10", "--key", "seed", cwd=tmp_path).returncode == 0
    )

    def adjust(amount: str, key: str = "incident-7") -> subprocess.CompletedProcess[str]:
        return smslab(
            "credits", "adjust", "demo.myshopify.com", amount, "--reason", "double debit, campaign 3",
            "--key", key, cwd=tmp_path,
        )  # fmt: skip

    first = adjust("-4")
    assert (first.returncode, first.stdout.strip()) == (0, "adjusted by -4 credits; balance 6, available 6")
    again = adjust("-4")
    assert again.stdout.strip() == "already adjusted with this key by -4 credits; balance 6, available 6"
    other_amount = adjust("-5")
    assert other_amount.returncode == 2
    assert "already recorded a correction of -4, not -5" in other_amount.stderr
    too_much = adjust("-7", key="incident-8")
    assert too_much.returncode == 2
    assert "available credits never go below zero" in too_much.stderr
    assert adjust("3", key="incident-9").stdout.strip() == "adjusted by +3 credits; balance 9, available 9"
    database = sqlite3.connect(tmp_path / "var" / "smslab.db")
    entries = database.execute("SELECT kind, amount, idempotency_key, note FROM credit_ledger ORDER BY id")
    assert entries.fetchall() == [
        ("adjustment", 10, "seed", "operator grant"),
        ("correction", -4, "correction:incident-7", "double debit, campaign 3"),
        ("correction", 3, "correction:incident-9", "double debit, campaign 3"),
    ]
    assert database.execute("SELECT balance, reserved FROM wallets").fetchall() == [(9, 0)]


@pytest.mark.parametrize(
    ("env", "named"),
    [({"SMSLAB_BATCH_SIZE": "lots"}, "SMSLAB_BATCH_SIZE"), ({"SMSLAB_BATCHSIZE": "10"}, "SMSLAB_BATCHSIZE")],
)
def test_a_lab_run_checks_the_settings_before_anything_starts(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    """Found by a new user: a mistyped variable was found only when the API died (exit 3, after a half-made
    run folder and `latest` link), and a bad value was ignored altogether."""
    result = smslab("run", "quick", "--out", str(tmp_path / "runs"), env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert named in result.stderr
    assert not (tmp_path / "runs").exists()

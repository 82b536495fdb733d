"""Every step of every runbook works when followed literally, as an operator would follow it.

The runbooks are read as docs/runbooks/README.md says they are written: a table of alerts, metrics,
PromQL and invariant first; numbered steps, each saying what it changes; `sql` blocks with `:name`
values; `sh` blocks with the README's variables. Then every block of every runbook is run against a
live service that has done a little of everything (tests/support/live.py), on SQLite and PostgreSQL:
each must run without error, the Mitto lookup must get the provider's answer, and the query for a
purchase's events must find its refund's. Last, the credit-reconciliation steps are followed on a wallet
put out of balance by hand, and must leave it in balance.

Found when this test was first run against the runbooks: the reconciliation step recorded the gap as an
adjustment (which moves the balance with it, so the gap stayed), there was no command for a deduction,
a grant to a mistyped domain created a shop, the Mitto lookup had no API key (401), and the webhook
query could not find a refund (its event's subject is the charge).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from chaos.checker import i4_credits_conserved
from chaos.checker.evidence import load_snapshot
from service.db.models import CreditLedgerEntry, Shop, Wallet
from tests.support.infra import ROOT
from tests.support.lab import Lab
from tests.support.live import SHOP, LiveService, live_service
from tests.support.runbooks import (
    HEADER_ROWS,
    RUNBOOKS_DIR,
    Block,
    Database,
    Runbook,
    metric_names,
    runbooks,
    with_values,
)

MARKS = ("(read-only", "(changes:")
LANGUAGES = {"sql", "sh", "text", "json"}
MITTO_LOOKUP = "/api/v1/Messages?reference="


def _documented_variables() -> set[str]:
    """The variables of the README's table (its rows start with the names in backticks)."""
    readme = (RUNBOOKS_DIR / "README.md").read_text()
    names: set[str] = set()
    for row in re.findall(r"^\s*\| ((?:`[A-Z_]+`(?:, )?)+) \|", readme, flags=re.MULTILINE):
        names.update(re.findall(r"`([A-Z_]+)`", row))
    return names


def test_every_runbook_opens_with_its_alerts_metrics_promql_and_invariant() -> None:
    for runbook in runbooks():
        header = runbook.header()
        assert list(header) == HEADER_ROWS, f"{runbook.path.name} opens with {list(header)}"
        assert runbook.alerts(), f"{runbook.path.name}: no alert named"
        assert metric_names(header["Metrics"]), f"{runbook.path.name}: no metric named"
        assert runbook.code_spans("PromQL"), f"{runbook.path.name}: no PromQL"
        assert all(metric_names(q) for q in runbook.code_spans("PromQL")), runbook.path.name
        invariants = set(re.findall(r"\bI[1-9]\b", header["Invariant"]))
        assert invariants, f"{runbook.path.name}: no invariant named"
        assert {i for i in invariants if re.search(rf"^## {i}\b", runbook.text, re.M)} == invariants, (
            f"{runbook.path.name}: an invariant of its table has no section of its own"
        )


def test_every_step_says_what_it_changes() -> None:
    for runbook in runbooks():
        steps = runbook.steps()
        assert steps, f"{runbook.path.name} has no numbered ## Steps"
        for step in steps:
            before_code = step.split("```", 1)[0]
            assert any(mark in before_code for mark in MARKS), (
                f"{runbook.path.name}: step {step.splitlines()[0][:60]!r} says neither "
                "(read-only) nor (changes: ...)"
            )


def test_every_block_is_sql_or_sh_with_documented_variables() -> None:
    documented = _documented_variables()
    assert {"API", "LOGS", "SHOP_DOMAIN", "REFERENCE"} <= documented
    for runbook in runbooks():
        for block in runbook.blocks():
            assert block.language in LANGUAGES, f"{block.where(runbook)}: a ```{block.language} block"
            if block.language == "sh":
                used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", block.code))
                unknown = {v for v in used if v not in documented and not v.startswith("SMSLAB_")}
                assert not unknown, f"{block.where(runbook)} uses {unknown}, not in README.md's table"


def _recorded_outcomes() -> set[str]:
    """Every outcome the service can record for a webhook event, read from its code: the first argument
    of each `EffectResult(...)` and each `partial(_outcome, outcome=...)`; `f"name:{n}"` as `name:N`."""

    def strings(node: ast.expr) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.IfExp):
            return strings(node.body) | strings(node.orelse)
        if isinstance(node, ast.JoinedStr) and isinstance(node.values[0], ast.Constant):
            return {f"{node.values[0].value!s}N"}
        return set()

    found: set[str] = set()
    for path in (ROOT / "service").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name == "EffectResult" and node.args:
                found |= strings(node.args[0])
            if name == "partial" and node.args and getattr(node.args[0], "id", "") == "_outcome":
                for keyword in node.keywords:
                    if keyword.arg == "outcome":
                        found |= strings(keyword.value)
    return found


def test_every_outcome_the_service_records_is_in_the_webhook_runbook() -> None:
    runbook = Runbook.named("webhook-failures.md")
    table = [line for line in runbook.text.splitlines() if line.strip().startswith("| `")]
    listed = {span for line in table for span in re.findall(r"`([a-z_]+(?::N)?)`", line.split("|")[1])}
    outcomes = _recorded_outcomes()
    assert {"redacted:N", "granted", "refunded", "deferred_until_recorded"} <= outcomes  # the reading works
    assert sorted(outcomes - listed) == []


def _shell_env(service: LiveService, **extra: str) -> dict[str, str]:
    """An operator's shell on the service's host: its settings, `smslab` on the PATH, the variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SMSLAB_")}
    clean["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{clean.get('PATH', '')}"
    return {**clean, **service.env(**extra)}


def _run_sh(block: Block, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """As typed into bash: a failing command or an unset variable stops it (as it would stop a reader)."""
    return subprocess.run(
        ["bash", "-e", "-u", "-c", block.code],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _shop_id(lab: Lab, domain: str = SHOP) -> int:
    async with lab.sessions() as session, session.begin():
        shop_id = await session.scalar(select(Shop.id).where(Shop.domain == domain))
    assert shop_id is not None
    return int(shop_id)


@pytest.mark.webhooks_to_api
async def test_every_sql_and_sh_block_runs_against_a_live_service(lab: Lab, tmp_path: Path) -> None:
    failures: list[str] = []
    session_events: list[dict[str, Any]] | None = None
    lookups: list[str] = []
    async with live_service(lab, tmp_path) as service:
        values = {**service.facts, "shop_id": await _shop_id(service.lab)}
        env = _shell_env(service, DIFFERENCE="-3", CREDITS="2", INCIDENT="INC-1")
        async with Database(service.lab.settings.database_url, service.lab.settings.database_schema) as db:
            for runbook in runbooks():
                for block in runbook.blocks():
                    if block.language == "sql" and not (block.postgresql_only and db.backend == "sqlite"):
                        try:
                            results = await db.run_block(block, values)
                        except Exception as exc:  # noqa: BLE001 - every failing block is reported
                            failures.append(f"{block.where(runbook)}: {type(exc).__name__}: {exc}")
                            continue
                        if "->> 'payment_intent'" in block.code:
                            session_events = results[0]
                    elif block.language == "sh":
                        done = _run_sh(block, env, tmp_path)
                        if done.returncode != 0:
                            failures.append(f"{block.where(runbook)}: exit {done.returncode}: {done.stderr}")
                        elif MITTO_LOOKUP in block.code:
                            lookups.append(done.stdout)
            without_key = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                 f"{env['SMSLAB_MITTO_BASE_URL']}{MITTO_LOOKUP}{env['REFERENCE']}"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
    assert failures == []
    # The provider's lookup, with the key the runbooks pass: the one message sent under the reference.
    assert without_key.stdout == "401"  # so the header is what makes the runbooks' lookups work
    assert len(lookups) >= 3
    for answer in lookups:
        messages = json.loads(answer)["messages"]
        assert [m["reference"] for m in messages] == [service.facts["reference"]]
    # A purchase's events include its refund's, though that one's subject is the charge.
    assert session_events is not None, "webhook-failures.md has no query through the payment intent"
    assert {e["event_type"] for e in session_events} == {"checkout.session.completed", "charge.refunded"}
    assert {e["subject"] for e in session_events} == {service.facts["session_id"], service.facts["charge_id"]}


async def _out_of_balance(service: LiveService) -> float:
    for family in text_string_to_metric_families(await service.scrape()):
        if family.name == "smslab_wallets_out_of_balance":
            return float(family.samples[0].value)
    raise AssertionError("smslab_wallets_out_of_balance is not in /metrics")


@pytest.mark.webhooks_to_api
async def test_following_the_credit_reconciliation_runbook_puts_a_wallet_back_in_balance(
    lab: Lab, tmp_path: Path
) -> None:
    """The bug the runbook is for, made by hand: the wallet lost 7 credits without a ledger entry (as if
    a debit's entry had been lost). Followed block by block, with `SHOP_DOMAIN` and `DIFFERENCE` taken
    from step 1's answer as it says, the runbook puts the wallet back to its ledger and then records the
    7 as a correction, so balance and ledger agree and the deduction is on the books, once."""
    runbook = Runbook.named("credit-reconciliation.md")
    blocks = runbook.blocks()
    assert blocks[0].language == "sql", "step 1 is the query that finds the wallets out of balance"
    async with live_service(lab, tmp_path) as service:
        shop_id = await _shop_id(service.lab)
        env = _shell_env(service, CREDITS="2", INCIDENT="INC-7")
        values: dict[str, Any] = {**service.facts, "shop_id": shop_id}
        async with Database(service.lab.settings.database_url, service.lab.settings.database_schema) as db:
            assert (await db.run_block(blocks[0], values))[0] == []
            [before] = await db.run(
                with_values("SELECT balance FROM wallets WHERE shop_id = :shop_id", values)
            )
            # The bug, by hand: the wallet moved without an entry.
            await db.run(
                with_values("UPDATE wallets SET balance = balance - 7 WHERE shop_id = :shop_id", values)
            )
            assert await _out_of_balance(service) == 1
            for attempt in range(2):  # an operator repeating the procedure changes nothing more
                for block in blocks:
                    if block.language == "sql":
                        rows = (await db.run_block(block, values))[0]
                        if block is blocks[0] and attempt == 0:
                            [found] = rows
                            assert (found["domain"], int(found["difference"])) == (SHOP, -7)
                            env["SHOP_DOMAIN"], env["DIFFERENCE"] = found["domain"], str(found["difference"])
                    elif block.language == "sh":
                        done = _run_sh(block, env, tmp_path)
                        assert done.returncode == 0, f"{block.where(runbook)}: {done.stderr}"
            assert (await db.run_block(blocks[0], values))[0] == []
        assert await _out_of_balance(service) == 0
        async with service.lab.sessions() as session, session.begin():
            wallet = await session.scalar(select(Wallet).where(Wallet.shop_id == shop_id))
            corrections = (
                await session.scalars(
                    select(CreditLedgerEntry.amount)
                    .where(CreditLedgerEntry.shop_id == shop_id, CreditLedgerEntry.kind == "correction")
                    .order_by(CreditLedgerEntry.id)
                )
            ).all()
        async with service.lab.sessions() as session:
            snapshot = await load_snapshot(session)
    assert wallet is not None
    assert corrections == [-7, 2]  # step 5's missing movement, step 8's refund; each once
    assert wallet.balance == before["balance"] - 7 + 2
    assert i4_credits_conserved.check(snapshot).valid is True

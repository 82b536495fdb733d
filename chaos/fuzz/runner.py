"""`smslab fuzz`: the live API held to its OpenAPI by schemathesis, then the webhooks refused unsigned.

The service runs as in a lab run (its own Redis, a fresh SQLite file or PostgreSQL schema, the fake
providers, the API and a worker as processes: `chaos.environment`), with one shop installed that has
contacts and credits, so that requests the schema allows can succeed. Then two schemathesis runs
(separate processes, their own event loops):

1. the merchant API (`/api/*`, `/health*`), with a fresh session token every half minute (`hooks.py`),
   every check on, the examples, coverage, fuzzing and stateful phases, a fixed seed and a bounded
   number of examples per operation; the exceptions to `positive_data_acceptance` that business rules
   need are in `schemathesis.toml`, each explained;
2. the providers' webhooks with no valid signature: every answer must be a 4xx (`answers_4xx`).

Each writes its JUnit report and its log into the fuzz folder; the command exits 0 only if both found
nothing. The service's logs are then searched for tracebacks: an exception the API turned into a 4xx
is fine, one that escaped to a 500 is a finding even if schemathesis did not flag it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.environment import Environment, RunFolder
from chaos.fuzz import hooks
from chaos.scenario import parse_scenario
from service.contacts.upsert import upsert_contacts
from service.rate_limits import UNREACHABLE_LIMITS
from service.settings import Settings, settings_as_env
from service.shops import install_shop
from service.wallet.ledger import grant_credits

CONFIG = Path(__file__).with_name("schemathesis.toml")
PHASES = "examples,coverage,fuzzing,stateful"
WEBHOOK_CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance,answers_4xx"
)


@dataclass
class FuzzOptions:
    out_dir: Path
    seed: int = 7
    max_examples: int = 30
    database_url: str | None = None
    workers: int = 2
    max_time_s: float | None = None


@dataclass
class FuzzRun:
    name: str
    exit_code: int
    seconds: float
    log: str
    summary: list[str] = field(default_factory=list)


def _schemathesis(
    name: str, arguments: list[str], env: dict[str, str], folder: Path, timeout_s: float
) -> FuzzRun:
    log = folder / f"schemathesis-{name}.log"
    started = time.monotonic()
    argv = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", *arguments]
    with log.open("wb") as handle:
        completed = subprocess.run(
            argv, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout_s, check=False
        )
    text = log.read_text(errors="replace")
    tail = text[text.rfind("SUMMARY") :].splitlines() if "SUMMARY" in text else text.splitlines()[-15:]
    return FuzzRun(name, completed.returncode, round(time.monotonic() - started, 1), str(log), tail)


async def _world(environment: Environment, settings: Settings) -> None:
    """The shop the fuzzer acts for: installed, with consenting contacts and credits to spend."""
    async with environment.lab_sessions(settings) as sessions, sessions() as session:
        shop = await install_shop(session, hooks.FUZZ_SHOP)
        await grant_credits(session, shop_id=shop.id, amount=100_000, idempotency_key="fuzz")
        rows = [{"phone_e164": f"+1202555{n:04d}", "sms_consent": True} for n in range(20)]
        await upsert_contacts(session, shop.id, rows)


async def run_fuzz(options: FuzzOptions) -> tuple[Path, dict[str, Any]]:
    folder = RunFolder.new(options.out_dir, "fuzz", options.seed)
    folder.create()
    # The fuzzer holds the API to its schema, so its bursts must not be answered 429 by the tenant limits
    # (which tests/test_rate_limits.py holds to theirs).
    scenario = parse_scenario({"name": "fuzz", "services": {"workers": 1, "rate_limits": UNREACHABLE_LIMITS}})
    environment = Environment(folder, scenario, options.seed, options.database_url)
    runs: list[FuzzRun] = []
    try:
        environment.start_redis()
        backend = await environment.create_database()
        settings = await environment.configure()
        await environment.migrate(settings)
        services = environment.processes(settings)
        await asyncio.to_thread(services.start)
        await _world(environment, settings)
        schema = f"{services.api_url}/schema/openapi.json"
        env = {
            **os.environ,
            **settings_as_env(settings),
            "SCHEMATHESIS_HOOKS": "chaos.fuzz.hooks",
            "SMSLAB_FUZZ_SHOP": hooks.FUZZ_SHOP,
        }
        common = [
            schema,
            "--seed",
            str(options.seed),
            "--max-examples",
            str(options.max_examples),
            "--generation-database",
            "none",
            "--workers",
            str(options.workers),
            "--report",
            "junit",
            "--report-dir",
            str(folder.path),
            "--no-color",
        ]
        if options.max_time_s:
            common += ["--max-time", str(int(options.max_time_s))]
        timeout = (options.max_time_s or 600) * 2 + 60
        runs.append(
            await asyncio.to_thread(
                _schemathesis,
                "api",
                [*common, "--checks", "all", "--phases", PHASES, "--exclude-path-regex", "^/webhooks"],
                env,
                folder.path,
                timeout,
            )
        )
        runs.append(
            await asyncio.to_thread(
                _schemathesis,
                "webhooks",
                [
                    *common,
                    "--checks",
                    WEBHOOK_CHECKS,
                    "--phases",
                    "examples,coverage,fuzzing",
                    "--include-path-regex",
                    "^/webhooks",
                ],
                {**env, "SMSLAB_FUZZ_WEBHOOKS": "1"},
                folder.path,
                timeout,
            )
        )
    finally:
        await environment.stop()
        await environment.drop_database()
    tracebacks = [
        p.name for p in (folder.path / "logs").glob("*.log") if "Traceback" in p.read_text(errors="replace")
    ]
    report = {
        "backend": backend,
        "seed": options.seed,
        "max_examples": options.max_examples,
        "runs": [run.__dict__ for run in runs],
        "service_logs_with_tracebacks": tracebacks,
        "clean": all(run.exit_code == 0 for run in runs) and not tracebacks,
    }
    (folder.path / "fuzz.json").write_text(json.dumps(report, indent=1))
    return folder.path, report

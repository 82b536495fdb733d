#!/usr/bin/env python3
"""The quality gate, in one command a fresh machine with only Python can run: `python3 check.py`.

The seed's `npm run check`, in this project's terms. In order, stopping at the first failure:
1. a virtualenv (`.venv`, or `--venv DIR`) with the project and its dev tools installed;
2. lint (`ruff check`), format (`ruff format --check`), types (`mypy`, strict);
3. migrations against models (`smslab db check`: upgrade to head, then `alembic check`) on SQLite and on
   PostgreSQL;
4. the tests (`pytest -n auto`, the README's command), both database backends;
5. the fuzzer (`smslab fuzz`: schemathesis against the live API and its webhooks) on SQLite and on
   PostgreSQL.
PostgreSQL comes from SMSLAB_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test); where
none answers, its steps are skipped with that reason, unless `--require-postgres` (CI gives it).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent
POSTGRES = os.environ.get("SMSLAB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=2):
            return True
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--venv", type=Path, default=ROOT / ".venv", help="the virtualenv to use (made if missing)"
    )
    parser.add_argument("--no-install", action="store_true", help="use the virtualenv as it is")
    parser.add_argument("--require-postgres", action="store_true", help="fail instead of skipping without it")
    parser.add_argument("--fuzz-examples", type=int, default=30, help="schemathesis examples per operation")
    args = parser.parse_args()

    venv = args.venv.resolve()
    bin_dir = venv / "bin"
    results: list[tuple[str, str, float]] = []

    def step(name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        started = time.monotonic()
        print(f"\n== {name}: {' '.join(argv)}", flush=True)
        code = subprocess.run(argv, cwd=ROOT, env={**os.environ, **(env or {})}, check=False).returncode
        seconds = time.monotonic() - started
        results.append((name, "ok" if code == 0 else f"FAILED ({code})", seconds))
        if code != 0:
            summary()
            sys.exit(code)

    def skip(name: str, why: str) -> None:
        print(f"\n== {name}: skipped ({why})", flush=True)
        results.append((name, f"skipped: {why}", 0.0))

    def summary() -> None:
        print("\nquality gate:")
        for name, outcome, seconds in results:
            print(f"  {name:<28} {outcome:<40} {seconds:7.1f} s")

    if not (bin_dir / "python").exists():
        step("virtualenv", [sys.executable, "-m", "venv", str(venv)])
    if not args.no_install:
        step("install", [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "-e", ".[dev]"])
    step("lint", [str(bin_dir / "ruff"), "check", "."])
    step("format", [str(bin_dir / "ruff"), "format", "--check", "."])
    step("types", [str(bin_dir / "mypy"), "."])

    postgres = postgres_answers(POSTGRES)
    if not postgres and args.require_postgres:
        print(f"PostgreSQL required (--require-postgres) but nothing answers at {POSTGRES}", file=sys.stderr)
        return 2
    smslab = str(bin_dir / "smslab")
    with tempfile.TemporaryDirectory(prefix="smslab-check-") as scratch:
        step("migrations (SQLite)", [smslab, "db", "check"], {"SMSLAB_VAR_DIR": scratch})
    if postgres:
        schema = f"check_{uuid.uuid4().hex[:10]}"
        step(
            "migrations (PostgreSQL)",
            [smslab, "db", "check"],
            {"SMSLAB_DATABASE_URL": POSTGRES, "SMSLAB_DATABASE_SCHEMA": schema},
        )
        _drop_schema(bin_dir, schema)
    else:
        skip("migrations (PostgreSQL)", f"nothing answers at {POSTGRES}")

    test_env = {"SMSLAB_TEST_POSTGRES_URL": POSTGRES}
    if args.require_postgres:
        test_env["SMSLAB_TEST_REQUIRE_POSTGRES"] = "1"
    step("tests", [str(bin_dir / "pytest"), "-n", "auto"], test_env)

    fuzz = [smslab, "fuzz", "--out", str(ROOT / "runs" / "check"), "--max-examples", str(args.fuzz_examples)]
    step("fuzz (SQLite)", fuzz)
    if postgres:
        step("fuzz (PostgreSQL)", [*fuzz, "--database", POSTGRES])
    else:
        skip("fuzz (PostgreSQL)", f"nothing answers at {POSTGRES}")
    summary()
    return 0


def _drop_schema(bin_dir: Path, schema: str) -> None:
    code = (
        "import asyncio, asyncpg, sys\n"
        "async def drop():\n"
        "    connection = await asyncpg.connect(sys.argv[1])\n"
        f"    await connection.execute('DROP SCHEMA IF EXISTS \"{schema}\" CASCADE')\n"
        "    await connection.close()\n"
        "asyncio.run(drop())\n"
    )
    subprocess.run([str(bin_dir / "python"), "-c", code, POSTGRES], check=False)


if __name__ == "__main__":
    sys.exit(main())

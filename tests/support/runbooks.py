"""Reading the runbooks and the alert rules as an operator's tools would: the blocks to run, the tables
to trust, the metrics a PromQL expression names.

Conventions (docs/runbooks/README.md): a runbook opens with a table (Alerts, Metrics, PromQL,
Invariant); its `sql` blocks take `:name` values, put in as SQL literals; its `sh` blocks use the
variables the README lists; a `sql` block whose first line is `-- postgresql only` is PostgreSQL's alone.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from tests.support.infra import POSTGRES_URL, ROOT, plain_postgres_url

RUNBOOKS_DIR = ROOT / "docs" / "runbooks"
ALERTS_FILE = ROOT / "deploy" / "prometheus" / "alerts.yml"
POSTGRESQL_ONLY = "-- postgresql only"
HEADER_ROWS = ["Alerts", "Metrics", "PromQL", "Invariant"]

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<language>[\w-]*)\s*$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_CODE_SPAN = re.compile(r"`([^`]+)`")
_METRIC = re.compile(r"\bsmslab_[a-z0-9_]+\b")
_SELECTOR = re.compile(r"\b(smslab_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
# One SQL token: a quoted string, a comment to the end of its line, a statement's end, or anything else.
_SQL_TOKEN = re.compile(r"'(?:[^']|'')*'|--[^\n]*|;|[^';-]+|-", re.S)
_PLACEHOLDER = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)\b")


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # of the opening fence, 1-based

    @property
    def postgresql_only(self) -> bool:
        return self.code.lstrip().lower().startswith(POSTGRESQL_ONLY)

    def where(self, runbook: Runbook) -> str:
        return f"{runbook.path.name}:{self.line}"


@dataclass(frozen=True)
class Runbook:
    path: Path
    text: str

    @classmethod
    def named(cls, name: str) -> Runbook:
        path = RUNBOOKS_DIR / name
        return cls(path, path.read_text())

    def blocks(self, language: str | None = None) -> list[Block]:
        """Every fenced block, in order, its lines unindented by the fence's own indentation."""
        found: list[Block] = []
        lines = self.text.splitlines()
        index = 0
        while index < len(lines):
            opening = _FENCE.match(lines[index])
            if opening is None:
                index += 1
                continue
            indent = len(opening["indent"])
            body: list[str] = []
            index += 1
            while index < len(lines) and lines[index].strip() != "```":
                body.append(lines[index][indent:] if lines[index][:indent].isspace() else lines[index])
                index += 1
            found.append(Block(opening["language"], "\n".join(body), index - len(body)))
            index += 1
        return [b for b in found if language is None or b.language == language]

    def header(self) -> dict[str, str]:
        """The opening table (the first thing after the title): row name -> cell, `\\|` unescaped."""
        rows: dict[str, str] = {}
        body = self.text.split("\n", 1)[1].lstrip("\n")
        for line in body.splitlines():
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in _CELL_SPLIT.split(line.strip().strip("|"))]
            if len(cells) == 2 and cells[0].startswith("**"):
                rows[cells[0].strip("*")] = cells[1].replace("\\|", "|")
        return rows

    def code_spans(self, row: str) -> list[str]:
        return _CODE_SPAN.findall(self.header().get(row, ""))

    def alerts(self) -> list[str]:
        return [name for name in self.code_spans("Alerts") if name.startswith("Smslab")]

    def headings(self) -> list[str]:
        return re.findall(r"^#+ (.+)$", self.text, flags=re.MULTILINE)

    def anchors(self) -> set[str]:
        return {anchor(h) for h in self.headings()}

    def section(self, heading: str) -> str:
        match = re.search(rf"^## {re.escape(heading)}\s*$", self.text, flags=re.MULTILINE)
        if match is None:
            return ""
        return re.split(r"^## ", self.text[match.end() :], flags=re.MULTILINE)[0]

    def steps(self) -> list[str]:
        """The numbered steps of `## Steps`, each with its continuation lines."""
        items: list[str] = []
        for line in self.section("Steps").splitlines():
            if re.match(r"^\d+\. ", line):
                items.append(line)
            elif items and line.startswith("   "):
                items[-1] += "\n" + line
        return items


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    kept = "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def runbooks() -> list[Runbook]:
    return [
        Runbook(path, path.read_text())
        for path in sorted(RUNBOOKS_DIR.glob("*.md"))
        if path.name != "README.md"
    ]


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS_FILE.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def metric_names(promql: str) -> set[str]:
    return set(_METRIC.findall(promql))


def label_matchers(promql: str) -> list[tuple[str, str]]:
    """(metric, label) for every label a selector matches on, e.g. `x{kind="text"}` -> (x, kind)."""
    return [
        (metric, label) for metric, inside in _SELECTOR.findall(promql) for label in _MATCHER.findall(inside)
    ]


def sql_statements(code: str) -> list[str]:
    """The statements of a block, comments dropped, split on `;` outside quoted strings."""
    statements: list[str] = []
    current: list[str] = []
    for match in _SQL_TOKEN.finditer(code):
        token = match.group()
        if token.startswith("--"):
            continue
        if token == ";":
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(token)
    statements.append("".join(current).strip())
    return [s for s in statements if s]


def literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def with_values(statement: str, values: dict[str, Any]) -> str:
    """`:name` replaced by its value as an SQL literal, as an operator types it (never inside a string)."""
    parts = []
    for match in _SQL_TOKEN.finditer(statement):
        token = match.group()
        if token.startswith("'"):
            parts.append(token)
            continue

        def put(found: re.Match[str]) -> str:
            name = found[1]
            if name not in values:
                raise KeyError(f"no value for :{name}")
            return literal(values[name])

        parts.append(_PLACEHOLDER.sub(put, token))
    return "".join(parts)


class Database:
    """The service's database as an operator's SQL client reaches it: statements run one by one as
    written, autocommit (so a block's own BEGIN and COMMIT are the transaction), rows as dicts."""

    def __init__(self, database_url: str, schema: str | None) -> None:
        self.database_url = database_url
        self.schema = schema
        self.backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
        self._sqlite: sqlite3.Connection | None = None
        self._postgres: asyncpg.Connection | None = None

    async def __aenter__(self) -> Database:
        if self.backend == "sqlite":
            self._sqlite = sqlite3.connect(self.database_url.split("///", 1)[1], isolation_level=None)
            self._sqlite.execute("PRAGMA busy_timeout=10000")
        else:
            self._postgres = await asyncpg.connect(plain_postgres_url(POSTGRES_URL))
            if self.schema:
                await self._postgres.execute(f'SET search_path TO "{self.schema}"')
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._postgres is not None:
            await self._postgres.close()

    async def run(self, statement: str) -> list[dict[str, Any]]:
        if self._sqlite is not None:
            cursor = self._sqlite.execute(statement)
            names = [d[0] for d in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        assert self._postgres is not None
        return [dict(record) for record in await self._postgres.fetch(statement)]

    async def run_block(self, block: Block, values: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """Every statement of the block with its values put in; the rows of each."""
        return [await self.run(with_values(s, values)) for s in sql_statements(block.code)]

"""The database as the checker needs it, saved into the run folder (`database/`) at the end of a run.

`smslab check RUN_DIR` then works from the folder alone, whatever became of the database. Rows are JSON
arrays, one per line, so a million recipients load in about a second; their column order is
`evidence.SNAPSHOT_TABLES`, the one declaration the live read uses too, so the two cannot drift apart.
Besides what the invariants read, the columns that can hold personal data (contacts, recipient phones,
stored webhook payloads, privacy exports) are saved too: I8 checks erased customers left nothing there.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from chaos.checker.evidence import (
    SNAPSHOT_TABLES,
    DatabaseSnapshot,
    Record,
    iter_lines,
    load_snapshot,
    read_lines,
    snapshot_of,
)
from service.db.models import CampaignRecipient, Contact, PendingDeliveryReport, PrivacyRequest, WebhookEvent
from service.db.session import read_only

# The column order of each saved table's rows, as `evidence.SNAPSHOT_TABLES` declares it.
COLUMNS: dict[str, tuple[str, ...]] = {table: spec.columns for table, spec in SNAPSHOT_TABLES.items()}
PERSONAL = "personal_data.jsonl"  # [table, column, row id, value]
COLUMNS_FILE = "columns.json"  # each saved table's column names, in the order of its rows' values
SERVICE_COUNTS = "service_counts.json"  # what the service counted of its rarer paths (coverage)


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


async def personal_data(session: AsyncSession) -> list[list[Any]]:
    """Every stored value that may hold personal data, as [table, column, row id, text]."""
    rows: list[list[Any]] = []
    async with session.begin():
        await read_only(session)
        for contact in await session.execute(
            select(Contact.id, Contact.phone_e164, Contact.email, Contact.first_name)
        ):
            for column, value in zip(("phone_e164", "email", "first_name"), contact[1:], strict=True):
                if value:
                    rows.append(["contacts", column, contact.id, value])
        for event in await session.execute(select(WebhookEvent.id, WebhookEvent.payload)):
            if event.payload:
                rows.append(["webhook_events", "payload", event.id, json.dumps(event.payload)])
        for request in await session.execute(select(PrivacyRequest.id, PrivacyRequest.export)):
            if request.export:
                rows.append(["privacy_requests", "export", request.id, json.dumps(request.export)])
    return rows


async def service_counts(session: AsyncSession) -> dict[str, Any]:
    """The service's own account of the paths only faults reach: webhook outcomes by provider (duplicates
    refused, reports kept early, stale updates...), recipients sent again, reports still kept. Shown in a
    verdict's coverage beside ground truth, never as evidence for an invariant."""
    async with session.begin():
        await read_only(session)
        outcomes = await session.execute(
            select(WebhookEvent.provider, WebhookEvent.outcome, func.count()).group_by(
                WebhookEvent.provider, WebhookEvent.outcome
            )
        )
        by_provider: dict[str, Counter[str]] = defaultdict(Counter)
        for provider, outcome, count in outcomes:
            by_provider[provider][outcome.split(":")[0]] += count  # `redacted:3` counts as `redacted`
        retried = await session.scalar(
            select(func.count()).select_from(CampaignRecipient).where(CampaignRecipient.attempts > 1)
        )
        kept = await session.scalar(select(func.count()).select_from(PendingDeliveryReport))
    return {
        "webhook_outcomes": {provider: dict(counts) for provider, counts in sorted(by_provider.items())},
        "recipients_claimed_more_than_once": int(retried or 0),
        "delivery_reports_still_kept": int(kept or 0),
    }


async def save_snapshot(session: AsyncSession, directory: Path) -> DatabaseSnapshot:
    snapshot = await load_snapshot(session)
    directory.mkdir(parents=True, exist_ok=True)
    encoder = msgspec.json.Encoder()
    for table, columns in COLUMNS.items():
        with (directory / f"{table}.jsonl").open("wb") as handle:
            for row in snapshot.rows(table):
                handle.write(encoder.encode([_plain(row.get(c)) for c in columns]) + b"\n")
    with (directory / PERSONAL).open("wb") as handle:
        for row in await personal_data(session):
            handle.write(encoder.encode(row) + b"\n")
    # The rows are bare arrays: their column names are written beside them, for anyone who reads them.
    names = {table: list(columns) for table, columns in COLUMNS.items()}
    names["personal_data"] = ["table", "column", "row_id", "value"]
    (directory / COLUMNS_FILE).write_text(json.dumps(names, indent=1))
    (directory / SERVICE_COUNTS).write_text(json.dumps(await service_counts(session), indent=1))
    return snapshot


def _record_type(table: str, typed: bool = True) -> Any:
    """A saved row as the checker decodes it: the columns an invariant reads, typed where the table says
    (`typed=False`: any JSON value in each; the report-only columns at the end of each array are skipped
    by the decoder)."""
    spec = SNAPSHOT_TABLES[table]
    fields = [(c, spec.types.get(c, Any) if typed else Any, None) for c in spec.checked_columns()]
    name = f"Saved{table.title()}" if typed else f"Loose{table.title()}"
    return msgspec.defstruct(name, fields, bases=(Record,), array_like=True, gc=False)


RECORD_TYPES = {table: _record_type(table) for table in COLUMNS}
# A block with a value its typed record refuses (a status the checker does not know, an id that is not
# an integer) is decoded again with these, so that the invariants judge it (I7: a wrong final state).
LOOSE_RECORD_TYPES = {table: _record_type(table, typed=False) for table in COLUMNS}


def load_saved_snapshot(
    directory: Path, tables: Iterable[str] = COLUMNS, leave_out: Mapping[str, tuple[str, ...]] | None = None
) -> DatabaseSnapshot:
    """The saved tables (or only `tables`; the others are left empty), each row a `Record` (reads like a
    dict): a million rows load in under a second. `leave_out`: columns of a table set to None as each
    block is decoded, for a reader that holds every row and never reads them (their values are freed a
    block at a time, never all held)."""
    wanted = set(tables)
    dropped = leave_out or {}

    def rows(table: str) -> list[Any]:
        path = directory / f"{table}.jsonl"
        if not dropped.get(table):
            return read_lines(path, RECORD_TYPES[table], LOOSE_RECORD_TYPES[table])
        kept: list[Any] = []
        for block in iter_lines(path, RECORD_TYPES[table], lenient=LOOSE_RECORD_TYPES[table]):
            for name in dropped[table]:
                for row in block:
                    setattr(row, name, None)
            kept += block
        return kept

    return snapshot_of({table: rows(table) if table in wanted else [] for table in COLUMNS})


def iter_saved_rows(directory: Path, table: str) -> Iterator[list[Record]]:
    """One saved table a block of rows at a time (see `evidence.iter_lines`). Unlike the snapshot's
    dicts, nothing here merges rows by id: a corrupt table with one id twice has both rows judged."""
    return iter_lines(directory / f"{table}.jsonl", RECORD_TYPES[table], lenient=LOOSE_RECORD_TYPES[table])


def load_personal_data(directory: Path) -> list[list[Any]]:
    return read_lines(directory / PERSONAL, list[Any])

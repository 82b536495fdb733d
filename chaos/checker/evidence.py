"""The evidence a verdict rests on: the fake Mitto's ledger and a snapshot of the service's database.

Nothing here trusts the service's own counters (`sent_count`, wallet totals) as truth; they are loaded
only so that the checker can compare them with what really happened.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import msgspec
from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import (
    BillingRefund,
    BillingTransaction,
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    CreditLedgerEntry,
    CreditReservation,
    RecipientStatus,
    ReconcilePass,
    Wallet,
)
from service.db.session import read_only
from service.sending.references import parse_reference
from simulator.delivery import DELIVERIES_LEDGER
from simulator.ledger import read_ledger
from simulator.mitto import ACCEPTED_LEDGER, DLR_LEDGER
from simulator.stripe import STRIPE_LEDGER


class Acceptance(msgspec.Struct, gc=False):
    """One message the provider really accepted (a line of the fake Mitto's ledger). (`gc=False`: a
    million of these are never part of a cycle; untracked, they cost 16 bytes less each and the cyclic
    collector never walks them.)"""

    reference: str
    message_id: str
    to: str
    t: float
    campaign_id: int | None = None
    recipient_id: int | None = None

    @property
    def at(self) -> float:
        return self.t


class AcceptedSend(msgspec.Struct, gc=False):
    """An acceptance as the checking process holds a million of them: what I1, I3 and the tallies read.
    The provider's message id and time are left undecoded (about a third of an `Acceptance`'s memory);
    a witness that shows them reads them again for its few references (`acceptances_with`)."""

    reference: str
    to: str
    campaign_id: int | None = None
    recipient_id: int | None = None


AcceptedLike = Acceptance | AcceptedSend


def read_lines(path: Path, kind: Any, lenient: Any = None) -> list[Any]:
    """A JSON-lines file decoded whole (see `iter_lines`, whose blocks it joins)."""
    return list(chain.from_iterable(iter_lines(path, kind, lenient=lenient)))


BLOCK_BYTES = 16 * 1024 * 1024


def iter_lines(
    path: Path, kind: Any, block_bytes: int = BLOCK_BYTES, lenient: Any = None
) -> Iterator[list[Any]]:
    """A JSON-lines file decoded a block of lines at a time, for a ledger too big to hold decoded (two
    million webhook deliveries decode to about a gigabyte); a torn last line (writer killed mid-write)
    is left out.
    `lenient`: a looser type a block is decoded again with when `kind` refuses a value in it (a saved
    row whose status is none the checker knows must reach the invariants, not stop the check)."""
    if not path.exists():
        return
    decoder = msgspec.json.Decoder(kind)
    fallback = msgspec.json.Decoder(lenient) if lenient is not None else None
    carry = b""
    with path.open("rb") as handle:
        while block := handle.read(block_bytes):
            if carry:
                block = carry + block
            end = block.rfind(b"\n") + 1
            carry = block[end:]
            if end:
                lines = memoryview(block)[:end]
                try:
                    yield decoder.decode_lines(lines)
                except msgspec.ValidationError:
                    if fallback is None:
                        raise
                    yield fallback.decode_lines(lines)


def load_acceptances(simulator_data_dir: Path) -> list[Acceptance]:
    """The provider's acceptances, decoded a block at a time (the file is never held whole beside them),
    each with the campaign and recipient its reference names."""
    acceptances: list[Acceptance] = []
    for block in iter_lines(simulator_data_dir / ACCEPTED_LEDGER, Acceptance):
        _name_recipients(block)
        acceptances += block
    return acceptances


def load_accepted_sends(simulator_data_dir: Path) -> list[AcceptedSend]:
    """`load_acceptances` without what only a witness shows (`AcceptedSend`)."""
    accepted: list[AcceptedSend] = []
    for block in iter_lines(simulator_data_dir / ACCEPTED_LEDGER, AcceptedSend):
        _name_recipients(block)
        accepted += block
    return accepted


def acceptances_with(simulator_data_dir: Path, references: set[str]) -> dict[str, list[Acceptance]]:
    """The whole acceptances of these references, in the ledger's order (a witness's few)."""
    found: dict[str, list[Acceptance]] = {}
    for block in iter_lines(simulator_data_dir / ACCEPTED_LEDGER, Acceptance):
        for acceptance in block:
            if acceptance.reference in references:
                found.setdefault(acceptance.reference, []).append(acceptance)
    return found


_OUR_REFERENCES = re.compile(r"(?:c\d+-r\d+\n)*c\d+-r\d+")


def _name_recipients(acceptances: Sequence[AcceptedLike]) -> None:
    """`parse_reference`'s rule (c{campaign}-r{recipient}) for a block at once: when every reference is
    one of ours, the joined references become one JSON array of pairs, decoded in C (a million
    `int()` calls and regex matches cost more than the rest of loading); otherwise one by one."""
    joined = "\n".join(a.reference for a in acceptances)
    if acceptances and _OUR_REFERENCES.fullmatch(joined):
        as_json = "[[" + joined.replace("\n", "],[").replace("-r", ",").replace("c", "") + "]]"
        try:
            pairs = msgspec.json.decode(as_json, type=list[tuple[int, int]])
        except msgspec.DecodeError:  # e.g. a leading zero, which JSON forbids and int() reads
            pairs = []
        if len(pairs) == len(acceptances):
            for acceptance, (campaign, recipient) in zip(acceptances, pairs, strict=True):
                acceptance.campaign_id, acceptance.recipient_id = campaign, recipient
            return
    for acceptance in acceptances:
        parsed = parse_reference(acceptance.reference)
        if parsed is not None:
            acceptance.campaign_id, acceptance.recipient_id = parsed


@dataclass(frozen=True)
class Payment:
    session_id: str
    charge_id: str
    amount_cents: int
    credits: int


@dataclass(frozen=True)
class Refund:
    refund_id: str
    charge_id: str
    amount_cents: int


@dataclass
class StripeTruth:
    payments: dict[str, Payment] = field(default_factory=dict)  # by session id
    refunds: list[Refund] = field(default_factory=list)
    charges: dict[str, Payment] = field(default_factory=dict)  # by charge id


def load_stripe_truth(simulator_data_dir: Path) -> StripeTruth:
    truth = StripeTruth()
    for record in read_ledger(simulator_data_dir / STRIPE_LEDGER):
        if record["kind"] == "payment":
            session, charge = record["object"], record["charge"]
            credits = int((session.get("metadata") or {}).get("credits") or 0)
            payment = Payment(session["id"], charge["id"], int(charge["amount"]), credits)
            truth.payments[session["id"]] = payment
            truth.charges[charge["id"]] = payment
        elif record["kind"] == "refund":
            refund = record["object"]
            truth.refunds.append(Refund(refund["id"], refund["charge"], int(refund["amount"])))
    return truth


class DeliveryOutcome(msgspec.Struct, gc=False):
    """What became of one attempt to deliver a webhook: the part of a line of `webhook_deliveries.jsonl`
    that I5, I7 and the tally read (decoding only these fields is a third cheaper over millions)."""

    provider: str
    acknowledged: bool
    type: str | None = None  # Mitto's: "dlr.<status>"
    message: str | None = None  # Mitto's: the message id
    status: int | None = None  # the service's answer; None when none came
    error: str | None = None  # why none came

    @property
    def may_have_taken_effect(self) -> bool:
        """Unanswered after reaching the service (a reset, a timeout, the service killed mid-request):
        the effect may have committed. A refused connection never reached it; an answer is definite."""
        return not self.acknowledged and self.status is None and self.error != "ConnectionRefusedError"


class DeliveryAttempt(DeliveryOutcome, kw_only=True, gc=False):
    """One attempt to deliver a webhook, whole (a line of `webhook_deliveries.jsonl`)."""

    attempt: int
    t: float
    event: str | None = None
    gave_up: bool = False  # the provider's last attempt: its retry schedule (and horizon) ran out
    object: str | None = None  # Stripe's: the object the event is about (a session, a charge)
    shop: str | None = None  # Shopify's: the shop domain
    delivery: int = 0  # the delivery this attempt belongs to (one per event and copy)

    @property
    def at(self) -> float:
        return self.t


def load_delivery_attempts(simulator_data_dir: Path) -> list[DeliveryAttempt]:
    return read_lines(simulator_data_dir / DELIVERIES_LEDGER, DeliveryAttempt)


def iter_delivery_attempts(simulator_data_dir: Path) -> Iterator[list[DeliveryAttempt]]:
    """The delivery ledger a block at a time (see `iter_lines`)."""
    return iter_lines(simulator_data_dir / DELIVERIES_LEDGER, DeliveryAttempt)


def iter_delivery_outcomes(simulator_data_dir: Path) -> Iterator[list[DeliveryOutcome]]:
    """The delivery ledger a block at a time, only what became of each attempt."""
    return iter_lines(simulator_data_dir / DELIVERIES_LEDGER, DeliveryOutcome)


class ProviderReport(msgspec.Struct, gc=False):
    """A delivery report as the fake Mitto generated it, in the order it happened."""

    message_id: str
    status: str
    t: float

    @property
    def at(self) -> float:
        return self.t


def load_reports(simulator_data_dir: Path) -> list[ProviderReport]:
    return read_lines(simulator_data_dir / DLR_LEDGER, ProviderReport)


def iter_reports(simulator_data_dir: Path) -> Iterator[list[ProviderReport]]:
    """The provider's report ledger a block at a time, in the order it made them."""
    return iter_lines(simulator_data_dir / DLR_LEDGER, ProviderReport)


# A row: a dict, or a Record. (Typed as Any: mypy has no spelling for "anything with __getitem__ and get".)
Row = Any


class Record(msgspec.Struct, array_like=True, gc=False):
    """A saved database row that reads like the dict a live snapshot holds (`row["status"]`)."""

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)


def _getter(rows: Collection[Row], names: tuple[str, ...]) -> Callable[[Row], Any]:
    first = next(iter(rows), None)
    if isinstance(first, Record):
        return operator.attrgetter(*names)
    return operator.itemgetter(*names)


def column(rows: Collection[Row], name: str) -> Iterator[Any]:
    """One column of every row, for loops over a million rows.

    `row["column"]` on a `Record` is a Python call per lookup (1.5 s over five million); an `attrgetter`
    (or an `itemgetter`, for dict rows) does the same lookups in C.
    """
    return map(_getter(rows, (name,)), rows)


def columns(rows: Collection[Row], *names: str) -> Iterator[tuple[Any, ...]]:
    """Several columns of every row, as tuples (see `column`)."""
    if len(names) < 2:
        raise ValueError("columns() takes two names or more; use column() for one")
    return map(_getter(rows, names), rows)


@dataclass
class DatabaseSnapshot:
    """The tables the invariants read. A row is a dict (read live) or a `Record` (read from a run folder);
    both answer `row["column"]` and `row.get("column")`."""

    campaigns: dict[int, Row] = field(default_factory=dict)
    recipients: dict[int, Row] = field(default_factory=dict)
    ledger: list[Row] = field(default_factory=list)
    wallets: dict[int, Row] = field(default_factory=dict)
    reservations: list[Row] = field(default_factory=list)
    billing: dict[str, Row] = field(default_factory=dict)  # by Stripe session id
    refunds: dict[str, Row] = field(default_factory=dict)  # by refund id (the key it was stored under)
    # The reconciler's own account of each pass: shown beside the verdict (notebooks), never evidence.
    reconcile_passes: list[Row] = field(default_factory=list)

    def rows(self, table: str) -> Collection[Row]:
        """One table's rows, in the order they were read."""
        rows: dict[Any, Row] | list[Row] = getattr(self, table)
        return rows.values() if isinstance(rows, dict) else rows


@dataclass(frozen=True)
class SnapshotTable:
    """One table of the snapshot: the model it is read from, its columns (in the order a saved row holds
    them), the column `DatabaseSnapshot` keys its rows by (None: a list), and which rows it takes.

    `types`: a column's type when a saved row is decoded (any JSON value otherwise); a `Literal` makes
    every row share one string object per value, instead of a million copies of `"delivered"`.
    `report_only`: the last columns, saved for a run's report (its timelines) and never read by an
    invariant; the checker leaves them undecoded (three timestamps are a third of a recipient row)."""

    model: type[Any]
    columns: tuple[str, ...]
    key: str | None = None
    where: ColumnElement[bool] | None = None
    types: Mapping[str, Any] = field(default_factory=dict)
    report_only: int = 0

    def checked_columns(self) -> tuple[str, ...]:
        return self.columns[: len(self.columns) - self.report_only]


def _values(enum: type[Enum]) -> Any:
    """`Literal` of an enum's values: how a saved row's status decodes (one shared string per value)."""
    return Literal[tuple(member.value for member in enum)]


# The snapshot's tables, declared once: the live read (`load_snapshot`) selects these columns, and the
# saved snapshot (`snapshot_io`) writes and reads its rows in this order. Each name is a field of
# `DatabaseSnapshot`.
SNAPSHOT_TABLES: dict[str, SnapshotTable] = {
    "campaigns": SnapshotTable(
        Campaign,
        (
            "id",
            "shop_id",
            "status",
            "segments",
            "recipient_count",
            "sent_count",
            "failed_count",
            "enqueued_at",
            "last_activity_at",
        ),
        key="id",
        types={"status": _values(CampaignStatus)},
    ),
    "recipients": SnapshotTable(
        CampaignRecipient,
        (
            "id",
            "campaign_id",
            "phone_e164",
            "status",
            "provider_message_id",
            "attempts",
            "failure_reason",
            # When: for the recipients-by-status timeline of a run's report (the invariants ignore them).
            "claimed_at",
            "sent_at",
            "status_updated_at",
        ),
        key="id",
        types={"id": int, "campaign_id": int, "status": _values(RecipientStatus), "attempts": int},
        report_only=3,
    ),
    "ledger": SnapshotTable(
        CreditLedgerEntry,
        ("id", "shop_id", "amount", "kind", "campaign_id", "messages", "idempotency_key", "created_at"),
    ),
    "wallets": SnapshotTable(Wallet, ("shop_id", "balance", "reserved"), key="shop_id"),
    "reservations": SnapshotTable(
        CreditReservation,
        ("id", "shop_id", "campaign_id", "amount", "remaining", "status", "created_at", "updated_at"),
    ),
    "billing": SnapshotTable(
        BillingTransaction,
        ("id", "shop_id", "provider_ref", "credits", "credits_granted", "status"),
        key="provider_ref",
        where=BillingTransaction.provider_ref.is_not(None),
    ),
    "refunds": SnapshotTable(
        BillingRefund,
        ("refund_id", "billing_id", "credits", "deducted", "shortfall", "applied"),
        key="refund_id",
    ),
    "reconcile_passes": SnapshotTable(
        ReconcilePass,
        (
            "id",
            "started_at",
            "duration_s",
            "process",
            "expired_leases",
            "resolved_accepted",
            "resolved_not_accepted",
            "left_unresolved",
            "gave_up",
            "batches_requeued",
            "campaigns_completed",
            "counters_fixed",
            "reservations_released",
            "reservations_expired",
            "reports_applied",
            "keys_purged",
            "stuck_campaigns",
            "error",
        ),
    ),
}


def snapshot_of(tables: Mapping[str, list[Row]]) -> DatabaseSnapshot:
    """A snapshot from each table's rows (dicts or `Record`s), keyed as `SNAPSHOT_TABLES` says."""
    fields: dict[str, Any] = {}
    for table, spec in SNAPSHOT_TABLES.items():
        rows = tables[table]
        fields[table] = rows if spec.key is None else dict(zip(column(rows, spec.key), rows, strict=True))
    return DatabaseSnapshot(**fields)


async def load_snapshot(session: AsyncSession) -> DatabaseSnapshot:
    """One consistent read of everything the invariants need (one transaction; read-only, so on SQLite
    a WAL snapshot that neither waits for nor blocks a writer still running)."""
    tables: dict[str, list[Row]] = {}
    async with session.begin():
        await read_only(session)
        for table, spec in SNAPSHOT_TABLES.items():
            statement = select(*(getattr(spec.model, name) for name in spec.columns))
            if spec.where is not None:
                statement = statement.where(spec.where)
            result = await session.execute(statement)
            tables[table] = [dict(row) for row in result.mappings()]
    return snapshot_of(tables)

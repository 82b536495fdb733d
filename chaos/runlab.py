"""A run folder as pandas tables: the one loader every notebook in `notebooks/` reads run folders with.

Notebooks read only what a run left in its folder (never a live service): the history, the nemesis log,
the simulator's ledgers, the saved database, `verdict.json`, `matrix.json` and Locust's CSVs. Every
table is on one time axis, seconds since the chaos phase started (`run.json`'s clock), so a fault band
lines up with the operations, the acceptances and the reconciler's passes it disturbed.

A file a run did not leave (a run that failed half-way, a folder copied in part) is no error: its table
comes back empty, and `RunFolder.missing` names the file, for the report to say so instead of raising.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from chaos.checker.evidence import SNAPSHOT_TABLES, read_lines
from chaos.checker.snapshot_io import COLUMNS, COLUMNS_FILE

OUTCOMES = ("ok", "fail", "info")
RECIPIENT_STATES = (
    "pending",
    "sending",
    "sent",
    "delivered",
    "undelivered",
    "expired",
    "failed",
    "cancelled",
)
# The reconciler's row, by kind: what it found, and what it did (its counting columns, as the snapshot
# declares them).
RECONCILE_KINDS = tuple(
    column
    for column in SNAPSHOT_TABLES["reconcile_passes"].columns
    if column not in ("id", "started_at", "duration_s", "process", "error")
)
LOCUST_HISTORY = "load_stats_history.csv"  # Locust's `--csv load --csv-full-history`
LOCUST_STATS = "load_stats.csv"
LOCUST_FAILURES = "load_failures.csv"
_REFERENCE = re.compile(r"^c(\d+)-r(\d+)$")


def _epoch(value: Any) -> float | None:
    """An ISO timestamp (as the snapshot saves them) in seconds since the epoch."""
    if value is None or value != value:  # None or NaN
        return None
    return datetime.fromisoformat(str(value)).timestamp()


@dataclass
class RunFolder:
    """One run folder, read lazily: each table is loaded the first time it is asked for."""

    path: Path
    missing: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        return cls(Path(path).expanduser().resolve())

    # --- files ------------------------------------------------------------------------------------
    def _file(self, name: str) -> Path | None:
        path = self.path / name
        if path.exists():
            return path
        if name not in self.missing:
            self.missing.append(name)
        return None

    def _json(self, name: str) -> Any:
        path = self._file(name)
        if path is None:
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            self.missing.append(f"{name} (unreadable)")
            return None

    def _lines(self, name: str) -> list[dict[str, Any]]:
        path = self._file(name)
        return [] if path is None else read_lines(path, dict[str, Any])

    @cached_property
    def manifest(self) -> dict[str, Any]:
        """`run.json` (empty when the run died before writing it)."""
        return self._json("run.json") or {}

    @cached_property
    def verdict(self) -> dict[str, Any]:
        return self._json("verdict.json") or {}

    @property
    def title(self) -> str:
        m = self.manifest or self.verdict
        return f"{m.get('scenario', self.path.name)} (seed {m.get('seed', '?')})"

    def preload(self) -> RunFolder:
        """Every table read once, so that `missing` names every absent file before anything is drawn."""
        for name in ("manifest", "verdict", "operations", "faults", "acceptances", "provider_reports"):
            getattr(self, name)
        for name in ("deliveries", "stripe", "recipients", "campaigns", "ledger", "reservations"):
            getattr(self, name)
        self.reconcile_passes  # noqa: B018 - read for its side effect on `missing`
        return self

    # --- the time axis ----------------------------------------------------------------------------
    @cached_property
    def origin(self) -> float:
        """Epoch seconds of t = 0: the start of the chaos phase (else of the history, else the first
        provider acceptance, else of Locust's history)."""
        clock = self.manifest.get("clock") or {}
        for key in ("chaos_started_at", "history_started_at"):
            if clock.get(key):
                return float(clock[key])
        accepted = self._lines("simulator/mitto_accepted.jsonl")
        if accepted:
            return float(accepted[0]["t"])
        locust = self.locust_history_raw
        if not locust.empty:
            return float(locust["Timestamp"].min())
        return 0.0

    @cached_property
    def history_offset(self) -> float:
        """History times are seconds since the history began: this moves them onto the chaos axis."""
        clock = self.manifest.get("clock") or {}
        if clock.get("history_started_at"):
            return float(clock["history_started_at"]) - self.origin
        return 0.0

    @cached_property
    def phases(self) -> dict[str, tuple[float, float]]:
        """Each phase's (start, end) on the time axis, from `run.json`'s `phase_seconds` (chaos at 0)."""
        seconds: dict[str, float] = self.manifest.get("phase_seconds") or {}
        if "chaos" not in seconds:
            return {}
        spans: dict[str, tuple[float, float]] = {}
        t = -sum(seconds.get(p, 0.0) for p in ("prepare", "start", "world"))
        for name in ("prepare", "start", "world", "chaos", "heal", "settle", "snapshot", "stop"):
            if name in seconds:
                spans[name] = (t, t + seconds[name])
                t += seconds[name]
        return spans

    # --- the clients' history -----------------------------------------------------------------------
    @cached_property
    def operations(self) -> pd.DataFrame:
        """One row per completed operation: `t` (completion), `start`, `latency_s`, `f`, `outcome`,
        `process`, `index`, `status` (the HTTP status, where one came)."""
        path = self._file("history.jsonl")
        columns = ["t", "start", "latency_s", "f", "outcome", "process", "index", "status"]
        if path is None:
            return pd.DataFrame(columns=columns)
        invoked: dict[int, float] = {}
        rows: list[tuple[Any, ...]] = []
        for op in read_lines(path, dict[str, Any]):
            if op["type"] == "invoke":
                invoked[op["index"]] = op["time"]
                continue
            start = invoked.get(op.get("op", -1), op["time"])
            value = op.get("value") or {}
            status = value.get("status") if isinstance(value, dict) else None
            rows.append(
                (
                    op["time"],
                    start,
                    op["time"] - start,
                    op["f"],
                    op["type"],
                    op["process"],
                    op["index"],
                    status,
                )
            )
        frame = pd.DataFrame(rows, columns=columns)
        frame["t"] += self.history_offset
        frame["start"] += self.history_offset
        return frame

    def ops_per_second(self, bin_s: float = 1.0) -> pd.DataFrame:
        """Completed operations per second by outcome (ok / fail / info), one row per bin."""
        ops = self.operations
        if ops.empty:
            return pd.DataFrame(columns=list(OUTCOMES))
        bins = (ops["t"] // bin_s) * bin_s
        table = ops.groupby([bins, "outcome"]).size().unstack(fill_value=0) / bin_s
        return table.reindex(columns=list(OUTCOMES), fill_value=0).sort_index()

    def latency_quantiles(self, bin_s: float = 2.0) -> pd.DataFrame:
        """p50 / p95 / p99 latency (seconds) of each operation kind, per bin of completion time."""
        ops = self.operations
        if ops.empty:
            return pd.DataFrame(columns=["t", "f", "p50", "p95", "p99"])
        bins = (ops["t"] // bin_s) * bin_s
        grouped = ops.groupby([bins.rename("t"), "f"])["latency_s"]
        table = pd.DataFrame(
            {"p50": grouped.quantile(0.5), "p95": grouped.quantile(0.95), "p99": grouped.quantile(0.99)}
        )
        return table.reset_index()

    def operation_summary(self) -> pd.DataFrame:
        """Per operation kind: how many, by outcome, and the latency quantiles over the whole run."""
        ops = self.operations
        if ops.empty:
            return pd.DataFrame(columns=["f", *OUTCOMES, "p50_s", "p95_s", "p99_s"])
        counts = ops.groupby(["f", "outcome"]).size().unstack(fill_value=0)
        counts = counts.reindex(columns=list(OUTCOMES), fill_value=0)
        latency = ops.groupby("f")["latency_s"].quantile([0.5, 0.95, 0.99]).unstack()
        latency.columns = ["p50_s", "p95_s", "p99_s"]
        return counts.join(latency.round(3)).reset_index()

    # --- faults -------------------------------------------------------------------------------------
    @cached_property
    def faults(self) -> pd.DataFrame:
        """Every fault as a band: `start`, `end`, `cls` (its class, one colour each), `source` (nemesis
        or provider), `label`. A nemesis fault spans its start and end lines (a start without an end
        lasts to the end of the chaos phase); a provider fault is a moment (`end` = `start`)."""
        rows: list[tuple[float, float, str, str, str]] = []
        open_faults: dict[tuple[str, str, float], dict[str, Any]] = {}
        chaos_end = self.phases.get("chaos", (0.0, 0.0))[1]
        for line in self._lines("nemesis.jsonl"):
            key = (line["action"], line.get("target", ""), line.get("planned_at", line["t"]))
            if line.get("phase") == "start":
                open_faults[key] = line
            elif line.get("phase") == "end" and key in open_faults:
                begun = open_faults.pop(key)
                cls = _nemesis_class(begun)
                rows.append((begun["t"], line["t"], cls, "nemesis", begun.get("outcome", "")))
            else:  # a crash the supervisor saw, or a lone event
                rows.append((line["t"], line["t"], _nemesis_class(line), "nemesis", line.get("outcome", "")))
        for begun in open_faults.values():
            end = max(chaos_end, begun["t"])
            rows.append((begun["t"], end, _nemesis_class(begun), "nemesis", begun.get("outcome", "")))
        for event in self._lines("simulator/simulator_events.jsonl"):
            t = event["t"] - self.origin
            cls = f"{event.get('target', '?')} {event.get('fault', '?')}"
            rows.append((t, t, cls, "provider", json.dumps(event.get("params") or {})))
        frame = pd.DataFrame(rows, columns=["start", "end", "cls", "source", "label"])
        return frame.sort_values("start", ignore_index=True)

    # --- the providers' ground truth ----------------------------------------------------------------
    @cached_property
    def acceptances(self) -> pd.DataFrame:
        """Mitto's acceptances: `t`, `reference`, `message_id`, `campaign_id`, `recipient_id`."""
        lines = self._lines("simulator/mitto_accepted.jsonl")
        frame = pd.DataFrame(
            [(a["t"] - self.origin, a["reference"], a["message_id"]) for a in lines],
            columns=["t", "reference", "message_id"],
        )
        ids = frame["reference"].str.extract(_REFERENCE)
        frame["campaign_id"] = pd.to_numeric(ids[0], errors="coerce")
        frame["recipient_id"] = pd.to_numeric(ids[1], errors="coerce")
        return frame

    @cached_property
    def provider_reports(self) -> pd.DataFrame:
        """The delivery reports Mitto generated: `t`, `message_id`, `status`."""
        lines = self._lines("simulator/mitto_dlr.jsonl")
        return pd.DataFrame(
            [(r["t"] - self.origin, r["message_id"], r["status"]) for r in lines],
            columns=["t", "message_id", "status"],
        )

    @cached_property
    def deliveries(self) -> pd.DataFrame:
        """Every webhook delivery attempt: `t`, `provider`, `type`, `acknowledged`, `status`, `event`,
        `message`, `object`."""
        lines = self._lines("simulator/webhook_deliveries.jsonl")
        names = ["provider", "type", "acknowledged", "status", "event", "message", "object"]
        return pd.DataFrame(
            [(d["t"] - self.origin, *(d.get(n) for n in names)) for d in lines], columns=["t", *names]
        )

    def pipeline_per_second(self, bin_s: float = 1.0) -> pd.DataFrame:
        """Messages Mitto accepted, and delivery reports the service acknowledged (applied), per second."""
        accepted = self.acceptances["t"]
        deliveries = self.deliveries
        applied = deliveries[(deliveries["provider"] == "mitto") & deliveries["acknowledged"].astype(bool)][
            "t"
        ]
        table = pd.DataFrame(
            {
                "accepted": (accepted // bin_s * bin_s).value_counts(),
                "reports applied": (applied // bin_s * bin_s).value_counts(),
            }
        )
        return (table.fillna(0) / bin_s).sort_index()

    @cached_property
    def stripe(self) -> pd.DataFrame:
        """Stripe's ledger: `t`, `kind` (session, payment, refund, ...), `id`, `shop`, `amount`."""
        rows = []
        for record in self._lines("simulator/stripe_ledger.jsonl"):
            obj = record.get("object") or {}
            shop = (obj.get("metadata") or {}).get("shop")
            rows.append((record["t"] - self.origin, record["kind"], obj.get("id"), shop, obj.get("amount")))
        return pd.DataFrame(rows, columns=["t", "kind", "id", "shop", "amount"])

    # --- the saved database -------------------------------------------------------------------------
    @cached_property
    def _columns(self) -> dict[str, list[str]]:
        saved = self._json(f"database/{COLUMNS_FILE}")
        return saved if isinstance(saved, dict) else {t: list(c) for t, c in COLUMNS.items()}

    def table(self, name: str) -> pd.DataFrame:
        """One saved table (`database/NAME.jsonl`) with its column names; empty if not saved."""
        columns = self._columns.get(name) or list(COLUMNS.get(name, ()))
        path = self._file(f"database/{name}.jsonl")
        rows = [] if path is None else read_lines(path, list[Any])
        return pd.DataFrame(rows, columns=columns)

    def _times(self, frame: pd.DataFrame, *names: str) -> pd.DataFrame:
        """ISO timestamp columns of a saved table as seconds on the time axis (absent columns: NaN)."""
        for name in names:
            if name in frame.columns:
                stamps = pd.to_datetime(frame[name], utc=True, format="ISO8601")
                frame[name] = (stamps - pd.Timestamp(self.origin, unit="s", tz="UTC")).dt.total_seconds()
            else:
                frame[name] = float("nan")
        return frame

    @cached_property
    def recipients(self) -> pd.DataFrame:
        return self._times(self.table("recipients"), "claimed_at", "sent_at", "status_updated_at")

    @cached_property
    def campaigns(self) -> pd.DataFrame:
        return self._times(self.table("campaigns"), "enqueued_at", "last_activity_at")

    @cached_property
    def ledger(self) -> pd.DataFrame:
        return self._times(self.table("ledger"), "created_at")

    @cached_property
    def reservations(self) -> pd.DataFrame:
        return self._times(self.table("reservations"), "created_at", "updated_at")

    @cached_property
    def reconcile_passes(self) -> pd.DataFrame:
        """The reconciler's own account, one row per pass (`t`: its start on the time axis)."""
        frame = self._times(self.table("reconcile_passes"), "started_at")
        frame = frame.rename(columns={"started_at": "t"})
        for kind in RECONCILE_KINDS:
            if kind not in frame.columns:
                frame[kind] = 0
        return frame.sort_values("t", ignore_index=True)

    def reconcile_totals(self) -> pd.DataFrame:
        """What the reconciler found and did over the whole run, by kind (passes that did it, total)."""
        passes = self.reconcile_passes
        rows = [(kind, int((passes[kind] > 0).sum()), int(passes[kind].sum())) for kind in RECONCILE_KINDS]
        frame = pd.DataFrame(rows, columns=["kind", "passes", "total"])
        errors = int(passes["error"].notna().sum()) if "error" in passes.columns else 0
        return pd.concat(
            [frame, pd.DataFrame([("passes that raised", errors, errors)], columns=frame.columns)],
            ignore_index=True,
        )

    def recipients_by_status(self, bin_s: float = 1.0) -> pd.DataFrame:
        """How many recipients were in each status over time, rebuilt from the saved rows: pending from
        its campaign's enqueue, sending from its (last) claim, sent once accepted, and its final status
        from its last status change. Earlier claims of a recipient claimed twice are not visible."""
        recipients, campaigns = self.recipients, self.campaigns
        if recipients.empty or campaigns.empty:
            return pd.DataFrame(columns=list(RECIPIENT_STATES))
        enqueued = recipients["campaign_id"].map(campaigns.set_index("id")["enqueued_at"])
        events: list[pd.DataFrame] = []

        def moves(at: pd.Series, into: str | pd.Series, mask: pd.Series) -> None:
            events.append(pd.DataFrame({"rid": recipients["id"][mask], "t": at[mask], "status": into}))

        final = recipients["status"]
        moves(enqueued, "pending", enqueued.notna())
        moves(recipients["claimed_at"], "sending", recipients["claimed_at"].notna())
        moves(recipients["sent_at"], "sent", recipients["sent_at"].notna())
        terminal = final.isin(["delivered", "undelivered", "expired", "failed", "cancelled"])
        moves(recipients["status_updated_at"], final, terminal & recipients["status_updated_at"].notna())
        timeline = pd.concat(events).dropna(subset=["t"]).sort_values(["rid", "t"], kind="stable")
        timeline = timeline.reset_index(drop=True)
        if timeline.empty:
            return pd.DataFrame(columns=list(RECIPIENT_STATES))
        # Each move enters a status and leaves the recipient's previous one: +1 and -1, counted per bin.
        left = timeline.groupby("rid")["status"].shift()
        start = float(timeline["t"].min())
        bins = ((timeline["t"] - start) // bin_s).astype(int)
        entered = pd.crosstab(bins, timeline["status"])
        had = left.notna()
        exited = pd.crosstab(bins[had], left[had])
        deltas = entered.sub(exited, fill_value=0)
        grid = range(int(bins.max()) + 2)
        counts = deltas.reindex(index=grid, fill_value=0).fillna(0).cumsum()
        counts.index = pd.Index([start + b * bin_s for b in grid], name="t")
        return counts.reindex(columns=list(RECIPIENT_STATES), fill_value=0)

    def money(self) -> dict[int, pd.DataFrame]:
        """Each shop's balance, reserved credits and cumulative debits over time (`t`), from the ledger
        and the reservations: balance is the running sum of its ledger entries; reserved rises by a
        reservation's amount when it is made, falls with its campaign's debits, and drops to zero when
        it closes (partial releases of rejected messages are not in the snapshot: until its close,
        reserved may read a little high)."""
        ledger, reservations = self.ledger, self.reservations
        shops: dict[int, pd.DataFrame] = {}
        if ledger.empty:
            return shops
        for shop_id, entries in ledger.groupby("shop_id"):
            entries = entries.sort_values("created_at", kind="stable")
            debits = entries["amount"].where(entries["kind"] == "debit", 0)
            frame = pd.DataFrame(
                {
                    "t": entries["created_at"],
                    "balance": entries["amount"].cumsum(),
                    "debited": -debits.cumsum(),
                }
            ).reset_index(drop=True)
            reserved = _reserved_steps(reservations[reservations["shop_id"] == shop_id], entries)
            if reserved.empty:
                frame["reserved"] = 0.0
            else:
                frame = pd.merge_asof(frame.sort_values("t"), reserved, on="t", direction="backward")
                frame["reserved"] = frame["reserved"].fillna(0.0)
            shops[int(shop_id)] = frame
        return shops

    def money_marks(self) -> pd.DataFrame:
        """Payments and refunds as they took effect in the ledger: `t`, `shop_id`, `kind`, `amount`."""
        ledger = self.ledger
        if ledger.empty:
            return pd.DataFrame(columns=["t", "shop_id", "kind", "amount"])
        marks = ledger[ledger["kind"].isin(["purchase", "refund"])]
        return marks.rename(columns={"created_at": "t"})[["t", "shop_id", "kind", "amount"]]

    # --- the verdict --------------------------------------------------------------------------------
    def invariants(self) -> pd.DataFrame:
        """One row per invariant: id, title, verdict (valid / INVALID / unknown), its counts, witnesses."""
        rows = []
        for item in self.verdict.get("invariants", []):
            counts = ", ".join(f"{k}={v}" for k, v in item.get("counts", {}).items())
            rows.append(
                (
                    item["id"],
                    item["title"],
                    verdict_word(item["valid"]),
                    counts,
                    len(item.get("witnesses") or []),
                    item.get("note") or "",
                )
            )
        return pd.DataFrame(rows, columns=["id", "invariant", "verdict", "counts", "witnesses", "note"])

    def settle_summary(self) -> dict[str, Any]:
        """How long the run took to settle, against its bound, and how long each phase took."""
        quiescence = self.manifest.get("quiescence") or {}
        return {
            "settled": quiescence.get("reached"),
            "settled_after_s": quiescence.get("settled_after_s"),
            "bound_s": quiescence.get("bound_s"),
            "phase_seconds": self.manifest.get("phase_seconds") or {},
        }

    def witnesses(self) -> list[Witness]:
        """Every witness of every invariant that did not hold, with the saved rows it names."""
        out = []
        for item in self.verdict.get("invariants", []):
            if item.get("valid") is True:
                continue
            for witness in item.get("witnesses") or []:
                out.append(Witness(item["id"], witness, self._rows_named_by(witness)))
        return out

    def _rows_named_by(self, witness: dict[str, Any]) -> dict[str, pd.DataFrame]:
        """The rows a witness names: its recipient and that recipient's acceptances; its campaign, and
        the campaign's debits; its message; its shop's wallet; its Stripe session or refund."""
        joined: dict[str, pd.DataFrame] = {}
        recipient = witness.get("recipient_id")
        campaign = witness.get("campaign_id")
        reference = witness.get("reference")
        if reference and (match := _REFERENCE.match(str(reference))):
            campaign = campaign or int(match[1])
            recipient = recipient or int(match[2])
        message = witness.get("message_id")
        if recipient is not None:
            joined["recipient"] = self.recipients[self.recipients["id"] == recipient]
            joined["acceptances"] = self.acceptances[self.acceptances["recipient_id"] == recipient]
            if campaign is not None:
                joined["acceptances"] = joined["acceptances"][
                    joined["acceptances"]["campaign_id"] == campaign
                ]
        if message is not None:
            joined["recipient of the message"] = self.recipients[
                self.recipients["provider_message_id"] == message
            ]
            joined["provider reports"] = self.provider_reports[self.provider_reports["message_id"] == message]
        if campaign is not None:
            joined["campaign"] = self.campaigns[self.campaigns["id"] == campaign]
            joined["debits"] = self.ledger[
                (self.ledger["campaign_id"] == campaign) & (self.ledger["kind"] == "debit")
            ]
        shop = witness.get("shop_id")
        if shop is not None:
            wallets = self.table("wallets")
            joined["wallet"] = wallets[wallets["shop_id"] == shop]
            joined["ledger"] = self.ledger[self.ledger["shop_id"] == shop].tail(20)
        session = witness.get("session")
        if session is not None:
            joined["stripe"] = self.stripe[self.stripe["id"] == session]
            billing = self.table("billing")
            joined["billing"] = billing[billing["provider_ref"] == session]
        refund = witness.get("refund")
        if refund is not None:
            refunds = self.table("refunds")
            joined["refund"] = refunds[refunds["refund_id"] == refund]
        return {name: frame for name, frame in joined.items() if not frame.empty}

    # --- Locust -------------------------------------------------------------------------------------
    @property
    def has_load(self) -> bool:
        return (self.path / LOCUST_HISTORY).exists()

    @cached_property
    def locust_history_raw(self) -> pd.DataFrame:
        path = self._file(LOCUST_HISTORY)
        if path is None:
            return pd.DataFrame(columns=["Timestamp", "Type", "Name", "Requests/s", "Failures/s"])
        return pd.read_csv(path, na_values=["N/A"])

    def load_history(self) -> pd.DataFrame:
        """Locust's stats history on the run's time axis (`t`), one row per request class and time;
        the aggregate row is named `Aggregated`. Percentile columns are in milliseconds, as Locust writes
        them (`50%`, `95%`, `99%`, ...)."""
        frame = self.locust_history_raw.copy()
        if frame.empty:
            return frame.assign(t=pd.Series(dtype=float), request=pd.Series(dtype=str))
        frame["t"] = frame["Timestamp"].astype(float) - self.origin
        kind = frame["Type"].fillna("").astype(str)
        frame["request"] = (kind + " " + frame["Name"].astype(str)).str.strip()
        return frame

    def load_stats(self) -> pd.DataFrame:
        path = self._file(LOCUST_STATS)
        return pd.DataFrame() if path is None else pd.read_csv(path, na_values=["N/A"])

    def load_failures(self) -> pd.DataFrame:
        path = self._file(LOCUST_FAILURES)
        return pd.DataFrame() if path is None else pd.read_csv(path)

    # --- for compare.ipynb ---------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """One line of figures about the run, for comparing runs side by side."""
        ops = self.operations
        chaos = self.manifest.get("chaos") or {}
        achieved = float(chaos.get("achieved_s") or 0) or None
        passes = self.reconcile_passes
        row: dict[str, Any] = {
            "run": self.path.name,
            "scenario": self.manifest.get("scenario") or self.verdict.get("scenario"),
            "seed": self.manifest.get("seed", self.verdict.get("seed")),
            "commit": str(self.manifest.get("commit") or "")[:12],
            "backend": self.manifest.get("backend"),
            "verdict": verdict_word(self.verdict.get("valid")) if self.verdict else "no verdict",
            "settled_after_s": (self.manifest.get("quiescence") or {}).get("settled_after_s"),
            "ops_ok_per_s": round(int((ops["outcome"] == "ok").sum()) / achieved, 2) if achieved else None,
            "accepted_per_s": round(len(self.acceptances) / achieved, 1) if achieved else None,
            "messages_accepted": len(self.acceptances),
            "reconcile_passes": len(passes),
        }
        for kind in ("expired_leases", "resolved_accepted", "resolved_not_accepted", "batches_requeued"):
            row[kind] = int(passes[kind].sum()) if not passes.empty else 0
        for item in self.verdict.get("invariants", []):
            row[item["id"]] = verdict_word(item["valid"])
        return row


@dataclass
class Witness:
    """One witness of a violation and the saved rows it names, by what they are."""

    invariant: str
    witness: dict[str, Any]
    rows: dict[str, pd.DataFrame]


def _nemesis_class(line: dict[str, Any]) -> str:
    """A fault's class, for its colour: the action, and for a toxic which link and what kind."""
    action = str(line.get("action", "?"))
    if action == "toxic":
        kind = str(line.get("outcome", "")).split(" ")[0] or "toxic"
        return f"toxic {kind} on {line.get('target', '?')}"
    return action


def _reserved_steps(reservations: pd.DataFrame, ledger: pd.DataFrame) -> pd.DataFrame:
    """A shop's reserved credits as steps (`t`, `reserved`): + a reservation's amount when made, - its
    campaign's debits as they come, - what is left of it when it closes."""
    if reservations.empty:
        return pd.DataFrame(columns=["t", "reserved"])
    debits = ledger[(ledger["kind"] == "debit") & ledger["campaign_id"].isin(reservations["campaign_id"])]
    steps = [
        pd.DataFrame({"t": reservations["created_at"], "change": reservations["amount"].astype(float)}),
        pd.DataFrame({"t": debits["created_at"], "change": debits["amount"].astype(float)}),  # negative
    ]
    closed = reservations[(reservations["status"] != "active") & reservations["updated_at"].notna()]
    for _, reservation in closed.iterrows():
        mine = debits[(debits["campaign_id"] == reservation["campaign_id"])]
        spent = -mine[mine["created_at"] <= reservation["updated_at"]]["amount"].sum()
        left = float(reservation["amount"]) - float(spent)
        steps.append(pd.DataFrame({"t": [reservation["updated_at"]], "change": [-left]}))
    frame = pd.concat(steps).dropna(subset=["t"]).sort_values("t", kind="stable")
    frame["reserved"] = frame["change"].cumsum().clip(lower=0)
    return frame[["t", "reserved"]].astype(float)


def verdict_word(value: Any) -> str:
    return "valid" if value is True else "INVALID" if value is False else "unknown"


# --- the safeguard matrix -----------------------------------------------------------------------------
@dataclass
class Matrix:
    """`matrix.json`: one row per run (a safeguard off, or every safeguard on), its verdict per invariant."""

    path: Path
    data: dict[str, Any]
    missing: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | Path) -> Matrix:
        folder = Path(path).expanduser().resolve()
        if folder.is_file():
            folder = folder.parent
        file = folder / "matrix.json"
        if not file.exists():
            return cls(folder, {"rows": []}, ["matrix.json"])
        return cls(folder, json.loads(file.read_text()))

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list(self.data.get("rows") or [])

    def invariant_ids(self) -> list[str]:
        ids = {k for row in self.rows for k in (row.get("verdicts") or {})}
        return sorted(ids, key=lambda i: (len(i), i))

    def grid(self) -> pd.DataFrame:
        """Rows (label) by invariants: 1 valid, 0 invalid, 0.5 unknown, NaN not checked."""
        ids = self.invariant_ids()

        def cell(verdicts: dict[str, Any], invariant: str) -> float | None:
            if invariant not in verdicts:
                return None
            value = verdicts[invariant]
            return 1.0 if value is True else 0.0 if value is False else 0.5

        data = [[cell(row.get("verdicts") or {}, i) for i in ids] for row in self.rows]
        return pd.DataFrame(data, columns=ids, index=[row_label(row) for row in self.rows], dtype=float)

    def run_folder(self, row: dict[str, Any]) -> Path | None:
        """A row's run folder, where it is now: as recorded, or beside matrix.json (a copied matrix)."""
        run = row.get("run")
        if not run:
            return None
        for candidate in (Path(run), self.path / Path(run).name):
            if candidate.exists():
                return candidate
        return None

    def table(self) -> pd.DataFrame:
        rows = []
        for row in self.rows:
            folder = self.run_folder(row)
            rows.append(
                (
                    row_label(row),
                    row.get("scenario"),
                    row.get("expected"),
                    "as expected" if row.get("as_expected") else "NOT AS EXPECTED",
                    " ".join(f"{k}:{verdict_word(v)}" for k, v in (row.get("verdicts") or {}).items()),
                    str(folder) if folder else (row.get("run") or ""),
                    row.get("note") or "",
                )
            )
        return pd.DataFrame(
            rows, columns=["row", "scenario", "expected", "result", "verdicts", "run folder", "note"]
        )


def row_label(row: dict[str, Any]) -> str:
    if row.get("kind") == "all_on" or not row.get("safeguard"):
        return f"all on: {row.get('scenario')}"
    return f"{row.get('number') or ''} {row.get('safeguard')} off".strip()


def expected_invalid(row: dict[str, Any]) -> list[str]:
    """The invariants a row expects to fail (`expected` names them, e.g. `I1` or `I9 (starved)`);
    none for an all-on row."""
    if row.get("kind") == "all_on":
        return []
    return re.findall(r"I\d+", str(row.get("expected") or ""))


def run_folders_in(folder: str | Path) -> list[Path]:
    """The run folders directly inside a folder (a matrix's, or `runs/`), oldest first."""
    root = Path(folder).expanduser().resolve()
    found = (
        [p for p in sorted(root.iterdir()) if p.is_dir() and not p.is_symlink() and is_run_folder(p)]
        if root.is_dir()
        else []
    )
    return found


def is_run_folder(path: Path) -> bool:
    return any(
        (path / name).exists() for name in ("run.json", "verdict.json", "history.jsonl", LOCUST_HISTORY)
    )


def open_runs(paths: Iterable[str | Path]) -> list[RunFolder]:
    return [RunFolder.open(p) for p in paths]

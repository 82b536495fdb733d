"""A consistent run folder made up from nothing, of any size: the checker's benchmark and its tests.

Every file has the shape a real run writes (the simulator's ledgers, the saved database, the history,
JSON-lines logs, `run.json`) and every invariant holds in it; a test then breaks exactly one thing and
expects exactly that invariant to fail. The sizes follow a real run's proportions: two delivery reports
and two API log lines per message, one debit per batch.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from chaos.checker.snapshot_io import COLUMNS, PERSONAL

T0 = 1_795_000_000.0
SECRETS = ["lab-mitto-key-synthetic", "whsec_synthetic_secret", "lab-shopify-secret-synthetic"]
FINALS = ("Delivered", "Delivered", "Delivered", "Delivered", "Delivered", "Undeliverable", "Expired")
FINAL_STATE = {"Delivered": "delivered", "Undeliverable": "undelivered", "Expired": "expired"}


@dataclass(frozen=True)
class SyntheticRun:
    messages: int
    campaigns: int
    shops: int
    batch_size: int


def phone(n: int) -> str:
    """The n-th synthetic phone number: +1, an area code from 201, then seven digits."""
    return f"+1{201 + n // 10_000_000}{n % 10_000_000:07d}"


class _Writer:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("wb")
        self.encoder = msgspec.json.Encoder()
        self.buffer: list[bytes] = []

    def write(self, row: Any) -> None:
        self.buffer.append(self.encoder.encode(row))
        if len(self.buffer) >= 50_000:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.handle.write(b"\n".join(self.buffer) + b"\n")
            self.buffer.clear()

    def close(self) -> None:
        self.flush()
        self.handle.close()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def write_synthetic_run(
    run_dir: Path,
    messages: int = 1000,
    campaign_size: int = 100,
    shops: int = 2,
    batch_size: int = 50,
) -> SyntheticRun:
    """Write a clean run folder with `messages` messages; every invariant holds in it."""
    campaigns = -(-messages // campaign_size)
    request_ids = random.Random(messages)
    sim, db, logs = run_dir / "simulator", run_dir / "database", run_dir / "logs"
    accepted = _Writer(sim / "mitto_accepted.jsonl")
    dlr = _Writer(sim / "mitto_dlr.jsonl")
    deliveries = _Writer(sim / "webhook_deliveries.jsonl")
    recipients = _Writer(db / "recipients.jsonl")
    api_log = _Writer(logs / "api.log")
    worker_log = _Writer(logs / "worker-0.log")
    campaign_rows: list[list[Any]] = []
    ledger_rows: list[list[Any]] = []
    reservation_rows: list[list[Any]] = []
    history: list[dict[str, Any]] = []
    debited = dict.fromkeys(range(1, shops + 1), 0)
    delivery_no = 0
    # Credits are bought before anything is sent (the lab's world phase): Stripe's deliveries come first.
    for shop_id in range(1, shops + 1):
        delivery_no += 1
        deliveries.write(
            {
                "t": T0 + 0.01,
                "delivery": delivery_no,
                "copy_of": None,
                "provider": "stripe",
                "attempt": 1,
                "status": 200,
                "error": None,
                "acknowledged": True,
                "dropped": False,
                "faults": [],
                "event": f"evt_checkout_{shop_id}",
                "type": "checkout.session.completed",
            }
        )
    rid = 0
    for campaign_id in range(1, campaigns + 1):
        shop_id = (campaign_id - 1) % shops + 1
        size = min(campaign_size, messages - rid)
        first = rid + 1
        for batch_start in range(first, first + size, batch_size):
            batch = range(batch_start, min(batch_start + batch_size, first + size))
            bulk_id = f"bulk-{campaign_id}-{batch_start}"
            for r in batch:
                message_id = f"msg-{r:09d}"
                reference = f"c{campaign_id}-r{r}"
                t = T0 + r * 0.001
                accepted.write(
                    {
                        "seq": r,
                        "t": t,
                        "bulk_id": bulk_id,
                        "message_id": message_id,
                        "reference": reference,
                        "to": phone(r),
                        "from": "SMSLab",
                    }
                )
                final = FINALS[r % len(FINALS)]
                for offset, status in ((0.05, "Sent"), (0.1, final)):
                    dlr.write(
                        {"t": t + offset, "message_id": message_id, "reference": reference, "status": status}
                    )
                    delivery_no += 1
                    deliveries.write(
                        {
                            "t": t + offset + 0.01,
                            "delivery": delivery_no,
                            "copy_of": None,
                            "provider": "mitto",
                            "attempt": 1,
                            "status": 200,
                            "error": None,
                            "acknowledged": True,
                            "dropped": False,
                            "faults": [],
                            "event": f"{message_id}:{status}",
                            "type": f"dlr.{status}",
                            "message": message_id,
                        }
                    )
                    api_log.write(
                        {
                            "method": "POST",
                            "path": "/webhooks/mitto/dlr",
                            "status": 200,
                            "duration_ms": 1.25,
                            "event": "request",
                            "request_id": f"{request_ids.getrandbits(128):032x}",  # as uuid4().hex
                            "process": "api",
                            "level": "info",
                            "logger": "service.http",
                            "timestamp": "2026-11-28T13:00:00.000000Z",
                        }
                    )
                # claimed_at, sent_at, status_updated_at: as `save_snapshot` writes them (ISO strings).
                when = [_iso(t - 0.05), _iso(t), _iso(t + 1.0)]
                recipients.write([r, campaign_id, phone(r), FINAL_STATE[final], message_id, 1, None, *when])
            ledger_rows.append(
                [
                    len(ledger_rows) + 1,
                    shop_id,
                    -len(batch),
                    "debit",
                    campaign_id,
                    len(batch),
                    f"debit:{bulk_id}",
                    "2026-11-28T13:00:01",
                ]
            )
            worker_log.write(
                {
                    "campaign_id": campaign_id,
                    "batch_no": (batch_start - first) // batch_size,
                    "claimed": len(batch),
                    "sent": len(batch),
                    "event": "batch_recorded",
                    "process": "worker",
                    "level": "info",
                    "logger": "service.sending.batch",
                    "timestamp": "2026-11-28T13:00:00.000000Z",
                }
            )
        debited[shop_id] += size
        rid += size
        campaign_rows.append(
            [
                campaign_id,
                shop_id,
                "completed",
                1,
                size,
                size,
                0,
                "2026-11-28T13:00:00",
                "2026-11-28T13:00:01",
            ]
        )
        reservation_rows.append(
            [
                campaign_id,
                shop_id,
                campaign_id,
                size,
                0,
                "settled",
                "2026-11-28T13:00:00",
                "2026-11-28T13:00:01",
            ]
        )
        key = f"enqueue-{campaign_id}"
        value = {"shop": f"shop-{shop_id}.myshopify.com", "campaign": campaign_id, "key": key}
        index = len(history)
        history.append({"index": index, "time": 0.0, "process": "client-0", "type": "invoke", "f": "enqueue"})
        history[-1]["value"] = value
        history.append(
            {
                "index": index + 1,
                "time": 0.0,
                "process": "client-0",
                "type": "ok",
                "f": "enqueue",
                "op": index,
                "value": {**value, "status": 202, "response": {"campaign_id": campaign_id}},
            }
        )
    for writer in (accepted, dlr, deliveries, recipients, api_log, worker_log):
        writer.close()
    stripe = _Writer(sim / "stripe_ledger.jsonl")
    wallets, billing = [], []
    for shop_id in range(1, shops + 1):
        credits = debited[shop_id] + 1000
        session_id, charge_id = f"cs_test_{shop_id}", f"ch_test_{shop_id}"
        stripe.write(
            {
                "t": T0,
                "kind": "payment",
                "object": {"id": session_id, "metadata": {"credits": str(credits)}},
                "charge": {"id": charge_id, "amount": credits * 8},
            }
        )
        ledger_rows.append(
            [
                len(ledger_rows) + 1,
                shop_id,
                credits,
                "purchase",
                None,
                None,
                f"purchase:{session_id}",
                "2026-11-28T13:00:00",
            ]
        )
        billing.append([shop_id, shop_id, session_id, credits, credits, "paid"])
        wallets.append([shop_id, 1000, 0])
    stripe.close()
    tables = {
        "campaigns": campaign_rows,
        "ledger": ledger_rows,
        "wallets": wallets,
        "reservations": reservation_rows,
        "billing": billing,
        "refunds": [],
        "reconcile_passes": [],
    }
    for table, rows in tables.items():
        assert all(len(row) == len(COLUMNS[table]) for row in rows), table
        writer = _Writer(db / f"{table}.jsonl")
        for row in rows:
            writer.write(row)
        writer.close()
    (db / PERSONAL).write_bytes(b"")
    with (run_dir / "history.jsonl").open("wb") as handle:
        encoder = msgspec.json.Encoder()
        handle.write(b"".join(encoder.encode(entry) + b"\n" for entry in history))
    # A run that did what its scenario planned: its chaos phase ran its whole duration, with no fault
    # planned (so none missing), and campaigns completed: its coverage meets the minimums.
    (run_dir / "scenario.toml").write_text('name = "synthetic"\n\n[workload]\nduration_s = 10\n')
    (run_dir / "nemesis.plan.json").write_text("[]")
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "run_id": run_dir.name,
                "scenario": "synthetic",
                "seed": 0,
                "chaos": {"planned_s": 10.0, "achieved_s": 10.0, "started_at": 0.0},
                "quiescence": {"reached": True, "settled_after_s": 1.0, "bound_s": 30.0},
                "secrets": SECRETS,
            }
        )
    )
    return SyntheticRun(messages, campaigns, shops, batch_size)

"""The fake Mitto: bulk send and lookup by reference, per the contract in docs/providers.md.

It never deduplicates: a reference sent twice is accepted twice and recorded twice, because a real
provider would deliver both and the lab must see double sends, not hide them. Every accepted message is
in the ground-truth ledger (`mitto_accepted.jsonl`) before the response is sent.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from simulator.delivery import MITTO_RETRY_DELAYS, Delivery, WebhookDispatcher
from simulator.http import Request, Response
from simulator.ledger import JsonLinesLedger, read_ledger

RECENT = 2000  # acceptances and reports kept in memory for `GET /control/mitto/recent`
ACCEPTED_LEDGER = "mitto_accepted.jsonl"
DLR_LEDGER = "mitto_dlr.jsonl"
FINAL_STATUSES = ("Delivered", "Undeliverable", "Expired", "Rejected", "Failed")
DLR_ERROR_CODES = {"Delivered": None, "Undeliverable": 1, "Expired": 2, "Rejected": 3, "Failed": 4}
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
ERROR_INVALID_NUMBER = 8
MAX_BULK = 1_000
MAX_TEXT = 1_600
_ID_NAMESPACE = uuid.UUID("6f1c2a52-31f7-4a3e-9b1e-5b4a6d0c9e11")


@dataclass
class StoredMessage:
    message_id: str
    reference: str
    to: str
    delivery_status: str
    accepted_at: float


@dataclass(frozen=True)
class DlrConfig:
    """When and how the fake reports deliveries: an intermediate `Sent`, then a final status."""

    delay_seconds: float = 0.05
    final_mix: tuple[tuple[str, float], ...] = (("Delivered", 1.0),)
    callback_token: str = "lab-dlr-token-change-me-in-production"  # noqa: S105 - lab default


def parse_final_mix(text: str) -> tuple[tuple[str, float], ...]:
    """`Delivered=0.9,Undeliverable=0.05,Expired=0.05` -> weights (refused with the field named)."""
    mix = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        status, sep, weight = part.partition("=")
        if status not in FINAL_STATUSES or not sep:
            raise ValueError(
                f"dlr-final: {part!r} must be STATUS=WEIGHT, STATUS one of {', '.join(FINAL_STATUSES)}"
            )
        try:
            value = float(weight)
        except ValueError:
            raise ValueError(f"dlr-final: weight of {status} must be a number") from None
        if value < 0:
            raise ValueError(f"dlr-final: weight of {status} must be >= 0")
        mix.append((status, value))
    if not mix or sum(w for _, w in mix) <= 0:
        raise ValueError("dlr-final: at least one status needs a positive weight")
    return tuple(mix)


@dataclass
class MittoState:
    by_reference: dict[str, list[StoredMessage]] = field(default_factory=dict)
    by_id: dict[str, StoredMessage] = field(default_factory=dict)
    sequence: int = 0
    bulks: int = 0
    # The latest acceptances and reports as made (bodies exactly as sent): what a load test's webhook
    # storm replays (`GET /control/mitto/recent`), duplicated and reordered, never inventing a status.
    recent_accepted: deque[dict[str, str]] = field(default_factory=lambda: deque(maxlen=RECENT))
    recent_reports: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT))


def mitto_error(status: int, message: str, code: int) -> Response:
    # The real error body is not documented publicly; this shape is the contract's (docs/providers.md).
    return Response.json(status, {"error": {"code": code, "message": message}})


class FakeMitto:
    def __init__(
        self,
        data_dir: Path,
        api_key: str,
        seed: int,
        dispatcher: WebhookDispatcher,
        dlr: DlrConfig,
        fsync: bool = False,
    ) -> None:
        self.api_key = api_key
        self.seed = seed
        self.dispatcher = dispatcher
        self.dlr = dlr
        self.dlr_rng = random.Random(f"{seed}:mitto.dlr")
        self._id_prefixes: dict[str, str] = {}
        self._callback_path = f"/webhooks/mitto/dlr?token={dlr.callback_token}"
        self.ledger_path = data_dir / ACCEPTED_LEDGER
        self.dlr_ledger_path = data_dir / DLR_LEDGER
        self.state = MittoState()
        self._recover()
        self.ledger = JsonLinesLedger(self.ledger_path, fsync=fsync)
        self.dlr_ledger = JsonLinesLedger(self.dlr_ledger_path, fsync=fsync)
        dispatcher.before_sending.append(self.dlr_ledger.flush)

    def _recover(self) -> None:
        """Rebuild the lookup index from the ledger, so lookups survive a restart of the simulator."""
        for record in read_ledger(self.ledger_path):
            self._index(
                StoredMessage(
                    record["message_id"], record["reference"], record["to"], "Accepted", record["t"]
                )
            )
            self.state.sequence = max(self.state.sequence, int(record["seq"]))
            self.state.bulks = max(self.state.bulks, int(record["bulk_seq"]))
        for report in read_ledger(self.dlr_ledger_path):
            stored = self.state.by_id.get(report["message_id"])
            if stored is not None:
                stored.delivery_status = report["status"]

    def _index(self, message: StoredMessage) -> None:
        self.state.by_reference.setdefault(message.reference, []).append(message)
        self.state.by_id[message.message_id] = message

    def _id(self, kind: str, number: int) -> str:
        """Deterministic for a seed and request order, unique across restarts (numbers continue): a
        UUID-shaped prefix derived once from (seed, kind), then the number in its last 12 hex digits."""
        prefix = self._id_prefixes.get(kind)
        if prefix is None:
            prefix = self._id_prefixes[kind] = str(uuid.uuid5(_ID_NAMESPACE, f"{self.seed}:{kind}"))[:24]
        return f"{prefix}{number:012x}"

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("x-mitto-api-key") == self.api_key

    async def send_bulk(self, request: Request) -> Response:
        if not self._authorised(request):
            return mitto_error(401, "invalid API key", 401)
        try:
            document = request.json()
            messages = document["messages"]
            if not isinstance(messages, list) or not messages or len(messages) > MAX_BULK:
                raise ValueError(f"messages must hold 1 to {MAX_BULK} entries")
            for index, message in enumerate(messages):
                _validate_message(message, index)
        except (msgspec.DecodeError, ValueError, KeyError, TypeError) as exc:
            return mitto_error(400, f"malformed request: {exc}", 400)
        now = time.time()
        self.state.bulks += 1
        bulk_seq = self.state.bulks
        bulk_id = self._id("bulk", bulk_seq)
        results: list[dict[str, Any]] = []
        records: list[dict[str, Any]] = []
        stored: list[StoredMessage] = []
        digests: dict[str, str] = {}  # a bulk is one campaign's text, sent to many: hashed once
        for message in messages:
            to = message["to"]
            if not E164.match(to):
                results.append(
                    {
                        "messageId": None,
                        "reference": message["reference"],
                        "to": to,
                        "status": "Rejected",
                        "errorCode": ERROR_INVALID_NUMBER,
                    }
                )
                continue
            self.state.sequence += 1
            message_id = self._id("message", self.state.sequence)
            results.append(
                {
                    "messageId": message_id,
                    "reference": message["reference"],
                    "to": to,
                    "status": "Accepted",
                    "errorCode": None,
                }
            )
            records.append(
                {
                    "seq": self.state.sequence,
                    "bulk_seq": bulk_seq,
                    "t": now,
                    "bulk_id": bulk_id,
                    "message_id": message_id,
                    "reference": message["reference"],
                    "to": to,
                    "from": message["from"],
                    "text_sha256": digests.get(message["text"]) or _digest(digests, message["text"]),
                }
            )
            stored.append(StoredMessage(message_id, message["reference"], to, "Accepted", now))
        # Ground truth first: on disk before the answer can leave (or be lost by a fault).
        self.ledger.append_many(records)
        for message in stored:
            self._index(message)
            self.state.recent_accepted.append(
                {"message_id": message.message_id, "reference": message.reference}
            )
        if request.extra.get("report_first"):
            # The carrier's callbacks beat this very answer: report each message before responding.
            for message in stored:
                for status in ("Sent", self._final_status()):
                    await self.dispatcher.deliver_now(self._report(message, status))
        else:
            for message in stored:
                self._schedule_reports(message)
        return Response.json(200, {"bulkId": bulk_id, "messages": results})

    def _final_status(self) -> str:
        total = sum(weight for _, weight in self.dlr.final_mix)
        draw = self.dlr_rng.random() * total
        for status, weight in self.dlr.final_mix:
            draw -= weight
            if draw < 0:
                return status
        return self.dlr.final_mix[-1][0]

    def _schedule_reports(self, message: StoredMessage) -> None:
        """The message's life at the carrier: `Sent`, then its final status, each reported by callback."""
        final = self._final_status()
        for step, status in enumerate(("Sent", final), start=1):
            self.dispatcher.schedule(self._report(message, status), self.dlr.delay_seconds * step)

    def _report(self, message: StoredMessage, status: str) -> Delivery:
        report = {
            "messageId": message.message_id,
            "reference": message.reference,
            "status": status,
            "errorCode": DLR_ERROR_CODES.get(status),
            "timestamp": "",
        }

        def happen() -> None:
            # The carrier's truth changes when the event happens, whether or not the callback arrives.
            message.delivery_status = status
            report["timestamp"] = datetime.now(UTC).isoformat()
            delivery.body = msgspec.json.encode(report)
            self.state.recent_reports.append(dict(report))
            self.dlr_ledger.defer(
                {
                    "t": time.time(),
                    "message_id": message.message_id,
                    "reference": message.reference,
                    "status": status,
                }
            )

        delivery = Delivery(
            provider="mitto",
            path=self._callback_path,
            body=b"",
            sign=_unsigned,
            retry_delays=MITTO_RETRY_DELAYS,
            meta={
                "event": f"{message.message_id}:{status}",
                "type": f"dlr.{status}",
                "message": message.message_id,
            },
            on_due=happen,
        )
        return delivery

    async def lookup(self, request: Request) -> Response:
        if not self._authorised(request):
            return mitto_error(401, "invalid API key", 401)
        reference = request.query_one("reference")
        if not reference:
            return mitto_error(400, "reference is required", 400)
        found = self.state.by_reference.get(reference, [])
        return Response.json(
            200,
            {
                "messages": [
                    {
                        "messageId": m.message_id,
                        "reference": m.reference,
                        "to": m.to,
                        "deliveryStatus": m.delivery_status,
                    }
                    for m in found
                ]
            },
        )

    def close(self) -> None:
        self.ledger.close()
        self.dlr_ledger.close()


def _digest(digests: dict[str, str], text: str) -> str:
    digest = digests[text] = hashlib.sha256(text.encode()).hexdigest()
    return digest


def _validate_message(message: Any, index: int) -> None:
    if not isinstance(message, dict):
        raise ValueError(f"messages[{index}] must be an object")
    for name in ("from", "to", "text", "reference"):
        value = message.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"messages[{index}].{name} is required")
    if len(message["text"]) > MAX_TEXT:
        raise ValueError(f"messages[{index}].text is longer than {MAX_TEXT} characters")


def _unsigned(_body: bytes, _age: float) -> dict[str, str]:
    """Mitto signs nothing: its callback URL carries the secret instead."""
    return {}

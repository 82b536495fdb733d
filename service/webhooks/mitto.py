"""`POST /webhooks/mitto/dlr?token=...`: Mitto delivery reports, authenticated and applied once.

Mitto signs nothing, so the callback URL the service registers carries a secret token, compared in
constant time (wrong or missing -> 401). A report's identity is its message id, status and timestamp:
a repeated delivery of the same report is a duplicate. The effect is `delivery_reports.apply_report`.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import safeguards
from service.db.apply_once import EffectResult, IncomingEvent, apply_once
from service.errors import InvalidInput, Unauthorized
from service.input_rules import (
    MAX_INT32,
    MIN_INT32,
    decode_json,
    in_int_range,
    is_storable_text,
    text_problem,
)
from service.sending.delivery_reports import KNOWN_STATUSES, DeliveryReport, apply_report
from service.settings import Settings
from service.webhooks.report_batcher import DeliveryReportBatcher


class DlrTokenInvalid(Unauthorized):
    slug = "invalid-token"
    title = "The delivery-report token is missing or wrong"


def verify(settings: Settings, token: str | None) -> None:
    given = (token or "").encode("utf-8", "replace")
    if not given or not hmac.compare_digest(given, settings.mitto_dlr_token.encode()):
        raise DlrTokenInvalid("the callback token does not match")


MAX_ID = 64  # message ids and references, as the recipients table stores them


def parse(body: bytes) -> tuple[DeliveryReport, dict[str, Any]]:
    """One report, checked field by field before anything is written: a report the database could not
    store (an id too long, an error code past 32 bits) is refused alone, never failing its whole batch."""
    document = decode_json(body, "delivery report")
    if not isinstance(document, dict):
        raise InvalidInput(
            "delivery report must be an object", errors=[{"field": "body", "message": "not an object"}]
        )
    errors = [
        {"field": name, "message": f"is required: text of 1 to {MAX_ID} characters"}
        for name in ("messageId", "reference", "status")
        if text_problem(document.get(name), MAX_ID) is not None
    ]
    if not errors and document["status"] not in KNOWN_STATUSES:
        errors.append({"field": "status", "message": f"must be one of {', '.join(KNOWN_STATUSES)}"})
    code = document.get("errorCode")
    if code is not None and not in_int_range(code, MIN_INT32, MAX_INT32):
        errors.append({"field": "errorCode", "message": "must be a 32-bit whole number or null"})
    stamp = document.get("timestamp")
    if stamp is not None and not is_storable_text(stamp, MAX_ID):
        errors.append({"field": "timestamp", "message": f"must be text of at most {MAX_ID} characters"})
    if errors:
        raise InvalidInput("the delivery report is invalid", errors=errors)
    reported_at = None
    if isinstance(stamp, str):
        try:
            reported_at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            reported_at = reported_at if reported_at.tzinfo else reported_at.replace(tzinfo=UTC)
        except ValueError:
            reported_at = None
    report = DeliveryReport(
        document["messageId"], document["reference"], document["status"], code, reported_at
    )
    return report, document


async def handle(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    body: bytes,
    batcher: DeliveryReportBatcher | None = None,
) -> EffectResult:
    """Apply one report: through the API process's batcher (group commit) while replay protection is on,
    else in a transaction of its own; either way `delivery_reports.apply_reports` decides what it does.
    (A session is opened only for the second way: the batcher writes with its own, and a session per
    report, made and closed unused, was 8% of the API's time in a storm of reports.)"""
    report, document = parse(body)
    event_id = f"{report.message_id}:{report.status}:{document.get('timestamp', '')}"
    incoming = IncomingEvent(
        "mitto", event_id, f"dlr.{report.status}", subject=f"message:{report.message_id}", payload=document
    )
    if batcher is not None and safeguards.is_on(settings, safeguards.WEBHOOK_EFFECT_ONCE):
        return await batcher.submit(report, incoming)
    async with sessions() as session:
        return await apply_once(
            session, settings, incoming, partial(apply_report, settings=settings, report=report)
        )

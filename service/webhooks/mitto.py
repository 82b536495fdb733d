"""`POST /webhooks/mitto/dlr?token=...`: Mitto delivery reports, authenticated and applied once.

Mitto signs nothing, so the callback URL the service registers carries a secret token, compared in
constant time (wrong or missing -> 401). A report's identity is its message id, status and timestamp:
a repeated delivery of the same report is a duplicate. The effect is `delivery_reports.apply_report`.
"""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service import safeguards
from service.db.apply_once import EffectResult, IncomingEvent, apply_once
from service.errors import InvalidInput, Unauthorized
from service.sending.delivery_reports import KNOWN_STATUSES, DeliveryReport, apply_report
from service.settings import Settings
from service.webhooks.report_batcher import DeliveryReportBatcher


class DlrTokenInvalid(Unauthorized):
    slug = "invalid-token"
    title = "The delivery-report token is missing or wrong"


def verify(settings: Settings, token: str | None) -> None:
    if not token or not hmac.compare_digest(token.encode(), settings.mitto_dlr_token.encode()):
        raise DlrTokenInvalid("the callback token does not match")


def parse(body: bytes) -> tuple[DeliveryReport, dict[str, Any]]:
    try:
        document = json.loads(body)
    except ValueError:
        raise InvalidInput(
            "delivery report is not JSON", errors=[{"field": "body", "message": "not JSON"}]
        ) from None
    if not isinstance(document, dict):
        raise InvalidInput(
            "delivery report must be an object", errors=[{"field": "body", "message": "not an object"}]
        )
    errors = [
        {"field": name, "message": "is required"}
        for name in ("messageId", "reference", "status")
        if not isinstance(document.get(name), str) or not document.get(name)
    ]
    if not errors and document["status"] not in KNOWN_STATUSES:
        errors.append({"field": "status", "message": f"must be one of {', '.join(KNOWN_STATUSES)}"})
    code = document.get("errorCode")
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
        errors.append({"field": "errorCode", "message": "must be a number or null"})
    if errors:
        raise InvalidInput("the delivery report is invalid", errors=errors)
    reported_at = None
    if isinstance(document.get("timestamp"), str):
        try:
            reported_at = datetime.fromisoformat(document["timestamp"].replace("Z", "+00:00"))
            reported_at = reported_at if reported_at.tzinfo else reported_at.replace(tzinfo=UTC)
        except ValueError:
            reported_at = None
    report = DeliveryReport(
        document["messageId"], document["reference"], document["status"], code, reported_at
    )
    return report, document


async def handle(
    session: AsyncSession, settings: Settings, body: bytes, batcher: DeliveryReportBatcher | None = None
) -> EffectResult:
    """Apply one report: through the API process's batcher (group commit) while replay protection is on,
    else in a transaction of its own; either way `delivery_reports.apply_reports` decides what it does."""
    report, document = parse(body)
    event_id = f"{report.message_id}:{report.status}:{document.get('timestamp', '')}"
    incoming = IncomingEvent(
        "mitto", event_id, f"dlr.{report.status}", subject=f"message:{report.message_id}", payload=document
    )
    if batcher is not None and safeguards.is_on(settings, safeguards.WEBHOOK_EFFECT_ONCE):
        return await batcher.submit(report, incoming)
    return await apply_once(
        session, settings, incoming, partial(apply_report, settings=settings, report=report)
    )

"""Client for the Mitto contract (docs/providers.md): bulk send and lookup by reference.

Its errors say what matters for exactly-once: whether the provider may have acted on the request.
- `MittoRateLimited` (429) and `MittoUnavailable` (could not connect): certainly not processed; resend.
- `MittoRequestRefused` (400/401/403): not processed and a resend would be refused too.
- `MittoOutcomeUnknown`: it may have been processed; look the references up before sending any of them
  again. `provider_finished` tells how far a lookup can be trusted: True when a complete answer came
  back (a 5xx, a garbled 200), so the provider is done with the request and "not found" means never
  accepted; False when no answer came (timeout, connection cut), so the provider may still be working
  on it and only "found" is conclusive.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any

import httpx

from service.settings import Settings

SEND_PATH = "/api/v1.1/Messages/sendmessagesbulk"
LOOKUP_PATH = "/api/v1/Messages"
API_KEY_HEADER = "X-Mitto-API-Key"


@dataclass(frozen=True)
class OutgoingMessage:
    to: str
    text: str
    reference: str


@dataclass(frozen=True)
class SendResult:
    reference: str
    accepted: bool
    message_id: str | None
    error_code: int | None


@dataclass(frozen=True)
class BulkSendResult:
    bulk_id: str
    results: list[SendResult]


@dataclass(frozen=True)
class LookupResult:
    reference: str
    message_id: str
    delivery_status: str | None


class MittoError(Exception):
    pass


class MittoRateLimited(MittoError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; retry after {retry_after:.1f}s")
        self.retry_after = retry_after


class MittoUnavailable(MittoError):
    """The request never reached the provider."""


class MittoRequestRefused(MittoError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"provider refused the request ({status}): {detail}")
        self.status = status


class MittoOutcomeUnknown(MittoError):
    """The provider may or may not have acted on the request."""

    def __init__(self, message: str, provider_finished: bool) -> None:
        super().__init__(message)
        self.provider_finished = provider_finished


def parse_retry_after(value: str | None, default: float = 1.0) -> float:
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return default
        return max(0.0, parsed.timestamp() - time.time())


class MittoClient:
    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(
            base_url=settings.mitto_base_url,
            headers={API_KEY_HEADER: settings.mitto_api_key},
            timeout=httpx.Timeout(
                settings.mitto_timeout_seconds, connect=min(5.0, settings.mitto_timeout_seconds)
            ),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            transport=transport,
        )
        self._sender = settings.mitto_sender

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send_bulk(self, messages: list[OutgoingMessage]) -> BulkSendResult:
        payload = {
            "messages": [
                {"from": self._sender, "to": m.to, "text": m.text, "reference": m.reference} for m in messages
            ]
        }
        response = await self._request("POST", SEND_PATH, json=payload)
        try:
            document = response.json()
            entries = document["messages"]
            if len(entries) != len(messages):
                raise ValueError("one result per message expected")
            results = [
                _send_result(entry, expected.reference)
                for entry, expected in zip(entries, messages, strict=True)
            ]
            return BulkSendResult(bulk_id=str(document["bulkId"]), results=results)
        except (ValueError, KeyError, TypeError) as exc:
            raise MittoOutcomeUnknown(f"unreadable send response: {exc}", provider_finished=True) from None

    async def lookup(self, reference: str) -> list[LookupResult]:
        """Every message the provider accepted under this reference; empty means never accepted."""
        response = await self._request("GET", LOOKUP_PATH, params={"reference": reference})
        try:
            return [
                LookupResult(
                    reference=str(m["reference"]),
                    message_id=str(m["messageId"]),
                    delivery_status=m.get("deliveryStatus"),
                )
                for m in response.json()["messages"]
                if m.get("reference") == reference
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise MittoOutcomeUnknown(f"unreadable lookup response: {exc}", provider_finished=True) from None

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._client.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise MittoUnavailable(f"could not reach the provider: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise MittoOutcomeUnknown(
                f"no complete response: {type(exc).__name__}", provider_finished=False
            ) from None
        if response.status_code == 429:
            raise MittoRateLimited(parse_retry_after(response.headers.get("Retry-After")))
        if response.status_code >= 500:
            raise MittoOutcomeUnknown(f"provider error {response.status_code}", provider_finished=True)
        if response.status_code != 200:
            raise MittoRequestRefused(response.status_code, response.text[:200])
        return response


def _send_result(entry: dict[str, Any], expected_reference: str) -> SendResult:
    if entry.get("reference") != expected_reference:
        raise ValueError("results out of order")
    accepted = entry.get("status") == "Accepted"
    message_id = entry.get("messageId")
    if accepted and not message_id:
        raise ValueError("accepted without a message id")
    return SendResult(
        reference=expected_reference,
        accepted=accepted,
        message_id=str(message_id) if accepted else None,
        error_code=entry.get("errorCode"),
    )

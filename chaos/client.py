"""Performing the merchant clients' operations: the HTTP call, recorded in the history.

A `Client` is one logical process of the history (`client-N`). It turns an `Operation` into its request
to the API or to the fake providers, records the invocation and then `ok` (a 2xx), `fail` (a 4xx) or
`info` (no answer, or a 5xx: nobody knows whether it took effect), and returns the `Outcome` to whatever
chose the operation. It chooses nothing itself, beyond what a careful HTTP client does: back off a little
when nobody is listening, and after an enqueue whose outcome is unknown (before its retry).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any

import httpx

from chaos.history import FAIL, INFO, OK, History
from chaos.operations import (
    Checkout,
    Consent,
    CreateCampaign,
    Enqueue,
    ImportContacts,
    ListContacts,
    Operation,
    Outcome,
    Pay,
    Redact,
    Refund,
    Uninstall,
)

SHOPIFY_ADMIN_HEADERS = {"X-Shopify-Access-Token": "shpat_lab"}


def shopify_admin(shop: str) -> str:
    """The fake Shopify's Admin API for a shop."""
    return f"/shopify/{shop}/admin/api/2025-07"


class Client:
    """Performs operations for one logical process, over the API's and the providers' HTTP clients."""

    def __init__(
        self,
        process: str,
        api: httpx.AsyncClient,
        sim: httpx.AsyncClient,
        history: History,
        tokens: Mapping[str, str],
    ) -> None:
        self.process = process
        self.api = api
        self.sim = sim
        self.history = history
        self.tokens = tokens  # each shop's session token, by domain
        self.campaigns_enqueued = 0

    def _auth(self, shop: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[shop]}"}

    async def perform(self, operation: Operation) -> Outcome:
        match operation:
            case CreateCampaign(shop=shop, name=name, body=body):
                request = self.api.post(
                    "/api/campaigns", json={"name": name, "body": body}, headers=self._auth(shop)
                )
                return await self._call(operation.f, operation.value(), request)
            case Enqueue():
                return await self._enqueue(operation)
            case ImportContacts(shop=shop, body=body):
                headers = {**self._auth(shop), "Content-Type": "application/json"}
                request = self.api.post("/api/contacts", content=body, headers=headers)
                return await self._call(operation.f, operation.value(), request)
            case ListContacts(shop=shop, limit=limit):
                request = self.api.get("/api/contacts", params={"limit": limit}, headers=self._auth(shop))
                # A page of contacts is personal data and big: the history keeps its size only.
                return await self._call(operation.f, operation.value(), request, keep_body=False)
            case Checkout(shop=shop, key=key, credits=credits):
                headers = {**self._auth(shop), "Idempotency-Key": key}
                request = self.api.post("/api/billing/checkout", json={"credits": credits}, headers=headers)
                return await self._call(operation.f, operation.value(), request)
            case Pay(session=session, asynchronous=asynchronous):
                request = self.sim.post(
                    f"/control/stripe/sessions/{session}/pay", json={"async": asynchronous}
                )
                return await self._call(operation.f, operation.value(), request)
            case Refund(session=session, amount=amount):
                request = self.sim.post(f"/control/stripe/sessions/{session}/refund", json={"amount": amount})
                return await self._call(operation.f, operation.value(), request)
            case Consent(shop=shop, customer=customer, consent=consent):
                state = "subscribed" if consent else "unsubscribed"
                request = self.sim.put(
                    f"{shopify_admin(shop)}/customers/{customer}.json",
                    json={"customer": {"sms_marketing_consent": {"state": state}}},
                    headers=SHOPIFY_ADMIN_HEADERS,
                )
                return await self._call(operation.f, operation.value(), request)
            case Redact(shop=shop, customer=customer, phone=phone, email=email):
                payload = {
                    "shop_domain": shop,
                    "customer": {"id": customer, "email": email, "phone": phone},
                    "orders_to_redact": [],
                }
                request = self.sim.post(
                    "/control/shopify/webhooks",
                    json={"shop": shop, "topic": "customers/redact", "payload": payload},
                )
                return await self._call(operation.f, operation.value(), request)
            case Uninstall(shop=shop):
                request = self.sim.post(
                    "/control/shopify/webhooks",
                    # Shopify's payload is the shop object; `myshopify_domain` must match its header.
                    json={
                        "shop": shop,
                        "topic": "app/uninstalled",
                        "payload": {"domain": shop, "myshopify_domain": shop},
                    },
                )
                return await self._call(operation.f, operation.value(), request)

    async def _enqueue(self, operation: Enqueue) -> Outcome:
        headers = {**self._auth(operation.shop), "Idempotency-Key": operation.key}
        url = f"/api/campaigns/{operation.campaign}/enqueue"
        value = operation.value()
        if operation.duplicate:
            first, second = await asyncio.gather(
                self._call(operation.f, value, self.api.post(url, headers=headers)),
                self._call(operation.f, {**value, "duplicate": True}, self.api.post(url, headers=headers)),
            )
            outcome = Outcome(first.kinds | second.kinds, first.status, first.body)
        else:
            outcome = await self._call(operation.f, value, self.api.post(url, headers=headers))
        if outcome.ok:
            self.campaigns_enqueued += 1
        if outcome.unknown:
            await asyncio.sleep(0.2)  # then a careful client retries with the same key
        return outcome

    def error(self, exc: BaseException) -> None:
        """An operation abandoned on an unexpected error, recorded as a `client_error` invocation."""
        self.history.invoke(self.process, "client_error", {"error": type(exc).__name__})

    async def _call(
        self, f: str, value: dict[str, Any], request: Awaitable[httpx.Response], keep_body: bool = True
    ) -> Outcome:
        """Run one HTTP call as an operation: ok on 2xx, fail on 4xx, info when the outcome is unknown."""
        op = self.history.invoke(self.process, f, value)
        try:
            response = await request
        except httpx.HTTPError as exc:
            self.history.complete(op, INFO, {"error": type(exc).__name__})
            if isinstance(exc, httpx.ConnectError):
                await asyncio.sleep(0.2)  # nobody listening (a process restarting): back off a little
            return Outcome(frozenset({INFO}))
        body: Any
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code < 300:
            kept = body if keep_body else {"bytes": len(response.content)}
            self.history.complete(op, OK, {"status": response.status_code, "response": kept})
            return Outcome(frozenset({OK}), response.status_code, body)
        kind = INFO if response.status_code >= 500 else FAIL
        problem = body.get("type", "").rsplit("/", 1)[-1] if isinstance(body, dict) else None
        answer: dict[str, Any] = {"status": response.status_code, "problem": problem}
        if response.status_code == 429:  # what the client is told to wait: I9 holds it to >= 1 s
            answer["retry_after"] = response.headers.get("retry-after")
        self.history.complete(op, kind, answer)
        return Outcome(frozenset({kind}), response.status_code, body)

"""The workload: the world set up through the providers, then concurrent merchant clients.

Set-up, as in production: each shop is installed by its first session token; its contacts are imported
through the API; some customers are created in the fake Shopify (so their consent and erasure arrive as
webhooks); credits are bought through the service's checkout and paid at the fake Stripe.

Then `clients` merchant clients, each a logical process of the history, pick operations by weight
(seeded per client): create a campaign and enqueue it (retrying a timed-out enqueue with the same
Idempotency-Key, sometimes sending a duplicate at once), buy credits, refund a payment, change a
customer's consent, erase a customer, uninstall the shop. An operation whose outcome is unknown (a
timeout, a dropped connection, a 5xx) is `info`.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import phonenumbers

from chaos.history import FAIL, INFO, OK, History
from chaos.scenario import Scenario
from service.auth import issue_session_token
from service.settings import Settings

SETUP_TIMEOUT_S = 60.0


@dataclass
class Customer:
    id: int
    phone: str
    email: str
    consent: bool = True
    redacted: bool = False


@dataclass
class ShopWorld:
    domain: str
    token: str
    phones: list[str] = field(default_factory=list)
    customers: list[Customer] = field(default_factory=list)
    paid_sessions: list[tuple[str, int]] = field(default_factory=list)  # (session id, amount in cents)
    uninstalled: bool = False

    def live_customers(self) -> list[Customer]:
        """Customers not erased yet: the only ones a merchant can still change or erase."""
        return [c for c in self.customers if not c.redacted]


def valid_phones(count: int, offset: int) -> list[str]:
    """Distinct, valid E.164 numbers (US area codes, 555 exchange), starting `offset` numbers in."""
    numbers: list[str] = []
    for area, line in itertools.product(range(201, 990), range(10_000)):
        if offset:
            offset -= 1
            continue
        candidate = f"+1{area}555{line:04d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(candidate)):
            numbers.append(candidate)
            if len(numbers) == count:
                return numbers
    raise ValueError("not enough phone numbers")


class Workload:
    def __init__(
        self,
        scenario: Scenario,
        settings: Settings,
        api_url: str,
        simulator_url: str,
        history: History,
    ) -> None:
        self.scenario = scenario
        self.settings = settings
        self.api_url = api_url
        self.simulator_url = simulator_url
        self.history = history
        self.world: list[ShopWorld] = []
        self.campaigns_enqueued = 0
        self.timeout = httpx.Timeout(scenario.workload.client_timeout_s, connect=2.0)

    # --- set-up ------------------------------------------------------------------------------------
    async def setup(self) -> None:
        w = self.scenario.workload
        per_shop = w.contacts_per_shop + w.customers_per_shop
        async with (
            httpx.AsyncClient(base_url=self.api_url, timeout=30) as api,
            httpx.AsyncClient(base_url=self.simulator_url, timeout=30) as sim,
        ):
            for index in range(w.shops):
                domain = f"lab-shop-{index}.myshopify.com"
                shop = ShopWorld(domain, issue_session_token(self.settings, domain, ttl_seconds=24 * 3600))
                phones = valid_phones(per_shop, index * per_shop)
                shop.phones = phones[: w.contacts_per_shop]
                headers = {"Authorization": f"Bearer {shop.token}"}
                (await api.get("/api/wallet", headers=headers)).raise_for_status()  # installs the shop
                for start in range(0, len(shop.phones), 5000):
                    rows = [{"phone": p, "sms_consent": True} for p in shop.phones[start : start + 5000]]
                    (
                        await api.post("/api/contacts", json={"contacts": rows}, headers=headers)
                    ).raise_for_status()
                admin = f"/shopify/{domain}/admin/api/2025-07/customers.json"
                for n, phone in enumerate(phones[w.contacts_per_shop :]):
                    email = f"customer-{index}-{n}@example.com"
                    body = {
                        "customer": {
                            "email": email,
                            "phone": phone,
                            "first_name": f"Customer {n}",
                            "sms_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in"},
                        }
                    }
                    created = await sim.post(
                        admin, json=body, headers={"X-Shopify-Access-Token": "shpat_lab"}
                    )
                    created.raise_for_status()
                    shop.customers.append(Customer(created.json()["customer"]["id"], phone, email))
                await self._buy(api, sim, shop, w.credits_per_shop)
                self.world.append(shop)
            await self._await_setup(api)

    async def _buy(
        self, api: httpx.AsyncClient, sim: httpx.AsyncClient, shop: ShopWorld, credits: int
    ) -> None:
        packages = sorted(dict(self.settings.credit_packages), reverse=True)
        headers = {"Authorization": f"Bearer {shop.token}"}
        while credits > 0:
            package = next((p for p in packages if p <= credits), packages[-1])
            checkout = await api.post(
                "/api/billing/checkout",
                json={"credits": package},
                headers={**headers, "Idempotency-Key": f"setup-{uuid.uuid4()}"},
            )
            checkout.raise_for_status()
            session = checkout.json()
            (
                await sim.post(f"/control/stripe/sessions/{session['session_id']}/pay", json={})
            ).raise_for_status()
            shop.paid_sessions.append((session["session_id"], session["amount_cents"]))
            credits -= package

    async def _await_setup(self, api: httpx.AsyncClient) -> None:
        """Until every shop holds its credits and every Shopify customer arrived as a contact."""
        deadline = time.monotonic() + SETUP_TIMEOUT_S
        w = self.scenario.workload
        while time.monotonic() < deadline:
            ready = True
            for shop in self.world:
                headers = {"Authorization": f"Bearer {shop.token}"}
                wallet = (await api.get("/api/wallet", headers=headers)).json()
                contacts = (await api.get("/api/contacts", params={"limit": 1}, headers=headers)).json()
                expected = w.credits_per_shop if w.credits_per_shop else 0
                ready &= wallet.get("balance", 0) >= expected and bool(contacts["items"])
            if ready:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError("the world was not set up in time (credits or contacts missing)")

    # --- the clients ---------------------------------------------------------------------------------
    async def run(self, deadline: float, seed: int) -> None:
        async with (
            httpx.AsyncClient(base_url=self.api_url, timeout=self.timeout) as api,
            httpx.AsyncClient(base_url=self.simulator_url, timeout=self.timeout) as sim,
        ):
            await asyncio.gather(
                *(
                    self._client(i, api, sim, deadline, random.Random(f"{seed}:client:{i}"))
                    for i in range(self.scenario.workload.clients)
                )
            )

    async def _client(
        self, index: int, api: httpx.AsyncClient, sim: httpx.AsyncClient, deadline: float, rng: random.Random
    ) -> None:
        process = f"client-{index}"
        shop = self.world[index % len(self.world)]
        names, weights = zip(*self.scenario.workload.mix, strict=True)
        while time.monotonic() < deadline and not shop.uninstalled:
            operation = rng.choices(names, weights=weights)[0]
            try:
                await getattr(self, f"_op_{operation}")(process, shop, api, sim, rng)
            except Exception as exc:  # noqa: BLE001 - a client must outlive any one operation
                self.history.invoke(process, "client_error", {"error": type(exc).__name__})
            await asyncio.sleep(rng.uniform(*self.scenario.workload.think_s))

    async def _call(
        self, process: str, f: str, value: dict[str, Any], request: Any
    ) -> tuple[str, httpx.Response | None]:
        """Run one HTTP call as an operation: ok on 2xx, fail on 4xx, info when the outcome is unknown."""
        op = self.history.invoke(process, f, value)
        try:
            response = await request
        except httpx.HTTPError as exc:
            self.history.complete(op, INFO, {"error": type(exc).__name__})
            if isinstance(exc, httpx.ConnectError):
                await asyncio.sleep(0.2)  # nobody listening (a process restarting): back off a little
            return INFO, None
        body: Any
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code < 300:
            self.history.complete(op, OK, {"status": response.status_code, "response": body})
            return OK, response
        kind = INFO if response.status_code >= 500 else FAIL
        problem = body.get("type", "").rsplit("/", 1)[-1] if isinstance(body, dict) else None
        self.history.complete(op, kind, {"status": response.status_code, "problem": problem})
        return kind, response

    async def _op_campaign(
        self,
        process: str,
        shop: ShopWorld,
        api: httpx.AsyncClient,
        sim: httpx.AsyncClient,
        rng: random.Random,
    ) -> None:
        headers = {"Authorization": f"Bearer {shop.token}"}
        kind, response = await self._call(
            process,
            "create_campaign",
            {"shop": shop.domain},
            api.post(
                "/api/campaigns", json={"name": "lab", "body": "A lab campaign message"}, headers=headers
            ),
        )
        if kind != OK or response is None:
            return
        campaign = response.json()["id"]
        key = f"enqueue-{uuid.uuid4()}"
        value = {"shop": shop.domain, "campaign": campaign, "key": key}
        enqueue_headers = {**headers, "Idempotency-Key": key}
        url = f"/api/campaigns/{campaign}/enqueue"
        for _attempt in range(self.scenario.workload.retries + 1):
            if rng.random() < self.scenario.workload.duplicate_enqueue:
                outcomes = await asyncio.gather(
                    self._call(process, "enqueue", value, api.post(url, headers=enqueue_headers)),
                    self._call(
                        process,
                        "enqueue",
                        {**value, "duplicate": True},
                        api.post(url, headers=enqueue_headers),
                    ),
                )
                kinds = {k for k, _ in outcomes}
            else:
                outcome, _ = await self._call(
                    process, "enqueue", value, api.post(url, headers=enqueue_headers)
                )
                kinds = {outcome}
            if OK in kinds:
                self.campaigns_enqueued += 1
            if INFO not in kinds:
                return
            await asyncio.sleep(0.2)  # then retry with the same key, as a careful client does

    async def _op_buy(
        self,
        process: str,
        shop: ShopWorld,
        api: httpx.AsyncClient,
        sim: httpx.AsyncClient,
        rng: random.Random,
    ) -> None:
        headers = {"Authorization": f"Bearer {shop.token}", "Idempotency-Key": f"buy-{uuid.uuid4()}"}
        kind, response = await self._call(
            process,
            "checkout",
            {"shop": shop.domain},
            api.post("/api/billing/checkout", json={"credits": 1000}, headers=headers),
        )
        if kind != OK or response is None:
            return
        session = response.json()
        asynchronous = rng.random() < 0.3
        paid, _ = await self._call(
            process,
            "pay",
            {"shop": shop.domain, "session": session["session_id"], "async": asynchronous},
            sim.post(f"/control/stripe/sessions/{session['session_id']}/pay", json={"async": asynchronous}),
        )
        if paid == OK:
            shop.paid_sessions.append((session["session_id"], session["amount_cents"]))

    async def _op_refund(
        self,
        process: str,
        shop: ShopWorld,
        api: httpx.AsyncClient,
        sim: httpx.AsyncClient,
        rng: random.Random,
    ) -> None:
        if not shop.paid_sessions:
            return
        session, amount = rng.choice(shop.paid_sessions)
        part = rng.choice([amount // 10, amount // 4, amount // 2])
        await self._call(
            process,
            "refund",
            {"shop": shop.domain, "session": session, "amount": part},
            sim.post(f"/control/stripe/sessions/{session}/refund", json={"amount": part}),
        )

    async def _op_consent(
        self,
        process: str,
        shop: ShopWorld,
        api: httpx.AsyncClient,
        sim: httpx.AsyncClient,
        rng: random.Random,
    ) -> None:
        customers = shop.live_customers()
        if not customers:
            return
        await self._change_consent(process, shop, sim, rng.choice(customers))

    async def _change_consent(
        self, process: str, shop: ShopWorld, sim: httpx.AsyncClient, customer: Customer
    ) -> None:
        """The merchant changes a customer in Shopify; Shopify sends `customers/update`."""
        customer.consent = not customer.consent
        state = "subscribed" if customer.consent else "unsubscribed"
        await self._call(
            process,
            "consent",
            {"shop": shop.domain, "customer": customer.id, "consent": customer.consent},
            sim.put(
                f"/shopify/{shop.domain}/admin/api/2025-07/customers/{customer.id}.json",
                json={"customer": {"sms_marketing_consent": {"state": state}}},
                headers={"X-Shopify-Access-Token": "shpat_lab"},
            ),
        )

    async def _op_redact(
        self,
        process: str,
        shop: ShopWorld,
        api: httpx.AsyncClient,
        sim: httpx.AsyncClient,
        rng: random.Random,
    ) -> None:
        customers = shop.live_customers()
        if not customers:
            return
        customer = rng.choice(customers)
        if rng.random() < self.scenario.workload.consent_before_redact:
            # The customer's last change just before their erasure request: its `customers/update`
            # and the `customers/redact` race through Shopify's delivery, in either order.
            await self._change_consent(process, shop, sim, customer)
        customer.redacted = True
        payload = {
            "shop_domain": shop.domain,
            "customer": {"id": customer.id, "email": customer.email, "phone": customer.phone},
            "orders_to_redact": [],
        }
        await self._call(
            process,
            "redact",
            {"shop": shop.domain, "customer": customer.id, "phone": customer.phone, "email": customer.email},
            sim.post(
                "/control/shopify/webhooks",
                json={"shop": shop.domain, "topic": "customers/redact", "payload": payload},
            ),
        )

    async def _op_uninstall(
        self,
        process: str,
        shop: ShopWorld,
        api: httpx.AsyncClient,
        sim: httpx.AsyncClient,
        rng: random.Random,
    ) -> None:
        shop.uninstalled = True
        await self._call(
            process,
            "uninstall",
            {"shop": shop.domain},
            sim.post(
                "/control/shopify/webhooks",
                json={"shop": shop.domain, "topic": "app/uninstalled", "payload": {"domain": shop.domain}},
            ),
        )

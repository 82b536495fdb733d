"""The workload: the world set up through the providers, then concurrent merchant clients.

Set-up, as in production: each shop is installed by its first session token; its contacts are imported
through the API; some customers are created in the fake Shopify (so their consent and erasure arrive as
webhooks); credits are bought through the service's checkout and paid at the fake Stripe.

Then `clients` merchant clients, each a logical process of the history, until the deadline. Each pairs a
generator (`chaos/generator.py`: the next operation, by weight, from its own seeded stream) with a client
(`chaos/client.py`: the HTTP call, recorded as `invoke` and then `ok`, `fail` or `info`). The operations:
create a campaign and enqueue it (retrying a timed-out enqueue with the same Idempotency-Key, sometimes
sending a duplicate at once), buy credits, refund a payment, change a customer's consent, erase a customer,
uninstall the shop. An operation whose outcome is unknown (a timeout, a dropped connection, a 5xx) is
`info`.

A scenario may add a noisy tenant (`[workload.noisy]`): one more shop, installed but given no credits,
whose `noisy-N` clients flood the expensive routes back to back (bulk imports of 10,000 contacts,
checkouts, lists), recorded in the same history with `flood` in their values (I9).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import httpx
import msgspec
import phonenumbers

from chaos.client import SHOPIFY_ADMIN_HEADERS, Client, shopify_admin
from chaos.generator import ClientGenerator, NoisyGenerator, play
from chaos.history import History
from chaos.scenario import Scenario
from chaos.world import Customer, ShopWorld
from service.auth import SessionTokens
from service.settings import Settings

__all__ = ["SETUP_TIMEOUT_S", "Customer", "ShopWorld", "Workload", "valid_phones"]

SETUP_TIMEOUT_S = 60.0
NOISY_SHOP = "lab-noisy-0.myshopify.com"


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
        self.clients: list[Client] = []
        self.noisy_phones: list[str] = []
        self.noisy_body = b""
        self.timeout = httpx.Timeout(scenario.workload.client_timeout_s, connect=2.0)
        # Short-lived session tokens, fresh ones as they age, as App Bridge gives a merchant's browser.
        self.tokens = SessionTokens(settings)

    def auth(self, domain: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[domain]}"}

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
                shop = ShopWorld(domain)
                phones = valid_phones(per_shop, index * per_shop)
                shop.phones = phones[: w.contacts_per_shop]
                (await api.get("/api/wallet", headers=self.auth(domain))).raise_for_status()  # installs it
                for start in range(0, len(shop.phones), 5000):
                    rows = [{"phone": p, "sms_consent": True} for p in shop.phones[start : start + 5000]]
                    (
                        await api.post("/api/contacts", json={"contacts": rows}, headers=self.auth(domain))
                    ).raise_for_status()
                admin = f"{shopify_admin(domain)}/customers.json"
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
                    created = await sim.post(admin, json=body, headers=SHOPIFY_ADMIN_HEADERS)
                    created.raise_for_status()
                    shop.customers.append(
                        Customer(created.json()["customer"]["id"], phone, email, f"Customer {n}")
                    )
                await self._buy(api, sim, shop, w.credits_per_shop)
                self.world.append(shop)
            if w.noisy.clients:
                await self._setup_noisy(api, offset=w.shops * per_shop)
            await self._await_setup(api)

    async def _setup_noisy(self, api: httpx.AsyncClient, offset: int) -> None:
        """The noisy tenant's shop, installed; its import encoded once (the flood sends it again)."""
        (await api.get("/api/wallet", headers=self.auth(NOISY_SHOP))).raise_for_status()
        self.noisy_phones = valid_phones(self.scenario.workload.noisy.import_rows, offset)
        rows = [{"phone": phone, "sms_consent": True} for phone in self.noisy_phones]
        self.noisy_body = msgspec.json.encode({"contacts": rows})

    async def _buy(
        self, api: httpx.AsyncClient, sim: httpx.AsyncClient, shop: ShopWorld, credits: int
    ) -> None:
        packages = sorted(dict(self.settings.credit_packages), reverse=True)
        while credits > 0:
            package = next((p for p in packages if p <= credits), packages[-1])
            checkout = await api.post(
                "/api/billing/checkout",
                json={"credits": package},
                headers={**self.auth(shop.domain), "Idempotency-Key": f"setup-{uuid.uuid4()}"},
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
                headers = self.auth(shop.domain)
                wallet = (await api.get("/api/wallet", headers=headers)).json()
                contacts = (await api.get("/api/contacts", params={"limit": 1}, headers=headers)).json()
                expected = w.credits_per_shop if w.credits_per_shop else 0
                ready &= wallet.get("balance", 0) >= expected and bool(contacts["items"])
            if ready:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError("the world was not set up in time (credits or contacts missing)")

    def phones(self) -> list[str]:
        """Every phone number in the world, sorted: what I8 must find in no log."""
        return sorted(
            {p for shop in self.world for p in shop.phones}
            | {c.phone for shop in self.world for c in shop.customers}
            | set(self.noisy_phones)
        )

    def names(self) -> list[str]:
        """Every customer's first name: personal data I8 must find in no log either."""
        return sorted({c.first_name for shop in self.world for c in shop.customers if c.first_name})

    # --- the clients ---------------------------------------------------------------------------------
    @property
    def campaigns_enqueued(self) -> int:
        return sum(client.campaigns_enqueued for client in self.clients)

    async def run(self, deadline: float, seed: int) -> None:
        async with (
            httpx.AsyncClient(base_url=self.api_url, timeout=self.timeout) as api,
            httpx.AsyncClient(base_url=self.simulator_url, timeout=self.timeout) as sim,
        ):
            self.clients = [
                Client(f"client-{i}", api, sim, self.history, self.tokens)
                for i in range(self.scenario.workload.clients)
            ]
            await asyncio.gather(
                *(
                    self._client(client, self._generator(i, seed), deadline)
                    for i, client in enumerate(self.clients)
                ),
                self._noisy_tenant(deadline, seed),
            )

    async def _noisy_tenant(self, deadline: float, seed: int) -> None:
        noisy = self.scenario.workload.noisy
        if not noisy.clients:
            return
        timeout = httpx.Timeout(noisy.timeout_s, connect=2.0)
        async with (
            httpx.AsyncClient(base_url=self.api_url, timeout=timeout) as api,
            httpx.AsyncClient(base_url=self.simulator_url, timeout=timeout) as sim,
        ):
            flooders = [
                Client(f"noisy-{i}", api, sim, self.history, self.tokens) for i in range(noisy.clients)
            ]
            await asyncio.gather(
                *(
                    self._flood(
                        client,
                        NoisyGenerator.for_client(noisy, NOISY_SHOP, self.noisy_body, seed, i),
                        deadline,
                    )
                    for i, client in enumerate(flooders)
                )
            )

    async def _flood(self, client: Client, generator: NoisyGenerator, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                await play(generator.next_operation(), client.perform)
            except Exception as exc:  # noqa: BLE001 - a client must outlive any one operation
                client.error(exc)
            await asyncio.sleep(generator.think_s())

    def _generator(self, index: int, seed: int) -> ClientGenerator:
        shop = self.world[index % len(self.world)]
        return ClientGenerator.for_client(self.scenario.workload, shop, seed, index, world=self.world)

    async def _client(self, client: Client, generator: ClientGenerator, deadline: float) -> None:
        while time.monotonic() < deadline and not generator.shop.uninstalled:
            try:
                await play(generator.next_operation(), client.perform)
            except Exception as exc:  # noqa: BLE001 - a client must outlive any one operation
                client.error(exc)
            await asyncio.sleep(generator.think_s())

"""Which operation each merchant client does next: operations as data, drawn from the client's own seed.

Split from performing them (`chaos/client.py`), as Jepsen splits generator and client. Each client has
its own random stream (`{seed}:client:{i}`) and draws from it exactly as the lab's clients did before the
split: the same draws, in the same order, under the same conditions, so a seed gives the same operations
for the same answers. Some choices depend on how the previous call went (enqueue only a campaign that was
created, retry an enqueue whose outcome is unknown under the same key, pay only a checkout that opened),
so an operation is a small script: a Python generator that yields one `Operation` at a time and is sent
back its `Outcome`, as Jepsen's generators are updated with completions. `play` runs one against any
performer.

The merchant's own decisions (a consent flipped, a customer erased, the shop uninstalled) and what a
completed payment makes refundable are written to the shared `ShopWorld` as they are taken.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable, Generator

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
from chaos.scenario import Noisy
from chaos.scenario import Workload as WorkloadSpec
from chaos.world import Customer, ShopWorld

ASYNCHRONOUS_PAYMENTS = 0.3  # the share of payments that settle later (Stripe's async payment methods)

Script = Generator[Operation, Outcome, None]


class ClientGenerator:
    """One client's operations on one shop, by the scenario's mix and probabilities."""

    def __init__(
        self, spec: WorkloadSpec, shop: ShopWorld, rng: random.Random, world: list[ShopWorld] | None = None
    ) -> None:
        self.spec = spec
        self.shop = shop
        self.rng = rng
        self.world = world if world is not None else [shop]  # every shop: who is still installed
        self._names, self._weights = zip(*spec.mix, strict=True)
        self._scripts: dict[str, Callable[[], Script]] = {
            "campaign": self._campaign,
            "buy": self._buy,
            "refund": self._refund,
            "consent": self._consent,
            "redact": self._redact,
            "uninstall": self._uninstall,
        }

    @classmethod
    def for_client(
        cls, spec: WorkloadSpec, shop: ShopWorld, seed: int, index: int, world: list[ShopWorld] | None = None
    ) -> ClientGenerator:
        """Client `index`'s generator: its own stream of the run's seed."""
        return cls(spec, shop, random.Random(f"{seed}:client:{index}"), world)

    def next_operation(self) -> Script:
        """The next operation, by the mix's weights, as the script of its calls."""
        name = self.rng.choices(self._names, weights=self._weights)[0]
        return self._scripts[name]()

    def think_s(self) -> float:
        """The pause after an operation."""
        return self.rng.uniform(*self.spec.think_s)

    # --- the operations' scripts ---------------------------------------------------------------------
    def _campaign(self) -> Script:
        """Create a campaign, then enqueue it, retrying an unknown outcome under the same key."""
        created = yield CreateCampaign(self.shop.domain)
        if not created.ok:
            return
        campaign = created.body["id"]
        key = f"enqueue-{uuid.uuid4()}"
        for _attempt in range(self.spec.retries + 1):
            duplicate = self.rng.random() < self.spec.duplicate_enqueue
            enqueued = yield Enqueue(self.shop.domain, campaign, key, duplicate)
            if not enqueued.unknown:
                return

    def _buy(self) -> Script:
        """Open a checkout for credits and pay it; a paid session can be refunded later."""
        opened = yield Checkout(self.shop.domain, key=f"buy-{uuid.uuid4()}")
        if not opened.ok:
            return
        session = opened.body
        asynchronous = self.rng.random() < ASYNCHRONOUS_PAYMENTS
        paid = yield Pay(self.shop.domain, session["session_id"], asynchronous)
        if paid.ok:
            self.shop.paid_sessions.append((session["session_id"], session["amount_cents"]))

    def _refund(self) -> Script:
        """A tenth, a quarter or half of a paid session."""
        if not self.shop.paid_sessions:
            return
        session, amount = self.rng.choice(self.shop.paid_sessions)
        part = self.rng.choice([amount // 10, amount // 4, amount // 2])
        yield Refund(self.shop.domain, session, part)

    def _consent(self) -> Script:
        customers = self.shop.live_customers()
        if not customers:
            return
        yield from self._change_consent(self.rng.choice(customers))

    def _change_consent(self, customer: Customer) -> Script:
        """The merchant changes a customer in Shopify; Shopify sends `customers/update`."""
        customer.consent = not customer.consent
        yield Consent(self.shop.domain, customer.id, customer.consent)

    def _redact(self) -> Script:
        customers = self.shop.live_customers()
        if not customers:
            return
        customer = self.rng.choice(customers)
        if self.rng.random() < self.spec.consent_before_redact:
            # The customer's last change just before their erasure request: its `customers/update`
            # and the `customers/redact` race through Shopify's delivery, in either order.
            yield from self._change_consent(customer)
        customer.redacted = True
        yield Redact(self.shop.domain, customer.id, customer.phone, customer.email)

    def _uninstall(self) -> Script:
        """The merchant uninstalls the app; never the last shop still installed, unless the scenario says
        so (its clients would stop, and the chaos phase end before its time: a vacuous run)."""
        others = [s for s in self.world if s is not self.shop and not s.uninstalled]
        if self.shop.uninstalled or (not others and not self.spec.uninstall_last_shop):
            return
        self.shop.uninstalled = True
        yield Uninstall(self.shop.domain)


class NoisyGenerator:
    """A noisy tenant's client: the expensive routes, by the mix's weights, one after the other (a
    refused request is not retried later: the next one simply comes). Its own stream of the seed."""

    def __init__(self, spec: Noisy, shop: str, import_body: bytes, rng: random.Random) -> None:
        self.spec = spec
        self.shop = shop
        self.import_body = import_body
        self.rng = rng
        self._names, self._weights = zip(*spec.mix, strict=True)

    @classmethod
    def for_client(cls, spec: Noisy, shop: str, import_body: bytes, seed: int, index: int) -> NoisyGenerator:
        return cls(spec, shop, import_body, random.Random(f"{seed}:noisy:{index}"))

    def next_operation(self) -> Script:
        name = self.rng.choices(self._names, weights=self._weights)[0]
        if name == "import_contacts":
            yield ImportContacts(self.shop, self.spec.import_rows, self.import_body, flood=True)
        elif name == "checkout":
            yield Checkout(self.shop, key=f"flood-{uuid.uuid4()}", flood=True)
        else:
            yield ListContacts(self.shop, flood=True)

    def think_s(self) -> float:
        return self.rng.uniform(*self.spec.think_s)


async def play(script: Script, perform: Callable[[Operation], Awaitable[Outcome]]) -> None:
    """One operation's script to its end: each operation it yields performed, its outcome sent back."""
    operation = next(script, None)
    while operation is not None:
        outcome = await perform(operation)
        try:
            operation = script.send(outcome)
        except StopIteration:
            return

"""The merchant clients' operations as plain data: what a generator chooses and a client performs.

Jepsen's split: a generator decides what happens next, a client makes it happen against the system and
records it. Both halves speak this vocabulary and neither imports the other, so a load test can drive the
lab's client with a generator of its own, or a swarm run the lab's generator with another client. `f` is
an operation's name in the history, `value()` its value there; the other fields are what the request
needs that the history does not record (an Idempotency-Key, a campaign's text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from chaos.history import INFO, OK


@dataclass(frozen=True)
class CreateCampaign:
    """A draft campaign, through the API."""

    f: ClassVar[str] = "create_campaign"
    shop: str
    name: str = "lab"
    body: str = "A lab campaign message"

    def value(self) -> dict[str, Any]:
        return {"shop": self.shop}


@dataclass(frozen=True)
class Enqueue:
    """A campaign enqueued under an Idempotency-Key; `duplicate`: the same request twice at once."""

    f: ClassVar[str] = "enqueue"
    shop: str
    campaign: int
    key: str
    duplicate: bool = False

    def value(self) -> dict[str, Any]:
        return {"shop": self.shop, "campaign": self.campaign, "key": self.key}


@dataclass(frozen=True)
class Checkout:
    """A Stripe Checkout session for some credits, opened through the API; `flood`: by a noisy tenant,
    which never pays it."""

    f: ClassVar[str] = "checkout"
    route_class: ClassVar[str] = "billing"
    shop: str
    key: str  # its Idempotency-Key
    credits: int = 1000
    flood: bool = False

    def value(self) -> dict[str, Any]:
        return flooding({"shop": self.shop}, self.flood, self.route_class)


@dataclass(frozen=True)
class ImportContacts:
    """A bulk import through the API, its body encoded once (a noisy tenant sends the same one again)."""

    f: ClassVar[str] = "import_contacts"
    route_class: ClassVar[str] = "imports"
    shop: str
    rows: int
    body: bytes = field(repr=False)
    flood: bool = False

    def value(self) -> dict[str, Any]:
        return flooding({"shop": self.shop, "rows": self.rows}, self.flood, self.route_class)


@dataclass(frozen=True)
class ListContacts:
    """One page of the shop's contacts, through the API."""

    f: ClassVar[str] = "list_contacts"
    route_class: ClassVar[str] = "reports"
    shop: str
    limit: int = 200
    flood: bool = False

    def value(self) -> dict[str, Any]:
        return flooding({"shop": self.shop}, self.flood, self.route_class)


def flooding(value: dict[str, Any], flood: bool, route_class: str) -> dict[str, Any]:
    """A noisy tenant's operations say so in the history, with the route class they count against."""
    return {**value, "flood": True, "route_class": route_class} if flood else value


@dataclass(frozen=True)
class Pay:
    """The customer pays a session at the fake Stripe; `asynchronous`: the payment settles later."""

    f: ClassVar[str] = "pay"
    shop: str
    session: str
    asynchronous: bool

    def value(self) -> dict[str, Any]:
        return {"shop": self.shop, "session": self.session, "async": self.asynchronous}


@dataclass(frozen=True)
class Refund:
    """Part of a paid session refunded at the fake Stripe (amount in cents)."""

    f: ClassVar[str] = "refund"
    shop: str
    session: str
    amount: int

    def value(self) -> dict[str, Any]:
        return {"shop": self.shop, "session": self.session, "amount": self.amount}


@dataclass(frozen=True)
class Consent:
    """The merchant sets a customer's SMS consent in the fake Shopify (which sends `customers/update`)."""

    f: ClassVar[str] = "consent"
    shop: str
    customer: int
    consent: bool

    def value(self) -> dict[str, Any]:
        return {"shop": self.shop, "customer": self.customer, "consent": self.consent}


@dataclass(frozen=True)
class Redact:
    """Shopify's `customers/redact` for a customer: their erasure."""

    f: ClassVar[str] = "redact"
    shop: str
    customer: int
    phone: str
    email: str

    def value(self) -> dict[str, Any]:
        return {"shop": self.shop, "customer": self.customer, "phone": self.phone, "email": self.email}


@dataclass(frozen=True)
class Uninstall:
    """Shopify's `app/uninstalled` for the shop."""

    f: ClassVar[str] = "uninstall"
    shop: str

    def value(self) -> dict[str, Any]:
        return {"shop": self.shop}


Operation = (
    CreateCampaign
    | Enqueue
    | Checkout
    | ImportContacts
    | ListContacts
    | Pay
    | Refund
    | Consent
    | Redact
    | Uninstall
)

# The operations answered by the service's API (the others are the providers' control calls, whose
# latency is the simulator's): what I9 holds to its latency bound. The last four only a load run's
# merchants record (loadtests/locustfile.py `OPERATIONS`): the lab's own clients do not poll.
API_OPERATIONS = frozenset(
    {
        CreateCampaign.f,
        Enqueue.f,
        Checkout.f,
        ImportContacts.f,
        ListContacts.f,
        "get_campaign",
        "list_campaigns",
        "cancel_campaign",
        "wallet",
    }
)


@dataclass(frozen=True)
class Outcome:
    """What performing an operation came to: each call's kind in the history (`ok`, `fail` or `info`;
    two calls for a duplicated enqueue), and the first call's status and JSON answer, if any came."""

    kinds: frozenset[str]
    status: int | None = None
    body: Any = None

    @property
    def ok(self) -> bool:
        """At least one call certainly took effect."""
        return OK in self.kinds

    @property
    def unknown(self) -> bool:
        """At least one call's effect is unknown (no answer, or a 5xx)."""
        return INFO in self.kinds

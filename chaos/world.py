"""The world the merchant clients act in: shops, their customers and payments, as the merchants know them.

The workload's set-up builds it through the providers; the generators then read it to choose among live
customers and paid sessions, and change it as a merchant's own decisions and completed payments do. Two
clients of one shop share its `ShopWorld`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Customer:
    id: int
    phone: str
    email: str
    first_name: str = ""
    consent: bool = True
    redacted: bool = False


@dataclass
class ShopWorld:
    domain: str
    phones: list[str] = field(default_factory=list)
    customers: list[Customer] = field(default_factory=list)
    paid_sessions: list[tuple[str, int]] = field(default_factory=list)  # (session id, amount in cents)
    uninstalled: bool = False

    def live_customers(self) -> list[Customer]:
        """Customers not erased yet: the only ones a merchant can still change or erase."""
        return [c for c in self.customers if not c.redacted]

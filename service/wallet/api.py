"""HTTP: `GET /api/wallet` and `GET /api/wallet/transactions`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db.models import CreditLedgerEntry
from service.http import problems
from service.pagination import Page
from service.rate_limits import RouteClass, rate_class
from service.shops import SessionShop
from service.wallet.ledger import ledger_page, wallet_balance


class WalletView(msgspec.Struct):
    balance: int
    reserved: int
    available: int


class LedgerEntryView(msgspec.Struct):
    id: int
    amount: int
    kind: str
    campaign_id: int | None
    messages: int
    note: str | None
    created_at: datetime

    @classmethod
    def of(cls, entry: CreditLedgerEntry | Row[Any]) -> LedgerEntryView:
        return cls(
            entry.id,
            entry.amount,
            entry.kind,
            entry.campaign_id,
            entry.messages,
            entry.note,
            entry.created_at,
        )


class LedgerPage(msgspec.Struct):
    items: list[LedgerEntryView]
    next_cursor: int | None


class WalletController(Controller):
    path = "/api/wallet"
    tags = ["wallet"]

    @get(
        "/",
        summary="Balance, reserved and available credits",
        responses=problems(401, 429, 503),
        opt=rate_class(RouteClass.GENERAL),
    )
    async def wallet(
        self, shop: NamedDependency[SessionShop], reader: NamedDependency[AsyncConnection]
    ) -> WalletView:
        balance, reserved = await wallet_balance(reader, shop.id)
        return WalletView(balance, reserved, balance - reserved)

    @get(
        "/transactions",
        summary="Ledger entries, oldest first; pass next_cursor as `after`",
        opt=rate_class(RouteClass.REPORTS),
        responses=problems(400, 429, 401, 503),
    )
    async def transactions(
        self,
        shop: NamedDependency[SessionShop],
        reader: NamedDependency[AsyncConnection],
        page: NamedDependency[Page],
    ) -> LedgerPage:
        entries, next_cursor = await ledger_page(reader, shop.id, page)
        return LedgerPage([LedgerEntryView.of(e) for e in entries], next_cursor)

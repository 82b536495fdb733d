"""HTTP: `GET /api/wallet` and `GET /api/wallet/transactions`."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, get
from litestar.params import Parameter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import CreditLedgerEntry, Shop
from service.pagination import keyset_page
from service.wallet.ledger import wallet_of


class WalletController(Controller):
    path = "/api/wallet"
    tags = ["wallet"]

    @get("/", summary="Balance, reserved and available credits")
    async def wallet(self, shop: Shop, db_session: AsyncSession) -> dict[str, Any]:
        async with db_session.begin():
            wallet = await wallet_of(db_session, shop.id)
        return {
            "balance": wallet.balance,
            "reserved": wallet.reserved,
            "available": wallet.balance - wallet.reserved,
        }

    @get("/transactions", summary="Ledger entries, oldest first; pass next_cursor as `after`")
    async def transactions(
        self,
        shop: Shop,
        db_session: AsyncSession,
        limit: Annotated[int, Parameter(ge=1, le=500)] = 100,
        after: Annotated[int | None, Parameter(ge=0)] = None,
    ) -> dict[str, Any]:
        query = select(CreditLedgerEntry).where(CreditLedgerEntry.shop_id == shop.id)
        page, next_cursor = await keyset_page(db_session, query, CreditLedgerEntry.id, limit, after)
        return {
            "items": [
                {
                    "id": e.id,
                    "amount": e.amount,
                    "kind": e.kind,
                    "campaign_id": e.campaign_id,
                    "messages": e.messages,
                    "note": e.note,
                    "created_at": e.created_at.isoformat(),
                }
                for e in page
            ],
            "next_cursor": next_cursor,
        }

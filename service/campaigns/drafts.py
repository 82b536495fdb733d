"""Campaign drafts, reads and cancellation. Every query is scoped to the requesting shop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.campaigns import progress
from service.campaigns.segments import count_segments
from service.db.dialect import binds, bound
from service.db.models import (
    Campaign,
    CampaignStatus,
    CreditLedgerEntry,
    CreditReservation,
    LedgerKind,
    utcnow,
)
from service.db.session import reads_need_no_transaction
from service.errors import CampaignNotCancellable, InvalidInput, NotFound
from service.input_rules import text_problem
from service.pagination import Page, keyset_page

MAX_NAME_CHARACTERS = 200
MAX_BODY_CHARACTERS = 1_600


def _validate(name: Any, body: Any) -> tuple[str, str]:
    errors = []
    if text_problem(name, MAX_NAME_CHARACTERS) or not str(name).strip():
        errors.append({"field": "name", "message": f"must be 1 to {MAX_NAME_CHARACTERS} characters of text"})
    if text_problem(body, MAX_BODY_CHARACTERS) or not str(body).strip():
        errors.append({"field": "body", "message": f"must be 1 to {MAX_BODY_CHARACTERS} characters of text"})
    if errors:
        raise InvalidInput("the campaign is invalid", errors=errors)
    return str(name).strip(), str(body)


_CAMPAIGNS = cast(Table, Campaign.__table__)
_CREATE = (
    insert(_CAMPAIGNS)
    .values(
        status=CampaignStatus.DRAFT.value,
        **binds(_CAMPAIGNS, "d_", "shop_id", "name", "body", "segments", "created_at", "last_activity_at"),
    )
    .returning(*_CAMPAIGNS.c)
)


async def create_campaign(session: AsyncSession, shop_id: int, name: Any, body: Any) -> Row[Any]:
    """A draft, as its row stands after the insert (every column; one statement built once)."""
    name, body = _validate(name, body)
    now = utcnow()
    values = bound(
        "d_",
        shop_id=shop_id,
        name=name,
        body=body,
        segments=count_segments(body),
        created_at=now,
        last_activity_at=now,
    )
    async with session.begin():
        return (await session.execute(_CREATE, values)).one()


async def get_campaign(session: AsyncSession, shop_id: int, campaign_id: int) -> Campaign:
    """The campaign if it belongs to this shop; another shop's campaign is indistinguishable from none."""
    campaign = await session.scalar(
        select(Campaign).where(Campaign.id == campaign_id, Campaign.shop_id == shop_id)
    )
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} not found")
    return campaign


async def list_campaigns(
    connection: AsyncConnection, shop_id: int, page: Page
) -> tuple[list[Row[Any]], int | None]:
    return await keyset_page(
        connection, select(Campaign).where(Campaign.shop_id == shop_id), Campaign.id, page
    )


@dataclass(frozen=True)
class Reserved:
    """What a campaign's credit reservation holds."""

    amount: int
    remaining: int
    status: str


@dataclass(frozen=True)
class CampaignDetail:
    """A campaign with what its recipient rows and the ledger say about it (not its own counters).
    `campaign` has the campaign table's columns."""

    campaign: Row[Any]
    counts: dict[str, int]
    reservation: Reserved | None
    debited: int


# The campaign with its reservation and its debits beside it: one statement, however many debits.
_DEBITED = (
    select(func.coalesce(-func.sum(CreditLedgerEntry.amount), 0))
    .where(CreditLedgerEntry.campaign_id == Campaign.id, CreditLedgerEntry.kind == LedgerKind.DEBIT)
    .scalar_subquery()
)
_DETAIL = (
    select(
        Campaign,
        CreditReservation.amount.label("reservation_amount"),
        CreditReservation.remaining.label("reservation_remaining"),
        CreditReservation.status.label("reservation_status"),
        _DEBITED.label("debited"),
    )
    .outerjoin(CreditReservation, CreditReservation.campaign_id == Campaign.id)
    .where(Campaign.id == bindparam("campaign_id"), Campaign.shop_id == bindparam("shop_id"))
)


async def campaign_detail(connection: AsyncConnection, shop_id: int, campaign_id: int) -> CampaignDetail:
    """Status, counts by recipient status (from the rows themselves), credits reserved and debited: two
    statements (the campaign with its reservation and debits, then the counts), read as Core rows.
    Another shop's campaign is indistinguishable from none."""
    found = (await connection.execute(_DETAIL, {"campaign_id": campaign_id, "shop_id": shop_id})).first()
    if found is None:
        raise NotFound(f"campaign {campaign_id} not found")
    counts = await progress.status_counts(connection, campaign_id)
    reservation = None
    if found.reservation_status is not None:
        reservation = Reserved(
            int(found.reservation_amount), int(found.reservation_remaining), str(found.reservation_status)
        )
    return CampaignDetail(found, counts, reservation, int(found.debited or 0))


async def cancel_campaign(session: AsyncSession, shop_id: int, campaign_id: int) -> CampaignDetail:
    """Cancel a draft or sending campaign (see `progress.stop_campaign`)."""
    async with session.begin():
        campaign = await get_campaign(session, shop_id, campaign_id)
        stopped = await progress.stop_campaign(
            session, campaign_id, CampaignStatus.CANCELLED, "campaign_cancelled"
        )
        if stopped is None:
            raise CampaignNotCancellable(f"campaign {campaign_id} is {campaign.status}")
    async with session.begin():
        await reads_need_no_transaction(session)
        return await campaign_detail(await session.connection(), shop_id, campaign_id)

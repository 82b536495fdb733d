"""Shops: installed on their first valid session token, as the app's install flow would."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.apply_once import EffectResult
from service.db.dialect import insert_ignoring_conflicts
from service.db.models import Campaign, CampaignStatus, Shop, Wallet, utcnow
from service.errors import Unauthorized


async def install_shop(session: AsyncSession, domain: str) -> Shop:
    """The shop and its wallet, created if missing. Concurrent first requests race safely on unique keys.

    Opens and commits its own transaction; the session must not be inside one.
    """
    async with session.begin():
        shop = await session.scalar(select(Shop).where(Shop.domain == domain))
    if shop is not None:
        return shop
    async with session.begin():
        await session.execute(
            insert_ignoring_conflicts(session, Shop, ["domain"]).values(
                domain=domain, active=True, installed_at=utcnow()
            )
        )
        shop = await session.scalar(select(Shop).where(Shop.domain == domain))
        assert shop is not None
        await session.execute(
            insert_ignoring_conflicts(session, Wallet, ["shop_id"]).values(
                shop_id=shop.id, balance=0, reserved=0, updated_at=utcnow()
            )
        )
    return shop


async def shop_for_request(session: AsyncSession, domain: str) -> Shop:
    """The shop behind a verified token: installed if new, refused if uninstalled."""
    shop = await install_shop(session, domain)
    if not shop.active:
        raise Unauthorized("this shop has uninstalled the app")
    return shop


async def shop_by_domain(session: AsyncSession, domain: str) -> Shop | None:
    async with session.begin():
        return await session.scalar(select(Shop).where(Shop.domain == domain))


async def uninstall_shop(session: AsyncSession, shop_id: int) -> EffectResult:
    """`app/uninstalled`: the shop's sessions are refused from now on, its sending campaigns cancelled and
    their unsent credits released. Caller's transaction (the webhook's)."""
    from service.campaigns import progress

    stopped = await session.scalar(
        update(Shop)
        .where(Shop.id == shop_id, Shop.active.is_(True))
        .values(active=False, uninstalled_at=utcnow())
        .returning(Shop.id)
    )
    if stopped is None:
        return EffectResult("already_uninstalled")
    campaign_ids = await session.scalars(
        select(Campaign.id).where(Campaign.shop_id == shop_id, Campaign.status == CampaignStatus.SENDING)
    )
    cancelled = 0
    for campaign_id in sorted(campaign_ids):
        if (
            await progress.stop_campaign(
                session, campaign_id, CampaignStatus.CANCELLED, "app_uninstalled", from_draft=False
            )
            is not None
        ):
            cancelled += 1
    return EffectResult(f"uninstalled:{cancelled}")

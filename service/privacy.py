"""Shopify's mandatory privacy topics: export a customer's data, erase a customer's or a shop's data.

Erasing means: the customer's contacts are deleted (their unsent campaign recipients cancelled first, and
their credits released), the phone number kept on every campaign recipient row of theirs is blanked,
and stored webhook payloads and data exports about them are dropped. The credit ledger keeps its amounts:
it holds no personal data, and the money it records stays true.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.campaigns import progress
from service.contacts.shopify_sync import customer_email, customer_phone, lock_customer
from service.db.apply_once import EffectResult
from service.db.dialect import for_update
from service.db.models import (
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    Contact,
    PrivacyRequest,
    Shop,
    WebhookEvent,
    utcnow,
)


async def _customer_contacts(
    session: AsyncSession, shop_id: int, customer: dict[str, Any], region: str
) -> list[Contact]:
    conditions = []
    if customer.get("id") is not None:
        conditions.append(Contact.shopify_customer_id == int(customer["id"]))
    email = customer_email(customer)
    if email:
        conditions.append(Contact.email == email)
    phone = customer_phone(customer, region)
    if phone:
        conditions.append(Contact.phone_e164 == phone)
    if not conditions:
        return []
    return list(
        await session.scalars(
            for_update(
                select(Contact).where(Contact.shop_id == shop_id, or_(*conditions)).order_by(Contact.id)
            )
        )
    )


async def export_customer(
    session: AsyncSession, shop_id: int, customer: dict[str, Any], region: str
) -> EffectResult:
    """`customers/data_request`: what this service holds on the customer, kept for the merchant."""
    contacts = await _customer_contacts(session, shop_id, customer, region)
    ids = [c.id for c in contacts]
    messages: Any = (
        await session.execute(
            select(CampaignRecipient.campaign_id, CampaignRecipient.status, CampaignRecipient.sent_at).where(
                CampaignRecipient.contact_id.in_(ids)
            )
        )
        if ids
        else []
    )
    export = {
        "shopify_customer_id": customer.get("id"),
        "contacts": [
            {
                "phone": c.phone_e164,
                "email": c.email,
                "first_name": c.first_name,
                "sms_consent": c.sms_consent,
                "created_at": c.created_at.isoformat(),
            }
            for c in contacts
        ],
        "messages": [
            {"campaign_id": cid, "status": status, "sent_at": sent_at.isoformat() if sent_at else None}
            for cid, status, sent_at in messages
        ],
    }
    session.add(
        PrivacyRequest(
            shop_id=shop_id,
            kind="data_request",
            shopify_customer_id=customer.get("id"),
            export=export,
            completed_at=utcnow(),
        )
    )
    return EffectResult(f"exported:{len(contacts)}")


async def redact_customer(
    session: AsyncSession, shop_id: int, customer: dict[str, Any], region: str
) -> EffectResult:
    """`customers/redact`: erase one customer's personal data, and leave the tombstone that keeps it so."""
    if customer.get("id") is not None:
        state = await lock_customer(session, shop_id, int(customer["id"]))
        state.erased_at = state.erased_at or utcnow()
    contacts = await _customer_contacts(session, shop_id, customer, region)
    phones = {c.phone_e164 for c in contacts}
    phone = customer_phone(customer, region)
    if phone:
        phones.add(phone)
    for contact in contacts:
        await progress.cancel_recipients_of_contact(session, contact.id, reason="customer_redacted")
    ids = [c.id for c in contacts]
    recipient_match = []
    if ids:
        recipient_match.append(CampaignRecipient.contact_id.in_(ids))
    if phones:
        recipient_match.append(CampaignRecipient.phone_e164.in_(sorted(phones)))
    if recipient_match:
        await session.execute(
            update(CampaignRecipient)
            .where(CampaignRecipient.shop_id == shop_id, or_(*recipient_match))
            .values(phone_e164=None)
        )
    if ids:
        await session.execute(delete(Contact).where(Contact.id.in_(ids)))
    customer_id = customer.get("id")
    if customer_id is not None:
        await session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.shop_id == shop_id, WebhookEvent.subject == f"customer:{int(customer_id)}")
            .values(payload=None)
        )
        await session.execute(
            update(PrivacyRequest)
            .where(PrivacyRequest.shop_id == shop_id, PrivacyRequest.shopify_customer_id == int(customer_id))
            .values(export=None)
        )
    session.add(
        PrivacyRequest(
            shop_id=shop_id, kind="customer_redact", shopify_customer_id=customer_id, completed_at=utcnow()
        )
    )
    return EffectResult(f"redacted:{len(contacts)}")


async def redact_shop(session: AsyncSession, shop_id: int) -> EffectResult:
    """`shop/redact` (48 h after uninstall): erase every customer's personal data of the shop."""
    campaign_ids = await session.scalars(
        select(Campaign.id).where(
            Campaign.shop_id == shop_id, Campaign.status.in_([CampaignStatus.DRAFT, CampaignStatus.SENDING])
        )
    )
    for campaign_id in sorted(campaign_ids):
        await progress.stop_campaign(session, campaign_id, CampaignStatus.CANCELLED, "shop_redacted")
    await session.execute(
        update(CampaignRecipient).where(CampaignRecipient.shop_id == shop_id).values(phone_e164=None)
    )
    deleted = await session.execute(delete(Contact).where(Contact.shop_id == shop_id))
    await session.execute(update(WebhookEvent).where(WebhookEvent.shop_id == shop_id).values(payload=None))
    await session.execute(update(PrivacyRequest).where(PrivacyRequest.shop_id == shop_id).values(export=None))
    await session.execute(update(Shop).where(Shop.id == shop_id).values(redacted_at=utcnow()))
    session.add(PrivacyRequest(shop_id=shop_id, kind="shop_redact", completed_at=utcnow()))
    return EffectResult(f"shop_redacted:{int(deleted.rowcount)}")  # type: ignore[attr-defined]

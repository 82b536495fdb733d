"""Contacts from Shopify customers (`customers/create`, `customers/update`).

A customer maps to one contact per shop (by Shopify customer id, or by phone for a contact imported
earlier). Deliveries come late and out of order, so each contact remembers the `X-Shopify-Triggered-At`
of the last customer webhook applied to it; an older one changes nothing. SMS consent is Shopify's
`sms_marketing_consent.state == "subscribed"`; a withdrawn consent takes the contact out of every
campaign not yet sent to it, at once.

An erased customer stays erased (safeguard 11): every customer event locks the customer's
`shopify_customers` row first, and an update that finds the erasure tombstone there changes nothing,
however late Shopify delivered it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.campaigns import progress
from service.contacts.phones import InvalidPhone, normalize_phone
from service.db.apply_once import EffectResult
from service.db.dialect import for_update, insert_ignoring_conflicts
from service.db.models import Contact, ShopifyCustomer, utcnow
from service.input_rules import is_storable_text
from service.safeguards import ERASURE_IS_FINAL, is_on
from service.settings import Settings


def customer_phone(customer: dict[str, Any], region: str) -> str | None:
    address = customer.get("default_address")
    raw = customer.get("phone") or (address.get("phone") if isinstance(address, dict) else None)
    if not isinstance(raw, str) or not is_storable_text(raw, 32):
        return None
    try:
        return normalize_phone(raw, region)
    except InvalidPhone:
        return None


def customer_email(customer: dict[str, Any]) -> str | None:
    """The customer's email as contacts store it (trimmed, lower case), or None if it is not one."""
    raw = customer.get("email")
    email = raw.strip().lower() if isinstance(raw, str) else None
    return email if email and is_storable_text(email, 320) else None


def customer_consents(customer: dict[str, Any]) -> bool:
    consent = customer.get("sms_marketing_consent") or {}
    return isinstance(consent, dict) and consent.get("state") == "subscribed"


async def lock_customer(session: AsyncSession, shop_id: int, customer_id: int) -> ShopifyCustomer:
    """The customer's row, created if new and locked until the transaction ends.

    The insert cannot be skipped for a read: two first events of one customer would both find nothing,
    and nothing would order them. With the row inserted (or found) and locked, PostgreSQL makes a second
    event of the same customer wait; SQLite's writers are serialised anyway.
    """
    await session.execute(
        insert_ignoring_conflicts(session, ShopifyCustomer, ["shop_id", "shopify_customer_id"]).values(
            shop_id=shop_id, shopify_customer_id=customer_id
        )
    )
    row = await session.scalar(
        for_update(
            select(ShopifyCustomer).where(
                ShopifyCustomer.shop_id == shop_id, ShopifyCustomer.shopify_customer_id == customer_id
            )
        )
    )
    assert row is not None  # inserted or already there, and rows of this table are never deleted
    return row


async def sync_customer(
    session: AsyncSession,
    settings: Settings,
    shop_id: int,
    customer: dict[str, Any],
    triggered_at: datetime | None,
    region: str,
) -> EffectResult:
    """Create or update the customer's contact. Caller's transaction (the webhook's)."""
    customer_id = int(customer["id"])
    state = await lock_customer(session, shop_id, customer_id)
    if state.erased_at is not None and is_on(settings, ERASURE_IS_FINAL):
        return EffectResult("customer_erased", keep_payload=False)
    phone = customer_phone(customer, region)
    consent = customer_consents(customer)
    email = customer_email(customer)
    first_name = customer.get("first_name") if is_storable_text(customer.get("first_name"), 200) else None
    match = Contact.shopify_customer_id == customer_id
    contact = await session.scalar(
        for_update(
            select(Contact)
            .where(Contact.shop_id == shop_id, or_(match, Contact.phone_e164 == phone) if phone else match)
            .order_by(Contact.shopify_customer_id.is_(None))  # the linked contact first
            .limit(1)
        )
    )
    if (
        contact is not None
        and triggered_at
        and contact.shopify_updated_at
        and triggered_at <= contact.shopify_updated_at
    ):
        return EffectResult("stale")
    now = utcnow()
    if contact is None:
        if phone is None:
            return EffectResult("ignored_no_phone")
        await session.execute(
            insert_ignoring_conflicts(session, Contact, ["shop_id", "phone_e164"]).values(
                shop_id=shop_id,
                phone_e164=phone,
                email=email,
                first_name=first_name,
                sms_consent=consent,
                shopify_customer_id=customer_id,
                shopify_updated_at=triggered_at,
                created_at=now,
                updated_at=now,
            )
        )
        return EffectResult("created")
    values: dict[str, Any] = {
        "email": email,
        "first_name": first_name,
        # Without a reachable phone there is nobody to text: treat it as no consent.
        "sms_consent": consent and (phone is not None or contact.phone_e164 is not None),
        "shopify_customer_id": customer_id,
        "shopify_updated_at": triggered_at or contact.shopify_updated_at,
        "updated_at": now,
    }
    flagged = False
    if phone and phone != contact.phone_e164:
        taken = await session.scalar(
            select(Contact.id).where(
                Contact.shop_id == shop_id, Contact.phone_e164 == phone, Contact.id != contact.id
            )
        )
        if taken is None:
            values["phone_e164"] = phone
        else:
            flagged = True  # another contact already has this number; keep ours and let an operator look
    withdrew = contact.sms_consent and not values["sms_consent"]
    await session.execute(update(Contact).where(Contact.id == contact.id).values(**values))
    if withdrew:
        cancelled = await progress.cancel_recipients_of_contact(
            session, contact.id, reason="consent_withdrawn"
        )
        return EffectResult(f"consent_withdrawn:{cancelled}", flagged=flagged)
    return EffectResult("updated", flagged=flagged)

"""The schema. Every "exactly once" of the pipeline is a constraint or a conditional update on these tables.

Uniqueness that carries a safeguard is named after it:
- `uq_enqueue_requests_shop_key`: one stored outcome per (shop, Idempotency-Key)       (safeguard 1)
- `uq_campaign_recipients_campaign_contact`: one recipient per contact per campaign       (safeguard 2)
- `uq_credit_reservations_shop_key`: one reservation per campaign                         (safeguard 2)
- `uq_campaign_recipients_provider_message_id`: a provider message is recorded once        (safeguard 5)
- `uq_credit_ledger_shop_key`: one ledger entry per debit attempt / grant / payment        (safeguard 5)
- `uq_webhook_events_provider_event`: one effect per provider event                         (safeguard 6)
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC in Python, the same instant on both backends (SQLite keeps naive text, so we normalise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class CampaignStatus(enum.StrEnum):
    DRAFT = "draft"
    SENDING = "sending"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class RecipientStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for a batch job to claim it
    SENDING = "sending"  # claimed by an attempt; the provider may or may not have accepted it
    SENT = "sent"  # provider accepted it; debited
    DELIVERED = "delivered"  # final delivery reports (still debited) ...
    UNDELIVERED = "undelivered"
    EXPIRED = "expired"
    FAILED = "failed"  # the provider rejected it, or it could not be resolved; not debited
    CANCELLED = "cancelled"  # never sent: campaign cancelled or its reservation expired


# A recipient "has a send outcome" once it left pending/sending; a campaign completes when all have one.
UNSETTLED_RECIPIENT_STATUSES = (RecipientStatus.PENDING, RecipientStatus.SENDING)
ACCEPTED_RECIPIENT_STATUSES = (
    RecipientStatus.SENT,
    RecipientStatus.DELIVERED,
    RecipientStatus.UNDELIVERED,
    RecipientStatus.EXPIRED,
)


class LedgerKind(enum.StrEnum):
    ADJUSTMENT = "adjustment"  # an operator's grant (`smslab credits grant`)
    CORRECTION = "correction"  # an operator's correction, plus or minus (`smslab credits adjust`)
    PURCHASE = "purchase"
    REFUND = "refund"
    DEBIT = "debit"


class ReservationStatus(enum.StrEnum):
    ACTIVE = "active"
    SETTLED = "settled"  # campaign finished; leftover released
    EXPIRED = "expired"  # past its expiry; leftover released


class Shop(Base):
    __tablename__ = "shops"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    domain: Mapped[str] = mapped_column(String(255), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    installed_at: Mapped[datetime] = mapped_column(default=utcnow)
    uninstalled_at: Mapped[datetime | None]
    redacted_at: Mapped[datetime | None]


class Wallet(Base):
    """Running totals of a shop's credits. `balance` must equal the sum of its ledger entries (I4)."""

    __tablename__ = "wallets"

    shop_id: Mapped[int] = mapped_column(BigId, ForeignKey("shops.id"), primary_key=True)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Contact(Base):
    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("shop_id", "phone_e164"),
        UniqueConstraint("shop_id", "shopify_customer_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    shop_id: Mapped[int] = mapped_column(BigId, ForeignKey("shops.id"))
    phone_e164: Mapped[str] = mapped_column(String(20))
    email: Mapped[str | None] = mapped_column(String(320))
    first_name: Mapped[str | None] = mapped_column(String(200))
    sms_consent: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set when the contact came from Shopify; `shopify_updated_at` is the X-Shopify-Triggered-At of the
    # last customer webhook applied, so an older delivery arriving late changes nothing.
    shopify_customer_id: Mapped[int | None] = mapped_column(BigInteger)
    shopify_updated_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Campaign(Base):
    __tablename__ = "campaigns"
    __table_args__ = (Index(None, "shop_id", "id"), Index(None, "status", "last_activity_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    shop_id: Mapped[int] = mapped_column(BigId, ForeignKey("shops.id"))
    name: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    segments: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=CampaignStatus.DRAFT)
    status_reason: Mapped[str | None] = mapped_column(String(64))
    recipient_count: Mapped[int] = mapped_column(Integer, default=0)
    batch_count: Mapped[int] = mapped_column(Integer, default=0)
    sent_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    last_activity_at: Mapped[datetime] = mapped_column(default=utcnow)


class CampaignRecipient(Base):
    __tablename__ = "campaign_recipients"
    __table_args__ = (
        UniqueConstraint("campaign_id", "contact_id"),
        UniqueConstraint("provider_message_id"),
        # Partial indexes: a row is in each only while its status needs it, so a claim (pending ->
        # sending) writes one index entry fewer per message and a record (sending -> sent) two fewer
        # than indexes with `status` as a column did, and neither grows with messages already sent.
        # Queries must name the status as a literal (`recipient_status_is`) for PostgreSQL to use them.
        Index(
            "ix_campaign_recipients_pending",
            "campaign_id",
            "batch_no",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index(
            "ix_campaign_recipients_sending_lease",
            "lease_expires_at",
            postgresql_where=text("status = 'sending'"),
            sqlite_where=text("status = 'sending'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(BigId, ForeignKey("campaigns.id"))
    shop_id: Mapped[int] = mapped_column(BigId, ForeignKey("shops.id"))
    contact_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("contacts.id", ondelete="SET NULL"))
    phone_e164: Mapped[str | None] = mapped_column(String(20))
    batch_no: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=RecipientStatus.PENDING)
    attempt_id: Mapped[str | None] = mapped_column(String(36))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None]
    claimed_at: Mapped[datetime | None]
    provider_message_id: Mapped[str | None] = mapped_column(String(64))
    provider_status: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[int | None] = mapped_column(Integer)
    failure_reason: Mapped[str | None] = mapped_column(String(64))
    sent_at: Mapped[datetime | None]
    status_updated_at: Mapped[datetime | None]


def recipient_status_is(status: RecipientStatus) -> ColumnElement[bool]:
    """`campaign_recipients.status = '<status>'` with the status written into the SQL, not bound.

    The partial indexes are chosen only when the planner can prove their predicate from the query; with
    the status as a parameter, PostgreSQL's generic plan for a prepared statement (asyncpg prepares
    every statement) cannot, and a claim would scan the table."""
    return CampaignRecipient.status == literal_column(f"'{RecipientStatus(status).value}'")


class CreditLedgerEntry(Base):
    """Append-only. Nothing updates or deletes a row; corrections are new entries."""

    __tablename__ = "credit_ledger"
    __table_args__ = (UniqueConstraint("shop_id", "idempotency_key"), Index(None, "campaign_id"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    shop_id: Mapped[int] = mapped_column(BigId, ForeignKey("shops.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str] = mapped_column(String(200))
    campaign_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("campaigns.id"))
    messages: Mapped[int] = mapped_column(Integer, default=0)
    note: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CreditReservation(Base):
    __tablename__ = "credit_reservations"
    __table_args__ = (UniqueConstraint("shop_id", "reservation_key"), Index(None, "status", "expires_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    shop_id: Mapped[int] = mapped_column(BigId, ForeignKey("shops.id"))
    campaign_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("campaigns.id"), index=True)
    reservation_key: Mapped[str] = mapped_column(String(200))
    amount: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=ReservationStatus.ACTIVE)
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingStatus(enum.StrEnum):
    PENDING = "pending"  # checkout session created, not paid (yet)
    PAID = "paid"  # credits granted
    FAILED = "failed"  # async payment failed
    REFUNDED = "refunded"  # fully refunded


class BillingTransaction(Base):
    """One credit purchase: a Stripe Checkout Session and what became of it."""

    __tablename__ = "billing_transactions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    shop_id: Mapped[int] = mapped_column(BigId, ForeignKey("shops.id"))
    idempotency_key: Mapped[str] = mapped_column(String(300), unique=True)  # checkout:{shop}:{client key}
    provider: Mapped[str] = mapped_column(String(16))
    provider_ref: Mapped[str | None] = mapped_column(String(200), unique=True)  # cs_... session id
    payment_intent: Mapped[str | None] = mapped_column(String(200), unique=True)
    credits: Mapped[int] = mapped_column(BigInteger)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    credits_granted: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_refunded: Mapped[int] = mapped_column(BigInteger, default=0)
    # Credits a refund should have removed but could not (already spent or reserved): flagged for billing.
    refund_shortfall: Mapped[int] = mapped_column(BigInteger, default=0)
    checkout_url: Mapped[str | None] = mapped_column(Text)
    paid_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingRefund(Base):
    """One Stripe refund (re_...), deducted at most once whatever events mention it."""

    __tablename__ = "billing_refunds"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    billing_id: Mapped[int] = mapped_column(BigId, ForeignKey("billing_transactions.id"), index=True)
    refund_id: Mapped[str] = mapped_column(String(200), unique=True)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    credits: Mapped[int] = mapped_column(BigInteger)  # the refunded share of the purchased credits
    deducted: Mapped[int] = mapped_column(BigInteger, default=0)
    shortfall: Mapped[int] = mapped_column(BigInteger, default=0)
    applied: Mapped[bool] = mapped_column(
        Boolean, default=False
    )  # False: waits for the purchase to be granted
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookEvent(Base):
    """A provider event that took effect, recorded in the same transaction as its effect (safeguard 6)."""

    __tablename__ = "webhook_events"
    __table_args__ = (UniqueConstraint("provider", "event_id"), Index(None, "shop_id", "provider"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(200))
    event_type: Mapped[str] = mapped_column(String(100))
    shop_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("shops.id"))
    subject: Mapped[str | None] = mapped_column(
        String(200)
    )  # the object it is about (session, customer, message)
    payload: Mapped[dict[str, Any] | None]
    outcome: Mapped[str] = mapped_column(String(32), default="applied")
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    triggered_at: Mapped[datetime | None]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class PendingDeliveryReport(Base):
    """A delivery report that arrived before the worker recorded its message id: kept, applied later (I7)."""

    __tablename__ = "pending_delivery_reports"
    __table_args__ = (Index(None, "campaign_id"), Index(None, "provider_message_id"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(BigId, ForeignKey("campaigns.id"))
    recipient_id: Mapped[int] = mapped_column(BigId, ForeignKey("campaign_recipients.id"))
    provider_message_id: Mapped[str] = mapped_column(String(64))
    provider_status: Mapped[str] = mapped_column(String(32))
    error_code: Mapped[int | None] = mapped_column(Integer)
    reported_at: Mapped[datetime | None]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class PrivacyRequest(Base):
    """Shopify's mandatory privacy topics: a customer's data export, or the record that it was erased."""

    __tablename__ = "privacy_requests"
    __table_args__ = (Index(None, "shop_id", "shopify_customer_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    shop_id: Mapped[int] = mapped_column(BigId, ForeignKey("shops.id"))
    kind: Mapped[str] = mapped_column(String(32))  # data_request, customer_redact, shop_redact
    shopify_customer_id: Mapped[int | None] = mapped_column(BigInteger)
    export: Mapped[dict[str, Any] | None]
    completed_at: Mapped[datetime] = mapped_column(default=utcnow)


class ShopifyCustomer(Base):
    """One row per Shopify customer a shop's webhooks named: the lock that orders that customer's events,
    and the erasure tombstone.

    Every customer event (create, update, redact) first locks this row, so an erasure and an update of
    the same customer never interleave; once `erased_at` is set, no later-delivered update may bring the
    customer's data back (safeguard 11, `erasure_is_final`).
    """

    __tablename__ = "shopify_customers"

    shop_id: Mapped[int] = mapped_column(BigId, ForeignKey("shops.id"), primary_key=True)
    shopify_customer_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    erased_at: Mapped[datetime | None]


class EnqueueRequest(Base):
    """A stored Idempotency-Key of the enqueue endpoint (Brandur Leach's key table, one local phase)."""

    __tablename__ = "enqueue_requests"
    __table_args__ = (UniqueConstraint("shop_id", "idempotency_key"), Index(None, "expires_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    shop_id: Mapped[int] = mapped_column(BigId, ForeignKey("shops.id"))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    campaign_id: Mapped[int] = mapped_column(BigId, ForeignKey("campaigns.id"))
    fingerprint: Mapped[str] = mapped_column(String(64))
    locked_at: Mapped[datetime | None]
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class ReconcilePass(Base):
    """One reconcile pass, as the service itself accounts for it: what it found and did, by kind.

    The lab saves these rows with the run's snapshot and shows them beside ground truth (never as
    evidence for an invariant); an operator reads them to see what healing the pipeline needed. A pass
    that raised still leaves its row, with what it had done and the error's type. Rows older than
    `reconciler.PASSES_KEPT` are deleted by a later pass.
    """

    __tablename__ = "reconcile_passes"
    __table_args__ = (Index(None, "started_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    started_at: Mapped[datetime]
    duration_s: Mapped[float] = mapped_column(Float)
    process: Mapped[str | None] = mapped_column(String(64))  # host:pid of the worker that ran it
    expired_leases: Mapped[int] = mapped_column(Integer, default=0)  # claims found past their lease
    resolved_accepted: Mapped[int] = mapped_column(Integer, default=0)  # Mitto had them: sent, debited
    resolved_not_accepted: Mapped[int] = mapped_column(Integer, default=0)  # never accepted: pending again
    left_unresolved: Mapped[int] = mapped_column(Integer, default=0)  # lookup failed; left for a later pass
    gave_up: Mapped[int] = mapped_column(Integer, default=0)  # unresolved past the give-up time: the policy
    batches_requeued: Mapped[int] = mapped_column(Integer, default=0)
    campaigns_completed: Mapped[int] = mapped_column(Integer, default=0)
    counters_fixed: Mapped[int] = mapped_column(Integer, default=0)
    reservations_released: Mapped[int] = mapped_column(Integer, default=0)  # stopped campaigns' leftovers
    reservations_expired: Mapped[int] = mapped_column(Integer, default=0)
    reports_applied: Mapped[int] = mapped_column(Integer, default=0)  # kept delivery reports applied
    keys_purged: Mapped[int] = mapped_column(Integer, default=0)  # Idempotency-Keys past their 24 h
    stuck_campaigns: Mapped[int] = mapped_column(Integer, default=0)  # sending, idle for a whole lease
    error: Mapped[str | None] = mapped_column(String(100))  # the exception's type, if the pass raised

"""Initial schema: shops, contacts, campaigns and recipients, the credit ledger, reservations,
billing, webhook events and enqueue idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# SQLite auto-increments only INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shops",
        sa.Column("id", ID, nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("installed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("uninstalled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shops")),
        sa.UniqueConstraint("domain", name=op.f("uq_shops_domain")),
    )
    op.create_table(
        "billing_transactions",
        sa.Column("id", ID, nullable=False),
        sa.Column("shop_id", ID, nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("provider_ref", sa.String(length=200), nullable=True),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["shop_id"], ["shops.id"], name=op.f("fk_billing_transactions_shop_id_shops")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_transactions")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_billing_transactions_idempotency_key")),
        sa.UniqueConstraint("provider_ref", name=op.f("uq_billing_transactions_provider_ref")),
    )
    op.create_table(
        "campaigns",
        sa.Column("id", ID, nullable=False),
        sa.Column("shop_id", ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("segments", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.String(length=64), nullable=True),
        sa.Column("recipient_count", sa.Integer(), nullable=False),
        sa.Column("batch_count", sa.Integer(), nullable=False),
        sa.Column("sent_count", sa.Integer(), nullable=False),
        sa.Column("failed_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["shop_id"], ["shops.id"], name=op.f("fk_campaigns_shop_id_shops")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
    )
    op.create_index(op.f("ix_campaigns_shop_id_id"), "campaigns", ["shop_id", "id"])
    op.create_index(op.f("ix_campaigns_status_last_activity_at"), "campaigns", ["status", "last_activity_at"])
    op.create_table(
        "contacts",
        sa.Column("id", ID, nullable=False),
        sa.Column("shop_id", ID, nullable=False),
        sa.Column("phone_e164", sa.String(length=20), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("first_name", sa.String(length=200), nullable=True),
        sa.Column("sms_consent", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["shop_id"], ["shops.id"], name=op.f("fk_contacts_shop_id_shops")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contacts")),
        sa.UniqueConstraint("shop_id", "phone_e164", name=op.f("uq_contacts_shop_id_phone_e164")),
    )
    op.create_table(
        "wallets",
        sa.Column("shop_id", ID, nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["shop_id"], ["shops.id"], name=op.f("fk_wallets_shop_id_shops")),
        sa.PrimaryKeyConstraint("shop_id", name=op.f("pk_wallets")),
    )
    op.create_table(
        "webhook_events",
        sa.Column("id", ID, nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("shop_id", ID, nullable=True),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["shop_id"], ["shops.id"], name=op.f("fk_webhook_events_shop_id_shops")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint("provider", "event_id", name=op.f("uq_webhook_events_provider_event_id")),
    )
    op.create_table(
        "campaign_recipients",
        sa.Column("id", ID, nullable=False),
        sa.Column("campaign_id", ID, nullable=False),
        sa.Column("shop_id", ID, nullable=False),
        sa.Column("contact_id", ID, nullable=True),
        sa.Column("phone_e164", sa.String(length=20), nullable=True),
        sa.Column("batch_no", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempt_id", sa.String(length=36), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("provider_message_id", sa.String(length=64), nullable=True),
        sa.Column("provider_status", sa.String(length=32), nullable=True),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("failure_reason", sa.String(length=64), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_campaign_recipients_campaign_id_campaigns")
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_campaign_recipients_contact_id_contacts"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(["shop_id"], ["shops.id"], name=op.f("fk_campaign_recipients_shop_id_shops")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_recipients")),
        sa.UniqueConstraint(
            "campaign_id", "contact_id", name=op.f("uq_campaign_recipients_campaign_id_contact_id")
        ),
        sa.UniqueConstraint("provider_message_id", name=op.f("uq_campaign_recipients_provider_message_id")),
    )
    op.create_index(
        op.f("ix_campaign_recipients_campaign_id_batch_no_status"),
        "campaign_recipients",
        ["campaign_id", "batch_no", "status"],
    )
    op.create_index(
        op.f("ix_campaign_recipients_status_lease_expires_at"),
        "campaign_recipients",
        ["status", "lease_expires_at"],
    )
    op.create_table(
        "credit_ledger",
        sa.Column("id", ID, nullable=False),
        sa.Column("shop_id", ID, nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("campaign_id", ID, nullable=True),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.Column("note", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_credit_ledger_campaign_id_campaigns")
        ),
        sa.ForeignKeyConstraint(["shop_id"], ["shops.id"], name=op.f("fk_credit_ledger_shop_id_shops")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_ledger")),
        sa.UniqueConstraint(
            "shop_id", "idempotency_key", name=op.f("uq_credit_ledger_shop_id_idempotency_key")
        ),
    )
    op.create_index(op.f("ix_credit_ledger_campaign_id"), "credit_ledger", ["campaign_id"])
    op.create_table(
        "credit_reservations",
        sa.Column("id", ID, nullable=False),
        sa.Column("shop_id", ID, nullable=False),
        sa.Column("campaign_id", ID, nullable=True),
        sa.Column("reservation_key", sa.String(length=200), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_credit_reservations_campaign_id_campaigns")
        ),
        sa.ForeignKeyConstraint(["shop_id"], ["shops.id"], name=op.f("fk_credit_reservations_shop_id_shops")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_reservations")),
        sa.UniqueConstraint(
            "shop_id", "reservation_key", name=op.f("uq_credit_reservations_shop_id_reservation_key")
        ),
    )
    op.create_index(op.f("ix_credit_reservations_campaign_id"), "credit_reservations", ["campaign_id"])
    op.create_index(
        op.f("ix_credit_reservations_status_expires_at"), "credit_reservations", ["status", "expires_at"]
    )
    op.create_table(
        "enqueue_requests",
        sa.Column("id", ID, nullable=False),
        sa.Column("shop_id", ID, nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("campaign_id", ID, nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("locked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_enqueue_requests_campaign_id_campaigns")
        ),
        sa.ForeignKeyConstraint(["shop_id"], ["shops.id"], name=op.f("fk_enqueue_requests_shop_id_shops")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enqueue_requests")),
        sa.UniqueConstraint(
            "shop_id", "idempotency_key", name=op.f("uq_enqueue_requests_shop_id_idempotency_key")
        ),
    )
    op.create_index(op.f("ix_enqueue_requests_expires_at"), "enqueue_requests", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_enqueue_requests_expires_at"), table_name="enqueue_requests")
    op.drop_table("enqueue_requests")
    op.drop_index(op.f("ix_credit_reservations_status_expires_at"), table_name="credit_reservations")
    op.drop_index(op.f("ix_credit_reservations_campaign_id"), table_name="credit_reservations")
    op.drop_table("credit_reservations")
    op.drop_index(op.f("ix_credit_ledger_campaign_id"), table_name="credit_ledger")
    op.drop_table("credit_ledger")
    op.drop_index(op.f("ix_campaign_recipients_status_lease_expires_at"), table_name="campaign_recipients")
    op.drop_index(
        op.f("ix_campaign_recipients_campaign_id_batch_no_status"), table_name="campaign_recipients"
    )
    op.drop_table("campaign_recipients")
    op.drop_table("webhook_events")
    op.drop_table("wallets")
    op.drop_table("contacts")
    op.drop_index(op.f("ix_campaigns_status_last_activity_at"), table_name="campaigns")
    op.drop_index(op.f("ix_campaigns_shop_id_id"), table_name="campaigns")
    op.drop_table("campaigns")
    op.drop_table("billing_transactions")
    op.drop_table("shops")

"""Webhooks, billing and privacy: event outcomes, refunds, Shopify customer identity and staleness,
pending delivery reports, privacy requests.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# SQLite auto-increments only INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "privacy_requests",
        sa.Column("id", ID, nullable=False),
        sa.Column("shop_id", ID, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("shopify_customer_id", sa.BigInteger(), nullable=True),
        sa.Column("export", sa.JSON(), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["shop_id"], ["shops.id"], name=op.f("fk_privacy_requests_shop_id_shops")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_privacy_requests")),
    )
    op.create_index(
        op.f("ix_privacy_requests_shop_id_shopify_customer_id"),
        "privacy_requests",
        ["shop_id", "shopify_customer_id"],
    )

    op.create_table(
        "billing_refunds",
        sa.Column("id", ID, nullable=False),
        sa.Column("billing_id", ID, nullable=False),
        sa.Column("refund_id", sa.String(length=200), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("deducted", sa.BigInteger(), nullable=False),
        sa.Column("shortfall", sa.BigInteger(), nullable=False),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["billing_id"],
            ["billing_transactions.id"],
            name=op.f("fk_billing_refunds_billing_id_billing_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_refunds")),
        sa.UniqueConstraint("refund_id", name=op.f("uq_billing_refunds_refund_id")),
    )
    op.create_index(op.f("ix_billing_refunds_billing_id"), "billing_refunds", ["billing_id"])

    op.create_table(
        "pending_delivery_reports",
        sa.Column("id", ID, nullable=False),
        sa.Column("campaign_id", ID, nullable=False),
        sa.Column("recipient_id", ID, nullable=False),
        sa.Column("provider_message_id", sa.String(length=64), nullable=False),
        sa.Column("provider_status", sa.String(length=32), nullable=False),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_pending_delivery_reports_campaign_id_campaigns")
        ),
        sa.ForeignKeyConstraint(
            ["recipient_id"],
            ["campaign_recipients.id"],
            name=op.f("fk_pending_delivery_reports_recipient_id_campaign_recipients"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_delivery_reports")),
    )
    op.create_index(
        op.f("ix_pending_delivery_reports_campaign_id"), "pending_delivery_reports", ["campaign_id"]
    )
    op.create_index(
        op.f("ix_pending_delivery_reports_provider_message_id"),
        "pending_delivery_reports",
        ["provider_message_id"],
    )

    with op.batch_alter_table("billing_transactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("payment_intent", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("credits_granted", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("credits_refunded", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("refund_shortfall", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("checkout_url", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_billing_transactions_payment_intent"), ["payment_intent"]
        )

    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("shopify_customer_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("shopify_updated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_contacts_shop_id_shopify_customer_id"), ["shop_id", "shopify_customer_id"]
        )

    with op.batch_alter_table("shops", schema=None) as batch_op:
        batch_op.add_column(sa.Column("redacted_at", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject", sa.String(length=200), nullable=True))
        batch_op.add_column(
            sa.Column("outcome", sa.String(length=32), nullable=False, server_default="applied")
        )
        batch_op.add_column(sa.Column("flagged", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("triggered_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_webhook_events_shop_id_provider"), ["shop_id", "provider"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_events_shop_id_provider"))
        batch_op.drop_column("triggered_at")
        batch_op.drop_column("flagged")
        batch_op.drop_column("outcome")
        batch_op.drop_column("subject")

    with op.batch_alter_table("shops", schema=None) as batch_op:
        batch_op.drop_column("redacted_at")

    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_contacts_shop_id_shopify_customer_id"), type_="unique")
        batch_op.drop_column("shopify_updated_at")
        batch_op.drop_column("shopify_customer_id")

    with op.batch_alter_table("billing_transactions", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_billing_transactions_payment_intent"), type_="unique")
        batch_op.drop_column("paid_at")
        batch_op.drop_column("checkout_url")
        batch_op.drop_column("refund_shortfall")
        batch_op.drop_column("credits_refunded")
        batch_op.drop_column("credits_granted")
        batch_op.drop_column("payment_intent")

    op.drop_index(
        op.f("ix_pending_delivery_reports_provider_message_id"), table_name="pending_delivery_reports"
    )
    op.drop_index(op.f("ix_pending_delivery_reports_campaign_id"), table_name="pending_delivery_reports")

    op.drop_table("pending_delivery_reports")
    op.drop_index(op.f("ix_billing_refunds_billing_id"), table_name="billing_refunds")

    op.drop_table("billing_refunds")
    op.drop_index(op.f("ix_privacy_requests_shop_id_shopify_customer_id"), table_name="privacy_requests")

    op.drop_table("privacy_requests")

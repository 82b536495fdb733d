"""Shopify customers: the per-customer lock row and erasure tombstone.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shopify_customers",
        sa.Column("shop_id", ID, nullable=False),
        sa.Column("shopify_customer_id", sa.BigInteger(), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["shop_id"], ["shops.id"], name=op.f("fk_shopify_customers_shop_id_shops")),
        sa.PrimaryKeyConstraint("shop_id", "shopify_customer_id", name=op.f("pk_shopify_customers")),
    )


def downgrade() -> None:
    op.drop_table("shopify_customers")

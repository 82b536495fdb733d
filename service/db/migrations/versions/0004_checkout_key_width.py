"""Checkout keys as long as the Idempotency-Key a client may send (255) plus the shop's prefix.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("billing_transactions") as batch:
        batch.alter_column(
            "idempotency_key", existing_type=sa.String(200), type_=sa.String(300), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("billing_transactions") as batch:
        batch.alter_column(
            "idempotency_key", existing_type=sa.String(300), type_=sa.String(200), existing_nullable=False
        )

"""Reconcile passes: one row per pass of the reconciler, what it found and did by kind.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTS = (
    "expired_leases",
    "resolved_accepted",
    "resolved_not_accepted",
    "left_unresolved",
    "gave_up",
    "batches_requeued",
    "campaigns_completed",
    "counters_fixed",
    "reservations_released",
    "reservations_expired",
    "reports_applied",
    "keys_purged",
    "stuck_campaigns",
)


def upgrade() -> None:
    op.create_table(
        "reconcile_passes",
        sa.Column("id", ID, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("process", sa.String(length=64), nullable=True),
        *(sa.Column(name, sa.Integer(), nullable=False) for name in COUNTS),
        sa.Column("error", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconcile_passes")),
    )
    op.create_index(op.f("ix_reconcile_passes_started_at"), "reconcile_passes", ["started_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_reconcile_passes_started_at"), table_name="reconcile_passes")
    op.drop_table("reconcile_passes")

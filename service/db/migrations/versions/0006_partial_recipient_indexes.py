"""Partial indexes on campaign_recipients: pending rows by batch, sending rows by lease.

The two indexes they replace had `status` as a column, so every status change (claim, record, delivery
report) moved an entry in both, and both kept an entry for every message ever sent. Each partial index
holds only the rows in the one status its queries look for.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending'")
SENDING = sa.text("status = 'sending'")


def upgrade() -> None:
    op.create_index(
        "ix_campaign_recipients_pending",
        "campaign_recipients",
        ["campaign_id", "batch_no"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )
    op.create_index(
        "ix_campaign_recipients_sending_lease",
        "campaign_recipients",
        ["lease_expires_at"],
        postgresql_where=SENDING,
        sqlite_where=SENDING,
    )
    op.drop_index("ix_campaign_recipients_campaign_id_batch_no_status", table_name="campaign_recipients")
    op.drop_index("ix_campaign_recipients_status_lease_expires_at", table_name="campaign_recipients")


def downgrade() -> None:
    op.create_index(
        "ix_campaign_recipients_campaign_id_batch_no_status",
        "campaign_recipients",
        ["campaign_id", "batch_no", "status"],
    )
    op.create_index(
        "ix_campaign_recipients_status_lease_expires_at",
        "campaign_recipients",
        ["status", "lease_expires_at"],
    )
    op.drop_index("ix_campaign_recipients_sending_lease", table_name="campaign_recipients")
    op.drop_index("ix_campaign_recipients_pending", table_name="campaign_recipients")

"""Ledger rows found by their Message-ID and by their person, for reading bounces.

A bounce that carries no VERP token is tied to its message by the Message-ID of the message it
returns, and soft bounces are judged over a person's last messages: without these two indexes each
would scan the whole ledger.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_deliveries_message_id", "deliveries", ["message_id"])
    op.create_index("ix_deliveries_subscriber_id_claimed_at", "deliveries", ["subscriber_id", "claimed_at"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_subscriber_id_claimed_at", table_name="deliveries")
    op.drop_index("ix_deliveries_message_id", table_name="deliveries")

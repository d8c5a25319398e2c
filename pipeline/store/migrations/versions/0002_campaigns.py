"""Campaigns, the per-recipient delivery ledger and the dispatch runs that claim its rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pipeline.store.tables import UtcDateTime, id_type

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", id_type(), nullable=False, autoincrement=True),
        sa.Column("issue_slug", sa.String(200), nullable=False),
        sa.Column("segments", sa.String(1000), nullable=False),
        sa.Column("subject", sa.String(500), nullable=False),
        sa.Column("preheader", sa.String(500), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("transport", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.String(500)),
        sa.Column("send_after", UtcDateTime()),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("started_at", UtcDateTime()),
        sa.Column("finished_at", UtcDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_campaigns"),
        sa.CheckConstraint(
            "status IN ('scheduled', 'running', 'paused', 'finished', 'cancelled')",
            name=op.f("ck_campaigns_status"),
        ),
    )
    op.create_index("ix_campaigns_issue_slug_segments", "campaigns", ["issue_slug", "segments"], unique=True)

    op.create_table(
        "deliveries",
        sa.Column("id", id_type(), nullable=False, autoincrement=True),
        sa.Column("campaign_id", id_type(), nullable=False),
        sa.Column("subscriber_id", id_type(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("timezone", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("send_at", UtcDateTime()),
        sa.Column("run_id", sa.String(32)),
        sa.Column("batch_id", sa.String(48)),
        sa.Column("claimed_at", UtcDateTime()),
        sa.Column("message_id", sa.String(255)),
        sa.Column("error", sa.String(1000)),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name="fk_deliveries_campaign_id_campaigns", ondelete="CASCADE"
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'sending', 'sent', 'failed', 'skipped', 'in_doubt', 'cancelled')",
            name=op.f("ck_deliveries_status"),
        ),
    )
    op.create_index(
        "ix_deliveries_campaign_id_subscriber_id", "deliveries", ["campaign_id", "subscriber_id"], unique=True
    )
    op.create_index("ix_deliveries_campaign_id_status_id", "deliveries", ["campaign_id", "status", "id"])

    op.create_table(
        "dispatch_runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("campaign_id", id_type(), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("heartbeat_at", UtcDateTime(), nullable=False),
        sa.Column("ended_at", UtcDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_dispatch_runs"),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name="fk_dispatch_runs_campaign_id_campaigns",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_dispatch_runs_campaign_id_ended_at", "dispatch_runs", ["campaign_id", "ended_at"])


def downgrade() -> None:
    op.drop_table("dispatch_runs")
    op.drop_table("deliveries")
    op.drop_table("campaigns")

"""The scheduler's lease and decisions; provider events, and double opt-in confirmations.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pipeline.store.tables import UtcDateTime, id_type

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("acquired_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )
    op.create_table(
        "schedule_decisions",
        sa.Column("id", id_type(), nullable=False, autoincrement=True),
        sa.Column("issue_slug", sa.String(200), nullable=False),
        sa.Column("due_at", UtcDateTime(), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("campaign_id", id_type()),
        sa.Column("decided_at", UtcDateTime(), nullable=False),
        sa.Column("detail", sa.String(500)),
        sa.PrimaryKeyConstraint("id", name="pk_schedule_decisions"),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name="fk_schedule_decisions_campaign_id_campaigns",
            ondelete="SET NULL",
        ),
        sa.CheckConstraint("decision IN ('started', 'missed')", name=op.f("ck_schedule_decisions_decision")),
    )
    op.create_index("ix_schedule_decisions_issue_slug", "schedule_decisions", ["issue_slug"], unique=True)
    op.create_table(
        "delivery_events",
        sa.Column("id", id_type(), nullable=False, autoincrement=True),
        sa.Column("sg_event_id", sa.String(100)),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("campaign_id", id_type()),
        sa.Column("subscriber_id", id_type()),
        sa.Column("url", sa.String(2000)),
        sa.Column("reason", sa.String(500)),
        sa.Column("occurred_at", UtcDateTime(), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_delivery_events"),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name="fk_delivery_events_campaign_id_campaigns",
            ondelete="SET NULL",
        ),
    )
    op.create_index("ix_delivery_events_sg_event_id", "delivery_events", ["sg_event_id"], unique=True)
    op.create_index("ix_delivery_events_campaign_id_kind", "delivery_events", ["campaign_id", "kind"])
    op.create_table(
        "confirmations",
        sa.Column("subscriber_id", id_type(), nullable=False),
        sa.Column("sent_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("subscriber_id", name="pk_confirmations"),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name="fk_confirmations_subscriber_id_subscribers",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("confirmations")
    op.drop_table("delivery_events")
    op.drop_table("schedule_decisions")
    op.drop_table("leases")

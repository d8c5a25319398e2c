"""Subscribers, their tags, the suppression list and the consent log.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pipeline.store.tables import UtcDateTime, id_type, json_type

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "subscribers",
        sa.Column("id", id_type(), nullable=False, autoincrement=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("email_key", sa.String(320), nullable=False),
        sa.Column("address_hash", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attributes", json_type(), nullable=False),
        sa.Column("timezone", sa.String(64)),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("confirmed_at", UtcDateTime()),
        sa.Column("unsubscribed_at", UtcDateTime()),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_subscribers"),
        sa.CheckConstraint(
            "status IN ('unconfirmed', 'active', 'unsubscribed', 'bounced', 'complained')",
            name=op.f("ck_subscribers_status"),
        ),
    )
    op.create_index("ix_subscribers_email_key", "subscribers", ["email_key"], unique=True)
    op.create_index("ix_subscribers_address_hash", "subscribers", ["address_hash"])
    op.create_index("ix_subscribers_status_id", "subscribers", ["status", "id"])
    op.create_index("ix_subscribers_created_at", "subscribers", ["created_at"])

    op.create_table(
        "subscriber_tags",
        sa.Column("subscriber_id", id_type(), nullable=False),
        sa.Column("tag", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("subscriber_id", "tag", name="pk_subscriber_tags"),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name="fk_subscriber_tags_subscriber_id_subscribers",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_subscriber_tags_tag_subscriber_id", "subscriber_tags", ["tag", "subscriber_id"])

    op.create_table(
        "suppressions",
        sa.Column("address_hash", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("address_hash", name="pk_suppressions"),
    )

    op.create_table(
        "subscriber_events",
        sa.Column("id", id_type(), nullable=False, autoincrement=True),
        sa.Column("subscriber_id", id_type()),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("from_status", sa.String(16)),
        sa.Column("to_status", sa.String(16)),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("detail", json_type(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_subscriber_events"),
    )
    op.create_index("ix_subscriber_events_subscriber_id_id", "subscriber_events", ["subscriber_id", "id"])


def downgrade() -> None:
    op.drop_table("subscriber_events")
    op.drop_table("suppressions")
    op.drop_table("subscriber_tags")
    op.drop_table("subscribers")

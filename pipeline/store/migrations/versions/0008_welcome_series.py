"""The welcome series: who joined it and when, and campaigns that are welcome steps.

``welcome_enrollments`` holds one row per person who joined the series (on confirming their signup,
or added with ``--welcome``), timed by ``enrolled_at``. ``campaigns.kind`` tells a dated issue from a
welcome step's standing campaign; every campaign made before this revision is an issue.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pipeline.store.tables import UtcDateTime, id_type

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="issue"))
        batch.create_check_constraint("kind", "kind IN ('issue', 'welcome')")
    op.create_table(
        "welcome_enrollments",
        sa.Column("subscriber_id", id_type(), nullable=False),
        sa.Column("enrolled_at", UtcDateTime(), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("subscriber_id", name="pk_welcome_enrollments"),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name="fk_welcome_enrollments_subscriber_id_subscribers",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_welcome_enrollments_enrolled_at", "welcome_enrollments", ["enrolled_at"])


def downgrade() -> None:
    op.drop_table("welcome_enrollments")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_constraint("ck_campaigns_kind", type_="check")
        batch.drop_column("kind")

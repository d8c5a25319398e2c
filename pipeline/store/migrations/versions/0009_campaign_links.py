"""The links of each campaign's HTML, kept in order: what a tracked link's redirect may go to.

A tracked link is ``/c/CAMPAIGN.TOKEN/N``: the redirect answers with the N-th URL of the campaign's
list, so it can only ever send a reader where the issue itself linked. Campaigns created before this
revision keep NULL, and their links are never tracked.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pipeline.store.tables import json_type

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("links", json_type()))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("links")

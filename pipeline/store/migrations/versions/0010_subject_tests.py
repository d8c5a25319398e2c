"""Subject tests: the subjects a campaign tests, the one that won, and which one each row gets.

``campaigns.subjects`` lists the subjects in order (NULL: no test) and ``campaigns.winner`` the place
of the one everyone else gets, once it is chosen. ``deliveries.variant`` is the place of the subject a
row's sample got, -1 for the rows waiting for the winner, NULL for every row of a campaign without a
test (all rows before this revision).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pipeline.store.tables import json_type

revision = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("subjects", json_type()))
        batch.add_column(sa.Column("winner", sa.SmallInteger()))
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("variant", sa.SmallInteger()))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("variant")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("winner")
        batch.drop_column("subjects")

"""The issue's content for the web, stored with each campaign: the archive shows it as it was sent.

The archive page and the Atom feed are made from it, so they need neither the issue file (edited or
removed since) nor the ``issues/`` folder on the web host. Campaigns created before this revision
keep NULL here, and the archive shows their stored email with neutral values instead.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("web_html", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("web_html")

"""Subscriber ids are never handed out again on SQLite (AUTOINCREMENT), as on PostgreSQL.

Without AUTOINCREMENT SQLite gives a new row the highest id + 1, so the next person added after the
newest one was erased got the erased person's id, and with it whatever that id still opened. The table
is rebuilt with AUTOINCREMENT (``Store.upgrade`` turns SQLite's foreign keys off around it, so the
rebuild does not cascade to tags), and its counter starts past every id the store has ever recorded,
the erased ones included. PostgreSQL's sequences never reuse a value: nothing to do there.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_HIGHEST_ID_EVER = """
SELECT MAX(id) FROM (
    SELECT MAX(id) AS id FROM subscribers
    UNION ALL SELECT MAX(subscriber_id) FROM subscriber_events
    UNION ALL SELECT MAX(subscriber_id) FROM deliveries
    UNION ALL SELECT MAX(subscriber_id) FROM delivery_events
)
"""


def _rebuild(*, autoincrement: bool) -> None:
    with op.batch_alter_table(
        "subscribers", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    _rebuild(autoincrement=True)
    highest = bind.execute(sa.text(_HIGHEST_ID_EVER)).scalar()
    if highest is not None:
        bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'subscribers'"))
        bind.execute(
            sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('subscribers', :seq)"),
            {"seq": highest},
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(autoincrement=False)

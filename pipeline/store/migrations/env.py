"""Alembic environment: always run on a connection handed over by ``pipeline.store.engine`` (no alembic.ini)."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from pipeline.store.tables import metadata

connection: Connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

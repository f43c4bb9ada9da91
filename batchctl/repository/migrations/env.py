"""Alembic environment: always run by batchctl with a connection it opened."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from batchctl.repository.tables import metadata

MIGRATION_LOCK_KEY = 0x62617463  # pg advisory lock id: one migrating process at a time

connection = context.config.attributes["connection"]
# All migrations in one transaction, SQLite included (Alembic would otherwise commit its DDL
# piecemeal there): its BEGIN IMMEDIATE then makes concurrent first uses migrate one at a time,
# each reading the schema's revision only once it holds the lock.
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    transactional_ddl=True,
)

with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        # One lock per schema, so that repositories in other schemas migrate in parallel.
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key, hashtext(current_schema()))"),
            {"key": MIGRATION_LOCK_KEY},
        )
    context.run_migrations()

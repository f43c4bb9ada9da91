"""Partitioned steps: partition columns on step executions, and the workers that run them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from batchctl.repository.tables import JSONText, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("step_execution") as table:
        table.add_column(sa.Column("partition_of", sa.String(200)))
        table.add_column(sa.Column("partition_index", sa.Integer))
        table.add_column(sa.Column("partition", JSONText))
        table.add_column(sa.Column("mode", sa.String(8)))
        table.add_column(sa.Column("worker_id", Id))
        table.add_column(sa.Column("host", sa.String(255)))
        table.add_column(sa.Column("pid", sa.Integer))
    op.create_index(
        "ix_step_execution_status_partition_of", "step_execution", ["status", "partition_of"]
    )
    op.create_table(
        "worker",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("heartbeat_at", UTCDateTime, nullable=False),
        sa.Column("stopped_at", UTCDateTime),
        sa.Column("step_execution_id", Id),
        sa.PrimaryKeyConstraint("id", name="pk_worker"),
    )
    op.create_index("ix_worker_heartbeat_at", "worker", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index("ix_worker_heartbeat_at", table_name="worker")
    op.drop_table("worker")
    op.drop_index("ix_step_execution_status_partition_of", table_name="step_execution")
    with op.batch_alter_table("step_execution") as table:
        for column in ("pid", "host", "worker_id", "mode", "partition", "partition_index",
                       "partition_of"):
            table.drop_column(column)

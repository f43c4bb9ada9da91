"""The initial job repository: instances, executions, step executions.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from batchctl.repository.tables import JSONText, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LIVE = "status IN ('STARTING', 'STARTED', 'STOPPING')"
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _counter(name: str) -> sa.Column:
    return sa.Column(name, sa.Integer, nullable=False, server_default="0")


def upgrade() -> None:
    op.create_table(
        "job_instance",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("job_name", sa.String(200), nullable=False),
        sa.Column("job_key", sa.String(64), nullable=False),
        sa.Column("params", JSONText, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_job_instance"),
        sa.UniqueConstraint("job_name", "job_key", name="uq_job_instance_job_name_job_key"),
    )
    op.create_table(
        "job_execution",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("instance_id", Id, nullable=False),
        sa.Column("job_name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("exit_code", sa.String(32)),
        sa.Column("exit_message", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime),
        sa.Column("ended_at", UTCDateTime),
        sa.Column("heartbeat_at", UTCDateTime),
        sa.Column("host", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("context", JSONText, nullable=False),
        sa.Column("resumed_from", Id),
        sa.Column("log_path", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_job_execution"),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["job_instance.id"], name="fk_job_execution_instance_id_job_instance"
        ),
        sa.ForeignKeyConstraint(
            ["resumed_from"],
            ["job_execution.id"],
            name="fk_job_execution_resumed_from_job_execution",
        ),
    )
    op.create_index("ix_job_execution_job_name_id", "job_execution", ["job_name", "id"])
    op.create_index("ix_job_execution_instance_id", "job_execution", ["instance_id"])
    op.create_index("ix_job_execution_status", "job_execution", ["status"])
    op.create_index(
        "uq_job_execution_live",
        "job_execution",
        ["instance_id"],
        unique=True,
        sqlite_where=sa.text(LIVE),
        postgresql_where=sa.text(LIVE),
    )
    op.create_table(
        "step_execution",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("job_execution_id", Id, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("exit_code", sa.String(32)),
        sa.Column("exit_message", sa.Text),
        sa.Column("started_at", UTCDateTime),
        sa.Column("ended_at", UTCDateTime),
        sa.Column("context", JSONText, nullable=False),
        _counter("read_count"),
        _counter("write_count"),
        _counter("filter_count"),
        _counter("commit_count"),
        _counter("rollback_count"),
        _counter("read_skip_count"),
        _counter("process_skip_count"),
        _counter("write_skip_count"),
        sa.PrimaryKeyConstraint("id", name="pk_step_execution"),
        sa.ForeignKeyConstraint(
            ["job_execution_id"],
            ["job_execution.id"],
            name="fk_step_execution_job_execution_id_job_execution",
        ),
    )
    op.create_index(
        "ix_step_execution_job_execution_id", "step_execution", ["job_execution_id"]
    )


def downgrade() -> None:
    op.drop_table("step_execution")
    op.drop_table("job_execution")
    op.drop_table("job_instance")

"""Events and triggers: the outbox of status changes, and what started each execution.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from batchctl.repository.tables import SafeText, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("job_execution") as table:
        table.add_column(sa.Column("trigger", sa.String(16)))
        table.add_column(sa.Column("trigger_detail", SafeText))
    op.create_table(
        "event",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("execution_id", Id, nullable=False),
        sa.Column("step_execution_id", Id),
        sa.Column("job_name", sa.String(200), nullable=False),
        sa.Column("step_name", sa.String(200)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_event"),
        sa.ForeignKeyConstraint(
            ["execution_id"], ["job_execution.id"], name="fk_event_execution_id_job_execution"
        ),
    )
    op.create_index("ix_event_execution_id", "event", ["execution_id"])


def downgrade() -> None:
    op.drop_index("ix_event_execution_id", table_name="event")
    op.drop_table("event")
    with op.batch_alter_table("job_execution") as table:
        table.drop_column("trigger_detail")
        table.drop_column("trigger")

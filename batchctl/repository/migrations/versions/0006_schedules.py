"""Schedules: the fires of schedules (unique per schedule and instant) and their paused state;
worker kinds up to 16 characters ("scheduler").

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from batchctl.repository.tables import SafeText, UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("worker") as table:
        table.alter_column("kind", type_=sa.String(16), existing_type=sa.String(8),
                           existing_nullable=False)
    op.create_table(
        "schedule_fire",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("schedule", sa.String(200), nullable=False),
        sa.Column("fire_at", UTCDateTime, nullable=False),
        sa.Column("execution_id", Id),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", SafeText),
        sa.Column("manual", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("launched_at", UTCDateTime),
        sa.PrimaryKeyConstraint("id", name="pk_schedule_fire"),
        sa.ForeignKeyConstraint(
            ["execution_id"], ["job_execution.id"],
            name="fk_schedule_fire_execution_id_job_execution",
        ),
        sa.UniqueConstraint("schedule", "fire_at", name="uq_schedule_fire_schedule_fire_at"),
    )
    op.create_index("ix_schedule_fire_execution_id", "schedule_fire", ["execution_id"])
    op.create_table(
        "schedule_state",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("paused_at", UTCDateTime),
        sa.Column("resumed_at", UTCDateTime),
        sa.PrimaryKeyConstraint("name", name="pk_schedule_state"),
    )


def downgrade() -> None:
    op.drop_table("schedule_state")
    op.drop_index("ix_schedule_fire_execution_id", table_name="schedule_fire")
    op.drop_table("schedule_fire")
    with op.batch_alter_table("worker") as table:
        table.alter_column("kind", type_=sa.String(8), existing_type=sa.String(16),
                           existing_nullable=False)

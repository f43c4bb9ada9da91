"""Items skipped by chunk steps.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from batchctl.repository.tables import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "skipped_item",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("step_execution_id", Id, nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("position", sa.BigInteger),
        sa.Column("item", sa.Text),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_skipped_item"),
        sa.ForeignKeyConstraint(
            ["step_execution_id"],
            ["step_execution.id"],
            name="fk_skipped_item_step_execution_id_step_execution",
        ),
    )
    op.create_index("ix_skipped_item_step_execution_id", "skipped_item", ["step_execution_id"])


def downgrade() -> None:
    op.drop_index("ix_skipped_item_step_execution_id", table_name="skipped_item")
    op.drop_table("skipped_item")

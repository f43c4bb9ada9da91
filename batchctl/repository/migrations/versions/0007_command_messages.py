"""The message listener: the ledger of command message ids and the event publishers' cursors.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

(0007 follows 0005 on the branch that adds it; the scheduler's 0006 is merged in between by
setting `down_revision` to "0006" when both land.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from batchctl.repository.tables import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "command_message",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("command", sa.String(16), nullable=False),
        sa.Column("execution_id", Id),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_command_message"),
        sa.UniqueConstraint("message_id", name="uq_command_message_message_id"),
    )
    op.create_index("ix_command_message_execution_id", "command_message", ["execution_id"])
    op.create_table(
        "publish_cursor",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("event_id", sa.BigInteger, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_publish_cursor"),
    )


def downgrade() -> None:
    op.drop_table("publish_cursor")
    op.drop_index("ix_command_message_execution_id", table_name="command_message")
    op.drop_table("command_message")

"""Fencing: the owner token of the process running an execution, and where its pid means
something (boot id and pid namespace).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job_execution") as table:
        table.add_column(sa.Column("pid_scope", sa.String(100)))
        table.add_column(sa.Column("owner", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("job_execution") as table:
        table.drop_column("owner")
        table.drop_column("pid_scope")

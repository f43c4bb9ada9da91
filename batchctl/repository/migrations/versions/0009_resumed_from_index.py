"""An index on job_execution.resumed_from: deleting an execution (prune) checks the foreign key
of every execution that resumes it, which without an index scans the whole table per deleted
row on both databases.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_job_execution_resumed_from", "job_execution", ["resumed_from"])


def downgrade() -> None:
    op.drop_index("ix_job_execution_resumed_from", "job_execution")

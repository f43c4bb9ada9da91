"""Deliberate reruns: an instance made by `start --rerun` links to the first instance of the
same params (`rerun_of`) and carries its rerun number, which is part of its key.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


FK = "fk_job_instance_rerun_of_job_instance"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot add a constraint to a table, and batch mode's copy of job_instance would
        # have to drop a table that job_execution rows refer to (refused with foreign keys on):
        # the column carries its reference, which SQLite does allow when adding a column.
        op.execute(f"ALTER TABLE job_instance ADD COLUMN rerun_of INTEGER CONSTRAINT {FK} "
                   "REFERENCES job_instance (id)")
    else:
        op.add_column("job_instance", sa.Column("rerun_of", Id))
        op.create_foreign_key(FK, "job_instance", "job_instance", ["rerun_of"], ["id"])
    op.add_column(
        "job_instance", sa.Column("rerun", sa.Integer, nullable=False, server_default="0")
    )
    op.create_index("ix_job_instance_rerun_of", "job_instance", ["rerun_of"])


def downgrade() -> None:
    op.drop_index("ix_job_instance_rerun_of", table_name="job_instance")
    # On SQLite batch mode copies the table (a column with a reference cannot be dropped
    # in place), which needs a repository whose executions do not refer to it, like a new one.
    with op.batch_alter_table("job_instance") as table:
        if op.get_bind().dialect.name != "sqlite":
            table.drop_constraint(FK, type_="foreignkey")
        table.drop_column("rerun")
        table.drop_column("rerun_of")

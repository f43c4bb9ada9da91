"""Creating and migrating the repository schema with Alembic.

Checking that the schema is current costs one query and no Alembic import; Alembic is loaded
only when there is something to migrate.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from batchctl.errors import EnvironmentProblem
from batchctl.repository.connect import READ_ONLY

HEAD_REVISION = "0009"  # the newest migration; a test checks it against Alembic's head
MIGRATIONS = Path(__file__).with_name("migrations")
KNOWN_REVISIONS = {"0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009"}


def current_revision(engine: Engine) -> str | None:
    """The schema's Alembic revision, or None when the schema has not been created."""
    with engine.connect() as connection:
        connection.execution_options(**{READ_ONLY: True})
        try:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError:
            return None


def ensure_schema(engine: Engine) -> None:
    """Create or migrate the schema unless it is already at the head revision."""
    revision = current_revision(engine)
    if revision == HEAD_REVISION:
        return
    if revision is not None and revision not in KNOWN_REVISIONS:
        raise EnvironmentProblem(
            f"the job repository's schema is at revision {revision}, newer than this batchctl "
            f"knows ({HEAD_REVISION}): upgrade batchctl"
        )
    upgrade(engine)


def alembic_config(connection: object) -> object:
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the migrations up to `revision`, one process at a time."""
    from alembic import command

    with engine.connect() as connection:
        command.upgrade(alembic_config(connection), revision)  # type: ignore[arg-type]

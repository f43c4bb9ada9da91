"""The Alembic migrations build exactly the declared schema, on SQLite and Postgres."""

from __future__ import annotations

from typing import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from batchctl.repository import migrate
from batchctl.repository.connect import create_repository_engine
from batchctl.repository.tables import metadata


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_repository_engine(database_url)
    yield engine
    engine.dispose()


def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(migrate.alembic_config(None))  # type: ignore[arg-type]


def schema_diff(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, metadata)


def test_the_migrations_build_exactly_the_declared_metadata(engine: Engine) -> None:
    migrate.upgrade(engine)
    assert schema_diff(engine) == []


def test_the_migrations_create_every_declared_table(engine: Engine) -> None:
    migrate.upgrade(engine)
    assert set(metadata.tables) <= set(inspect(engine).get_table_names())


def test_upgrading_twice_changes_nothing(engine: Engine) -> None:
    migrate.upgrade(engine)
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.HEAD_REVISION
    assert schema_diff(engine) == []


def test_ensure_schema_brings_an_empty_database_to_the_head(engine: Engine) -> None:
    assert migrate.current_revision(engine) is None
    migrate.ensure_schema(engine)
    assert migrate.current_revision(engine) == migrate.HEAD_REVISION


def test_downgrading_to_base_and_upgrading_again_gives_the_same_schema(engine: Engine) -> None:
    from alembic import command

    migrate.upgrade(engine)
    with engine.connect() as connection:
        command.downgrade(migrate.alembic_config(connection), "base")  # type: ignore[arg-type]
    assert not set(metadata.tables) & set(inspect(engine).get_table_names())
    migrate.upgrade(engine)
    assert schema_diff(engine) == []


def test_head_revision_is_alembics_head() -> None:
    assert scripts().get_heads() == [migrate.HEAD_REVISION]


def test_every_migration_is_a_known_revision() -> None:
    assert {script.revision for script in scripts().walk_revisions()} == migrate.KNOWN_REVISIONS


def test_0008_adds_reruns_to_a_repository_holding_executions(engine: Engine) -> None:
    """A repository at 0004 with instances and executions (which refer to job_instance, so the
    table cannot be copied on SQLite) gains `rerun_of` and `rerun` in place."""
    from sqlalchemy import text

    migrate.upgrade(engine, "0004")
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO job_instance (id, job_name, job_key, params, created_at) "
            "VALUES (1, 'eod', 'k', '{}', CURRENT_TIMESTAMP)"
        ))
        connection.execute(text(
            "INSERT INTO job_execution (id, instance_id, job_name, status, version, created_at, "
            "context) VALUES (1, 1, 'eod', 'COMPLETED', 0, CURRENT_TIMESTAMP, '{}')"
        ))
    migrate.upgrade(engine)
    with engine.connect() as connection:
        row = connection.execute(text("SELECT rerun_of, rerun FROM job_instance")).one()
    assert tuple(row) == (None, 0)
    assert schema_diff(engine) == []

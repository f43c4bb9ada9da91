"""Status: ordered by severity, so that the combined status of several executions is max()."""

from __future__ import annotations

import pytest

from batchctl.model import Status


def test_statuses_are_ordered_by_severity() -> None:
    assert sorted([Status.UNKNOWN, Status.FAILED, Status.COMPLETED, Status.STOPPED]) == [
        Status.COMPLETED,
        Status.STOPPED,
        Status.FAILED,
        Status.UNKNOWN,
    ]


def test_the_combined_status_is_the_max() -> None:
    assert max([Status.COMPLETED, Status.COMPLETED]) == Status.COMPLETED
    assert max([Status.COMPLETED, Status.STOPPED, Status.COMPLETED]) == Status.STOPPED
    assert max([Status.STOPPED, Status.FAILED, Status.COMPLETED]) == Status.FAILED
    assert max([Status.FAILED, Status.UNKNOWN]) == Status.UNKNOWN


def test_order_is_severity_not_alphabetical() -> None:
    # Alphabetically "COMPLETED" < "FAILED" < "STARTED"; by severity STARTED < FAILED.
    assert Status.STARTED < Status.FAILED
    assert Status.COMPLETED < Status.ABANDONED


def test_a_status_does_not_compare_with_a_plain_string() -> None:
    with pytest.raises(TypeError):
        assert Status.FAILED < "COMPLETED"


def test_live_statuses() -> None:
    assert {s for s in Status if s.is_live} == {Status.STARTING, Status.STARTED, Status.STOPPING}


def test_only_stopped_and_failed_are_restartable() -> None:
    assert {s for s in Status if s.is_restartable} == {Status.STOPPED, Status.FAILED}


def test_unsuccessful_statuses() -> None:
    assert {s for s in Status if s.is_unsuccessful} == {
        Status.FAILED,
        Status.STOPPED,
        Status.ABANDONED,
        Status.UNKNOWN,
    }


def test_a_status_is_its_name_as_a_string() -> None:
    assert Status("FAILED") is Status.FAILED
    assert Status.FAILED.value == "FAILED"


def test_abandonable_statuses() -> None:
    assert {s for s in Status if s.is_abandonable} == {Status.STOPPED, Status.FAILED, Status.UNKNOWN}


def test_the_status_sets_are_in_the_enums_order() -> None:
    from batchctl import model

    for statuses in (
        model.LIVE_STATUSES,
        model.STOPPABLE_STATUSES,
        model.RESTARTABLE_STATUSES,
        model.ABANDONABLE_STATUSES,
        model.UNSUCCESSFUL_STATUSES,
    ):
        assert list(statuses) == sorted(statuses)


def test_the_live_index_sql_is_generated_from_the_live_statuses() -> None:
    from batchctl.repository.tables import LIVE_STATUS_SQL

    assert LIVE_STATUS_SQL == "status IN ('STARTING', 'STARTED', 'STOPPING')"


def test_migration_0001_created_the_live_index_with_the_generated_where() -> None:
    """Migrations are history and keep their literal SQL; a change to LIVE_STATUSES must come
    with a migration that rebuilds the index, or the queries stop matching it."""
    import importlib

    from batchctl.repository.tables import LIVE_STATUS_SQL

    initial = importlib.import_module("batchctl.repository.migrations.versions.0001_initial")
    assert initial.LIVE == LIVE_STATUS_SQL

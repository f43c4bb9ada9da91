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

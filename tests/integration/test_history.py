"""History: executions newest first, filtered by job and status, limited."""

from __future__ import annotations

import pytest

from batchctl import Job, StepContext
from batchctl.errors import UsageError
from batchctl.model import JobExecution, Status
from batchctl.operator import Batch


def _job(name: str) -> Job:
    job = Job(name, params={"n": int, "fail": bool})

    @job.tasklet
    def step(ctx: StepContext) -> None:
        if ctx.params["fail"]:
            raise RuntimeError("asked to fail")

    return job


@pytest.fixture
def executions(batch: Batch) -> list[JobExecution]:
    """Five executions, oldest first: a1 ok, b1 FAILED, a2 ok, a3 FAILED, b2 ok."""
    a, b = _job("alpha"), _job("beta")
    runs = [(a, 1, False), (b, 1, True), (a, 2, False), (a, 3, True), (b, 2, False)]
    return [batch.start(job, {"n": n, "fail": fail}) for job, n, fail in runs]


def ids(executions: list[JobExecution]) -> list[int]:
    return [execution.id for execution in executions]


def test_history_lists_executions_newest_first(batch: Batch, executions: list[JobExecution]) -> None:
    assert ids(batch.history()) == ids(executions)[::-1]


def test_history_of_a_job_lists_only_its_executions(batch: Batch, executions: list[JobExecution]) -> None:
    alpha = batch.history("alpha")
    assert {e.job_name for e in alpha} == {"alpha"}
    assert ids(alpha) == [executions[3].id, executions[2].id, executions[0].id]


def test_history_filters_by_status(batch: Batch, executions: list[JobExecution]) -> None:
    failed = batch.history(statuses=[Status.FAILED])
    assert ids(failed) == [executions[3].id, executions[1].id]


def test_history_accepts_status_names_in_any_case(batch: Batch, executions: list[JobExecution]) -> None:
    assert ids(batch.history(statuses=["failed"])) == ids(batch.history(statuses=[Status.FAILED]))


def test_history_filters_by_several_statuses(batch: Batch, executions: list[JobExecution]) -> None:
    both = batch.history(statuses=["COMPLETED", "FAILED"])
    assert len(both) == 5


def test_history_combines_job_and_status_filters(batch: Batch, executions: list[JobExecution]) -> None:
    assert ids(batch.history("beta", statuses=["COMPLETED"])) == [executions[4].id]


def test_history_is_limited(batch: Batch, executions: list[JobExecution]) -> None:
    assert ids(batch.history(limit=2)) == [executions[4].id, executions[3].id]


def test_history_without_a_limit_lists_everything(batch: Batch, executions: list[JobExecution]) -> None:
    assert len(batch.history(limit=None)) == 5


def test_history_of_an_unknown_status_is_a_usage_error(batch: Batch) -> None:
    with pytest.raises(UsageError, match="unknown status 'DONE'"):
        batch.history(statuses=["DONE"])


def test_history_of_an_empty_repository_is_empty(batch: Batch) -> None:
    assert batch.history() == []


def test_history_carries_the_params_as_stored(batch: Batch, executions: list[JobExecution]) -> None:
    oldest = batch.history(limit=None)[-1]
    assert oldest.params == {"n": 1, "fail": False}
    assert oldest.job_name == "alpha"

"""Fencing (issue 8), in one process on SQLite and Postgres: once an execution is marked lost
by another process, the process that ran it writes nothing more for it.

The "other process" is a second `Batch` on the same repository that ends the execution as the
lost-process check would; the tests with real paused processes are in tests/acceptance.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Iterator

import pytest
from sqlalchemy import text

from batchctl import Job, StepContext
from batchctl.config import Config
from batchctl.errors import NotAbandonable, Refused
from batchctl.model import JobExecution, Status
from batchctl.operator import Batch

LOST = "process lost: judged so by a test"


@pytest.fixture
def other(config: Config) -> Iterator[Batch]:
    """Another process's view of the same repository."""
    with Batch(config) as opened:
        yield opened


def mark_lost(batch: Batch, execution_id: int) -> JobExecution:
    """End a live execution as the lost-process check does."""
    current = batch.repository.execution(execution_id)
    return batch.repository.end_execution(current, Status.FAILED, LOST)


def sql(batch: Batch, statement: str) -> list[Any]:
    with batch.repository.engine.begin() as connection:
        result = connection.execute(text(statement))
        return list(result) if result.returns_rows else []


def test_a_chunk_step_fenced_off_mid_run_commits_no_further_chunk(
    batch: Batch, other: Batch, caplog: pytest.LogCaptureFixture
) -> None:
    sql(batch, "CREATE TABLE posted (n INTEGER PRIMARY KEY)")
    job = Job("posting")

    def write(items: list[int], ctx: StepContext) -> None:
        for n in items:
            ctx.connection.execute(text("INSERT INTO posted (n) VALUES (:n)"), {"n": n})

    @job.chunk(reader=lambda ctx: range(40), writer=write, size=5)
    def post(n: int, ctx: StepContext) -> int:
        if n == 12:  # in the third chunk, another process judges this run lost
            mark_lost(other, ctx.execution_id)
        return n

    with caplog.at_level(logging.ERROR, logger="batchctl"):
        returned = batch.start(job)

    assert returned.status == Status.FAILED and returned.exit_message == LOST
    assert [row[0] for row in sql(batch, "SELECT n FROM posted ORDER BY n")] == list(range(10))
    [step] = batch.step_executions(returned.id)
    assert step.status == Status.FAILED and step.commit_count == 2
    assert step.context["batchctl"]["position"] == 10
    assert f"execution {returned.id} was taken over" in caplog.text
    assert "stopping without committing" in caplog.text


def test_a_generator_tasklet_fenced_off_stops_at_its_next_checkpoint(
    batch: Batch, other: Batch
) -> None:
    job = Job("units")
    done: list[int] = []

    @job.tasklet
    def work(ctx: StepContext) -> Iterator[None]:
        for i in range(ctx.state.get("done", 0), 10):
            done.append(i)
            if i == 4:
                mark_lost(other, ctx.execution_id)
            ctx.state["done"] = i + 1
            yield

    returned = batch.start(job)

    assert returned.status == Status.FAILED
    assert done == [0, 1, 2, 3, 4]  # the unit in flight, then nothing more
    [step] = batch.step_executions(returned.id)
    assert step.context == {"done": 4} and step.commit_count == 4


def test_a_fenced_off_run_never_overwrites_the_status_it_was_given(
    batch: Batch, other: Batch
) -> None:
    job = Job("two_steps")
    ran: list[str] = []

    @job.tasklet
    def first(ctx: StepContext) -> None:
        ran.append("first")
        mark_lost(other, ctx.execution_id)

    @job.tasklet
    def second(ctx: StepContext) -> None:
        ran.append("second")

    returned = batch.start(job)

    assert ran == ["first"]
    stored = batch.repository.execution(returned.id)
    assert (stored.status, stored.exit_message) == (Status.FAILED, LOST)
    [step] = batch.step_executions(returned.id)
    assert step.status == Status.FAILED and step.exit_message == LOST


def test_a_launch_judged_lost_before_it_took_over_leaves_the_execution_as_it_is(
    batch: Batch, other: Batch
) -> None:
    job = Job("slow_start")
    ran: list[str] = []
    job.tasklet(lambda ctx: ran.append("ran"), name="only")
    execution, found = batch._create_start(job, detach=True)
    lost = mark_lost(other, execution.id)

    returned = batch._run(found, execution)

    assert ran == []
    assert returned.status == Status.FAILED and returned.exit_message == LOST
    stored = batch.repository.execution(execution.id)
    assert stored.version == lost.version and stored.started_at is None
    assert batch.step_executions(execution.id) == []


def test_a_stop_requested_before_the_take_over_still_ends_stopped(batch: Batch) -> None:
    job = Job("stopped_early")
    job.tasklet(lambda ctx: None, name="only")
    execution, found = batch._create_start(job, detach=True)
    batch.stop(execution.id)

    returned = batch._run(found, execution)

    assert returned.status == Status.STOPPED
    assert returned.exit_message == "stopped before its first step"


def test_the_take_over_records_owner_host_pid_and_pid_scope(batch: Batch) -> None:
    from batchctl.host import host_name, pid_scope

    job = Job("owned")
    seen: list[JobExecution] = []
    job.tasklet(lambda ctx: seen.append(batch.repository.execution(ctx.execution_id)), name="look")

    batch.start(job)

    [running] = seen
    assert running.owner and len(running.owner) == 32
    assert (running.host, running.pid_scope) == (host_name(), pid_scope())


def test_marking_an_execution_lost_ends_its_live_step_executions(
    batch: Batch, other: Batch
) -> None:
    job = Job("left_running")
    seen: dict[str, Any] = {}

    @job.tasklet
    def hold(ctx: StepContext) -> None:
        mark_lost(other, ctx.execution_id)
        seen["steps"] = other.step_executions(ctx.execution_id)

    batch.start(job)

    [step] = seen["steps"]
    assert step.status == Status.FAILED and step.ended_at is not None
    assert step.exit_message == LOST


def test_abandoning_an_execution_that_a_later_one_resumed_is_refused(batch: Batch) -> None:
    job = Job("flaky")
    fails = iter([True, False])

    @job.tasklet
    def only(ctx: StepContext) -> None:
        if next(fails):
            raise RuntimeError("first run fails")

    first = batch.start(job)
    assert first.status == Status.FAILED
    second = batch.start(job)  # resumes the failed instance
    assert second.status == Status.COMPLETED and second.resumed_from == first.id

    with pytest.raises(NotAbandonable, match=f"resumed by execution {second.id}"):
        batch.abandon(first.id)
    assert batch.repository.execution(first.id).status == Status.FAILED


@pytest.mark.parametrize("trial", range(3))
def test_a_restart_and_an_abandon_of_one_execution_at_once_never_both_succeed(
    config: Config, write_job: Any, trial: int
) -> None:
    write_job("fails_once", '''
        from batchctl import Job

        job = Job("fails_once", params={"fail": bool})

        @job.tasklet
        def only(ctx):
            if ctx.params["fail"] and not ctx.job_context.get("retried"):
                ctx.job_context["retried"] = True
                raise RuntimeError("fails")
    ''')
    with Batch(config) as setup:
        failed = setup.start("fails_once", {"fail": True}, detach=False)
    assert failed.status == Status.FAILED
    outcomes: dict[str, Any] = {}
    barrier = threading.Barrier(2)

    def attempt(name: str, operation: Any) -> None:
        with Batch(config) as own:
            own.repository  # connect before the race
            barrier.wait()
            try:
                outcomes[name] = operation(own)
            except Refused as exc:
                outcomes[name] = exc

    threads = [
        threading.Thread(target=attempt, args=("restart", lambda b: b._create_restart(failed.id))),
        threading.Thread(target=attempt, args=("abandon", lambda b: b.abandon(failed.id))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    refused = [name for name, outcome in outcomes.items() if isinstance(outcome, Refused)]
    assert len(refused) == 1, outcomes
    with Batch(config) as check:
        last = check.history("fails_once", limit=1)[0]
    if refused == ["abandon"]:
        assert last.resumed_from == failed.id and last.status == Status.STARTING
    else:
        assert last.id == failed.id and last.status == Status.ABANDONED

"""A job's own data (issue 10), on SQLite and Postgres: a tasklet's SQL through
`ctx.connection`, and what SqlReader binds.

A generator tasklet's SQL commits with each checkpoint and a plain tasklet's with the step's
COMPLETED record, fenced like every write of the engine; a failure rolls it back. The crash of
a real process (kill -9) and paths from another folder are in tests/acceptance/test_job_data.py;
here the failures are in the process.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Iterator

import pytest
from sqlalchemy import text

from batchctl import Job, StepContext, StepExecution
from batchctl.config import Config
from batchctl.items import SqlReader, SqlWriter
from batchctl.model import JobExecution, Status
from batchctl.operator import Batch

CREATE_UNITS = "CREATE TABLE IF NOT EXISTS units (n INTEGER PRIMARY KEY, note TEXT)"
LOST = "process lost: judged so by a test"


def sql(batch: Batch, statement: str) -> list[Any]:
    with batch.repository.engine.begin() as connection:
        result = connection.execute(text(statement))
        return [tuple(row) for row in result] if result.returns_rows else []


def units(batch: Batch) -> list[int]:
    return [row[0] for row in sql(batch, "SELECT n FROM units ORDER BY n")]


def table_exists(batch: Batch, name: str) -> bool:
    from sqlalchemy import inspect

    return inspect(batch.repository.engine).has_table(name)


@pytest.fixture
def other(config: Config) -> Iterator[Batch]:
    """Another process's view of the same repository."""
    with Batch(config) as opened:
        yield opened


def mark_lost(batch: Batch, execution_id: int) -> JobExecution:
    current = batch.repository.execution(execution_id)
    return batch.repository.end_execution(current, Status.FAILED, LOST)


def counting_job(fail_at: list[int | None]) -> Job:
    """Units 0..9, one row each, inserted between checkpoints; unit `fail_at[0]` raises after
    its insert (before its checkpoint)."""
    job = Job("counting")

    @job.tasklet
    def create(ctx: StepContext) -> None:
        ctx.connection.execute(text(CREATE_UNITS))

    @job.tasklet
    def insert(ctx: StepContext) -> Iterator[None]:
        for n in range(ctx.state.get("next", 0), 10):
            ctx.connection.execute(text("INSERT INTO units (n) VALUES (:n)"), {"n": n})
            if n == fail_at[0]:
                raise RuntimeError(f"unit {n} failed after its insert")
            ctx.state["next"] = n + 1
            yield

    return job


def test_generator_tasklet_inserts_commit_with_each_checkpoint_exactly_once_across_a_restart(
    batch: Batch,
) -> None:
    fail_at: list[int | None] = [6]
    job = counting_job(fail_at)

    failed = batch.start(job)

    assert failed.status == Status.FAILED
    assert "unit 6 failed after its insert" in (failed.exit_message or "")
    assert units(batch) == list(range(6))  # unit 6's insert rolled back with the failure
    steps = {step.name: step for step in batch.step_executions(failed.id)}
    assert steps["insert"].context == {"next": 6} and steps["insert"].commit_count == 6

    fail_at[0] = None
    restarted = batch.start(job)  # resumes the FAILED instance, as a restart would

    assert restarted.status == Status.COMPLETED and restarted.resumed_from == failed.id
    assert units(batch) == list(range(10))  # every unit once: none lost, none repeated


def test_a_plain_tasklet_that_fails_rolls_its_sql_back(batch: Batch) -> None:
    sql(batch, CREATE_UNITS)
    job = Job("failing")

    @job.tasklet
    def insert(ctx: StepContext) -> None:
        ctx.connection.execute(text("INSERT INTO units (n) VALUES (1), (2)"))
        raise ValueError("something is wrong")

    execution = batch.start(job)

    assert execution.status == Status.FAILED
    assert units(batch) == []
    [step] = batch.step_executions(execution.id)
    assert step.status == Status.FAILED and "ValueError: something is wrong" in (step.exit_message or "")


def test_a_plain_tasklet_whose_step_does_not_complete_commits_nothing(batch: Batch) -> None:
    """after_step failing, or a state that cannot be saved, fails the step: its SQL goes too."""
    sql(batch, CREATE_UNITS)
    job = Job("uncompleted")

    @job.tasklet
    def insert(ctx: StepContext) -> None:
        ctx.connection.execute(text("INSERT INTO units (n) VALUES (1)"))

    @job.after_step
    def refuse(ctx: StepContext, step: StepExecution) -> None:
        raise RuntimeError("not good enough")

    execution = batch.start(job)

    assert execution.status == Status.FAILED
    assert "after_step failed" in (execution.exit_message or "")
    assert units(batch) == []


def test_a_plain_tasklet_commits_with_the_steps_completion_and_later_steps_see_it(
    batch: Batch,
) -> None:
    job = Job("plain")
    seen: list[Any] = []

    @job.tasklet
    def create(ctx: StepContext) -> None:
        ctx.connection.execute(text(CREATE_UNITS))
        ctx.connection.execute(text("INSERT INTO units (n, note) VALUES (1, 'one')"))

    @job.tasklet
    def read(ctx: StepContext) -> None:
        seen.extend(ctx.connection.execute(text("SELECT n, note FROM units")).all())

    execution = batch.start(job)

    assert execution.status == Status.COMPLETED, execution.exit_message
    assert [tuple(row) for row in seen] == [(1, "one")]
    assert units(batch) == [1]


def test_ddl_in_a_first_step_is_used_by_a_later_chunk_step(batch: Batch) -> None:
    job = Job("ledger")

    @job.tasklet
    def create_tables(ctx: StepContext) -> None:
        ctx.connection.execute(
            text("CREATE TABLE IF NOT EXISTS ledger (entry_id INTEGER PRIMARY KEY, cents INTEGER)")
        )

    job.chunk_step(
        "post",
        reader=lambda ctx: ({"entry_id": i, "cents": i * 100} for i in range(1, 26)),
        writer=SqlWriter("ledger"),
        size=10,
    )

    execution = batch.start(job)

    assert execution.status == Status.COMPLETED, execution.exit_message
    assert sql(batch, "SELECT count(*), sum(cents) FROM ledger") == [(25, 32500)]


def test_a_tasklet_fenced_off_before_its_end_commits_nothing(batch: Batch, other: Batch) -> None:
    """Another process judged the run lost while the tasklet ran: the step's record and the
    tasklet's SQL are one fenced transaction, so neither is written."""
    sql(batch, CREATE_UNITS)
    job = Job("fenced")

    @job.tasklet
    def insert(ctx: StepContext) -> None:
        mark_lost(other, ctx.execution_id)  # before the tasklet's first statement takes a lock
        ctx.connection.execute(text("INSERT INTO units (n) VALUES (7)"))

    execution = batch.start(job)

    assert execution.status == Status.FAILED and execution.exit_message == LOST
    assert units(batch) == []


def test_a_stopped_generator_tasklet_keeps_what_its_checkpoints_committed(batch: Batch) -> None:
    sql(batch, CREATE_UNITS)
    job = Job("stopping")

    @job.tasklet
    def insert(ctx: StepContext) -> Iterator[None]:
        for n in range(ctx.state.get("next", 0), 10):
            ctx.connection.execute(text("INSERT INTO units (n) VALUES (:n)"), {"n": n})
            ctx.state["next"] = n + 1
            if n == 3:
                ctx._stop_event.set()  # as a stop request noticed by the heartbeat would
            yield

    stopped = batch.start(job)

    assert stopped.status == Status.STOPPED
    assert units(batch) == [0, 1, 2, 3]
    completed = batch.start(job)
    assert completed.status == Status.COMPLETED
    assert units(batch) == list(range(10))


def test_ctx_connection_is_none_outside_the_tasklet(batch: Batch) -> None:
    job = Job("listeners")
    seen: list[Any] = []

    @job.before_step
    def before(ctx: StepContext) -> None:
        seen.append(ctx.connection)

    @job.tasklet
    def work(ctx: StepContext) -> None:
        seen.append(ctx.connection is not None)

    execution = batch.start(job)

    assert execution.status == Status.COMPLETED
    assert seen == [None, True]


def entries_job(query: str, seen: list[Any]) -> Job:
    """A day's entries in a TEXT column, read back by `query` with the `date` param bound."""
    job = Job("entries", params={"date": date})

    @job.tasklet
    def create(ctx: StepContext) -> None:
        ctx.connection.execute(text("CREATE TABLE entries (id INTEGER PRIMARY KEY, day TEXT)"))
        ctx.connection.execute(
            text("INSERT INTO entries (id, day) VALUES (1, '2024-01-31'), (2, '2024-02-01')")
        )

    job.chunk_step(
        "read",
        reader=SqlReader(query, key="id"),
        writer=lambda items, ctx: seen.extend(item["id"] for item in items),
        size=10,
    )
    return job


def test_a_date_param_bound_against_a_text_column_names_what_was_bound_when_refused(
    batch: Batch,
) -> None:
    """SQLite compares the date's ISO text; Postgres has no text = date operator. The refusal
    is one line naming the param, its Python type and its value."""
    seen: list[Any] = []
    job = entries_job("SELECT * FROM entries WHERE day = :date", seen)

    execution = batch.start(job, {"date": "2024-01-31"})

    if batch.repository.dialect == "sqlite":
        assert execution.status == Status.COMPLETED, execution.exit_message
        assert seen == [1]
        return
    assert execution.status == Status.FAILED
    [step] = [s for s in batch.step_executions(execution.id) if s.name == "read"]
    first_line = (step.exit_message or "").splitlines()[0]
    assert first_line.startswith("SqlReaderError: SqlReader query refused by the database")
    assert "operator does not exist: text = date" in first_line
    assert ":date = datetime.date(2024, 1, 31) (date)" in first_line
    assert "CAST(:date AS text)" in first_line


def test_a_cast_in_the_query_reads_a_date_param_against_text_on_both_databases(
    batch: Batch,
) -> None:
    seen: list[Any] = []
    job = entries_job("SELECT * FROM entries WHERE day = CAST(:date AS TEXT)", seen)

    execution = batch.start(job, {"date": "2024-02-01"})

    assert execution.status == Status.COMPLETED, execution.exit_message
    assert seen == [2]

"""What job code hands the engine must never crash it nor corrupt a checkpoint (issue 8): text
no database stores as is, values JSON cannot hold, exits, a rolled-back chunk's state, and
readers that cannot seek. On SQLite and Postgres."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterator

import pytest
from sqlalchemy import text

from batchctl import Job, StepContext
from batchctl.model import Status
from batchctl.operator import Batch


def sql(batch: Batch, statement: str) -> list[Any]:
    with batch.repository.engine.begin() as connection:
        result = connection.execute(text(statement))
        return list(result) if result.returns_rows else []


# -- text no database stores as is ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "stored"),
    [("bad \x00 byte", "bad \\x00 byte"), ("caf\udce9", "caf\\udce9")],
    ids=["nul", "lone-surrogate"],
)
def test_an_exception_message_no_database_can_store_is_kept_escaped(
    batch: Batch, raised: str, stored: str
) -> None:
    job = Job("hostile")

    @job.tasklet
    def fail(ctx: StepContext) -> None:
        raise ValueError(raised)

    returned = batch.start(job)

    assert returned.status == Status.FAILED
    [step] = batch.step_executions(returned.id)
    assert step.exit_message.startswith(f"ValueError: {stored}")
    assert batch.execution(returned.id).exit_message.startswith(f"step fail failed: ValueError: {stored}")


def test_a_skipped_item_and_error_with_nul_are_recorded(batch: Batch) -> None:
    job = Job("skipping")

    @job.chunk(reader=lambda ctx: ["ok", "bad\x00"], writer=lambda items, ctx: None, size=5,
               skip=ValueError)
    def check(item: str, ctx: StepContext) -> str:
        if "\x00" in item:
            raise ValueError(f"refused {item}")
        return item

    returned = batch.start(job)

    assert returned.status == Status.COMPLETED, returned.exit_message
    [skipped] = batch.skipped_items(returned.id)
    assert skipped.item == '"bad\\u0000"'  # as JSON
    assert skipped.error == "ValueError: refused bad\\x00"


# -- values JSON cannot hold ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "named"),
    [({1, 2}, "a set"), (Decimal("1.5"), "a Decimal"), (datetime(2024, 1, 31), "a datetime"),
     (float("nan"), "the number nan")],
    ids=["set", "decimal", "datetime", "nan"],
)
def test_a_job_context_value_json_cannot_hold_fails_its_step_naming_it(
    batch: Batch, value: Any, named: str
) -> None:
    job = Job("shared")

    @job.tasklet
    def share(ctx: StepContext) -> None:
        ctx.job_context["totals"] = {"eur": value}

    returned = batch.start(job)

    assert returned.status == Status.FAILED
    [step] = batch.step_executions(returned.id)
    assert step.status == Status.FAILED
    assert step.exit_message.startswith(f"ctx.job_context['totals']['eur'] holds {named}")


def test_a_plain_tasklet_state_json_cannot_hold_fails_its_step(batch: Batch) -> None:
    job = Job("stateful")
    job.tasklet(lambda ctx: ctx.state.update(total=Decimal("3.10")), name="count")

    returned = batch.start(job)

    [step] = batch.step_executions(returned.id)
    assert returned.status == Status.FAILED
    assert step.exit_message.startswith("ctx.state['total'] holds a Decimal")


def test_a_checkpoint_of_a_generator_tasklet_json_cannot_hold_fails_its_step(batch: Batch) -> None:
    job = Job("generator")

    @job.tasklet
    def count(ctx: StepContext) -> Iterator[None]:
        ctx.state["seen"] = {"a"}
        yield

    returned = batch.start(job)

    [step] = batch.step_executions(returned.id)
    assert returned.status == Status.FAILED
    assert "ctx.state['seen'] holds a set" in step.exit_message


def test_a_chunk_processor_state_json_cannot_hold_fails_its_step(batch: Batch) -> None:
    job = Job("chunked")

    @job.chunk(reader=lambda ctx: range(10), writer=lambda items, ctx: None, size=5)
    def stamp(n: int, ctx: StepContext) -> int:
        ctx.state["last_seen"] = datetime(2024, 1, 31)
        return n

    returned = batch.start(job)

    [step] = batch.step_executions(returned.id)
    assert returned.status == Status.FAILED
    assert "ctx.state['last_seen'] holds a datetime" in step.exit_message
    assert step.commit_count == 0


# -- exits ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "described"),
    [(lambda: sys.exit(0), "the step called sys.exit(0)"),
     (lambda: sys.exit(3), "the step called sys.exit(3)"),
     (lambda: os._exit(0), "the step called os._exit(0)")],
    ids=["sys.exit(0)", "sys.exit(3)", "os._exit(0)"],
)
def test_a_step_that_exits_ends_failed_with_that_reason(
    batch: Batch, call: Any, described: str
) -> None:
    job = Job("exiting")
    job.tasklet(lambda ctx: call(), name="leave")
    job.tasklet(lambda ctx: None, name="after")

    returned = batch.start(job)

    assert returned.status == Status.FAILED and returned.process_exit_code == 1
    steps = batch.step_executions(returned.id)
    assert [s.name for s in steps] == ["leave"]
    assert steps[0].exit_message == described


def test_os_exit_exits_for_real_again_once_the_run_is_over(batch: Batch) -> None:
    real_exit = os._exit
    job = Job("quick")
    job.tasklet(lambda ctx: None, name="only")
    batch.start(job)
    assert os._exit is real_exit


def test_a_chunk_processor_that_exits_fails_its_step(batch: Batch) -> None:
    job = Job("exiting_chunk")

    @job.chunk(reader=lambda ctx: range(10), writer=lambda items, ctx: None, size=5)
    def leave(n: int, ctx: StepContext) -> int:
        if n == 7:
            sys.exit(0)
        return n

    returned = batch.start(job)

    [step] = batch.step_executions(returned.id)
    assert returned.status == Status.FAILED
    assert step.exit_message == "the step called sys.exit(0)" and step.commit_count == 1


# -- a rolled-back chunk's state ---------------------------------------------------------------------


def test_a_failed_chunk_leaves_the_committed_state_for_the_restart(batch: Batch) -> None:
    job = Job("totals")
    fail_on = iter([13, None])
    failing = {"at": next(fail_on)}

    @job.chunk(reader=lambda ctx: range(1, 21), writer=lambda items, ctx: _refuse(items, failing),
               size=5)
    def add(n: int, ctx: StepContext) -> int:
        ctx.state["total"] = ctx.state.get("total", 0) + n
        return n

    failed = batch.start(job)
    [step] = batch.step_executions(failed.id)
    assert failed.status == Status.FAILED
    # Items 1..10 committed: their total, not the 1..15 the processor reached before the rollback.
    assert step.context["total"] == 55 and step.context["batchctl"]["position"] == 10

    failing["at"] = next(fail_on)
    resumed = batch.start(job)
    assert resumed.status == Status.COMPLETED
    [step] = batch.step_executions(resumed.id)
    assert step.context["total"] == sum(range(1, 21))


def _refuse(items: list[int], failing: dict[str, Any]) -> None:
    if failing["at"] in items:
        raise RuntimeError(f"cannot write {failing['at']}")


# -- readers that cannot seek ---------------------------------------------------------------------


class CountingReader:
    """An object reader with read() only: no state() to seek by."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.next = 0

    def read(self) -> int | None:
        if self.next >= self.count:
            return None
        self.next += 1
        return self.next


def test_a_reader_without_state_is_read_past_the_committed_items_on_restart(batch: Batch) -> None:
    sql(batch, "CREATE TABLE counted (n INTEGER PRIMARY KEY)")
    job = Job("stateless")
    fail_at = iter([27, None])
    failing = {"at": next(fail_at)}

    def write(items: list[int], ctx: StepContext) -> None:
        if failing["at"] in items:
            raise RuntimeError("writer down")
        for n in items:
            ctx.connection.execute(text("INSERT INTO counted (n) VALUES (:n)"), {"n": n})

    job.chunk_step(name="count", reader=CountingReader(100), writer=write, size=10)

    assert batch.start(job).status == Status.FAILED
    failing["at"] = next(fail_at)
    job.steps.clear()
    job.chunk_step(name="count", reader=CountingReader(100), writer=write, size=10)
    resumed = batch.start(job)

    assert resumed.status == Status.COMPLETED, resumed.exit_message
    assert [row[0] for row in sql(batch, "SELECT n FROM counted ORDER BY n")] == list(range(1, 101))


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_partition_failing_with_a_nul_in_its_message_ends_its_step(
    batch: Batch, write_job: Any, mode: str
) -> None:
    write_job("nul_partitions", f'''
        from batchctl import Job

        job = Job("nul_partitions")

        @job.tasklet(partitioner=lambda ctx: [{{"i": i}} for i in range(3)], workers=2, mode="{mode}")
        def part(ctx):
            if ctx.partition["i"] == 1:
                raise ValueError("bad \\x00 byte")
    ''')

    returned = batch.start("nul_partitions")

    assert returned.status == Status.FAILED
    parts = {s.name: s for s in batch.step_executions(returned.id) if s.is_partition}
    assert parts["part:0001"].status == Status.FAILED
    assert parts["part:0001"].exit_message.startswith("ValueError: bad \\x00 byte")
    assert {parts["part:0000"].status, parts["part:0002"].status} == {Status.COMPLETED}

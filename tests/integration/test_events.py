"""The events outbox and triggers (issues 11-13): every status change of an execution or a step is
an event row written in the transaction of the change, and every execution records what started
it. On SQLite and Postgres."""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest

from batchctl import Job, StepContext
from batchctl.config import Config
from batchctl.model import Status, Trigger
from batchctl.operator import Batch


def changes(batch: Batch, execution_id: int) -> list[tuple[str | None, str]]:
    return [(e.step_name, e.status.value) for e in batch.events(execution=execution_id)]


def test_a_completed_run_records_each_status_change_in_order(batch: Batch) -> None:
    job = Job("two_steps")
    job.tasklet(lambda ctx: None, name="extract")
    job.tasklet(lambda ctx: None, name="load")

    execution = batch.start(job)

    assert changes(batch, execution.id) == [
        (None, "STARTING"), (None, "STARTED"),
        ("extract", "STARTED"), ("extract", "COMPLETED"),
        ("load", "STARTED"), ("load", "COMPLETED"),
        (None, "COMPLETED"),
    ]
    events = batch.events(execution=execution.id)
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert {e.job_name for e in events} == {"two_steps"}
    assert all(e.at.tzinfo is not None for e in events)


def test_a_failed_step_and_its_execution_record_failed(batch: Batch) -> None:
    job = Job("failing")

    @job.tasklet
    def boom(ctx: StepContext) -> None:
        raise RuntimeError("no")

    execution = batch.start(job)

    assert changes(batch, execution.id)[-2:] == [("boom", "FAILED"), (None, "FAILED")]


def test_a_stop_records_stopping_then_stopped(batch: Batch) -> None:
    job = Job("stoppable")

    @job.tasklet
    def work(ctx: StepContext) -> Iterator[None]:
        batch.stop(ctx.execution_id)
        deadline = time.monotonic() + 30
        while not ctx.stop_requested and time.monotonic() < deadline:  # the heartbeat reads it
            time.sleep(0.01)
        yield

    execution = batch.start(job)

    recorded = changes(batch, execution.id)
    assert (None, "STOPPING") in recorded
    assert recorded[-2:] == [("work", "STOPPED"), (None, "STOPPED")]


def test_an_execution_marked_lost_records_the_end_of_its_live_steps(
    batch: Batch, config: Config
) -> None:
    job = Job("lost")

    @job.tasklet
    def hold(ctx: StepContext) -> None:
        with Batch(config) as other:
            current = other.repository.execution(ctx.execution_id)
            other.repository.end_execution(current, Status.FAILED, "process lost: a test")

    execution = batch.start(job)

    assert changes(batch, execution.id)[-2:] == [(None, "FAILED"), ("hold", "FAILED")]


def test_partitions_record_their_own_changes(batch: Batch, write_job: Any) -> None:
    write_job("split", '''
        from batchctl import Job

        job = Job("split")

        @job.tasklet(partitioner=lambda ctx: [{"i": i} for i in range(2)], workers=2, mode="thread")
        def part(ctx):
            pass
    ''')
    execution = batch.start("split")

    recorded = changes(batch, execution.id)
    for name in ("part:0000", "part:0001"):
        assert [s for n, s in recorded if n == name] == ["STARTING", "STARTED", "COMPLETED"]
    assert recorded[-2:] == [("part", "COMPLETED"), (None, "COMPLETED")]


def test_events_resume_after_an_id_and_filter_by_job(batch: Batch) -> None:
    one, two = Job("one"), Job("two")
    one.tasklet(lambda ctx: None, name="a")
    two.tasklet(lambda ctx: None, name="b")
    first = batch.start(one)
    batch.start(two)

    everything = batch.events()
    middle = everything[3].id
    assert [e.id for e in batch.events(after=middle)] == [e.id for e in everything if e.id > middle]
    assert {e.job_name for e in batch.events(job="one")} == {"one"}
    assert {e.execution_id for e in batch.events(execution=first.id)} == {first.id}
    assert len(batch.events(limit=2)) == 2


def test_a_refused_start_records_no_event(batch: Batch) -> None:
    job = Job("once")
    job.tasklet(lambda ctx: None, name="only")
    batch.start(job)
    before = batch.events()

    with pytest.raises(Exception):
        batch.start(job)  # already complete

    assert batch.events() == before


@pytest.mark.parametrize(
    ("trigger", "kind", "detail"),
    [(None, "api", None), (Trigger("schedule", "eod-nightly @ 2024-02-01T00:30:00+00:00"),
                           "schedule", "eod-nightly @ 2024-02-01T00:30:00+00:00")],
)
def test_an_execution_records_what_triggered_it(
    batch: Batch, trigger: Trigger | None, kind: str, detail: str | None
) -> None:
    job = Job("triggered")
    job.tasklet(lambda ctx: None, name="only")

    execution = batch.start(job, trigger=trigger)

    stored = batch.execution(execution.id)
    assert (stored.trigger, stored.trigger_detail) == (kind, detail)


def test_the_command_line_records_itself_as_the_trigger(run_cli: Any, write_job: Any) -> None:
    import json

    write_job("cli_job", '''
        from batchctl import Job

        job = Job("cli_job")

        @job.tasklet
        def only(ctx):
            pass
    ''')
    started = json.loads(run_cli("start", "cli_job", "--json").out)
    assert started["trigger"] == {"kind": "cli", "detail": None}

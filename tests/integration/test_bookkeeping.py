"""batchctl's part of a step's state lives under one reserved key (issue 9), and a context saved
with the older layout (keys at the top level) still restarts where it stopped."""

from __future__ import annotations

from typing import Any

from batchctl import Job, StepContext
from batchctl.model import Status
from batchctl.operator import Batch


def counting_job(written: list[int], fail_at: dict[str, Any]) -> Job:
    job = Job("counting")

    def write(items: list[int], ctx: StepContext) -> None:
        if fail_at["item"] in items:
            raise RuntimeError("writer down")
        written.extend(items)

    @job.chunk(reader=lambda ctx: range(20), writer=write, size=5)
    def count(n: int, ctx: StepContext) -> int:
        ctx.state["mine"] = n  # a job's own key beside batchctl's
        return n

    return job


def test_the_chunk_loop_keeps_its_state_under_the_reserved_key(batch: Batch) -> None:
    written: list[int] = []
    execution = batch.start(counting_job(written, {"item": None}))

    [step] = batch.step_executions(execution.id)
    assert set(step.context) == {"batchctl", "mine"}
    assert step.context["batchctl"]["position"] == 20 and step.context["mine"] == 19


def test_a_context_saved_with_the_older_layout_restarts_where_it_stopped(batch: Batch) -> None:
    written: list[int] = []
    fail_at = {"item": 12}
    job = counting_job(written, fail_at)
    failed = batch.start(job)
    [step] = batch.step_executions(failed.id)
    book = step.context["batchctl"]
    legacy = {"mine": step.context["mine"], **book}  # as batchctl 0.1 saved it
    batch.repository.update_step_execution(step, context=legacy)

    fail_at["item"] = None
    resumed = batch.start(job)

    assert resumed.status == Status.COMPLETED and resumed.resumed_from == failed.id
    assert written == list(range(20))
    [step] = batch.step_executions(resumed.id)
    assert step.context["batchctl"]["position"] == 20 and "position" not in step.context

"""The engine on SQLite and Postgres: steps in order, what each step execution records,
generator checkpoints, the shared job context, and listeners."""

from __future__ import annotations

from typing import Any, Iterator

from batchctl import Job, StepContext
from batchctl.model import JobExecution, Status, StepExecution
from batchctl.operator import Batch


def test_steps_run_in_the_order_they_are_declared(batch: Batch) -> None:
    job = Job("ordered")
    ran: list[str] = []
    for name in ("extract", "transform", "load"):
        job.tasklet(lambda ctx, name=name: ran.append(name), name=name)

    execution = batch.start(job)

    assert execution.status == Status.COMPLETED
    assert ran == ["extract", "transform", "load"]
    assert [s.name for s in batch.step_executions(execution.id)] == ran


def test_a_completed_execution_records_its_lifecycle(batch: Batch) -> None:
    job = Job("lifecycle")
    job.tasklet(lambda ctx: None, name="only")

    returned = batch.start(job)
    stored = batch.execution(returned.id)

    assert stored.status == Status.COMPLETED
    assert stored.exit_code == "COMPLETED"
    assert stored.exit_message is None
    assert stored.created_at <= stored.started_at <= stored.ended_at
    assert stored.host and stored.pid
    assert stored.version == returned.version
    assert returned.process_exit_code == 0


def test_the_execution_is_started_while_its_steps_run(batch: Batch) -> None:
    job = Job("running")
    seen: list[Status] = []
    job.tasklet(lambda ctx: seen.append(batch.execution(ctx.execution_id).status), name="look")

    batch.start(job)

    assert seen == [Status.STARTED]


def test_each_step_execution_records_times_status_and_exit_code(batch: Batch) -> None:
    job = Job("recorded")
    job.tasklet(lambda ctx: None, name="one")
    job.tasklet(lambda ctx: None, name="two")

    execution = batch.start(job)
    one, two = batch.step_executions(execution.id)

    for step in (one, two):
        assert step.job_execution_id == execution.id
        assert step.status == Status.COMPLETED
        assert step.exit_code == "COMPLETED"
        assert step.exit_message is None
        assert step.started_at is not None and step.ended_at is not None
        assert execution.started_at <= step.started_at <= step.ended_at <= execution.ended_at
    assert one.ended_at <= two.started_at


def test_a_failing_step_records_the_exception_and_its_traceback(batch: Batch) -> None:
    job = Job("failing")

    @job.tasklet
    def validate(ctx: StepContext) -> None:
        raise ValueError("entry 17 has no account")

    execution = batch.start(job)
    [step] = batch.step_executions(execution.id)

    assert step.status == Status.FAILED
    assert step.exit_code == "FAILED"
    assert step.exit_message.startswith("ValueError: entry 17 has no account\n")
    assert "Traceback (most recent call last)" in step.exit_message
    assert "in validate" in step.exit_message
    assert step.ended_at is not None


def test_a_failing_step_fails_the_job_and_later_steps_do_not_run(batch: Batch) -> None:
    job = Job("stops-at-failure")
    ran: list[str] = []
    job.tasklet(lambda ctx: ran.append("first"), name="first")

    @job.tasklet
    def second(ctx: StepContext) -> None:
        raise RuntimeError("boom")

    job.tasklet(lambda ctx: ran.append("third"), name="third")

    execution = batch.start(job)

    assert execution.status == Status.FAILED
    assert execution.exit_code == "FAILED"
    assert execution.exit_message.startswith("step second failed: RuntimeError: boom")
    assert execution.process_exit_code == 1
    assert ran == ["first"]
    assert [s.name for s in batch.step_executions(execution.id)] == ["first", "second"]
    assert batch.execution(execution.id).status == Status.FAILED


def test_a_generator_tasklet_commits_at_each_yield(batch: Batch) -> None:
    job = Job("generator")

    @job.tasklet
    def count(ctx: StepContext) -> Iterator[None]:
        for i in range(4):
            ctx.state["done"] = i + 1
            yield

    execution = batch.start(job)
    [step] = batch.step_executions(execution.id)

    assert step.status == Status.COMPLETED
    assert step.commit_count == 4
    assert step.context == {"done": 4}


def test_ctx_state_is_saved_at_each_yield(batch: Batch) -> None:
    job = Job("checkpoints")
    saved: list[tuple[dict[str, Any], int]] = []

    @job.tasklet
    def count(ctx: StepContext) -> Iterator[None]:
        for i in range(3):
            ctx.state["done"] = i + 1
            yield
            [stored] = batch.step_executions(ctx.execution_id)
            saved.append((stored.context, stored.commit_count))

    batch.start(job)

    assert saved == [({"done": 1}, 1), ({"done": 2}, 2), ({"done": 3}, 3)]


def test_a_plain_tasklet_has_no_checkpoints_and_saves_its_state_at_the_end(batch: Batch) -> None:
    job = Job("plain")

    @job.tasklet
    def work(ctx: StepContext) -> None:
        ctx.state["rows"] = 12

    execution = batch.start(job)
    [step] = batch.step_executions(execution.id)

    assert step.commit_count == 0
    assert step.context == {"rows": 12}


def test_the_job_context_is_shared_between_steps_and_persisted(batch: Batch) -> None:
    job = Job("shared")
    seen: list[Any] = []

    @job.tasklet
    def produce(ctx: StepContext) -> None:
        ctx.job_context["accounts"] = 7

    @job.tasklet
    def consume(ctx: StepContext) -> None:
        seen.append(ctx.job_context["accounts"])
        ctx.job_context["report"] = "balances.csv"

    execution = batch.start(job)

    assert seen == [7]
    assert batch.execution(execution.id).context == {"accounts": 7, "report": "balances.csv"}


def test_params_reach_steps_typed_and_read_only(batch: Batch) -> None:
    from datetime import date

    job = Job("typed", params={"date": date, "n": int})
    seen: list[Any] = []

    @job.tasklet
    def look(ctx: StepContext) -> None:
        seen.append(dict(ctx.params))
        try:
            ctx.params["n"] = 0  # type: ignore[index]
        except TypeError:
            seen.append("read-only")

    execution = batch.start(job, {"date": "2024-01-31", "n": "3"})

    assert seen == [{"date": date(2024, 1, 31), "n": 3}, "read-only"]
    assert execution.params == {"date": "2024-01-31", "n": 3}


def test_a_failing_before_job_fails_the_job_with_no_step_run(batch: Batch) -> None:
    job = Job("guarded")
    ran: list[str] = []

    @job.before_job
    def check_inputs(execution: JobExecution) -> None:
        raise FileNotFoundError("entries file is missing")

    job.tasklet(lambda ctx: ran.append("step"), name="step")

    execution = batch.start(job)

    assert execution.status == Status.FAILED
    assert execution.exit_message.startswith(
        "before_job failed: FileNotFoundError: entries file is missing"
    )
    assert ran == []
    assert batch.step_executions(execution.id) == []


def test_listeners_are_called_in_order(batch: Batch) -> None:
    calls: list[str] = []

    class Audit:
        def before_job(self, execution: JobExecution) -> None:
            calls.append(f"audit.before_job {execution.status.value}")

        def after_job(self, execution: JobExecution) -> None:
            calls.append(f"audit.after_job {execution.status.value}")

        def before_step(self, ctx: StepContext) -> None:
            calls.append(f"audit.before_step {ctx.step_name}")

        def after_step(self, ctx: StepContext, step: StepExecution) -> None:
            calls.append(f"audit.after_step {step.name} {step.status.value}")

    job = Job("listened", listeners=[Audit()])

    @job.before_job
    def before_job(execution: JobExecution) -> None:
        calls.append("fn.before_job")

    @job.after_job
    def after_job(execution: JobExecution) -> None:
        calls.append(f"fn.after_job {execution.status.value}")

    @job.before_step
    def before_step(ctx: StepContext) -> None:
        calls.append(f"fn.before_step {ctx.step_name}")

    @job.after_step
    def after_step(ctx: StepContext, step: StepExecution) -> None:
        calls.append(f"fn.after_step {step.name}")

    job.tasklet(lambda ctx: calls.append("run a"), name="a")
    job.tasklet(lambda ctx: calls.append("run b"), name="b")

    batch.start(job)

    assert calls == [
        "audit.before_job STARTED",
        "fn.before_job",
        "audit.before_step a",
        "fn.before_step a",
        "run a",
        "fn.after_step a",
        "audit.after_step a COMPLETED",
        "audit.before_step b",
        "fn.before_step b",
        "run b",
        "fn.after_step b",
        "audit.after_step b COMPLETED",
        "fn.after_job COMPLETED",
        "audit.after_job COMPLETED",
    ]


def test_after_step_sees_a_failed_step_and_after_job_a_failed_job(batch: Batch) -> None:
    job = Job("failure-seen")
    seen: list[str] = []

    @job.after_step
    def after_step(ctx: StepContext, step: StepExecution) -> None:
        seen.append(f"{step.name} {step.status.value} {step.exit_message.splitlines()[0]}")

    @job.after_job
    def after_job(execution: JobExecution) -> None:
        seen.append(f"job {execution.status.value}")

    @job.tasklet
    def broken(ctx: StepContext) -> None:
        raise KeyError("account")

    batch.start(job)

    assert seen == ["broken FAILED KeyError: 'account'", "job FAILED"]


def test_a_failing_before_step_fails_that_step_without_running_it(batch: Batch) -> None:
    job = Job("step-guard")
    ran: list[str] = []

    @job.before_step
    def refuse(ctx: StepContext) -> None:
        raise PermissionError("no access")

    job.tasklet(lambda ctx: ran.append("step"), name="step")

    execution = batch.start(job)
    [step] = batch.step_executions(execution.id)

    assert ran == []
    assert step.status == Status.FAILED
    assert step.exit_message.startswith("before_step failed: PermissionError: no access")
    assert execution.status == Status.FAILED


def test_a_failing_after_step_fails_a_step_that_completed(batch: Batch) -> None:
    job = Job("step-check")

    @job.after_step
    def verify(ctx: StepContext, step: StepExecution) -> None:
        raise AssertionError("totals do not match")

    job.tasklet(lambda ctx: None, name="step")

    execution = batch.start(job)
    [step] = batch.step_executions(execution.id)

    assert step.status == Status.FAILED
    assert step.exit_message.startswith("after_step failed: AssertionError: totals do not match")
    assert execution.status == Status.FAILED


def test_a_failing_after_job_does_not_change_the_recorded_outcome(batch: Batch) -> None:
    job = Job("after-job-fails")

    @job.after_job
    def notify(execution: JobExecution) -> None:
        raise ConnectionError("mail server down")

    job.tasklet(lambda ctx: None, name="step")

    execution = batch.start(job)

    assert execution.status == Status.COMPLETED
    assert batch.execution(execution.id).status == Status.COMPLETED


def test_a_job_from_the_jobs_directory_runs_by_name(batch: Batch, write_job: Any) -> None:
    write_job(
        "hello",
        """
        from batchctl import Job
        job = Job("hello", params={"n": int})

        @job.tasklet
        def one(ctx):
            ctx.state["n"] = ctx.params["n"]

        @job.tasklet
        def two(ctx):
            for i in range(3):
                ctx.state["i"] = i
                yield
        """,
    )
    execution = batch.start("hello", {"n": "5"})
    one, two = batch.step_executions(execution.id)

    assert execution.status == Status.COMPLETED
    assert one.context == {"n": 5}
    assert two.commit_count == 3

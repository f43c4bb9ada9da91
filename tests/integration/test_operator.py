"""The operator's rules for start and restart, on SQLite and Postgres."""

from __future__ import annotations

from typing import Iterator

import pytest

from batchctl import Job, StepContext
from batchctl.errors import AlreadyComplete, AlreadyRunning, InvalidParams, NotRestartable, Refused
from batchctl.model import Status
from batchctl.operator import Batch


class Flaky:
    """A job with a completed first step and a generator step that fails at item `fail_at`
    (after changing its state, before its checkpoint) until `fail_at` is set to None."""

    def __init__(self, name: str = "flaky", items: int = 6, fail_at: int | None = 3) -> None:
        self.fail_at = fail_at
        self.prepared = 0
        self.processed: list[int] = []
        self.resumed_from: list[dict] = []
        self.job = Job(name, params={"day": str})

        @self.job.tasklet
        def prepare(ctx: StepContext) -> None:
            self.prepared += 1

        @self.job.tasklet
        def process(ctx: StepContext) -> Iterator[None]:
            self.resumed_from.append(dict(ctx.state))
            for item in range(ctx.state.get("done", 0), items):
                ctx.state["done"] = item + 1
                if item == self.fail_at:
                    raise RuntimeError(f"item {item} failed")
                self.processed.append(item)
                yield


PARAMS = {"day": "2024-01-31"}


def test_a_new_instance_runs_afresh(batch: Batch) -> None:
    execution = batch.start(Flaky(fail_at=None).job, PARAMS)
    assert execution.status == Status.COMPLETED
    assert execution.resumed_from is None


def test_starting_a_completed_instance_is_refused_with_a_hint(batch: Batch) -> None:
    job = Flaky(fail_at=None).job
    done = batch.start(job, PARAMS)

    with pytest.raises(AlreadyComplete) as refused:
        batch.start(job, PARAMS)

    assert refused.value.exit_code == 4
    assert "a different param value makes a new instance" in refused.value.message
    assert str(done.id) in refused.value.message
    assert [e.id for e in batch.history(limit=None)] == [done.id]


def test_the_same_param_given_as_string_or_number_is_the_same_instance(batch: Batch) -> None:
    job = Job("numbered", params={"n": int})
    job.tasklet(lambda ctx: None, name="step")
    batch.start(job, {"n": 5})
    with pytest.raises(AlreadyComplete):
        batch.start(job, {"n": "5"})


def test_a_different_param_value_makes_a_new_instance(batch: Batch) -> None:
    job = Flaky(fail_at=None).job
    first = batch.start(job, {"day": "2024-01-31"})
    second = batch.start(job, {"day": "2024-02-01"})
    assert second.status == Status.COMPLETED
    assert second.instance_id != first.instance_id


def test_bad_params_are_refused_before_anything_is_written(batch: Batch) -> None:
    job = Job("strict", params={"n": int})
    job.tasklet(lambda ctx: None, name="step")
    with pytest.raises(InvalidParams, match="'n'"):
        batch.start(job, {"n": "many"})
    assert batch.history(limit=None) == []


def test_starting_an_instance_with_a_live_execution_is_refused(batch: Batch) -> None:
    job = Flaky(fail_at=None).job
    live, _ = batch._create_start(job, PARAMS)  # recorded STARTING, not run

    with pytest.raises(AlreadyRunning, match=f"execution {live.id}"):
        batch.start(job, PARAMS)

    assert [e.id for e in batch.history(limit=None)] == [live.id]


def test_starting_a_failed_instance_resumes_it(batch: Batch) -> None:
    flaky = Flaky()
    failed = batch.start(flaky.job, PARAMS)
    assert failed.status == Status.FAILED

    flaky.fail_at = None
    resumed = batch.start(flaky.job, PARAMS)

    assert resumed.status == Status.COMPLETED
    assert resumed.resumed_from == failed.id
    assert resumed.instance_id == failed.instance_id
    assert resumed.params == failed.params


def test_a_resume_skips_the_completed_steps(batch: Batch) -> None:
    flaky = Flaky()
    batch.start(flaky.job, PARAMS)
    flaky.fail_at = None

    resumed = batch.start(flaky.job, PARAMS)

    assert flaky.prepared == 1
    assert [s.name for s in batch.step_executions(resumed.id)] == ["process"]


def test_a_failed_generator_step_resumes_from_its_last_checkpoint(batch: Batch) -> None:
    flaky = Flaky(items=6, fail_at=3)
    failed = batch.start(flaky.job, PARAMS)
    [_, failed_step] = batch.step_executions(failed.id)
    assert failed_step.commit_count == 3
    assert failed_step.context == {"done": 3}  # the last checkpoint, not the state at the failure

    flaky.fail_at = None
    batch.start(flaky.job, PARAMS)

    assert flaky.resumed_from == [{}, {"done": 3}]
    assert flaky.processed == [0, 1, 2, 3, 4, 5]  # every item once: none lost, none repeated


def test_a_resume_carries_the_job_context_over(batch: Batch) -> None:
    job = Job("context-carried")
    state = {"fail": True}
    seen: list[object] = []

    @job.tasklet
    def first(ctx: StepContext) -> None:
        ctx.job_context["total"] = 99

    @job.tasklet
    def second(ctx: StepContext) -> None:
        seen.append(ctx.job_context.get("total"))
        if state["fail"]:
            raise RuntimeError("later")

    batch.start(job)
    state["fail"] = False
    resumed = batch.start(job)

    assert seen == [99, 99]
    assert batch.execution(resumed.id).context == {"total": 99}


def test_starting_a_stopped_instance_resumes_it(batch: Batch) -> None:
    flaky = Flaky(fail_at=None)
    created, _ = batch._create_start(flaky.job, PARAMS)
    stopped = batch.repository.update_execution(created, status=Status.STOPPED)

    resumed = batch.start(flaky.job, PARAMS)

    assert resumed.resumed_from == stopped.id
    assert resumed.status == Status.COMPLETED


def test_an_instance_whose_last_execution_was_abandoned_runs_afresh(batch: Batch) -> None:
    flaky = Flaky()
    failed = batch.start(flaky.job, PARAMS)
    batch.abandon(failed.id)
    flaky.fail_at = None

    fresh = batch.start(flaky.job, PARAMS)

    assert fresh.status == Status.COMPLETED
    assert fresh.resumed_from is None
    assert fresh.instance_id == failed.instance_id
    assert flaky.prepared == 2  # the completed step ran again
    assert flaky.resumed_from == [{}, {}]  # no checkpoint reused
    assert [s.name for s in batch.step_executions(fresh.id)] == ["prepare", "process"]


def test_a_resume_after_an_abandoned_run_does_not_reuse_steps_before_it(batch: Batch) -> None:
    flaky = Flaky()
    abandoned = batch.start(flaky.job, PARAMS)
    batch.abandon(abandoned.id)
    failed_again = batch.start(flaky.job, PARAMS)  # afresh; fails at the same item
    flaky.fail_at = None

    resumed = batch.start(flaky.job, PARAMS)

    assert resumed.resumed_from == failed_again.id
    assert flaky.prepared == 2
    assert flaky.resumed_from == [{}, {}, {"done": 3}]


def test_an_instance_whose_last_execution_is_unknown_is_refused(batch: Batch) -> None:
    flaky = Flaky()
    failed = batch.start(flaky.job, PARAMS)
    batch.repository.update_execution(failed, status=Status.UNKNOWN)

    with pytest.raises(Refused, match="abandon"):
        batch.start(flaky.job, PARAMS)


def test_restart_by_id_resumes_a_failed_execution(batch: Batch, write_job) -> None:
    write_job(
        "restartable",
        """
        from pathlib import Path
        from batchctl import Job
        job = Job("restartable", params={"marker": str})

        @job.tasklet
        def check(ctx):
            if not Path(ctx.params["marker"]).exists():
                raise RuntimeError("marker missing")
        """,
    )
    path = batch.config.jobs_dir / "marker"
    failed = batch.start("restartable", {"marker": str(path)})
    path.write_text("ready")

    restarted = batch.restart(str(failed.id))

    assert restarted.status == Status.COMPLETED
    assert restarted.resumed_from == failed.id


def test_restart_by_job_name_resumes_its_latest_execution(batch: Batch) -> None:
    flaky = Flaky(name="flaky-restart")
    batch.registry.jobs[flaky.job.name] = flaky.job
    failed = batch.start(flaky.job, PARAMS)
    flaky.fail_at = None

    restarted = batch.restart("flaky-restart")

    assert restarted.resumed_from == failed.id
    assert flaky.processed == [0, 1, 2, 3, 4, 5]


def test_restarting_a_completed_execution_is_refused(batch: Batch) -> None:
    flaky = Flaky(name="done-restart", fail_at=None)
    batch.registry.jobs[flaky.job.name] = flaky.job
    done = batch.start(flaky.job, PARAMS)

    with pytest.raises(NotRestartable, match="a different param value makes a new instance"):
        batch.restart(done.id)


def test_batch_from_config_offers_the_clis_operations(
    database_url: str, write_job, tmp_path
) -> None:
    write_job(
        "hello",
        """
        from batchctl import Job
        job = Job("hello", params={"n": int})
        job.tasklet(lambda ctx: None, name="step")
        """,
    )
    config = tmp_path / "config.toml"
    config.write_text(f'[batchctl]\ndatabase = "{database_url}"\njobs_dir = "jobs"\n')

    with Batch.from_config(config) as batch:
        finished = batch.start("hello", {"n": "1"})
        assert finished.status == Status.COMPLETED
        assert batch.execution(finished.id).status == Status.COMPLETED
        assert [e.id for e in batch.history("hello")] == [finished.id]
        assert [job.name for job in batch.jobs()] == ["hello"]

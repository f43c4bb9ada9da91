"""Params never silently make a new instance (issue 10), on SQLite and Postgres: undeclared names
are refused, `plan_start` says what a start would do and writes nothing, and `rerun=True` is the
one deliberate way to run a COMPLETED instance again, as a new instance linked to the first."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest

from batchctl import Job, StepContext
from batchctl.config import Config
from batchctl.errors import AlreadyComplete, AlreadyRunning, InvalidParams, NotRerunnable, Refused
from batchctl.model import Param, Status, instance_key
from batchctl.operator import Batch, StartPlan

PARAMS = {"day": "2024-01-31"}
KEY = instance_key({"day": "2024-01-31", "region": "eu"})


class Switch:
    """A job whose only step fails while `failing` is set: one instance can fail, then complete."""

    def __init__(self) -> None:
        self.failing = False
        self.runs = 0
        self.job = Job("switch", params={"day": str, "region": Param(str, default="eu")})

        @self.job.tasklet
        def work(ctx: StepContext) -> None:
            self.runs += 1
            if self.failing:
                raise RuntimeError("failing on purpose")


@pytest.fixture
def switch() -> Switch:
    return Switch()


def counts(batch: Batch) -> tuple[int, int, int]:
    """Instances, executions and step executions in the repository."""
    from sqlalchemy import func, select

    from batchctl.repository.tables import job_execution, job_instance, step_execution

    with batch.repository.engine.connect() as connection:
        return tuple(  # type: ignore[return-value]
            connection.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (job_instance, job_execution, step_execution)
        )


def plan_unchanged(batch: Batch, job: Job, rerun: bool = False) -> StartPlan:
    """`plan_start`, checking that it wrote nothing."""
    before = counts(batch)
    plan = batch.plan_start(job, PARAMS, rerun=rerun)
    assert counts(batch) == before
    return plan


# -- undeclared params ----------------------------------------------------------------------------


def test_an_undeclared_param_is_refused_before_anything_is_written(batch: Batch, switch: Switch) -> None:
    with pytest.raises(InvalidParams) as refused:
        batch.start(switch.job, {"day": "2024-01-31", "regoin": "us"})
    assert refused.value.exit_code == 2
    assert refused.value.message == (
        "unknown param 'regoin' for job switch (did you mean 'region'? declared: day, region)"
    )
    assert counts(batch) == (0, 0, 0)


def test_a_typo_never_runs_a_completed_day_again(batch: Batch, switch: Switch) -> None:
    batch.start(switch.job, PARAMS)
    with pytest.raises(InvalidParams, match="did you mean 'day'"):
        batch.start(switch.job, {"Day": "2024-01-31"})
    assert switch.runs == 1
    assert counts(batch)[:2] == (1, 1)


def test_a_job_with_extra_params_keeps_them_in_its_instance(batch: Batch) -> None:
    seen: list[dict] = []
    job = Job("free", params={"day": str}, extra_params=True)

    @job.tasklet
    def work(ctx: StepContext) -> None:
        seen.append(dict(ctx.params))

    first = batch.start(job, {"day": "2024-01-31", "note": "a"})
    second = batch.start(job, {"day": "2024-01-31", "note": "b"})
    assert first.status == second.status == Status.COMPLETED
    assert first.instance_id != second.instance_id
    assert seen == [{"day": "2024-01-31", "note": "a"}, {"day": "2024-01-31", "note": "b"}]


EVOLVING = """
    from pathlib import Path

    from batchctl import Job, Param

    job = Job("evolving", params={PARAMS})

    @job.tasklet
    def work(ctx):
        if Path(__file__).with_name("failing").exists():
            raise RuntimeError("failing on purpose")
"""


def test_an_instance_whose_param_is_no_longer_declared_still_restarts(
    config: Config, jobs_dir: Path, write_job: Callable[[str, str], Path]
) -> None:
    """Stored params were checked when the instance was made; a job that dropped one of them
    since must not strand its FAILED instance."""
    (jobs_dir / "failing").touch()
    write_job("evolving", EVOLVING.replace("{PARAMS}", '{"day": str, "old": Param(str, default="x")}'))
    with Batch(config) as batch:
        failed = batch.start("evolving", PARAMS)
    assert failed.status == Status.FAILED
    (jobs_dir / "failing").unlink()
    write_job("evolving", EVOLVING.replace("{PARAMS}", '{"day": str}'))
    with Batch(config) as batch:
        resumed = batch.restart(failed.id)
    assert resumed.status == Status.COMPLETED
    assert resumed.params == {"day": "2024-01-31", "old": "x"}


# -- plan_start: what a start would do, writing nothing ---------------------------------------


def test_the_plan_of_new_params_is_a_new_instance(batch: Batch, switch: Switch) -> None:
    plan = plan_unchanged(batch, switch.job)
    assert (plan.action, plan.instance_id, plan.exit_code) == ("new", None, 0)
    assert plan.instance_key == KEY
    assert plan.params == {"day": "2024-01-31", "region": "eu"}
    assert plan.description == "would start a new instance of job switch"
    assert counts(batch) == (0, 0, 0)


def test_the_plan_of_a_completed_instance_is_refused_with_its_exit_code(
    batch: Batch, switch: Switch
) -> None:
    done = batch.start(switch.job, PARAMS)
    plan = plan_unchanged(batch, switch.job)
    assert (plan.action, plan.exit_code, plan.instance_id) == ("refused", 4, done.instance_id)
    assert plan.instance_key == KEY
    assert plan.refusal is not None and f"(execution {done.id})" in plan.refusal
    assert plan.description.startswith("would be refused (exit 4): job switch already completed")
    with pytest.raises(AlreadyComplete):
        batch.start(switch.job, PARAMS)


def test_the_plan_of_a_failed_instance_resumes_its_last_execution(batch: Batch, switch: Switch) -> None:
    switch.failing = True
    failed = batch.start(switch.job, PARAMS)
    plan = plan_unchanged(batch, switch.job)
    assert (plan.action, plan.resumes, plan.last_status) == ("resume", failed.id, Status.FAILED)
    assert plan.description == f"would resume instance {failed.instance_id} from execution {failed.id}"
    switch.failing = False
    assert batch.start(switch.job, PARAMS).resumed_from == plan.resumes


def test_the_plan_of_an_abandoned_instance_runs_it_afresh(batch: Batch, switch: Switch) -> None:
    switch.failing = True
    failed = batch.start(switch.job, PARAMS)
    batch.abandon(failed.id)
    plan = plan_unchanged(batch, switch.job)
    assert (plan.action, plan.instance_id, plan.resumes) == ("afresh", failed.instance_id, None)


def test_the_plan_of_a_live_instance_is_refused(batch: Batch, switch: Switch) -> None:
    live, _ = batch._create_start(switch.job, PARAMS)  # recorded, as by a start still running
    plan = plan_unchanged(batch, switch.job)
    assert (plan.action, plan.exit_code, plan.lost) == ("refused", 4, None)
    assert plan.refusal is not None and "already running" in plan.refusal
    assert batch.execution(live.id).status == Status.STARTING


def test_the_plan_of_a_lost_live_instance_resumes_it_without_marking_it(
    batch: Batch, switch: Switch
) -> None:
    live, _ = batch._create_start(switch.job, PARAMS, detach=True)  # no process recorded
    old = datetime.now(timezone.utc) - timedelta(hours=1)
    batch.repository.update_execution(live, heartbeat_at=old)
    plan = plan_unchanged(batch, switch.job)
    assert (plan.action, plan.resumes, plan.last_status) == ("resume", live.id, Status.FAILED)
    assert plan.lost is not None and plan.lost.startswith("process lost: no heartbeat")
    assert batch.repository.execution(live.id).status == Status.STARTING  # not marked


def test_the_plan_refuses_undeclared_and_ill_typed_params_as_start_does(batch: Batch, switch: Switch) -> None:
    with pytest.raises(InvalidParams, match="unknown param 'dya'"):
        batch.plan_start(switch.job, {"dya": "x"})
    with pytest.raises(InvalidParams, match="missing param 'day'"):
        batch.plan_start(switch.job, {})
    assert counts(batch) == (0, 0, 0)


# -- rerun: a completed instance again, deliberately --------------------------------------------


def test_a_rerun_of_a_completed_instance_is_a_new_linked_instance(batch: Batch, switch: Switch) -> None:
    first = batch.start(switch.job, PARAMS)
    plan = plan_unchanged(batch, switch.job, rerun=True)
    assert (plan.action, plan.rerun_of, plan.rerun, plan.instance_id) == (
        "rerun", first.instance_id, 1, None,
    )
    assert plan.description == f"would start rerun 1 of instance {first.instance_id} as a new instance"

    again = batch.start(switch.job, PARAMS, rerun=True)

    assert again.status == Status.COMPLETED
    assert again.instance_id != first.instance_id
    assert (again.rerun_of, again.rerun, again.resumed_from) == (first.instance_id, 1, None)
    assert again.params == first.params
    assert plan.instance_key == instance_key(first.params, 1)
    instance, last = batch.repository.current_instance("switch", KEY)
    assert instance is not None and last is not None
    assert (instance.id, instance.job_key, last.id) == (again.instance_id, plan.instance_key, again.id)
    assert switch.runs == 2


def test_each_rerun_is_numbered_and_links_to_the_first_instance(batch: Batch, switch: Switch) -> None:
    first = batch.start(switch.job, PARAMS)
    reruns = [batch.start(switch.job, PARAMS, rerun=True) for _ in range(3)]
    assert [(e.rerun_of, e.rerun) for e in reruns] == [(first.instance_id, n) for n in (1, 2, 3)]
    assert len({e.instance_id for e in [first, *reruns]}) == 4
    with pytest.raises(AlreadyComplete, match="--rerun runs these params again"):
        batch.start(switch.job, PARAMS)


def test_a_plain_start_resumes_a_failed_rerun(batch: Batch, switch: Switch) -> None:
    batch.start(switch.job, PARAMS)
    switch.failing = True
    failed = batch.start(switch.job, PARAMS, rerun=True)
    assert (failed.status, failed.rerun) == (Status.FAILED, 1)
    plan = plan_unchanged(batch, switch.job)
    assert (plan.action, plan.resumes) == ("resume", failed.id)
    switch.failing = False
    resumed = batch.start(switch.job, PARAMS)
    assert (resumed.instance_id, resumed.resumed_from) == (failed.instance_id, failed.id)
    assert (resumed.rerun_of, resumed.rerun) == (failed.rerun_of, 1)


def test_a_rerun_of_a_failed_instance_is_refused_naming_the_restart(batch: Batch, switch: Switch) -> None:
    switch.failing = True
    failed = batch.start(switch.job, PARAMS)
    before = counts(batch)
    with pytest.raises(NotRerunnable) as refused:
        batch.start(switch.job, PARAMS, rerun=True)
    assert refused.value.exit_code == 4
    assert f"batchctl restart {failed.id}" in refused.value.message
    assert counts(batch) == before
    plan = batch.plan_start(switch.job, PARAMS, rerun=True)
    assert (plan.action, plan.exit_code) == ("refused", 4)
    assert plan.refusal == refused.value.message


def test_a_rerun_of_a_live_instance_is_refused(batch: Batch, switch: Switch) -> None:
    batch._create_start(switch.job, PARAMS)
    with pytest.raises(AlreadyRunning):
        batch.start(switch.job, PARAMS, rerun=True)


def test_a_rerun_of_an_abandoned_instance_is_a_new_instance(batch: Batch, switch: Switch) -> None:
    switch.failing = True
    failed = batch.start(switch.job, PARAMS)
    batch.abandon(failed.id)
    switch.failing = False
    again = batch.start(switch.job, PARAMS, rerun=True)
    assert (again.status, again.rerun_of, again.rerun) == (Status.COMPLETED, failed.instance_id, 1)


def test_a_rerun_of_params_never_run_is_their_first_instance(batch: Batch, switch: Switch) -> None:
    assert batch.plan_start(switch.job, PARAMS, rerun=True).action == "new"
    first = batch.start(switch.job, PARAMS, rerun=True)
    assert (first.status, first.rerun_of, first.rerun) == (Status.COMPLETED, None, 0)
    instance, _ = batch.repository.current_instance("switch", KEY)
    assert instance is not None and instance.job_key == KEY


def test_two_reruns_at_once_make_one_instance(batch: Batch, switch: Switch) -> None:
    """The decision and the new instance are one serializable claim: the second rerun finds the
    first one's instance live (or, on Postgres, is retried until it does)."""
    batch.start(switch.job, PARAMS)
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def rerun() -> None:
        barrier.wait(timeout=10)
        try:
            outcomes.append(batch._create_start(switch.job, PARAMS, rerun=True)[0])
        except Refused as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=rerun) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(type(o).__name__ for o in outcomes) == ["AlreadyRunning", "JobExecution"]
    assert counts(batch)[:2] == (2, 2)


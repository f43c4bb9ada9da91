"""`Batch` as the one facade, on SQLite and Postgres: its public surface, what observers hear
before a run, signals routed to a graceful stop, and the schema upgrade `db upgrade` runs."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Iterator

import pytest

from batchctl import Job, StepContext
from batchctl.config import Config
from batchctl.errors import DatabaseUnavailable
from batchctl.model import Status
from batchctl.operator import Batch

PUBLIC = {
    "start", "plan_start", "restart", "stop", "abandon", "recover_lost", "history",
    "history_page", "execution", "earlier_steps",
    "step_executions", "skipped_items", "jobs", "job", "workers", "run_worker",
    "upgrade_schema", "close", "from_config", "config", "repository", "registry", "events",
    "prune",
    # schedules (firing.py)
    "schedules", "schedule", "schedule_states", "last_scheduled_fires", "pause_schedule",
    "resume_schedule", "trigger_schedule", "fire", "skip_fire", "launch_pending_fires",
    "register_service", "service_heartbeat", "retire_service",
    "stats",
    # services told to stop during a repository outage (issue 14)
    "stop_waiting_for_repository",
}


class Recorder:
    """An observer that notes every event it hears, with the execution's status then."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def execution_created(self, execution: Any) -> None:
        self.events.append(("execution_created", execution))

    def job_started(self, execution: Any) -> None:
        self.events.append(("job_started", execution))

    def job_ended(self, execution: Any) -> None:
        self.events.append(("job_ended", execution))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


def once_failing_job() -> Job:
    job = Job("once_failing", params={"day": str})
    failed: list[bool] = []

    @job.tasklet
    def only(ctx: StepContext) -> None:
        if not failed:
            failed.append(True)
            raise RuntimeError("first time")

    return job


def test_the_public_surface_is_the_operations(config: Config) -> None:
    with Batch(config) as batch:
        public = {name for name in dir(batch) if not name.startswith("_")}
    assert public == PUBLIC


def test_observers_hear_of_the_execution_before_it_runs(batch: Batch) -> None:
    job = Job("observed")
    job.tasklet(lambda ctx: None, name="only")
    recorder = Recorder()

    finished = batch.start(job, observers=[recorder])

    assert recorder.names() == ["execution_created", "job_started", "job_ended"]
    created = recorder.events[0][1]
    assert created.id == finished.id and created.status == Status.STARTING
    assert created.resumed_from is None


def test_a_start_that_resumes_says_so_to_its_observers(batch: Batch) -> None:
    job = once_failing_job()
    first = batch.start(job, {"day": "d1"})
    assert first.status == Status.FAILED
    recorder = Recorder()

    resumed = batch.start(job, {"day": "d1"}, observers=iter([recorder]))  # any iterable

    assert resumed.status == Status.COMPLETED
    [(name, created)] = recorder.events[:1]
    assert name == "execution_created" and created.resumed_from == first.id


def test_a_restart_tells_its_observers_what_it_resumes(batch: Batch) -> None:
    job = once_failing_job()
    first = batch.start(job, {"day": "d2"})
    batch.job = lambda name: job  # type: ignore[method-assign]  # the job is not in a module
    recorder = Recorder()

    resumed = batch.restart(first.id, observers=[recorder])

    assert resumed.resumed_from == first.id and resumed.status == Status.COMPLETED
    assert recorder.events[0][0] == "execution_created"
    assert recorder.events[0][1].resumed_from == first.id


def test_a_detached_start_tells_its_observers_before_the_launch(
    batch: Batch, write_job: Any
) -> None:
    write_job("quick", '''
        from batchctl import Job
        job = Job("quick")
        job.tasklet(lambda ctx: None, name="only")
    ''')
    recorder = Recorder()

    launched = batch.start("quick", detach=True, observers=[recorder])

    assert recorder.names() == ["execution_created"]  # the engine's events are another process's
    created = recorder.events[0][1]
    assert created.id == launched.id and created.log_path is None
    assert batch._wait_until_ended(launched.id, timeout=60).status == Status.COMPLETED


def test_handle_signals_turns_sigterm_into_a_graceful_stop(batch: Batch) -> None:
    job = Job("terminated")
    trackers: list[Any] = []

    @job.tasklet
    def count(ctx: StepContext) -> Iterator[None]:
        for i in range(ctx.state.get("i", 0), 1000):
            ctx.state["i"] = i + 1
            if i == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            yield

    before = signal.getsignal(signal.SIGTERM)
    finished = batch.start(job, handle_signals=True, on_tracker=trackers.append)

    assert finished.status == Status.STOPPED
    assert len(trackers) == 1  # the caller's on_tracker still hears of the tracker
    assert signal.getsignal(signal.SIGTERM) is before
    [step] = batch.step_executions(finished.id)
    assert step.context["i"] < 1000


def test_without_handle_signals_no_handler_is_installed(batch: Batch) -> None:
    job = Job("unsignalled")
    seen: list[Any] = []
    job.tasklet(lambda ctx: seen.append(signal.getsignal(signal.SIGTERM)), name="only")
    before = signal.getsignal(signal.SIGTERM)

    batch.start(job)

    assert seen == [before]


def test_upgrade_schema_creates_the_schema(config: Config) -> None:
    with Batch(config) as batch:
        revision = batch.upgrade_schema()
        assert revision == batch.upgrade_schema()  # again: nothing to do
        assert batch.history() == []


def test_upgrade_schema_of_an_unreachable_database_is_an_environment_error(
    config: Config, tmp_path: Path
) -> None:
    from dataclasses import replace

    missing = replace(config, database_url=f"sqlite:///{tmp_path / 'no' / 'such' / 'x.db'}")
    with Batch(missing) as batch, pytest.raises(DatabaseUnavailable, match="cannot reach"):
        batch.upgrade_schema()


SLOW_IMPORT_JOB = '''
import time
from batchctl import Job

time.sleep(0.3)  # a job module that takes a while to import (a heavy dependency)
job = Job("slow_import")

@job.tasklet
def only(ctx):
    pass
'''


def test_threads_first_using_a_batch_at_once_all_find_the_jobs(
    config: Config, write_job: Any
) -> None:
    """Serve, the dashboard's threads and a test's thread may touch a new Batch together: the
    jobs are discovered once, and no thread sees a half-imported module's empty registry."""
    from concurrent.futures import ThreadPoolExecutor

    write_job("slow_import", SLOW_IMPORT_JOB)
    batch = Batch(config)
    try:
        with ThreadPoolExecutor(4) as pool:
            registries = list(pool.map(lambda _: batch.registry, range(4)))
        assert all(registry is registries[0] for registry in registries)
        assert "slow_import" in registries[0].jobs
    finally:
        batch.close()

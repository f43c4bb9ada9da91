"""Stopping through the operator (issue 3): while STARTING, between steps, racing completion,
and a detached launch from the Python API. Each test runs on SQLite and on Postgres.

The stop comes from a second `Batch` on the same repository, as it would from another process;
the running execution runs in a thread of this process (or, detached, in a process of its own).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from batchctl.config import Config
from batchctl.errors import NotLive
from batchctl.model import Status
from batchctl.operator import Batch
from tests.conftest import wait_for

DEADLINE = 60.0

STEPS_JOB = '''
import time
from pathlib import Path
from batchctl import Job

job = Job("steps", params={"out": str})


def ran(ctx):
    with open(ctx.params["out"], "a") as file:
        file.write(ctx.step_name + "\\n")


@job.tasklet
def wait_for_stop(ctx):
    """Returns once a stop is requested (a long step that looks at ctx.stop_requested)."""
    ran(ctx)
    deadline = time.monotonic() + 60
    while not ctx.stop_requested:
        if time.monotonic() > deadline:
            raise TimeoutError("no stop was requested")
        time.sleep(0.01)


@job.tasklet
def second(ctx):
    ran(ctx)


@job.tasklet
def third(ctx):
    ran(ctx)
'''


@pytest.fixture
def other(config: Config) -> Iterator[Batch]:
    """A second Batch on the same repository: the operator in another terminal."""
    with Batch(config) as opened:
        yield opened


@pytest.fixture
def in_thread() -> Iterator[Callable[..., Any]]:
    """in_thread(fn, *args): a future of fn run in a thread, joined at the end of the test."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_a_stop_while_starting_ends_the_execution_stopped_before_its_first_step(
    batch: Batch, other: Batch, write_job: Any, tmp_path: Path
) -> None:
    write_job("steps", STEPS_JOB)
    out = tmp_path / "ran.txt"
    execution, job = batch._create_start("steps", {"out": str(out)})
    assert execution.status == Status.STARTING

    stopping = other.stop(execution.id)
    assert stopping.status == Status.STOPPING

    finished = batch._run(job, execution)
    assert finished.status == Status.STOPPED
    assert finished.exit_message == "stopped before its first step"
    assert batch.step_executions(execution.id) == []
    assert lines(out) == []


def test_a_stop_between_steps_skips_the_next_steps_and_a_restart_runs_only_those(
    batch: Batch, other: Batch, write_job: Any, tmp_path: Path, in_thread: Callable[..., Any]
) -> None:
    write_job("steps", STEPS_JOB)
    out = tmp_path / "ran.txt"
    running = in_thread(batch.start, "steps", {"out": str(out)})
    wait_for(lambda: lines(out) == ["wait_for_stop"], timeout=DEADLINE)
    execution = other.history("steps")[0]
    assert execution.status == Status.STARTED

    assert other.stop("steps").status == Status.STOPPING
    stopped = running.result(timeout=DEADLINE)
    assert stopped.id == execution.id
    assert stopped.status == Status.STOPPED
    assert stopped.exit_message == "stopped before step second"
    assert [(s.name, s.status) for s in batch.step_executions(stopped.id)] == [
        ("wait_for_stop", Status.COMPLETED)
    ]

    restarted = other.restart(stopped.id)
    assert restarted.status == Status.COMPLETED
    assert restarted.resumed_from == stopped.id
    assert [s.name for s in other.step_executions(restarted.id)] == ["second", "third"]
    assert lines(out) == ["wait_for_stop", "second", "third"]


def test_a_stop_racing_the_completion_ends_completed(
    batch: Batch, other: Batch, write_job: Any
) -> None:
    write_job("racing", '''
        from batchctl import Job
        job = Job("racing")
        stop = []  # the test puts the stop it races here

        @job.tasklet
        def only(ctx):
            pass

        @job.after_step
        def stop_now(ctx, step):
            stop[0](ctx.execution_id)
    ''')
    job = batch.job("racing")
    module_globals = job.steps[0].tasklet.__globals__
    module_globals["stop"].append(other.stop)  # lands after the last step, before the end

    finished = batch.start(job)
    assert finished.status == Status.COMPLETED
    assert other.execution(finished.id).status == Status.COMPLETED
    with pytest.raises(NotLive, match="is not live \\(COMPLETED\\)"):
        other.stop(finished.id)


def test_the_python_api_launches_stops_and_restarts_a_detached_execution(
    config: Config, write_job: Any, tmp_path: Path
) -> None:
    write_job("steps", STEPS_JOB)
    out = tmp_path / "ran.txt"
    with Batch(config) as batch:
        launched = batch.start("steps", {"out": str(out)}, detach=True)
        assert launched.status == Status.STARTING
        assert launched.pid and launched.pid != os.getpid()
        assert launched.log_path and Path(launched.log_path).parent == config.log_dir
        wait_for(lambda: lines(out) == ["wait_for_stop"], timeout=DEADLINE)

        stopped = batch.stop(launched.id, wait=True, timeout=DEADLINE)
        assert stopped.status == Status.STOPPED
        assert stopped.pid == launched.pid

        restarted = batch.restart(launched.id)
        assert restarted.status == Status.COMPLETED
        assert lines(out) == ["wait_for_stop", "second", "third"]
        assert f"execution {launched.id} of job steps started" in Path(launched.log_path).read_text()

"""Lost processes (issue 3): a live execution whose heartbeat is older than the timeout, or whose
pid is gone (or a zombie) on this host, is marked FAILED (STOPPED if it was stopping) by the
next operation that reads it, and can then be restarted. On SQLite and on Postgres.

The executions are made live through the repository, as a process that died would leave them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta, timezone
from typing import Any, Iterator

import pytest

from batchctl.config import Config
from batchctl.errors import NotLive
from batchctl.host import pid_scope, process_alive
from batchctl.model import JobExecution, Status, utcnow
from batchctl.operator import Batch
from tests.conftest import wait_for

TIMEOUT = 10.0  # the heartbeat timeout of these tests' configuration

JOB = '''
from batchctl import Job

job = Job("nightly", params={"day": str})


@job.tasklet
def extract(ctx):
    ctx.state["extracted"] = True


@job.tasklet
def load(ctx):
    ctx.state["loaded"] = True
'''


@pytest.fixture
def lost_batch(config: Config, write_job: Any) -> Iterator[Batch]:
    write_job("nightly", JOB)
    with Batch(replace(config, heartbeat_interval=1.0, heartbeat_timeout=TIMEOUT)) as opened:
        yield opened


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has ended and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def zombie_pid() -> Iterator[int]:
    """The pid of a child that has ended but is not reaped yet (a zombie)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: not process_alive(process.pid))
    yield process.pid
    process.wait()


def make_live(
    batch: Batch,
    day: str,
    *,
    status: Status = Status.STARTED,
    pid: int | None,
    host: str | None = None,
    scope: str | None = None,
    heartbeat_age: float = 0.0,
) -> JobExecution:
    """A live execution as a process left it: `status`, its pid, host and pid scope (this
    process's unless given), its last heartbeat."""
    execution, _ = batch._create_start("nightly", {"day": day}, detach=True)
    changes: dict[str, Any] = {
        "status": status,
        "pid": pid,
        "host": host or socket.gethostname(),
        "pid_scope": pid_scope() if scope is None else scope,
        "heartbeat_at": utcnow() - timedelta(seconds=heartbeat_age),
    }
    if status != Status.STARTING:
        changes["started_at"] = utcnow() - timedelta(seconds=heartbeat_age)
    return batch.repository.update_execution(execution, **changes)


def test_a_live_execution_silent_past_the_timeout_is_marked_failed_and_restarts(
    lost_batch: Batch,
) -> None:
    silent = make_live(lost_batch, "d1", pid=os.getpid(), heartbeat_age=TIMEOUT + 30)
    assert lost_batch.repository.execution(silent.id).status == Status.STARTED

    [seen] = lost_batch.history("nightly")
    assert seen.status == Status.FAILED
    assert seen.exit_code == "FAILED"
    assert seen.ended_at is not None
    assert seen.exit_message.startswith(f"process lost: no heartbeat for more than {TIMEOUT:g}s")
    assert f"pid {os.getpid()} on {socket.gethostname()}" in seen.exit_message
    beat = silent.heartbeat_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert f"last heartbeat {beat}" in seen.exit_message

    restarted = lost_batch.restart(silent.id)
    assert restarted.status == Status.COMPLETED
    assert restarted.resumed_from == silent.id


def test_a_launch_that_never_took_over_is_judged_by_the_heartbeat_alone(lost_batch: Batch) -> None:
    fresh = make_live(lost_batch, "d1", status=Status.STARTING, pid=None)
    assert lost_batch.execution(fresh.id).status == Status.STARTING  # may still take over

    stale = make_live(lost_batch, "d2", status=Status.STARTING, pid=None, heartbeat_age=TIMEOUT + 1)
    marked = lost_batch.execution(stale.id)
    assert marked.status == Status.FAILED
    assert "no pid recorded yet" in marked.exit_message


def test_a_live_execution_whose_pid_is_gone_is_marked_failed_at_once(
    lost_batch: Batch, dead_pid: int
) -> None:
    gone = make_live(lost_batch, "d1", pid=dead_pid)  # a fresh heartbeat: the pid decides
    marked = lost_batch.execution(gone.id)
    assert marked.status == Status.FAILED
    assert marked.exit_message.startswith(f"process lost: pid {dead_pid} on {socket.gethostname()} is gone")


def test_a_zombie_process_counts_as_gone(lost_batch: Batch, zombie_pid: int) -> None:
    zombie = make_live(lost_batch, "d1", pid=zombie_pid)
    assert lost_batch.execution(zombie.id).status == Status.FAILED


def test_a_lost_execution_that_was_stopping_is_marked_stopped(
    lost_batch: Batch, dead_pid: int
) -> None:
    stopping = make_live(lost_batch, "d1", status=Status.STOPPING, pid=dead_pid)
    marked = lost_batch.execution(stopping.id)
    assert marked.status == Status.STOPPED
    assert marked.exit_code == "STOPPED"
    assert f"pid {dead_pid}" in marked.exit_message


def test_a_live_process_with_a_fresh_heartbeat_is_left_alone(lost_batch: Batch) -> None:
    here = make_live(lost_batch, "d1", pid=os.getpid())
    # On another host the pid means nothing here: only the heartbeat counts.
    elsewhere = make_live(lost_batch, "d2", pid=1_999_999, host="some-other-host")
    assert lost_batch.recover_lost() == []
    assert {e.id: e.status for e in lost_batch.history("nightly")} == {
        here.id: Status.STARTED,
        elsewhere.id: Status.STARTED,
    }


def test_a_pid_from_another_pid_namespace_or_boot_is_not_judged(
    lost_batch: Batch, dead_pid: int
) -> None:
    # The same host name, but the pid was recorded in another container or before a reboot:
    # that a process with this number is gone here says nothing about it.
    other = make_live(lost_batch, "d1", pid=dead_pid, scope="another-boot/pid:[4026530000]")
    unknown = make_live(lost_batch, "d2", pid=dead_pid, scope="")
    assert lost_batch.recover_lost() == []
    assert lost_batch.execution(other.id).status == Status.STARTED
    assert lost_batch.execution(unknown.id).status == Status.STARTED


def test_every_operation_marks_lost_executions_before_deciding(
    lost_batch: Batch, dead_pid: int
) -> None:
    # stop: the lost execution is not live any more, so there is nothing to stop.
    one = make_live(lost_batch, "d1", pid=dead_pid)
    with pytest.raises(NotLive, match=f"execution {one.id} of job nightly is not live \\(FAILED\\)"):
        lost_batch.stop(one.id)

    # start of the same instance: no longer "already running"; it resumes the lost execution.
    two = make_live(lost_batch, "d2", pid=dead_pid)
    resumed = lost_batch.start("nightly", {"day": "d2"})
    assert resumed.status == Status.COMPLETED
    assert resumed.resumed_from == two.id
    assert lost_batch.repository.execution(two.id).status == Status.FAILED

    # abandon: a lost execution is FAILED, which may be abandoned.
    three = make_live(lost_batch, "d3", pid=dead_pid)
    assert lost_batch.abandon(three.id).status == Status.ABANDONED

    # stop --wait on an execution whose process dies while it is waited for.
    four = make_live(lost_batch, "d4", pid=dead_pid, heartbeat_age=0)
    lost_batch.repository.request_stop(four.id)
    ended = lost_batch._wait_until_ended(four.id, timeout=30)
    assert ended.status == Status.STOPPED
    assert "process lost" in ended.exit_message


def test_a_running_execution_keeps_its_heartbeat_fresh(
    config: Config, write_job: Any, tmp_path: Any
) -> None:
    write_job("beating", '''
        import os, time
        from pathlib import Path
        from batchctl import Job

        job = Job("beating", params={"release": str})

        @job.tasklet
        def hold(ctx):
            release = Path(ctx.params["release"])
            deadline = time.monotonic() + 60
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
    ''')
    release = tmp_path / "release"
    fast = replace(config, heartbeat_interval=0.2, heartbeat_timeout=2.0)
    with Batch(fast) as batch, Batch(fast) as watcher:
        launched = batch.start("beating", {"release": str(release)}, detach=True)
        started = wait_for(
            lambda: (e := watcher.execution(launched.id)).status == Status.STARTED and e, timeout=60
        )
        # Several heartbeats later (each newer than the last) the execution is still live: a
        # running process is never taken for a lost one.
        beats = {started.heartbeat_at}
        wait_for(lambda: beats.add(watcher.execution(launched.id).heartbeat_at) or len(beats) >= 4,
                 timeout=60)
        assert watcher.execution(launched.id).status == Status.STARTED
        release.touch()
        assert batch._wait_until_ended(launched.id, timeout=60).status == Status.COMPLETED

"""`batchctl scheduler` as real processes, on SQLite and Postgres (issue 11): two schedulers and
a SIGKILL of one fire every fire exactly once; a scheduler stopped past the grace obeys its
catch-up policy on SIGCONT; a fire recorded by a scheduler that died before launching it is
launched; pause, resume and a manual trigger; invalid schedules refuse to start; SIGTERM ends a
scheduler within 5 s. Schedules with a seconds field; every wait is on the repository's state
(or a process) with a deadline. Kept short: about a minute for the whole file."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest

from batchctl.model import Status, Trigger, instance_key, params_to_json, utcnow
from tests.conftest import wait_for

BATCHCTL = str(Path(sys.executable).parent / "batchctl")
DEADLINE = 60.0

JOBS = '''
from batchctl import Job

tick = Job("tick", params={"at": str})


@tick.tasklet
def only(ctx):
    pass
'''


def schedule_toml(name: str, cron: str, **options: Any) -> str:
    lines = [f"[batchctl.schedules.{name}]", 'job = "tick"', f'cron = "{cron}"',
             f'params = {{at = "{{fire}} {name}"}}']
    for key, value in options.items():
        lines.append(f"{key} = {value!r}".replace("'", '"'))
    return "\n".join(lines) + "\n"


class Schedulers:
    """Schedulers and commands of one test: its repository, jobs folder and config file."""

    def __init__(self, database_url: str, tmp_path: Path) -> None:
        self.database_url = database_url
        self.tmp_path = tmp_path
        jobs = tmp_path / "jobs"
        jobs.mkdir()
        (jobs / "tick.py").write_text(JOBS)
        self.config = tmp_path / "config.toml"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHCTL_")}
        self.env.update(
            BATCHCTL_CONFIG=str(self.config), BATCHCTL_DATABASE_URL=database_url,
            BATCHCTL_JOBS_DIR=str(jobs), BATCHCTL_LOG_DIR=str(tmp_path / "logs"),
            BATCHCTL_HEARTBEAT_INTERVAL="1", BATCHCTL_HEARTBEAT_TIMEOUT="60", NO_COLOR="1",
        )
        self.processes: list[subprocess.Popen[str]] = []
        self._repository: Any = None

    def configure(self, *schedules: str) -> None:
        self.config.write_text("[batchctl]\n\n" + "\n".join(schedules))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BATCHCTL, *args], env=self.env, cwd=self.tmp_path,
                              capture_output=True, text=True, timeout=DEADLINE)

    def start(self, name: str = "a") -> subprocess.Popen[str]:
        log = (self.tmp_path / f"scheduler-{name}.log").open("w")
        process = subprocess.Popen([BATCHCTL, "scheduler"], env=self.env, cwd=self.tmp_path,
                                   stdout=subprocess.DEVNULL, stderr=log, text=True)
        log.close()
        self.processes.append(process)
        wait_for(lambda: "started with" in self.log(name) or process.poll() is not None,
                 timeout=DEADLINE)
        assert process.poll() is None, self.log(name)
        return process

    def log(self, name: str = "a") -> str:
        return (self.tmp_path / f"scheduler-{name}.log").read_text()

    @property
    def repository(self) -> Any:
        if self._repository is None:
            from batchctl.repository import Repository

            self._repository = Repository.open(self.database_url)
        return self._repository

    def fires(self, schedule: str = "s") -> list[Any]:
        return list(self.repository.fires(schedule))

    def launched(self, schedule: str = "s") -> list[datetime]:
        return [f.fire_at for f in self.fires(schedule) if f.outcome == "launched"]

    def wait_fires(self, count: int, schedule: str = "s", after: datetime | None = None) -> None:
        wait_for(lambda: len([t for t in self.launched(schedule) if after is None or t > after])
                 >= count, timeout=DEADLINE)

    def terminate(self, process: subprocess.Popen[str]) -> float:
        """SIGTERM; how long the scheduler took to exit."""
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=DEADLINE)
        return time.monotonic() - began

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        if self._repository is not None:
            self._repository.close()


@pytest.fixture
def ops(database_url: str, tmp_path: Path) -> Iterator[Schedulers]:
    found = Schedulers(database_url, tmp_path)
    yield found
    found.close()


def assert_each_fire_once(ops: Schedulers, period: int) -> list[datetime]:
    """Every fire from the first to the last recorded is there once, with one execution of its
    own, whose params are that fire's."""
    fires = ops.fires()
    instants = [f.fire_at for f in fires]
    assert len(instants) == len(set(instants))
    expected = [instants[0] + timedelta(seconds=period * i) for i in range(len(instants))]
    assert instants == expected, "a fire is missing"
    executions = [f.execution_id for f in fires]
    assert None not in executions and len(set(executions)) == len(executions)
    assert ops.repository.count_executions() == len(fires)
    for fire in fires:
        execution = ops.repository.execution(fire.execution_id)
        assert execution.params == {"at": f"{fire.fire_at.isoformat()} s"}
        assert execution.trigger == "schedule" and execution.trigger_detail.startswith("s @ ")
    return instants


def test_two_schedulers_and_a_sigkill_fire_each_fire_exactly_once(ops: Schedulers) -> None:
    ops.configure(schedule_toml("s", "*/2 * * * * *", grace=5))
    first, second = ops.start("a"), ops.start("b")
    workers = ops.run("workers", "--json")
    assert workers.stdout.count('"scheduler"') == 2, workers.stdout

    ops.wait_fires(2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = utcnow()
    ops.wait_fires(2, after=killed_at)
    assert ops.terminate(second) < 5.0

    assert_each_fire_once(ops, 2)
    wait_for(lambda: all(not e.status.is_live for e in ops.repository.history("tick", limit=None)),
             timeout=DEADLINE)
    assert {e.status for e in ops.repository.history("tick", limit=None)} == {Status.COMPLETED}


def test_a_scheduler_stopped_past_the_grace_catches_up_once_on_sigcont(ops: Schedulers) -> None:
    ops.configure(schedule_toml("s", "*/2 * * * * *", grace=1, catchup="latest"))
    scheduler = ops.start()
    ops.wait_fires(1)
    scheduler.send_signal(signal.SIGSTOP)
    stopped_at = utcnow()
    # Let at least two fires pass unseen (past their grace): wait on the clock, not a sleep.
    wait_for(lambda: utcnow() > stopped_at + timedelta(seconds=5.5), timeout=DEADLINE)
    scheduler.send_signal(signal.SIGCONT)
    resumed_at = utcnow()
    wait_for(lambda: "missed fire(s)" in ops.log() and "caught up" in ops.log(), timeout=DEADLINE)
    ops.wait_fires(1, after=resumed_at)

    # "latest": the most recent missed fire once, the older missed ones skipped; no burst.
    caught = re.findall(r"fire at (\S+) \(missed, caught up", ops.log())
    assert len(caught) == 1, ops.log()
    caught_up = datetime.fromisoformat(caught[0])
    skipped = int(re.findall(r"schedule s: (\d+) missed fire\(s\)", ops.log())[0])
    assert skipped >= 1, ops.log()
    before = max(t for t in ops.launched() if t <= stopped_at)
    assert [t for t in ops.launched() if before < t < caught_up] == []
    assert caught_up - before == timedelta(seconds=2 * (skipped + 1))
    assert ops.terminate(scheduler) < 5.0


def test_a_fire_recorded_by_a_scheduler_that_died_before_launching_is_launched(ops: Schedulers) -> None:
    from sqlalchemy import update

    from batchctl.operator import start_rule
    from batchctl.repository.tables import job_execution

    ops.configure(schedule_toml("s", "0 0 1 1 *", catchup="skip"))  # it will not fire meanwhile
    fire_at = datetime.fromisoformat("2025-01-01T00:00:00+00:00")
    params = {"at": f"{fire_at.isoformat()} s"}
    repository = ops.repository
    left = repository.create_execution(
        "tick", instance_key(params), params_to_json(params), start_rule,
        trigger=Trigger("schedule", "s @ 2025-01-01T00:00:00+00:00"),
        also=repository.fire_recorder("s", fire_at),
    )
    with repository.engine.begin() as connection:  # it died ten seconds ago
        earlier = utcnow() - timedelta(seconds=10)
        connection.execute(update(job_execution).where(job_execution.c.id == left.id)
                           .values(created_at=earlier, heartbeat_at=earlier))

    scheduler = ops.start()
    wait_for(lambda: repository.execution(left.id).status == Status.COMPLETED, timeout=DEADLINE)
    assert "did not launch it: launching it" in ops.log()
    assert repository.count_executions() == 1
    assert ops.terminate(scheduler) < 5.0


def test_pause_resume_and_trigger(ops: Schedulers) -> None:
    ops.configure(schedule_toml("s", "*/2 * * * * *", grace=1, catchup="all"),
                  schedule_toml("other", "*/2 * * * * *", grace=1))
    scheduler = ops.start()
    ops.wait_fires(1)

    paused = ops.run("schedules", "pause", "s", "--json")
    assert paused.returncode == 0, paused.stderr
    paused_at = datetime.fromisoformat(json.loads(paused.stdout)["paused_at"])
    listing = ops.run("schedules", "--json")
    assert '"paused": true' in listing.stdout
    ops.wait_fires(2, "other", after=paused_at + timedelta(seconds=1))
    # A fire being fired as the pause was written may still come; none after that.
    assert [t for t in ops.launched() if t > paused_at + timedelta(seconds=1)] == []

    manual = ops.run("schedules", "trigger", "s", "--json")
    assert manual.returncode == 0, manual.stderr
    assert '"manual": true' in manual.stdout and '"outcome": "launched"' in manual.stdout

    resumed = ops.run("schedules", "resume", "s", "--json")
    assert resumed.returncode == 0, resumed.stderr
    resumed_at = datetime.fromisoformat(json.loads(resumed.stdout)["resumed_at"])
    ops.wait_fires(1, after=resumed_at)
    scheduled = [f for f in ops.fires() if not f.manual]
    # No catch-up of the fires paused away, even with catchup = "all".
    assert [f.fire_at for f in scheduled if paused_at + timedelta(seconds=1) < f.fire_at <= resumed_at] == []
    assert len([f for f in ops.fires() if f.manual]) == 1
    assert ops.terminate(scheduler) < 5.0


def test_invalid_schedules_refuse_to_start(ops: Schedulers) -> None:
    ops.configure(schedule_toml("bad-cron", "61 * * * *"),
                  schedule_toml("bad-zone", "* * * * *", timezone="Mars/Olympus"),
                  schedule_toml("trigger", "* * * * *"),
                  schedule_toml("fine", "* * * * *"))
    result = ops.run("scheduler")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("batchctl: error:")]
    assert len(errors) == 4, result.stderr  # one line per invalid schedule, and the refusal
    for name in ("bad-cron", "bad-zone", "trigger"):
        assert any(f"'{name}'" in line for line in errors), result.stderr
    assert ops.repository.live_workers(utcnow() - timedelta(hours=1)) == []

"""Operations across processes (issue 3) through the installed `batchctl`, as real processes.

Detached start, stop from another process, restart, abandon, logs, kill -9 and signals, and
races between many simultaneous starts. Every test runs on SQLite and on Postgres. Tests wait
for states of the repository (or of a process) with a deadline, never for a fixed time; the
deadlines are generous because the machine may be loaded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

from batchctl.launcher import process_alive
from batchctl.model import Status
from tests.conftest import wait_for

BATCHCTL = str(Path(sys.executable).parent / "batchctl")
DEADLINE = 90.0  # seconds an awaited state may take on a loaded machine
UNIT_DELAY = "0.05"  # seconds per unit of work while a test acts on a running execution

JOBS = '''
"""Jobs of the operations tests; they talk to the test through files in OPS_WORK."""

import os
import time
from pathlib import Path

from batchctl import Job

WORK = Path(os.environ["OPS_WORK"])
HOLD_LIMIT = 120.0  # a held step gives up after this long, so that no process outlives a test


units = Job("units", params={"tag": str, "n": int})


@units.tasklet
def work(ctx):
    """Unit i appends the line "i" to units-TAG.txt, then checkpoints (yield)."""
    delay = float(os.environ.get("OPS_UNIT_DELAY", "0"))
    out = WORK / f"units-{ctx.params['tag']}.txt"
    for i in range(ctx.state.get("done", 0), ctx.params["n"]):
        with out.open("a") as file:
            file.write(f"{i}\\n")
        ctx.state["done"] = i + 1
        if delay:
            time.sleep(delay)
        yield


gate = Job("gate", params={"name": str})


@gate.tasklet
def first(ctx):
    pass


@gate.tasklet
def hold(ctx):
    """Waits until the file gate-NAME exists; never looks at a stop request."""
    gate_file = WORK / f"gate-{ctx.params['name']}"
    deadline = time.monotonic() + HOLD_LIMIT
    while not gate_file.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{gate_file.name} was never opened")
        time.sleep(0.02)


@gate.tasklet
def last(ctx):
    pass


trivial = Job("trivial", params={"i": int})


@trivial.tasklet
def only(ctx):
    pass
'''


class Ops:
    """The installed `batchctl` against one test's repository, jobs folder and log folder."""

    def __init__(self, database_url: str, jobs_dir: Path, tmp_path: Path) -> None:
        self.database_url = database_url
        self.jobs_dir = jobs_dir
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.log_dir = tmp_path / "logs"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHCTL_")}
        self.env.update(
            BATCHCTL_DATABASE_URL=database_url,
            BATCHCTL_JOBS_DIR=str(jobs_dir),
            BATCHCTL_LOG_DIR=str(self.log_dir),
            BATCHCTL_HEARTBEAT_INTERVAL="0.5",
            # Lost processes are found by their pid here; the timeout only has to be longer than
            # the slowest start-up of a launched process on a loaded machine.
            BATCHCTL_HEARTBEAT_TIMEOUT="60",
            OPS_WORK=str(self.work),
            NO_COLOR="1",
            COLUMNS="200",
        )
        self.cwd = tmp_path
        self._repository: Any = None
        self._processes: list[subprocess.Popen[str]] = []
        self._pids: set[int] = set()

    # -- commands -------------------------------------------------------------------------------

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        return {**self.env, **(extra or {})}

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BATCHCTL, *args], env=self._env(env), cwd=self.cwd, capture_output=True,
            text=True, timeout=DEADLINE,
        )

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [BATCHCTL, *args], env=self._env(env), cwd=self.cwd, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        self._processes.append(process)
        return process

    def run_all(self, argvs: Sequence[Sequence[str]]) -> list[subprocess.CompletedProcess[str]]:
        """Run several commands at once and wait for all of them."""
        processes = [(argv, self.popen(*argv)) for argv in argvs]
        return [finish(process, list(argv)) for argv, process in processes]

    def json(self, *args: str, env: dict[str, str] | None = None) -> Any:
        result = self.run(*args, "--json", env=env)
        assert result.returncode == 0, describe(result)
        return json.loads(result.stdout)

    def launch(self, job: str, params: dict[str, Any], env: dict[str, str] | None = None) -> int:
        """`start JOB --detach`: the execution id, once the launched process has taken over."""
        launched = self.json("start", job, "--params", json.dumps(params), "--detach", env=env)
        assert launched["status"] == "STARTING" and launched["pid"], launched
        self._pids.add(launched["pid"])
        self.wait_for_status(launched["id"], Status.STARTED)
        return int(launched["id"])

    # -- the repository, read in this process -------------------------------------------------------

    @property
    def repository(self) -> Any:
        if self._repository is None:
            from batchctl.repository import Repository

            self._repository = Repository.open(self.database_url)
        return self._repository

    def execution(self, execution_id: int) -> Any:
        return self.repository.execution(execution_id)

    def steps(self, execution_id: int) -> dict[str, Status]:
        return {step.name: step.status for step in self.repository.step_executions(execution_id)}

    def wait_for_status(self, execution_id: int, *wanted: Status) -> Any:
        """Wait until the execution's recorded status is one of `wanted` (or, with none given,
        until it is no longer live)."""

        def reached() -> Any:
            execution = self.execution(execution_id)
            done = execution.status in wanted if wanted else not execution.status.is_live
            return execution if done else None

        return wait_for(reached, timeout=DEADLINE)

    # -- files the jobs write or wait for ----------------------------------------------------------

    def units(self, tag: str) -> list[int]:
        path = self.work / f"units-{tag}.txt"
        return [int(line) for line in path.read_text().split()] if path.exists() else []

    def open_gate(self, name: str) -> None:
        (self.work / f"gate-{name}").touch()

    # -- cleaning up --------------------------------------------------------------------------------

    def close(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            process.communicate()
        for pid in self._pids:  # launched processes a failed test left running
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self._repository is not None:
            self._repository.close()


@pytest.fixture
def ops(database_url: str, jobs_dir: Path, tmp_path: Path) -> Iterator[Ops]:
    (jobs_dir / "ops.py").write_text(JOBS)
    runner = Ops(database_url, jobs_dir, tmp_path)
    try:
        yield runner
    finally:
        runner.close()


def finish(process: subprocess.Popen[str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    out, err = process.communicate(timeout=DEADLINE)
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"{result.args} exited {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"


def assert_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """The command failed with `code` and one line on stderr containing every fragment."""
    assert result.returncode == code, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("batchctl: error: "), describe(result)
    for fragment in fragments:
        assert fragment in lines[0], describe(result)
    return lines[0]


def wait_until(condition: Callable[[], Any]) -> Any:
    return wait_for(condition, timeout=DEADLINE, interval=0.05)


# -- stop from another process, restart ------------------------------------------------------------


def test_a_detached_run_stopped_from_another_process_restarts_with_each_unit_done_once(ops: Ops) -> None:
    n = 300
    execution_id = ops.launch("units", {"tag": "once", "n": n}, env={"OPS_UNIT_DELAY": UNIT_DELAY})
    wait_until(lambda: len(ops.units("once")) >= 3)

    stop = ops.run("stop", str(execution_id), "--wait")
    assert stop.returncode == 0, describe(stop)
    assert f"execution {execution_id} of units ended STOPPED" in stop.stdout

    stopped = ops.execution(execution_id)
    assert stopped.status == Status.STOPPED
    assert ops.steps(execution_id) == {"work": Status.STOPPED}
    assert "stopped" in (stopped.exit_message or "")
    done = ops.units("once")
    assert 3 <= len(done) < n
    assert done == list(range(len(done)))

    restart = ops.run("restart", str(execution_id))
    assert restart.returncode == 0, describe(restart)
    history = ops.json("history", "units")
    assert [(e["status"], e["resumed_from"]) for e in history] == [
        ("COMPLETED", execution_id),
        ("STOPPED", None),
    ]
    assert ops.units("once") == list(range(n))  # every unit once: none lost, none repeated


# -- lost processes ----------------------------------------------------------------------------


def test_a_killed_detached_run_is_marked_lost_by_the_next_command_and_restart_completes_it(
    ops: Ops,
) -> None:
    n = 300
    execution_id = ops.launch("units", {"tag": "kill", "n": n}, env={"OPS_UNIT_DELAY": UNIT_DELAY})
    wait_until(lambda: len(ops.units("kill")) >= 3)
    pid = ops.json("show", str(execution_id))["pid"]
    assert pid and process_alive(pid)

    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not process_alive(pid))

    latest = ops.json("history", "units")[0]
    assert latest["id"] == execution_id
    assert latest["status"] == "FAILED"
    assert "process lost" in latest["exit_message"] and f"pid {pid}" in latest["exit_message"]

    restart = ops.run("restart", str(execution_id))
    assert restart.returncode == 0, describe(restart)
    done = ops.units("kill")
    # The unit in flight when the process died may run twice (it was not checkpointed); no
    # unit is lost.
    assert sorted(set(done)) == list(range(n))
    assert len(done) <= n + 1


# -- races -------------------------------------------------------------------------------------


def test_twenty_simultaneous_starts_of_one_instance_run_it_once(ops: Ops) -> None:
    starts = [ops.popen("start", "gate", "--params", '{"name": "race"}') for _ in range(20)]
    # The one that runs holds until the gate opens; every other one must be refused meanwhile.
    wait_until(lambda: sum(p.poll() is not None for p in starts) >= 19)
    ops.open_gate("race")
    results = [finish(p, ["start", "gate"]) for p in starts]

    ran = [r for r in results if r.returncode == 0]
    refused = [r for r in results if r.returncode != 0]
    assert len(ran) == 1, [describe(r) for r in results if r.returncode not in (0, 4)]
    for result in refused:
        assert_error(result, 4, "already running")
    history = ops.json("history", "gate")
    assert [e["status"] for e in history] == ["COMPLETED"]


def test_fifty_simultaneous_starts_of_distinct_instances_all_complete(ops: Ops) -> None:
    starts = [ops.popen("start", "trivial", "--params", json.dumps({"i": i})) for i in range(50)]
    results = [finish(p, ["start", "trivial", str(i)]) for i, p in enumerate(starts)]

    for result in results:
        assert result.returncode == 0, describe(result)
        assert "locked" not in result.stderr and "serializ" not in result.stderr.lower()
    history = ops.json("history", "trivial", "--limit", "100")
    assert len(history) == 50
    assert {e["status"] for e in history} == {"COMPLETED"}
    assert sorted(e["params"]["i"] for e in history) == list(range(50))


# -- stopping between steps, --wait --timeout, abandon ---------------------------------------------


def test_a_stop_between_steps_and_a_stop_wait_that_times_out(ops: Ops) -> None:
    execution_id = ops.launch("gate", {"name": "a"})
    wait_until(lambda: "hold" in ops.steps(execution_id))

    # `hold` never looks at the stop request: --wait gives up, the execution stays STOPPING.
    timed_out = ops.run("stop", str(execution_id), "--wait", "--timeout", "0.5")
    assert_error(timed_out, 1, f"execution {execution_id} is still STOPPING after 0.5s")
    assert ops.execution(execution_id).status == Status.STOPPING

    # Once `hold` returns, the stop is honoured before the next step.
    ops.open_gate("a")
    stopped = ops.wait_for_status(execution_id)
    assert stopped.status == Status.STOPPED
    assert stopped.exit_message == "stopped before step last"
    assert ops.steps(execution_id) == {"first": Status.COMPLETED, "hold": Status.COMPLETED}


def test_a_start_after_abandon_runs_the_instance_afresh(ops: Ops) -> None:
    execution_id = ops.launch("gate", {"name": "b"})
    wait_until(lambda: "hold" in ops.steps(execution_id))
    stop = ops.run("stop", "gate")  # by job name: its most recent execution
    assert stop.returncode == 0, describe(stop)
    assert f"execution {execution_id} of gate is stopping" in stop.stdout
    ops.open_gate("b")
    assert ops.wait_for_status(execution_id).status == Status.STOPPED

    abandoned = ops.run("abandon", str(execution_id))
    assert abandoned.returncode == 0, describe(abandoned)
    assert ops.execution(execution_id).status == Status.ABANDONED
    assert_error(ops.run("restart", str(execution_id)), 4, "ABANDONED")

    again = ops.json("start", "gate", "--params", '{"name": "b"}')
    assert again["status"] == "COMPLETED"
    assert again["resumed_from"] is None
    assert [s["name"] for s in again["steps"]] == ["first", "hold", "last"]  # no step reused


# -- signals to a foreground start ---------------------------------------------------------------


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"]
)
def test_a_signal_to_a_foreground_start_stops_it_gracefully(ops: Ops, signum: int) -> None:
    """SIGHUP is the terminal closing: the run must end STOPPED and restartable, not lost."""
    tag = signal.Signals(signum).name
    process = ops.popen(
        "start", "units", "--params", json.dumps({"tag": tag, "n": 100_000}),
        env={"OPS_UNIT_DELAY": "0.02"},
    )
    wait_until(lambda: len(ops.units(tag)) >= 3)
    started = ops.repository.latest_execution("units")
    assert started.status == Status.STARTED and started.pid == process.pid

    process.send_signal(signum)
    result = finish(process, ["start", "units"])
    assert result.returncode == 3, describe(result)
    assert ops.execution(started.id).status == Status.STOPPED
    assert ops.steps(started.id) == {"work": Status.STOPPED}
    done = ops.units(tag)
    assert done == list(range(len(done)))
    if signum == signal.SIGINT:
        assert "stopping at the next checkpoint; Ctrl-C again to interrupt" in result.stderr


def test_the_first_ctrl_c_says_at_once_what_happens_next(ops: Ops) -> None:
    """The stop waits for a checkpoint that may be far: the message must not wait for it."""
    process = ops.popen("start", "gate", "--params", '{"name": "notice"}')
    wait_until(lambda: (e := ops.repository.latest_execution("gate")) and "hold" in ops.steps(e.id))
    process.send_signal(signal.SIGINT)
    execution = ops.repository.latest_execution("gate")
    ops.wait_for_status(execution.id, Status.STOPPING)
    assert process.poll() is None  # `hold` has not reached a checkpoint: still running
    ops.open_gate("notice")
    result = finish(process, ["start", "gate"])
    assert result.returncode == 3, describe(result)
    first = result.stderr.index("stopping at the next checkpoint; Ctrl-C again to interrupt")
    assert first < result.stderr.index("step hold COMPLETED"), describe(result)


def test_a_second_sigint_interrupts_a_step_that_ignores_the_stop(ops: Ops) -> None:
    process = ops.popen("start", "gate", "--params", '{"name": "never"}')
    wait_until(lambda: (e := ops.repository.latest_execution("gate")) and "hold" in ops.steps(e.id))
    execution = ops.repository.latest_execution("gate")

    process.send_signal(signal.SIGINT)  # the graceful stop: `hold` does not look at it
    ops.wait_for_status(execution.id, Status.STOPPING)
    assert process.poll() is None
    process.send_signal(signal.SIGINT)  # the second one interrupts the step at once
    result = finish(process, ["start", "gate"])
    assert result.returncode == 3, describe(result)
    assert ops.execution(execution.id).status == Status.STOPPED
    assert ops.steps(execution.id) == {"first": Status.COMPLETED, "hold": Status.STOPPED}


def test_sigterm_to_a_detached_execution_stops_it_gracefully(ops: Ops) -> None:
    execution_id = ops.launch("units", {"tag": "term", "n": 100_000}, env={"OPS_UNIT_DELAY": "0.02"})
    wait_until(lambda: len(ops.units("term")) >= 3)
    pid = ops.execution(execution_id).pid

    os.kill(pid, signal.SIGTERM)
    stopped = ops.wait_for_status(execution_id)
    assert stopped.status == Status.STOPPED
    assert ops.steps(execution_id) == {"work": Status.STOPPED}
    wait_until(lambda: not process_alive(pid))
    done = ops.units("term")
    assert done == list(range(len(done)))


# -- a launched process that cannot even load the job ------------------------------------------------


def test_a_detached_job_that_fails_to_import_in_the_launched_process_ends_failed(ops: Ops) -> None:
    (ops.jobs_dir / "brittle.py").write_text(textwrap.dedent('''
        import sys
        from batchctl import Job

        if "run-execution" in sys.argv:
            raise ImportError("brittle cannot be imported in the launched process")

        job = Job("brittle")

        @job.tasklet
        def only(ctx):
            pass
    '''))
    launched = ops.json("start", "brittle", "--detach")
    assert launched["status"] == "STARTING"
    failed = ops.wait_for_status(launched["id"])
    assert failed.status == Status.FAILED
    assert "brittle cannot be imported in the launched process" in failed.exit_message
    assert ops.steps(launched["id"]) == {}


# -- logs ------------------------------------------------------------------------------------------


def test_logs_prints_a_detached_log_and_follows_it_until_the_execution_ends(ops: Ops) -> None:
    execution_id = ops.launch("gate", {"name": "log"})
    wait_until(lambda: "hold" in ops.steps(execution_id))

    shown = ops.run("logs", str(execution_id))
    assert shown.returncode == 0, describe(shown)
    assert f"execution {execution_id} of job gate started" in shown.stdout

    follow = ops.popen("logs", str(execution_id), "--follow")
    wait_until(lambda: "hold" in ops.steps(execution_id))
    assert follow.poll() is None  # still following: the execution is live
    ops.open_gate("log")
    followed = finish(follow, ["logs", "--follow"])
    assert followed.returncode == 0, describe(followed)
    assert "step last COMPLETED" in followed.stdout
    assert ops.execution(execution_id).status == Status.COMPLETED

    ops.open_gate("fg")
    foreground = ops.json("start", "gate", "--params", '{"name": "fg"}')
    assert_error(ops.run("logs", str(foreground["id"])), 2, "ran in the foreground")


# -- refusals ----------------------------------------------------------------------------------------


def test_every_refusal_has_its_exit_code_and_a_one_line_message(ops: Ops) -> None:
    ops.open_gate("done")
    done = ops.json("start", "gate", "--params", '{"name": "done"}')["id"]
    live = ops.launch("gate", {"name": "live"})

    cases: list[tuple[list[str], int, tuple[str, ...]]] = [
        (["stop", str(done)], 4,
         (f"execution {done} of job gate is not live (COMPLETED)", f"live executions of gate: {live}")),
        (["restart", str(done)], 4, ("COMPLETED", "only STOPPED or FAILED executions restart")),
        (["restart", str(live)], 4, (f"execution {live}", "still STARTED")),
        (["abandon", str(live)], 4, (f"execution {live} is STARTED", "can be abandoned")),
        (["abandon", str(done)], 4, (f"execution {done} is COMPLETED", "can be abandoned")),
        (["start", "gate", "--params", '{"name": "live"}'], 4, ("already running", f"execution {live}")),
        (["start", "gate", "--params", '{"name": "done"}'], 4,
         ("already completed", "a different param value makes a new instance")),
        (["stop", "424242"], 2, ("no execution with id 424242",)),
        (["restart", "424242"], 2, ("no execution with id 424242",)),
        (["abandon", "424242"], 2, ("no execution with id 424242",)),
        (["show", "424242"], 2, ("no execution with id 424242",)),
        (["logs", "424242"], 2, ("no execution with id 424242",)),
    ]
    results = ops.run_all([argv for argv, _, _ in cases])
    for (argv, code, fragments), result in zip(cases, results):
        assert_error(result, code, *fragments)
        assert result.stdout == "", describe(result)

    # None of the refusals touched the live execution.
    assert ops.execution(live).status == Status.STARTED
    ops.open_gate("live")
    assert ops.wait_for_status(live).status == Status.COMPLETED

"""Partitions on Dask (issue 15), on SQLite and Postgres: the same output as local processes, a
Dask worker SIGKILLed mid-partition, stop and restart, the scheduler unreachable at start and
lost mid-run, Dask giving up on a partition, the LocalCluster default, SQLite refused where its
file cannot be shared.

The cluster is real: a `dask scheduler` and two `dask worker` processes (one thread each) on
127.0.0.1, started once for the module; the tests that kill a scheduler start their own. The
job runs in this process (`Batch.start`), its partitions in the Dask workers. Tests wait for
states of the repository with a deadline, never for a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from batchctl.config import Config
from batchctl.model import Status
from batchctl.operator import Batch
from tests.conftest import in_daemon_thread, wait_for
from tests.integration.test_chunk_steps import sql
from tests.integration.test_partitions import SAME_WORK, partitions

DEADLINE = 90.0  # seconds an awaited state may take on a loaded machine (a worker restarts)
ITEMS = 8 * 40

# Eight partitions of 40 numbers written to `out` through the chunk's transaction. Each partition
# holds at its item 10 until the file `gate` exists (or a stop reaches it); while the file
# `poison` exists, item 3 kills the Dask worker process that runs it. Every run of a partition
# appends "<execution> <partition> <pid>" to runs.txt.
GATED = '''
import os
import time
from pathlib import Path

from batchctl import Job
from batchctl.items import SqlWriter

WORK = Path({work!r})
PER_PARTITION = 40

job = Job("gated")


def eight(ctx):
    return [{{"lo": i * PER_PARTITION, "hi": (i + 1) * PER_PARTITION}} for i in range(8)]


def numbers(ctx):
    return range(ctx.partition["lo"], ctx.partition["hi"])


@job.before_partition
def record(ctx):
    with (WORK / "runs.txt").open("a") as runs:
        runs.write(f"{{ctx.execution_id}} {{ctx.step_name}} {{os.getpid()}}\\n")


@job.chunk(reader=numbers, writer=SqlWriter("out"), size=5, partitioner=eight, workers=2,
           mode="dask")
def load(n, ctx):
    if n == 3 and (WORK / "poison").exists():
        os.kill(os.getpid(), 9)
    if n - ctx.partition["lo"] >= 10:
        while not (WORK / "gate").exists() and not ctx.stop_requested:
            time.sleep(0.01)
    return {{"id": n}}
'''


# -- a real cluster on 127.0.0.1 ----------------------------------------------------------------


class DaskProcesses:
    """A `dask scheduler` and `dask worker` processes, ended (and waited for) by `close()`."""

    def __init__(self, folder: Path, workers: int = 2) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.scheduler_file = folder / "scheduler.json"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.scheduler = self._start("scheduler", "--host", "127.0.0.1", "--port", "0",
                                     "--no-dashboard", "--scheduler-file", str(self.scheduler_file))
        self.address = wait_for(self._address, timeout=DEADLINE)
        for _ in range(workers):
            self._start("worker", "--scheduler-file", str(self.scheduler_file), "--nthreads", "1",
                        "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1")
        wait_for(lambda: self.worker_count() == workers, timeout=DEADLINE, interval=0.2)

    def _start(self, role: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.folder / f"{role}-{len(self.processes)}.log").open("wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "dask", role, *args], stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       cwd=self.folder, start_new_session=True)
        self.processes.append(process)
        return process

    def _address(self) -> str | None:
        try:
            return str(json.loads(self.scheduler_file.read_text())["address"])
        except (OSError, ValueError, KeyError):
            return None

    def worker_count(self) -> int:
        """Workers registered with the scheduler, read from its log (no client needed)."""
        logs = "".join(p.read_text(errors="replace") for p in self.folder.glob("scheduler-*.log"))
        return logs.count("Register worker") - logs.count("Remove worker")

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskProcesses]:
    processes = DaskProcesses(tmp_path_factory.mktemp("dask"))
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture
def dask_config(config: Config, cluster: DaskProcesses) -> Config:
    return replace(config, dask_scheduler=cluster.address)


@pytest.fixture
def dask_batch(dask_config: Config) -> Iterator[Batch]:
    with Batch(dask_config) as opened:
        yield opened


@pytest.fixture
def in_thread(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """in_thread(fn, *args): a future of fn run in a thread; at the end of the test the gate
    opens (a test that failed must not leave its job held forever) and the thread is waited for,
    at most DEADLINE: a daemon thread, so that a job that hangs fails its test, not the suite."""
    from concurrent.futures import Future, wait

    futures: list[Future[Any]] = []

    def submit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        futures.append(in_daemon_thread(fn, *args, **kwargs))
        return futures[-1]

    try:
        yield submit
    finally:
        (tmp_path / "gate").touch()
        wait(futures, timeout=DEADLINE)


@pytest.fixture
def gated(dask_batch: Batch, write_job: Any, tmp_path: Path) -> Path:
    """The gated job written, its `out` table created; returns its work folder."""
    sql(dask_batch, "CREATE TABLE out (id INTEGER PRIMARY KEY)")
    write_job("gated_jobs", GATED.format(work=str(tmp_path)))
    return tmp_path


def rows(batch: Batch) -> list[int]:
    return [row[0] for row in sql(batch, "SELECT id FROM out ORDER BY id")]


def running(batch: Batch, execution_id: int) -> list[Any]:
    """Partitions that a Dask worker holds and has checkpointed in."""
    return [p for p in partitions(batch, execution_id, "load")
            if p.status == Status.STARTED and p.pid and p.write_count >= 10]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the same output as local processes ---------------------------------------------------------


def test_eight_partitions_on_dask_give_the_output_of_local_processes(
    dask_batch: Batch, write_job: Any, tmp_path: Path, cluster: DaskProcesses
) -> None:
    n = 600
    sql(dask_batch, "CREATE TABLE src (id INTEGER PRIMARY KEY, amount INTEGER)")
    values = ", ".join(f"({i}, {i * 37 % 1009})" for i in range(n))
    sql(dask_batch, f"INSERT INTO src (id, amount) VALUES {values}")
    for name in ("procs", "dasks"):
        sql(dask_batch, f"CREATE TABLE out_{name} (id INTEGER PRIMARY KEY, value INTEGER, tag TEXT)")
        (tmp_path / name).mkdir()
    source = SAME_WORK.format(work=str(tmp_path)) + '\ndasks = define("dasks", "dask")\n'
    write_job("same_work", source)

    procs = dask_batch.start("procs", {"n": n})
    dasks = dask_batch.start("dasks", {"n": n})

    assert procs.status == Status.COMPLETED, procs.exit_message
    assert dasks.status == Status.COMPLETED, dasks.exit_message
    expected = sql(dask_batch, "SELECT id, value, tag FROM out_procs ORDER BY id")
    assert len(expected) == n - len(range(0, n, 7))
    assert sql(dask_batch, "SELECT id, value, tag FROM out_dasks ORDER BY id") == expected
    assert (tmp_path / "dasks" / "all.csv").read_text() == (tmp_path / "procs" / "all.csv").read_text()
    for step in ("load", "export"):
        parts = partitions(dask_batch, dasks.id, step)
        assert [p.name for p in parts] == [f"{step}:{i:04d}" for i in range(8)]
        assert {p.status for p in parts} == {Status.COMPLETED}
        assert {p.mode for p in parts} == {"dask"}
        # `show` names the Dask worker that ran each partition: its address.
        assert all(p.host.startswith("tcp://127.0.0.1:") and p.pid for p in parts), parts


def test_show_and_workers_name_the_dask_worker(
    dask_batch: Batch, gated: Path, in_thread: Callable[..., Any]
) -> None:
    from batchctl import render

    future = in_thread(dask_batch.start, "gated")
    execution_id = wait_for(lambda: next(iter(dask_batch.history("gated")), None), DEADLINE).id
    held = wait_for(lambda: running(dask_batch, execution_id), DEADLINE)
    listed = [render.worker_dict(w) for w in dask_batch.workers()]
    (gated / "gate").touch()
    assert future.result(timeout=DEADLINE).status == Status.COMPLETED
    dask_workers = [w for w in listed if w["kind"] == "dask" and w["partition"]]
    assert {w["host"] for w in dask_workers} >= {p.host for p in held}
    assert all(w["host"].startswith("tcp://127.0.0.1:") for w in dask_workers)
    shown = render.execution_dict(dask_batch.execution(execution_id),
                                  dask_batch.step_executions(execution_id))
    assert all(s["host"].startswith("tcp://") for s in shown["steps"] if s["name"] != "load")


def test_the_step_ends_when_its_dask_tasks_do_not_at_its_next_poll(
    dask_batch: Batch, gated: Path, in_thread: Callable[..., Any], hour_long_polls: Any
) -> None:
    future = in_thread(dask_batch.start, "gated")
    assert hour_long_polls.wait(DEADLINE)  # it looked while the partitions were held: it waits
    (gated / "gate").touch()
    assert future.result(timeout=DEADLINE).status == Status.COMPLETED


# -- a Dask worker killed mid-partition ----------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_sigkill_of_a_dask_worker_mid_partition_runs_every_item_once(
    dask_config: Config, cluster: DaskProcesses, write_job: Any, tmp_path: Path,
    in_thread: Callable[..., Any],
) -> None:
    """On Postgres (Dask workers of any machine share it): the partition resumes from its
    checkpoint on another worker; the step completes without a person."""
    with Batch(dask_config) as batch:
        sql(batch, "CREATE TABLE out (id INTEGER PRIMARY KEY)")
        write_job("gated_jobs", GATED.format(work=str(tmp_path)))
        future = in_thread(batch.start, "gated")
        execution_id = wait_for(lambda: next(iter(batch.history("gated")), None), DEADLINE).id
        victim = wait_for(lambda: running(batch, execution_id), DEADLINE)[0]

        os.kill(victim.pid, signal.SIGKILL)
        wait_for(lambda: not _alive(victim.pid), DEADLINE)
        (tmp_path / "gate").touch()
        execution = future.result(timeout=DEADLINE)

        assert execution.status == Status.COMPLETED, execution.exit_message
        assert rows(batch) == list(range(ITEMS))
        parts = partitions(batch, execution_id, "load")
        assert sum(p.write_count for p in parts) == ITEMS
        [resumed] = [p for p in parts if p.name == victim.name]
        assert resumed.status == Status.COMPLETED and resumed.pid != victim.pid
        assert resumed.write_count == 40  # its first 10 items were not written again
        runs = (tmp_path / "runs.txt").read_text().splitlines()
        assert sum(line.split()[1] == victim.name for line in runs) == 2
    wait_for(lambda: cluster.worker_count() == 2, DEADLINE, interval=0.2)  # the nanny restarted it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_dask_giving_up_on_a_partition_fails_it_in_one_line_and_a_restart_completes(
    dask_batch: Batch, gated: Path, cluster: DaskProcesses
) -> None:
    """A partition whose item kills every worker that runs it: Dask (or batchctl) gives up, the
    partition and its step end FAILED with one line, the other partitions complete, and a
    restart runs only that partition."""
    (gated / "gate").touch()
    (gated / "poison").touch()

    failed = dask_batch.start("gated")

    assert failed.status == Status.FAILED
    parts = partitions(dask_batch, failed.id, "load")
    [poisoned] = [p for p in parts if p.status == Status.FAILED]
    assert poisoned.name == "load:0000"
    assert "Dask" in poisoned.exit_message and "\n" not in poisoned.exit_message
    assert {p.status for p in parts if p is not poisoned} == {Status.COMPLETED}
    wait_for(lambda: cluster.worker_count() == 2, DEADLINE, interval=0.2)

    (gated / "poison").unlink()
    restarted = dask_batch.restart(failed.id)

    assert restarted.status == Status.COMPLETED, restarted.exit_message
    assert [p.name for p in partitions(dask_batch, restarted.id, "load")] == ["load:0000"]
    assert rows(dask_batch) == list(range(ITEMS))


# -- stop and restart ----------------------------------------------------------------------------


def test_a_stop_reaches_partitions_on_dask_and_a_restart_runs_only_what_did_not_complete(
    dask_batch: Batch, gated: Path, in_thread: Callable[..., Any]
) -> None:
    future = in_thread(dask_batch.start, "gated")
    execution_id = wait_for(lambda: next(iter(dask_batch.history("gated")), None), DEADLINE).id
    held = wait_for(lambda: len(running(dask_batch, execution_id)) == 2 and
                    running(dask_batch, execution_id), DEADLINE)

    dask_batch.stop(execution_id)
    stopped = future.result(timeout=DEADLINE)

    assert stopped.status == Status.STOPPED
    parts = partitions(dask_batch, execution_id, "load")
    assert {p.status for p in parts} == {Status.STOPPED}
    assert {p.name for p in parts if p.write_count} == {p.name for p in held}
    committed = rows(dask_batch)

    (gated / "gate").touch()
    restarted = dask_batch.restart(execution_id)

    assert restarted.status == Status.COMPLETED, restarted.exit_message
    assert rows(dask_batch) == list(range(ITEMS))
    again = partitions(dask_batch, restarted.id, "load")
    assert sum(p.write_count for p in again) == ITEMS - len(committed)


# -- the cluster unreachable or lost ---------------------------------------------------------------


def test_a_scheduler_unreachable_at_start_fails_the_step_in_one_line_restartable(
    dask_batch: Batch, dask_config: Config, gated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import batchctl.dask_executor as dask_executor

    monkeypatch.setattr(dask_executor, "DASK_CONNECT_TIMEOUT", 1.0)
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    (gated / "gate").touch()
    with Batch(replace(dask_config, dask_scheduler=nowhere)) as unreachable:
        failed = unreachable.start("gated")

    assert failed.status == Status.FAILED
    assert f"the Dask scheduler at {nowhere} is unreachable" in failed.exit_message
    assert "\n" not in failed.exit_message
    assert {p.status for p in partitions(dask_batch, failed.id, "load")} == {Status.FAILED}

    restarted = dask_batch.restart(failed.id)
    assert restarted.status == Status.COMPLETED, restarted.exit_message
    assert rows(dask_batch) == list(range(ITEMS))


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_scheduler_lost_mid_run_fails_the_step_and_a_restart_completes(
    dask_config: Config, cluster: DaskProcesses, write_job: Any, tmp_path: Path,
    in_thread: Callable[..., Any],
) -> None:
    """A cluster of its own, whose scheduler is SIGKILLed while partitions run: the job does not
    hang, the step ends FAILED naming the lost scheduler, and a restart on another cluster runs
    every item once (the lost cluster's workers, should they write late, are fenced)."""
    lost = DaskProcesses(tmp_path / "lost-cluster")
    try:
        with Batch(replace(dask_config, dask_scheduler=lost.address)) as batch:
            sql(batch, "CREATE TABLE out (id INTEGER PRIMARY KEY)")
            write_job("gated_jobs", GATED.format(work=str(tmp_path)))
            future = in_thread(batch.start, "gated")
            execution_id = wait_for(lambda: next(iter(batch.history("gated")), None), DEADLINE).id
            wait_for(lambda: running(batch, execution_id), DEADLINE)

            os.kill(lost.scheduler.pid, signal.SIGKILL)
            failed = future.result(timeout=DEADLINE)

            assert failed.status == Status.FAILED
            assert f"lost the Dask scheduler at {lost.address}" in failed.exit_message
            assert "\n" not in failed.exit_message
    finally:
        lost.close()
    (tmp_path / "gate").touch()
    with Batch(dask_config) as batch:
        restarted = batch.restart(failed.id)
        assert restarted.status == Status.COMPLETED, restarted.exit_message
        assert rows(batch) == list(range(ITEMS))


# -- the LocalCluster default and SQLite ------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_with_no_scheduler_configured_a_local_cluster_runs_the_partitions(
    batch: Batch, write_job: Any, tmp_path: Path
) -> None:
    """No `dask_scheduler`: a LocalCluster of the step's 2 worker processes (on SQLite: the
    same machine; on Postgres the executor is the same)."""
    assert batch.config.dask_scheduler is None
    sql(batch, "CREATE TABLE out (id INTEGER PRIMARY KEY)")
    write_job("gated_jobs", GATED.format(work=str(tmp_path)))
    (tmp_path / "gate").touch()

    execution = batch.start("gated")

    assert execution.status == Status.COMPLETED, execution.exit_message
    assert rows(batch) == list(range(ITEMS))
    parts = partitions(batch, execution.id, "load")
    assert all(p.host.startswith("tcp://127.0.0.1:") for p in parts)
    assert all(p.pid != os.getpid() for p in parts)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_is_refused_with_a_scheduler_on_another_machine(
    config: Config, write_job: Any, tmp_path: Path
) -> None:
    """The refusal comes before anything runs (nor connects): one line, exit 2."""
    write_job("gated_jobs", GATED.format(work=str(tmp_path)))
    env = {**os.environ, "BATCHCTL_DATABASE_URL": config.database_url,
           "BATCHCTL_JOBS_DIR": str(config.jobs_dir),
           "BATCHCTL_DASK_SCHEDULER": "tcp://dask-scheduler.invalid:8786"}
    env.pop("BATCHCTL_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "batchctl", "start", "gated"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "a SQLite repository is shared only with Dask workers on this machine" in line
    assert "tcp://dask-scheduler.invalid:8786" in line
    assert not (tmp_path / "runs.txt").exists()

"""Partitioned steps across processes (issue 5) through the installed `batchctl`.

`batchctl worker` processes on Postgres share the partitions of remote partitioned steps: each
claims some, none is claimed twice, a killed worker's partition is claimed again after the
heartbeat timeout and resumes from its checkpoint, and SIGTERM hands a partition back at a
chunk boundary. Local worker processes are visible in `workers` and `show`, and a stop from
another process reaches them. On SQLite remote partitions are refused.

Workers run with a 0.5 s heartbeat and a 3 s timeout; everything else keeps the generous
timeout of the operations tests (a detached start is judged by it until its process takes
over). Tests wait for states with a deadline, never for a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from batchctl.launcher import process_alive
from batchctl.model import Status
from tests.acceptance.test_operations import (
    BATCHCTL,
    DEADLINE,
    Ops,
    assert_error,
    describe,
    wait_until,
)

WORKER_ENV = {"BATCHCTL_HEARTBEAT_INTERVAL": "0.5", "BATCHCTL_HEARTBEAT_TIMEOUT": "3"}

JOBS = '''
"""Partitioned jobs of the worker tests: partitions of `size` numbers each, written to a table
of the repository's database through the chunk's transaction (exactly once). With `hold` >= 0
the item at that offset of each partition (and every later one) waits until the file `gate` (or
`gate-<execution id>`) exists or, unless `stubborn`, the partition is asked to stop."""

import os
import time
from pathlib import Path

from batchctl import Job, Param
from batchctl.items import SqlWriter

WORK = Path(os.environ["OPS_WORK"])


def ranges(ctx):
    size = ctx.params["size"]
    return [{"lo": i * size, "hi": (i + 1) * size} for i in range(ctx.params["partitions"])]


def numbers(ctx):
    return range(ctx.partition["lo"], ctx.partition["hi"])


def define(name, mode, workers):
    job = Job(name, params={"partitions": int, "size": int, "delay": float,
                            "hold": Param(int, default=-1), "stubborn": Param(bool, default=False)})

    @job.before_partition
    def claimed(ctx):
        """Every run of a partition: "<partition> <pid> <position it resumes from>"."""
        with (WORK / "claims.txt").open("a") as claims:
            claims.write(f"{ctx.step_name} {os.getpid()} {ctx.state.get('batchctl', {}).get('position', 0)}\\n")

    @job.tasklet
    def create(ctx):
        with ctx.database.begin() as connection:
            connection.exec_driver_sql(
                f"CREATE TABLE out_{name} (id INTEGER PRIMARY KEY, pid INTEGER NOT NULL)"
            )

    @job.chunk(reader=numbers, writer=SqlWriter(f"out_{name}"), size=5, partitioner=ranges,
               workers=workers, mode=mode)
    def load(n, ctx):
        time.sleep(ctx.params["delay"])
        if 0 <= ctx.params["hold"] <= n - ctx.partition["lo"]:
            gates = (WORK / "gate", WORK / f"gate-{ctx.execution_id}")
            while not any(gate.exists() for gate in gates):
                if ctx.stop_requested and not ctx.params["stubborn"]:
                    break
                time.sleep(0.01)
        return {"id": n, "pid": os.getpid()}

    return job


remote = define("remote", "remote", 1)
local = define("local", "process", 2)
'''


class Fleet(Ops):
    """The operations helper, plus `batchctl worker` processes logging to files."""

    def __init__(self, database_url: str, jobs_dir: Path, tmp_path: Path) -> None:
        super().__init__(database_url, jobs_dir, tmp_path)
        self.workers: list[subprocess.Popen[bytes]] = []

    def worker(self, poll: float = 0.2) -> subprocess.Popen[bytes]:
        log = self.work / f"worker-{len(self.workers)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [BATCHCTL, "worker", "--poll", str(poll)], env=self._env(WORKER_ENV), cwd=self.cwd,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        self.workers.append(process)
        return process

    def worker_log(self, process: subprocess.Popen[bytes]) -> str:
        return (self.work / f"worker-{self.workers.index(process)}.log").read_text()

    def live_workers(self) -> list[dict[str, Any]]:
        """`batchctl workers --json`, judged by the workers' own heartbeat timeout."""
        return list(self.json("workers", env=WORKER_ENV))

    def claims(self) -> list[tuple[str, int, int]]:
        path = self.work / "claims.txt"
        if not path.exists():
            return []
        return [(name, int(pid), int(position))
                for name, pid, position in (line.split() for line in path.read_text().splitlines())]

    def partitions(self, execution_id: int) -> list[Any]:
        return [s for s in self.repository.step_executions(execution_id) if s.is_partition]

    def rows(self, table: str) -> list[tuple[int, int]]:
        from sqlalchemy import text

        with self.repository.engine.connect() as connection:
            return [tuple(r) for r in connection.execute(text(f"SELECT id, pid FROM {table} ORDER BY id"))]

    def open_the_gate(self) -> None:
        (self.work / "gate").touch()

    def close(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.kill()
            process.wait()
        self._kill_local_workers()
        super().close()

    def _kill_local_workers(self) -> None:
        """Local worker processes whose job process a failed test killed would outlive it."""
        from sqlalchemy import select

        from batchctl.repository.tables import worker

        if self._repository is None:
            return
        query = select(worker.c.pid).where(
            worker.c.host == socket.gethostname(), worker.c.stopped_at.is_(None)
        )
        with self.repository.engine.connect() as connection:
            pids = set(connection.execute(query).scalars())
        for pid in pids - {os.getpid()}:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def fleet(database_url: str, jobs_dir: Path, tmp_path: Path) -> Iterator[Fleet]:
    (jobs_dir / "partitioned.py").write_text(JOBS)
    runner = Fleet(database_url, jobs_dir, tmp_path)
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture
def postgres_fleet(postgres_url: str, jobs_dir: Path, tmp_path: Path) -> Iterator[Fleet]:
    """Remote workers need Postgres: these tests run there only."""
    (jobs_dir / "partitioned.py").write_text(JOBS)
    runner = Fleet(postgres_url, jobs_dir, tmp_path)
    try:
        yield runner
    finally:
        runner.close()


def start_workers(fleet: Fleet, count: int, poll: float = 0.2) -> list[subprocess.Popen[bytes]]:
    started = [fleet.worker(poll) for _ in range(count)]
    pids = {process.pid for process in started}
    wait_until(lambda: pids <= {w["pid"] for w in fleet.live_workers()})
    return started


def sigterm_all(processes: list[subprocess.Popen[bytes]]) -> list[int]:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    return [process.wait(timeout=DEADLINE) for process in processes]


# -- remote workers share the partitions ------------------------------------------------------------


def test_three_workers_share_the_partitions_and_none_is_claimed_twice(postgres_fleet: Fleet) -> None:
    fleet = postgres_fleet
    workers = start_workers(fleet, 3)
    pids = {w.pid for w in workers}

    execution_id = fleet.launch("remote", {"partitions": 12, "size": 30, "delay": 0.01})
    finished = fleet.wait_for_status(execution_id)
    assert finished.status == Status.COMPLETED, finished.exit_message

    claims = fleet.claims()
    assert sorted(name for name, _, _ in claims) == [f"load:{i:04d}" for i in range(12)]
    by_worker = {pid: sum(1 for _, claimer, _ in claims if claimer == pid) for pid in pids}
    assert all(count >= 1 for count in by_worker.values()), by_worker
    assert {position for _, _, position in claims} == {0}

    shown = fleet.json("show", str(execution_id))
    parts = [s for s in shown["steps"] if s.get("partition_of") == "load"]
    assert [p["name"] for p in parts] == [f"load:{i:04d}" for i in range(12)]
    for part in parts:
        assert part["status"] == "COMPLETED" and part["mode"] == "remote"
        assert part["host"] == socket.gethostname() and part["pid"] in pids
        assert part["read_count"] == 30 and part["write_count"] == 30
        assert (part["name"], part["pid"], 0) in claims
    [total] = [s for s in shown["steps"] if s["name"] == "load"]
    assert total["status"] == "COMPLETED" and total["read_count"] == 360
    assert shown["pid"] not in pids  # the job's own process only waited

    rows = fleet.rows("out_remote")
    assert [r[0] for r in rows] == list(range(360))
    assert {r[1] for r in rows} == {p for p in by_worker if by_worker[p]}

    table = fleet.run("workers", env=WORKER_ENV)
    assert table.returncode == 0, describe(table)
    for pid in pids:  # idle now
        [line] = [line for line in table.stdout.splitlines() if f" {pid} " in line]
        assert "remote" in line and line.rstrip().endswith("idle")

    assert sigterm_all(workers) == [0, 0, 0]
    assert fleet.live_workers() == []
    nobody = fleet.run("workers")
    assert nobody.returncode == 0 and nobody.stdout == "" and "no live workers" in nobody.stderr


def test_a_killed_workers_partition_is_claimed_again_and_resumes_from_its_checkpoint(
    postgres_fleet: Fleet,
) -> None:
    fleet = postgres_fleet
    workers = start_workers(fleet, 3)
    # Each partition commits items 0..9 of its range, then holds until the gate opens.
    execution_id = fleet.launch("remote", {"partitions": 3, "size": 60, "delay": 0.005, "hold": 10})

    def all_busy() -> Any:
        listed = fleet.live_workers()
        parts = {p.name: p for p in fleet.partitions(execution_id)}
        busy = [w for w in listed if w["execution_id"] == execution_id and w["partition"]]
        ready = len(busy) == 3 and all(parts[w["partition"]].commit_count == 2 for w in busy)
        return busy if ready else None

    busy = wait_until(all_busy)
    assert {w["job"] for w in busy} == {"remote"} and {w["kind"] for w in busy} == {"remote"}
    assert sorted(w["partition"] for w in busy) == ["load:0000", "load:0001", "load:0002"]
    assert {w["pid"] for w in busy} == {w.pid for w in workers}
    [victim] = [w for w in busy if w["partition"] == "load:0001"]
    os.kill(victim["pid"], signal.SIGKILL)
    wait_until(lambda: victim["pid"] not in {w["pid"] for w in fleet.live_workers()})
    fleet.open_the_gate()

    finished = fleet.wait_for_status(execution_id)
    assert finished.status == Status.COMPLETED, finished.exit_message
    runs = [(pid, position) for name, pid, position in fleet.claims() if name == "load:0001"]
    assert runs[0] == (victim["pid"], 0)
    assert len(runs) == 2 and runs[1][0] != victim["pid"], fleet.claims()
    assert runs[1][1] == 10  # resumed from its checkpoint
    part = {p.name: p for p in fleet.partitions(execution_id)}["load:0001"]
    assert part.status == Status.COMPLETED and part.pid == runs[1][0]
    assert part.read_count == 60 and part.write_count == 60  # nothing read twice
    assert sorted(name for name, _, _ in fleet.claims()) == [
        "load:0000", "load:0001", "load:0001", "load:0002"
    ]
    rows = fleet.rows("out_remote")
    assert [r[0] for r in rows] == list(range(180))  # every item exactly once
    # What the killed worker committed is exactly what the next one resumed after.
    assert [i for i, pid in rows if pid == victim["pid"]] == list(range(60, 70))
    assert sigterm_all([w for w in workers if w.pid != victim["pid"]]) == [0, 0]


def test_sigterm_makes_a_worker_hand_its_partition_back_at_a_chunk_boundary_and_exit_0(
    postgres_fleet: Fleet,
) -> None:
    fleet = postgres_fleet
    [first] = start_workers(fleet, 1)
    # Items 0..9 commit; item 10 holds until a stop (SIGTERM) or the gate lets it go.
    execution_id = fleet.launch("remote", {"partitions": 1, "size": 60, "delay": 0, "hold": 10})
    wait_until(lambda: [p for p in fleet.partitions(execution_id) if p.commit_count == 2])
    [second] = start_workers(fleet, 1)

    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=DEADLINE) == 0
    log = fleet.worker_log(first)
    assert "partition load:0000 handed back at its checkpoint" in log
    fleet.open_the_gate()

    finished = fleet.wait_for_status(execution_id)
    assert finished.status == Status.COMPLETED, finished.exit_message
    # The first worker finished its chunk (items 10..14) before handing the partition back.
    assert fleet.claims() == [("load:0000", first.pid, 0), ("load:0000", second.pid, 15)]
    [part] = fleet.partitions(execution_id)
    assert part.status == Status.COMPLETED and part.pid == second.pid and part.read_count == 60
    rows = fleet.rows("out_remote")
    assert [r[0] for r in rows] == list(range(60))
    assert [i for i, pid in rows if pid == first.pid] == list(range(15))
    assert sigterm_all([second]) == [0]


def test_a_restart_takes_over_a_partition_a_worker_of_the_lost_execution_still_runs(
    postgres_fleet: Fleet,
) -> None:
    fleet = postgres_fleet
    [old] = start_workers(fleet, 1)
    # The partition commits items 0..9, then item 10 waits for its gate, deaf to stop requests
    # (a slow call to another system, say).
    params = {"partitions": 1, "size": 30, "delay": 0, "hold": 10, "stubborn": True}
    lost_id = fleet.launch("remote", params)
    wait_until(lambda: [p for p in fleet.partitions(lost_id) if p.commit_count == 2])
    owner = fleet.execution(lost_id).pid
    os.kill(owner, signal.SIGKILL)
    wait_until(lambda: not process_alive(owner))
    assert fleet.json("show", str(lost_id))["status"] == "FAILED"  # marked lost: pid gone

    [new] = start_workers(fleet, 1)
    restart_id = fleet.json("restart", str(lost_id), "--detach")["id"]
    wait_until(lambda: ("load:0000", new.pid, 10) in fleet.claims())
    # The old worker goes on first: its chunk (items 10..14) must not commit now that the
    # partition resumes elsewhere; then the new one does the rest.
    (fleet.work / f"gate-{lost_id}").touch()
    wait_until(lambda: [w for w in fleet.live_workers() if w["pid"] == old.pid and not w["partition"]])
    (fleet.work / f"gate-{restart_id}").touch()

    finished = fleet.wait_for_status(restart_id)
    assert finished.status == Status.COMPLETED, finished.exit_message
    rows = fleet.rows("out_remote")
    assert [r[0] for r in rows] == list(range(30))  # every item exactly once
    assert [i for i, pid in rows if pid == old.pid] == list(range(10))
    [taken] = fleet.partitions(lost_id)
    assert taken.status == Status.FAILED and taken.context["batchctl"]["position"] == 10
    # Marking the execution lost ended its partition with it (the old worker's claim revoked).
    assert (taken.exit_message or "").startswith("process lost")
    assert "partition load:0000 was taken over" in fleet.worker_log(old)
    assert sigterm_all([old, new]) == [0, 0]


def test_a_restart_takes_over_a_partition_an_orphaned_local_worker_still_runs(fleet: Fleet) -> None:
    params = {"partitions": 1, "size": 30, "delay": 0, "hold": 10, "stubborn": True}
    lost_id = fleet.launch("local", params)
    wait_until(lambda: [p for p in fleet.partitions(lost_id) if p.commit_count == 2])
    lost = fleet.execution(lost_id)
    [orphan] = [p.pid for p in fleet.partitions(lost_id)]
    os.kill(lost.pid, signal.SIGKILL)  # its local worker process lives on
    wait_until(lambda: not process_alive(lost.pid))

    # The restart itself finds the execution lost (its pid is gone) and marks it FAILED.
    restart_id = fleet.json("restart", str(lost_id), "--detach")["id"]
    assert fleet.execution(lost_id).status == Status.FAILED
    wait_until(lambda: [c for c in fleet.claims() if c[1] != orphan and c[2] == 10])
    (fleet.work / f"gate-{lost_id}").touch()
    wait_until(lambda: not process_alive(orphan))
    (fleet.work / f"gate-{restart_id}").touch()

    finished = fleet.wait_for_status(restart_id)
    assert finished.status == Status.COMPLETED, finished.exit_message
    rows = fleet.rows("out_local")
    assert [r[0] for r in rows] == list(range(30))  # every item exactly once
    assert [i for i, pid in rows if pid == orphan] == list(range(10))
    [taken] = fleet.partitions(lost_id)
    assert taken.status == Status.FAILED and taken.context["batchctl"]["position"] == 10
    # Marking the execution lost ended its partition with it (the old worker's claim revoked).
    assert (taken.exit_message or "").startswith("process lost")
    assert "partition load:0000 was taken over" in Path(lost.log_path).read_text()


def test_an_idle_worker_is_woken_by_notify_and_exits_at_once_on_sigterm(postgres_fleet: Fleet) -> None:
    fleet = postgres_fleet
    # Polling every 10 minutes: only a notification can bring the partitions within the deadline.
    [idle] = start_workers(fleet, 1, poll=600)
    execution_id = fleet.launch("remote", {"partitions": 2, "size": 5, "delay": 0})
    finished = fleet.wait_for_status(execution_id)
    assert finished.status == Status.COMPLETED, finished.exit_message
    assert [pid for _, pid, _ in fleet.claims()] == [idle.pid, idle.pid]

    # Idle again, waiting on LISTEN: a signal must still end it promptly (well within the poll).
    wait_until(lambda: [w for w in fleet.live_workers() if w["pid"] == idle.pid and not w["partition"]])
    idle.send_signal(signal.SIGTERM)
    assert idle.wait(timeout=DEADLINE) == 0
    assert "stopped after 2 partition(s)" in fleet.worker_log(idle)


def test_a_stop_ends_remote_partitions_no_worker_claimed(postgres_fleet: Fleet) -> None:
    fleet = postgres_fleet
    execution_id = fleet.launch("remote", {"partitions": 3, "size": 5, "delay": 0})
    wait_until(lambda: len(fleet.partitions(execution_id)) == 3)
    stop = fleet.run("stop", str(execution_id), "--wait")
    assert stop.returncode == 0, describe(stop)
    assert fleet.execution(execution_id).status == Status.STOPPED
    parts = fleet.partitions(execution_id)
    assert [(p.status, p.exit_message) for p in parts] == [
        (Status.STOPPED, "stopped before it started")
    ] * 3

    # A worker that comes later completes the restart.
    start_workers(fleet, 1)
    restart = fleet.run("restart", str(execution_id))
    assert restart.returncode == 0, describe(restart)
    assert [r[0] for r in fleet.rows("out_remote")] == list(range(15))


# -- SQLite refuses remote partitions ---------------------------------------------------------------


def test_on_sqlite_remote_partitions_and_workers_are_refused(
    sqlite_url: str, jobs_dir: Path, tmp_path: Path
) -> None:
    (jobs_dir / "partitioned.py").write_text(JOBS)
    fleet = Fleet(sqlite_url, jobs_dir, tmp_path)
    try:
        start = fleet.run("start", "remote", "--params", '{"partitions": 2, "size": 2, "delay": 0}')
        assert_error(start, 2, "job remote has remote partitioned steps",
                     "need a Postgres job repository (this one is sqlite)")
        worker = fleet.run("worker")
        assert_error(worker, 2, "remote workers need a Postgres job repository (this one is sqlite)")
        assert fleet.json("history") == []
    finally:
        fleet.close()


# -- local worker processes: visible, stopped from another process, restarted ---------------------------


def test_local_workers_are_listed_and_shown_and_a_stop_reaches_them(fleet: Fleet) -> None:
    # Two workers for four partitions; each running one holds at its item 10 until stopped.
    params = {"partitions": 4, "size": 100, "delay": 0, "hold": 10}
    execution_id = fleet.launch("local", params)

    def two_running() -> Any:
        listed = [w for w in fleet.live_workers() if w["execution_id"] == execution_id]
        parts = {p.name: p for p in fleet.partitions(execution_id)}
        ready = len(listed) == 2 and all(parts[w["partition"]].commit_count == 2 for w in listed)
        return listed if ready else None

    listed = wait_until(two_running)
    owner = fleet.execution(execution_id)
    assert {w["kind"] for w in listed} == {"process"} and {w["job"] for w in listed} == {"local"}
    assert {w["host"] for w in listed} == {socket.gethostname()}
    worker_pids = {w["pid"] for w in listed}
    assert owner.pid not in worker_pids and all(process_alive(pid) for pid in worker_pids)

    shown = fleet.json("show", str(execution_id))
    running = {s["name"]: s for s in shown["steps"] if s.get("partition_of") and s["status"] == "STARTED"}
    assert {w["partition"] for w in listed} == set(running)
    for worker in listed:
        assert running[worker["partition"]]["pid"] == worker["pid"]
        assert running[worker["partition"]]["host"] == worker["host"]
    table = fleet.run("show", str(execution_id))
    assert table.returncode == 0, describe(table)
    [header] = [line for line in table.stdout.splitlines() if line.startswith("id ")]
    assert header.split()[:4] == ["id", "step", "status", "worker"]
    for worker in listed:
        assert f"{worker['host']}/{worker['pid']}" in table.stdout

    stop = fleet.run("stop", str(execution_id), "--wait")
    assert stop.returncode == 0, describe(stop)
    assert fleet.execution(execution_id).status == Status.STOPPED
    parts = {p.name: p for p in fleet.partitions(execution_id)}
    assert {p.status for p in parts.values()} == {Status.STOPPED}
    for name in running:  # the running ones finished their chunk: items 10..14
        assert (parts[name].exit_message, parts[name].context["batchctl"]["position"]) == ("stopped after a chunk", 15)
    for name in set(parts) - set(running):
        assert parts[name].exit_message == "stopped before it started"
    wait_until(lambda: not any(process_alive(pid) for pid in worker_pids))

    fleet.open_the_gate()
    restart = fleet.run("restart", str(execution_id))
    assert restart.returncode == 0, describe(restart)
    assert [r[0] for r in fleet.rows("out_local")] == list(range(400))
    latest = fleet.json("history", "local")[0]
    assert latest["status"] == "COMPLETED" and latest["resumed_from"] == execution_id
    # Each partition ran once before the stop if it was claimed, and once after, from where
    # it stopped.
    runs: dict[str, list[int]] = {}
    for name, _, position in fleet.claims():
        runs.setdefault(name, []).append(position)
    assert runs == {name: ([0, 15] if name in running else [0]) for name in parts}
    assert fleet.live_workers() == []


def test_show_json_and_workers_json_are_json_only(fleet: Fleet) -> None:
    execution_id = fleet.launch("local", {"partitions": 2, "size": 5, "delay": 0})
    assert fleet.wait_for_status(execution_id).status == Status.COMPLETED
    shown = fleet.run("show", str(execution_id), "--json")
    assert shown.returncode == 0, describe(shown)
    document = json.loads(shown.stdout)
    parts = [s for s in document["steps"] if s.get("partition_of")]
    assert [(p["name"], p["partition_index"], p["partition"]) for p in parts] == [
        ("load:0000", 0, {"lo": 0, "hi": 5}), ("load:0001", 1, {"lo": 5, "hi": 10}),
    ]
    assert all(p["host"] and p["pid"] and p["worker_id"] for p in parts)
    listed = fleet.run("workers", "--json")
    assert listed.returncode == 0, describe(listed)
    assert json.loads(listed.stdout) == []

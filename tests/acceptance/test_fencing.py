"""Fencing of executions and partitions (issue 8, cases 1, 2 and 4) with real processes.

A process that was paused past its heartbeat timeout (SIGSTOP stands for a long GC pause, a
VM migration, a stopped container), judged lost and restarted elsewhere must write nothing more
when it resumes: no chunk, no checkpoint, no status, no byte of a file it was writing. A command
run in another PID namespace must not judge a pid it cannot see. A detached launch records its
child's pid at once, and a slow child judged lost meanwhile leaves the row alone. A stop ends the
partitions of a worker that died.

Every test that can runs on SQLite and on Postgres; remote workers need Postgres. Lost-judgement
by the heartbeat is asked for explicitly, by a command run with a short `heartbeat_timeout`
(the processes under test run with the generous one of the operations tests, so that nothing
else judges them on a loaded machine). Tests wait for states with a deadline, never for a fixed
time. A process is paused at a moment it holds no database lock (see `pause`): one paused inside
a transaction blocks the writers of SQLite, or the rows it locked on Postgres, until it resumes,
whatever the fencing does; that is not what these tests are about.

The last test pauses a worker between its fence check and its write (while the writer formats
the chunk): the stale worker's bytes must not reach the file another worker completed either.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from batchctl.launcher import process_alive
from batchctl.model import Status
from tests.acceptance.test_operations import BATCHCTL, Ops, describe, wait_until
from tests.acceptance.test_workers import JOBS as PARTITIONED_JOBS
from tests.acceptance.test_workers import WORKER_ENV, Fleet, sigterm_all, start_workers
from tests.conftest import wait_for

JUDGE_NOW = {"BATCHCTL_HEARTBEAT_TIMEOUT": "2"}  # a command that judges by a short heartbeat
STOP_DEADLINE = 30.0  # a stop after a worker died: a few heartbeat timeouts, not forever

JOBS = '''
"""Jobs of the fencing tests; they talk to the test through files in OPS_WORK."""

import os
import sys
import time
from pathlib import Path

from sqlalchemy import text

from batchctl import Job
from batchctl.items import CsvWriter

WORK = Path(os.environ["OPS_WORK"])
HOLD_LIMIT = 120.0  # a held process gives up after this long, so that none outlives a test

# A launched process (run-execution) that imports this module with FENCING_IMPORT_GATE set waits
# here until that file exists: a slow start. "importing-PID" says it is waiting.
_import_gate = os.environ.get("FENCING_IMPORT_GATE")
if _import_gate and "run-execution" in sys.argv:
    (WORK / f"importing-{os.getpid()}").touch()
    _deadline = time.monotonic() + HOLD_LIMIT
    while not Path(_import_gate).exists() and time.monotonic() < _deadline:
        time.sleep(0.02)


def hold(name):
    """Wait until the file gate-NAME exists, deaf to stop requests; "holding-NAME-PID" says so."""
    gate = WORK / f"gate-{name}"
    if gate.exists():
        return
    (WORK / f"holding-{name}-{os.getpid()}").touch()
    deadline = time.monotonic() + HOLD_LIMIT
    while not gate.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{gate.name} was never opened")
        time.sleep(0.01)


# -- a chunk step writing through ctx.connection: item n >= hold waits for gate-TAG -------------

rows = Job("rows", params={"tag": str, "n": int, "hold": int})


@rows.tasklet
def create(ctx):
    with ctx.database.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE IF NOT EXISTS fenced_rows "
            "(tag VARCHAR(40) NOT NULL, item INTEGER NOT NULL, pid INTEGER NOT NULL)"
        )


def numbers(ctx):
    return range(ctx.params["n"])


def insert_rows(items, ctx):
    ctx.connection.execute(
        text("INSERT INTO fenced_rows (tag, item, pid) VALUES (:tag, :item, :pid)"),
        [{"tag": ctx.params["tag"], "item": n, "pid": os.getpid()} for n in items],
    )


@rows.chunk(reader=numbers, writer=insert_rows, size=5)
def load(n, ctx):
    if n >= ctx.params["hold"]:
        hold(ctx.params["tag"])
    time.sleep(0.01)
    return n


# -- a generator tasklet: unit i >= hold waits for gate-TAG, then appends "i pid" ---------------

units = Job("units", params={"tag": str, "n": int, "hold": int})


@units.tasklet
def work(ctx):
    out = WORK / f"units-{ctx.params['tag']}.txt"
    for i in range(ctx.state.get("done", 0), ctx.params["n"]):
        if i >= ctx.params["hold"]:
            hold(ctx.params["tag"])
        with out.open("a") as file:
            file.write(f"{i} {os.getpid()}\\n")
        ctx.state["done"] = i + 1
        yield


# -- a run held by gate-TAG; a trivial one (for slow starts) -------------------------------------

held = Job("held", params={"tag": str})


@held.tasklet
def wait(ctx):
    hold(ctx.params["tag"])


slow = Job("slow", params={"tag": str})


@slow.tasklet
def only(ctx):
    pass


# -- a remote partitioned chunk step writing an atomic, checksummed CSV per partition -----------

csvparts = Job("csvparts", params={"n": int, "hold": int})


def one_partition(ctx):
    return [{"part": "a", "lo": 0, "hi": ctx.params["n"]}]


def partition_numbers(ctx):
    return range(ctx.partition["lo"], ctx.partition["hi"])


@csvparts.chunk(reader=partition_numbers, size=5, partitioner=one_partition, workers=1,
                mode="remote",
                writer=CsvWriter(str(WORK / "out-{part}.csv"), atomic=True, checksum=True))
def square(n, ctx):
    if n >= ctx.params["hold"]:
        hold("csv")
    time.sleep(0.005)
    return {"n": n, "square": n * n}


# The same, each row naming the process that wrote it; from item `hold` on, a row waits for
# gate-format while the writer formats it: after the worker's fence check, before its bytes.

class SlowToFormat(dict):
    def __getitem__(self, key):
        hold("format")
        return dict.__getitem__(self, key)


csvrace = Job("csvrace", params={"n": int, "hold": int})


@csvrace.chunk(reader=partition_numbers, size=5, partitioner=one_partition, workers=1,
               mode="remote",
               writer=CsvWriter(str(WORK / "race-{part}.csv"), atomic=True, checksum=True))
def square_by(n, ctx):
    row = {"n": n, "square": n * n, "pid": os.getpid()}
    return SlowToFormat(row) if n >= ctx.params["hold"] else row
'''


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def ops(database_url: str, jobs_dir: Path, tmp_path: Path) -> Iterator[Ops]:
    (jobs_dir / "fencing.py").write_text(JOBS)
    runner = Ops(database_url, jobs_dir, tmp_path)
    runner.env["BATCHCTL_HEARTBEAT_INTERVAL"] = "0.3"
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture
def fleet(postgres_url: str, jobs_dir: Path, tmp_path: Path) -> Iterator[Fleet]:
    """Remote workers need Postgres: these tests run there only."""
    (jobs_dir / "fencing.py").write_text(JOBS)
    (jobs_dir / "partitioned.py").write_text(PARTITIONED_JOBS)
    runner = Fleet(postgres_url, jobs_dir, tmp_path)
    try:
        yield runner
    finally:
        runner.close()


# -- helpers -------------------------------------------------------------------------------------


def thread_states(pid: int) -> list[str]:
    states = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    for task in tasks:
        try:
            states.append((task / "stat").read_text().rpartition(")")[2].split()[0])
        except OSError:
            continue
    return states


def holds_locks(runner: Ops, execution_id: int, worker_pid: int | None = None) -> bool:
    """Whether some process holds a lock that marking `execution_id` lost (or re-claiming its
    partitions) would wait for: SQLite's write lock; on Postgres the rows of the execution, its
    steps and the worker."""
    url = runner.database_url
    if url.startswith("sqlite:///"):
        connection = sqlite3.connect(url[len("sqlite:///"):], timeout=0, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            connection.close()
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    probes = [
        ("SELECT 1 FROM job_execution WHERE id = :id FOR UPDATE NOWAIT", {"id": execution_id}),
        ("SELECT 1 FROM step_execution WHERE job_execution_id = :id FOR UPDATE NOWAIT",
         {"id": execution_id}),
    ]
    if worker_pid is not None:
        probes.append(
            ("SELECT 1 FROM worker WHERE pid = :pid FOR UPDATE NOWAIT", {"pid": worker_pid})
        )
    with runner.repository.engine.connect() as connection:
        try:
            with connection.begin():
                for sql, binds in probes:
                    connection.execute(text(sql), binds).all()
        except DBAPIError:
            return True
    return False


def pause(runner: Ops, pid: int, execution_id: int, worker_pid: int | None = None) -> None:
    """SIGSTOP `pid` (every thread of it stopped) at a moment it holds no lock of the
    repository: paused inside a transaction, it would block the commands of the test forever
    (SQLite's write lock, a Postgres row lock), which is not what the test is about."""

    def attempt() -> bool:
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: (states := thread_states(pid)) and all(s in "Tt" for s in states))
        if not holds_locks(runner, execution_id, worker_pid):
            return True
        os.kill(pid, signal.SIGCONT)
        wait_until(lambda: not all(s in "Tt" for s in thread_states(pid)))
        return False

    wait_until(attempt)


def judge_lost(runner: Ops, execution_id: int) -> dict[str, Any]:
    """Run `show` with a short heartbeat timeout until it marks the execution lost."""

    def lost() -> Any:
        shown = runner.json("show", str(execution_id), env=JUDGE_NOW)
        return shown if shown["status"] in ("FAILED", "STOPPED") else None

    return dict(wait_until(lost))


def holding(runner: Ops, name: str) -> list[int]:
    """Pids of the processes that wait at gate-NAME (or once did)."""
    return [int(p.name.rsplit("-", 1)[1]) for p in runner.work.glob(f"holding-{name}-*")]


def step_rows(runner: Ops, execution_id: int) -> list[tuple[Any, ...]]:
    """What a process could still write of an execution's steps."""
    return [
        (s.name, s.status, s.version, s.commit_count, s.read_count, s.write_count, s.context,
         s.exit_message)
        for s in runner.repository.step_executions(execution_id)
    ]


def execution_row(runner: Ops, execution_id: int) -> tuple[Any, ...]:
    e = runner.execution(execution_id)
    return (e.status, e.exit_message, e.started_at, e.ended_at, e.version)


def idle(fleet: Fleet, pid: int) -> bool:
    """The worker `pid` is live (heartbeating) and runs no partition."""
    return any(w["pid"] == pid and not w["partition"] for w in fleet.live_workers())


def wait_until_gone(pid: int) -> None:
    wait_until(lambda: not process_alive(pid))


@pytest.fixture
def adopted(ops: Ops) -> Iterator[bool]:
    """While the test runs, the processes its detached starts launch become children of this
    one (see `adopting_orphans`): True when their exit codes can be read."""
    with adopting_orphans() as adopting:
        yield adopting


def wait_for_exit(pid: int, adopted: bool) -> int | None:
    """Wait until a launched process has ended; its exit code when it was adopted."""
    code = exit_code_of_orphan(pid) if adopted else None
    wait_until_gone(pid)
    return code


@contextmanager
def adopting_orphans() -> Iterator[bool]:
    """Make this process the subreaper of its descendants (Linux), so that the process a
    detached start launches becomes its child when `start` exits, and its exit code can be
    read with waitpid. Yields False where that is not possible."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        adopted = libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        adopted = False
    try:
        yield adopted
    finally:
        if adopted:
            libc.prctl(36, 0, 0, 0, 0)


def exit_code_of_orphan(pid: int) -> int:
    """Wait for an adopted descendant to end; its exit code (negative: the signal)."""
    reaped: list[int] = []

    def ended() -> bool:
        found, status = os.waitpid(pid, os.WNOHANG)
        if found == pid:
            reaped.append(os.waitstatus_to_exitcode(status))
        return bool(reaped)

    wait_until(ended)
    return reaped[0]


# -- 1. paused past the timeout, restarted, resumed: exactly once ---------------------------------


def test_a_chunk_run_paused_past_its_timeout_and_restarted_commits_nothing_when_it_resumes(
    ops: Ops, adopted: bool
) -> None:
    n, hold_at = 80, 15
    old_id = ops.launch("rows", {"tag": "once", "n": n, "hold": hold_at})
    # Items 0..14 commit (three chunks of 5); item 15 waits for the gate.
    wait_until(lambda: holding(ops, "once"))
    [old_pid] = holding(ops, "once")
    assert old_pid == ops.execution(old_id).pid
    wait_until(lambda: [s for s in ops.repository.step_executions(old_id)
                        if s.name == "load" and s.commit_count == 3])

    pause(ops, old_pid, old_id)
    lost = judge_lost(ops, old_id)
    assert lost["status"] == "FAILED" and "no heartbeat" in lost["exit_message"], lost
    ops.open_gate("once")
    restart = ops.run("restart", str(old_id))
    assert restart.returncode == 0, describe(restart)
    [new, old] = ops.json("history", "rows")
    assert (new["status"], new["resumed_from"], old["id"]) == ("COMPLETED", old_id, old_id)
    before = execution_row(ops, old_id), step_rows(ops, old_id)

    os.kill(old_pid, signal.SIGCONT)
    code = wait_for_exit(old_pid, adopted)

    from sqlalchemy import text

    with ops.repository.engine.connect() as connection:
        written = connection.execute(
            text("SELECT item, pid FROM fenced_rows WHERE tag = 'once' ORDER BY item, pid")
        ).all()
    assert [item for item, _ in written] == list(range(n))  # every item exactly once
    # The old process committed nothing after it was judged lost (it was in item 15).
    assert [item for item, pid in written if pid == old_pid] == list(range(hold_at))
    assert [(e["status"], e["resumed_from"]) for e in ops.json("history", "rows")] == [
        ("COMPLETED", old_id), ("FAILED", None),
    ]
    log = Path(ops.execution(old_id).log_path).read_text()
    assert f"execution {old_id} was taken over by another process" in log, log
    assert "stopping without committing" in log, log
    assert code == (1 if adopted else None), log  # it exits as its execution is recorded: FAILED
    # Nor a checkpoint or a status: its rows are as the lost-marking left them, which ended its
    # live step with it.
    assert (execution_row(ops, old_id), step_rows(ops, old_id)) == before
    assert [s[:2] for s in before[1]] == [("create", Status.COMPLETED), ("load", Status.FAILED)]


# -- 1. the same for a generator tasklet ----------------------------------------------------------


def test_a_tasklet_paused_past_its_timeout_and_restarted_writes_nothing_after_its_next_checkpoint(
    ops: Ops, adopted: bool
) -> None:
    n, hold_at = 40, 10
    old_id = ops.launch("units", {"tag": "tasklet", "n": n, "hold": hold_at})
    wait_until(lambda: holding(ops, "tasklet"))  # units 0..9 done, unit 10 waits for the gate
    [old_pid] = holding(ops, "tasklet")

    pause(ops, old_pid, old_id)
    assert judge_lost(ops, old_id)["status"] == "FAILED"
    ops.open_gate("tasklet")
    restart = ops.run("restart", str(old_id))
    assert restart.returncode == 0, describe(restart)
    before = execution_row(ops, old_id), step_rows(ops, old_id)
    assert before[0][0] == Status.FAILED

    os.kill(old_pid, signal.SIGCONT)
    code = wait_for_exit(old_pid, adopted)

    lines = [line.split() for line in (ops.work / "units-tasklet.txt").read_text().splitlines()]
    by_old = [int(i) for i, pid in lines if int(pid) == old_pid]
    by_new = [int(i) for i, pid in lines if int(pid) != old_pid]
    assert by_new == list(range(hold_at, n))
    # Resumed, the old process may finish the one unit it was in (10); its checkpoint is refused
    # and it stops there.
    assert by_old in (list(range(hold_at)), list(range(hold_at + 1))), by_old
    assert [e["status"] for e in ops.json("history", "units")] == ["COMPLETED", "FAILED"]
    log = Path(ops.execution(old_id).log_path).read_text()
    assert f"execution {old_id} was taken over by another process" in log, log
    assert "stopping without committing" in log, log
    assert code == (1 if adopted else None), log  # it exits as its execution is recorded: FAILED
    assert (execution_row(ops, old_id), step_rows(ops, old_id)) == before


# -- 1. a command in another PID namespace does not judge a pid it cannot see --------------------


def _unshare_works() -> str | None:
    """Why `unshare -p -f --mount-proc` cannot be used here, or None."""
    try:
        probe = subprocess.run(
            ["unshare", "-p", "-f", "--mount-proc", "true"], capture_output=True, text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare cannot run: {exc}"
    if probe.returncode != 0:
        return (
            "unshare -p -f --mount-proc fails here (it needs root or CAP_SYS_ADMIN): "
            f"{probe.stderr.strip()}"
        )
    return None


def test_a_command_run_in_another_pid_namespace_does_not_mark_a_healthy_run_lost(ops: Ops) -> None:
    reason = _unshare_works()
    if reason is not None:
        pytest.skip(reason)
    execution_id = ops.launch("held", {"tag": "ns"})
    wait_until(lambda: holding(ops, "ns"))
    pid = ops.execution(execution_id).pid
    unshared = ["unshare", "-p", "-f", "--mount-proc"]

    # The premise: from the other namespace the run's pid cannot be seen.
    look = subprocess.run(
        [*unshared, str(Path(BATCHCTL).parent / "python"), "-c", f"import os; os.kill({pid}, 0)"],
        capture_output=True, text=True, timeout=60,
    )
    assert look.returncode != 0 and "ProcessLookupError" in look.stderr, look

    history = subprocess.run(
        [*unshared, BATCHCTL, "history", "held", "--json"], env=ops.env, cwd=ops.cwd,
        capture_output=True, text=True, timeout=90,
    )
    assert history.returncode == 0, describe(history)
    listed = [(e["id"], e["status"]) for e in json.loads(history.stdout)]
    assert listed == [(execution_id, "STARTED")]
    restart = subprocess.run(
        [*unshared, BATCHCTL, "restart", str(execution_id)], env=ops.env, cwd=ops.cwd,
        capture_output=True, text=True, timeout=90,
    )
    assert restart.returncode == 4, describe(restart)  # refused: it is still running
    assert ops.execution(execution_id).status == Status.STARTED

    ops.open_gate("ns")
    finished = ops.wait_for_status(execution_id)
    assert finished.status == Status.COMPLETED, finished.exit_message
    assert [e["status"] for e in ops.json("history", "held")] == ["COMPLETED"]


# -- 1. detached launches: the child's pid at once; a slow child judged lost meanwhile -----------


def test_a_detached_child_killed_while_importing_is_judged_lost_at_once_by_its_pid(
    ops: Ops, adopted: bool
) -> None:
    gate = ops.work / "import-gate-never"
    launched = ops.json("start", "slow", "--params", '{"tag": "killed"}', "--detach",
                        env={"FENCING_IMPORT_GATE": str(gate)})
    pid = launched["pid"]
    assert launched["status"] == "STARTING" and pid, launched
    ops._pids.add(pid)
    shown = ops.json("show", str(launched["id"]))
    assert (shown["status"], shown["pid"]) == ("STARTING", pid), shown
    wait_until(lambda: (ops.work / f"importing-{pid}").exists())  # the child is importing
    shown = ops.json("show", str(launched["id"]))
    assert (shown["status"], shown["pid"]) == ("STARTING", pid), shown

    os.kill(pid, signal.SIGKILL)
    assert wait_for_exit(pid, adopted) in (-signal.SIGKILL, None)

    # With a heartbeat timeout of five minutes, only the pid can tell it is lost.
    lost = ops.json("show", str(launched["id"]), env={"BATCHCTL_HEARTBEAT_TIMEOUT": "300"})
    assert lost["status"] == "FAILED", lost
    assert lost["exit_message"].startswith("process lost") and f"pid {pid}" in lost["exit_message"]


def test_a_slow_child_judged_lost_meanwhile_leaves_the_execution_as_it_was_judged(
    ops: Ops, adopted: bool
) -> None:
    gate = ops.work / "import-gate"
    ids, pids = {}, {}
    for tag in ("failed", "abandoned"):
        launched = ops.json("start", "slow", "--params", json.dumps({"tag": tag}), "--detach",
                            env={"FENCING_IMPORT_GATE": str(gate)})
        ids[tag], pids[tag] = launched["id"], launched["pid"]
        ops._pids.add(launched["pid"])
    wait_until(lambda: all((ops.work / f"importing-{pid}").exists() for pid in pids.values()))

    # Both children are still importing (their pids alive) when a short heartbeat timeout judges
    # them lost; one is then abandoned.
    for tag in ids:
        judged = judge_lost(ops, ids[tag])
        assert judged["status"] == "FAILED" and "no heartbeat" in judged["exit_message"], judged
    abandon = ops.run("abandon", str(ids["abandoned"]))
    assert abandon.returncode == 0, describe(abandon)
    judged = {tag: execution_row(ops, ids[tag]) for tag in ids}
    assert judged["failed"][0] == Status.FAILED and judged["abandoned"][0] == Status.ABANDONED

    gate.touch()  # the children finish importing and try to take their executions over
    codes = {tag: wait_for_exit(pids[tag], adopted) for tag in ids}

    for tag, execution_id in ids.items():
        _, _, started_at, ended_at, _ = after = execution_row(ops, execution_id)
        assert after == judged[tag], (tag, after, judged[tag])  # not rewritten at all
        assert started_at is None or ended_at >= started_at
        assert ops.steps(execution_id) == {}
        log = Path(ops.execution(execution_id).log_path).read_text()
        assert f"execution {execution_id} was taken over by another process" in log, log
        assert codes[tag] == (1 if adopted else None), (tag, codes[tag], log)
        shown = ops.json("show", str(execution_id))
        assert shown["duration"] is None or shown["duration"] >= 0, shown


# -- 2. a stale remote worker leaves a completed partition's file alone --------------------------


def test_a_paused_remote_worker_leaves_the_completed_csv_of_its_partition_untouched(
    fleet: Fleet,
) -> None:
    [first] = start_workers(fleet, 1)
    n, hold_at = 100, 30
    execution_id = fleet.launch("csvparts", {"n": n, "hold": hold_at})
    # The first worker writes rows 0..29 (six chunks) into out-a.csv.part, then waits for the gate.
    wait_until(lambda: first.pid in holding(fleet, "csv"))
    wait_until(lambda: [p for p in fleet.partitions(execution_id) if p.commit_count == 6])

    pause(fleet, first.pid, execution_id, worker_pid=first.pid)
    [second] = start_workers(fleet, 1)
    fleet.open_gate("csv")
    # The second worker claims the partition once the first one's heartbeat is stale, resumes
    # at row 30 and completes the file.
    finished = fleet.wait_for_status(execution_id)
    assert finished.status == Status.COMPLETED, finished.exit_message
    [part] = fleet.partitions(execution_id)
    assert part.status == Status.COMPLETED and part.pid == second.pid

    out = fleet.work / "out-a.csv"
    sums = fleet.work / "out-a.csv.sha256"
    content, checksum = out.read_bytes(), sums.read_text()
    expected = "n,square\r\n" + "".join(f"{i},{i * i}\r\n" for i in range(n))
    assert content.decode() == expected
    assert checksum == f"{hashlib.sha256(content).hexdigest()}  out-a.csv\n"
    assert not (fleet.work / "out-a.csv.part").exists()

    os.kill(first.pid, signal.SIGCONT)
    # Resumed, the first worker finishes the chunk it was in; its fence refuses it before a byte
    # is written, and it leaves the file to the worker that took the partition over.
    wait_until(lambda: "partition square:0000 was taken over" in fleet.worker_log(first))
    wait_until(lambda: idle(fleet, first.pid))

    assert out.read_bytes() == content
    assert sums.read_text() == checksum
    assert not (fleet.work / "out-a.csv.part").exists()
    assert fleet.execution(execution_id).status == Status.COMPLETED
    [part_after] = fleet.partitions(execution_id)
    assert (part_after.status, part_after.version, part_after.pid) == (
        Status.COMPLETED, part.version, second.pid,
    )
    assert sigterm_all([first, second]) == [0, 0]
    assert out.read_bytes() == content and not (fleet.work / "out-a.csv.part").exists()


# -- 4. a stop after the worker of a partition died ----------------------------------------------


def test_a_stop_after_a_remote_worker_died_ends_stopped_and_a_restart_completes_once(
    fleet: Fleet,
) -> None:
    [dead] = start_workers(fleet, 1)
    params = {"partitions": 2, "size": 30, "delay": 0, "hold": 10}
    # The job's own process judges workers with the workers' short heartbeat timeout.
    execution_id = fleet.launch("remote", params, env=WORKER_ENV)
    # The one worker runs one partition: items 0..9 commit, item 10 waits for the gate.
    busy = wait_until(lambda: [p for p in fleet.partitions(execution_id)
                               if p.status == Status.STARTED and p.commit_count == 2])
    [running] = busy
    assert running.pid == dead.pid

    os.kill(dead.pid, signal.SIGKILL)
    dead.wait(timeout=60)
    stop = fleet.run("stop", str(execution_id))
    assert stop.returncode == 0, describe(stop)
    # Another worker comes, but no worker may claim the partitions of a stopping execution.
    [other] = start_workers(fleet, 1)

    stopped = wait_for(lambda: (e := fleet.execution(execution_id)) and not e.status.is_live and e,
                       timeout=STOP_DEADLINE, interval=0.1)
    assert stopped.status == Status.STOPPED, stopped.exit_message
    parts = {p.name: p for p in fleet.partitions(execution_id)}
    assert {name: (p.status, p.exit_message) for name, p in parts.items()} == {
        running.name: (Status.STOPPED, "stopped: its worker was lost"),
        **{name: (Status.STOPPED, "stopped before it started")
           for name in parts if name != running.name},
    }
    assert parts[running.name].context["batchctl"]["position"] == 10
    assert fleet.rows("out_remote") == [(i, dead.pid) for i in range(running.partition["lo"],
                                                                     running.partition["lo"] + 10)]

    fleet.open_the_gate()
    restart = fleet.run("restart", str(execution_id))
    assert restart.returncode == 0, describe(restart)
    [latest, first] = fleet.json("history", "remote")
    assert (latest["status"], latest["resumed_from"], first["status"]) == (
        "COMPLETED", execution_id, "STOPPED",
    )
    assert [i for i, _ in fleet.rows("out_remote")] == list(range(60))  # every item exactly once
    runs: dict[str, list[tuple[int, int]]] = {}
    for name, pid, position in fleet.claims():
        runs.setdefault(name, []).append((pid, position))
    assert runs == {
        running.name: [(dead.pid, 0), (other.pid, 10)],
        **{name: [(other.pid, 0)] for name in parts if name != running.name},
    }
    assert sigterm_all([other]) == [0]


def test_a_worker_paused_between_its_fence_check_and_its_write_leaves_the_completed_csv_untouched(
    fleet: Fleet,
) -> None:
    """The fence is checked before a chunk's bytes are written, but a pause can fall between the
    check and the write (here: while the writer formats the chunk's rows). A worker resumed
    there must not write into the file another worker completed meanwhile either."""
    [first] = start_workers(fleet, 1)
    n, hold_at = 100, 30
    execution_id = fleet.launch("csvrace", {"n": n, "hold": hold_at})
    # Rows 0..29 are written; the chunk of rows 30..34 passed the fence check and is formatting.
    wait_until(lambda: first.pid in holding(fleet, "format"))

    pause(fleet, first.pid, execution_id, worker_pid=first.pid)
    [second] = start_workers(fleet, 1)
    fleet.open_gate("format")
    finished = fleet.wait_for_status(execution_id)
    assert finished.status == Status.COMPLETED, finished.exit_message
    out = fleet.work / "race-a.csv"
    sums = fleet.work / "race-a.csv.sha256"
    content, checksum = out.read_bytes(), sums.read_text()
    owner = {i: (first.pid if i < hold_at else second.pid) for i in range(n)}
    assert content.decode() == "n,square,pid\r\n" + "".join(
        f"{i},{i * i},{owner[i]}\r\n" for i in range(n)
    )
    assert checksum == f"{hashlib.sha256(content).hexdigest()}  race-a.csv\n"

    os.kill(first.pid, signal.SIGCONT)
    wait_until(lambda: "partition square_by:0000 was taken over" in fleet.worker_log(first))
    wait_until(lambda: idle(fleet, first.pid))

    after = out.read_bytes()
    pairs = zip(content.decode().splitlines(), after.decode().splitlines())
    changed = [(was, now) for was, now in pairs if was != now]
    assert after == content, f"rows of the completed file rewritten by the stale worker: {changed}"
    assert hashlib.sha256(after).hexdigest() == checksum.split()[0]
    assert not (fleet.work / "race-a.csv.part").exists()
    assert sigterm_all([first, second]) == [0, 0]

"""Riding out an outage of the Postgres repository (issue 14).

A TCP proxy (tests/faults.py) sits between batchctl and Postgres: the test cuts every
connection and refuses new ones, waits until batchctl has tried to reconnect (the proxy counts
the refusals), and lets the database come back. A short outage is ridden through: the run ends
as if nothing had happened, every row once, the counters adding up. A long one (longer than
`db_outage_timeout`, a few seconds here) ends the run FAILED as soon as the repository can be
written again; a restart completes it exactly once.

Synchronisation is on state with deadlines: a job stops at a `Gate` (a file) at the point
where the test cuts the proxy, and the test waits for the refusals, never for a time.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import create_engine, text

from batchctl.config import Config
from batchctl.model import Status
from batchctl.operator import Batch
from tests.faults import DEADLINE, Gate, OutageProxy, client_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
ROWS = 60
SIZE = 10
CUT_AT = 30  # the chunk that starts at this position loses the connection mid-transaction

CHUNK_JOB = f'''
import os

from sqlalchemy import text

from batchctl import Job
from tests.faults import Gate

GATE = Gate(os.environ["OUTAGE_GATE_DIR"])

job = Job("ledger")


@job.tasklet
def create(ctx):
    ctx.connection.execute(text("CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY)"))


def write(items, ctx):
    ctx.connection.execute(text("INSERT INTO ledger (id) VALUES (:id)"), [{{"id": i}} for i in items])
    if ctx.state["batchctl"].get("position", 0) == {CUT_AT} and not GATE.reached_file.exists():
        GATE.reached()  # the test cuts the connections now: the checkpoint cannot commit


job.chunk_step("load", reader=lambda ctx: range({ROWS}), writer=write, size={SIZE})
'''

TASKLET_JOB = '''
import os

from sqlalchemy import text

from batchctl import Job
from tests.faults import Gate

GATE = Gate(os.environ["OUTAGE_GATE_DIR"])

job = Job("ledger")


@job.tasklet
def create(ctx):
    ctx.connection.execute(text("CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY)"))


@job.tasklet
def load(ctx):
    for i in range(ctx.state.get("done", 0), 6):
        for n in range(i * 10, i * 10 + 10):
            ctx.connection.execute(text("INSERT INTO ledger (id) VALUES (:id)"), {"id": n})
        if i == 3 and not GATE.reached_file.exists():
            GATE.reached()  # the test cuts the connections now, mid-transaction
        ctx.state["done"] = i + 1
        yield
'''


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[OutageProxy]:
    with OutageProxy.for_url(postgres_url) as proxy:
        yield proxy


@pytest.fixture
def gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Gate:
    folder = tmp_path / "gates"
    folder.mkdir()
    monkeypatch.setenv("OUTAGE_GATE_DIR", str(folder))
    return Gate(folder)


def outage_config(postgres_url: str, proxy: OutageProxy, jobs_dir: Path, tmp_path: Path,
                  timeout: float = 30.0) -> Config:
    return Config(
        database_url=proxy.url(postgres_url),
        jobs_dir=jobs_dir,
        log_dir=tmp_path / "logs",
        heartbeat_interval=0.5,
        heartbeat_timeout=30.0,
        db_outage_timeout=timeout,
    )


def ledger_ids(postgres_url: str) -> list[int]:
    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as connection:
            return [row[0] for row in connection.execute(text("SELECT id FROM ledger ORDER BY id"))]
    finally:
        engine.dispose()


def run_in_thread(batch: Batch, job: str) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(batch.start(job, {}))
        except BaseException as exc:  # the test reports it
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def run_through_the_cut(batch: Batch, proxy: OutageProxy, job: str) -> Any:
    """Run `job` while a cut COMMIT takes the database away, bring it back once the run has
    tried to reconnect, and return the execution."""
    thread, outcome = run_in_thread(batch, job)
    wait_until(lambda: proxy.down or outcome)
    wait_until(lambda: proxy.refused >= 2 or outcome)
    proxy.restore()
    thread.join(DEADLINE)
    [execution] = outcome
    assert not isinstance(execution, BaseException), execution
    return execution


def ride_out_short_outage(proxy: OutageProxy, gate: Gate, outcome: list[Any]) -> None:
    """Cut the connections where the job waits, let it go on into the outage, and bring the
    database back once batchctl has tried to reconnect twice."""
    gate.wait_reached(unless=lambda: outcome and getattr(outcome[0], "exit_message", outcome[0]))
    proxy.cut()
    gate.open()
    wait_until(lambda: proxy.refused >= 2)
    proxy.restore()


@pytest.mark.parametrize("source", [CHUNK_JOB, TASKLET_JOB], ids=["chunk", "tasklet"])
def test_a_short_outage_is_ridden_through(
    source: str, postgres_url: str, proxy: OutageProxy, gate: Gate, write_job: Any,
    jobs_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    write_job("ledger", source)
    caplog.set_level(logging.INFO, logger="batchctl")
    with Batch(outage_config(postgres_url, proxy, jobs_dir, tmp_path)) as batch:
        thread, outcome = run_in_thread(batch, "ledger")
        ride_out_short_outage(proxy, gate, outcome)
        thread.join(DEADLINE)
        [execution] = outcome
        assert not isinstance(execution, BaseException), execution
        assert execution.status == Status.COMPLETED, execution.exit_message
        steps = {s.name: s for s in batch.step_executions(execution.id)}
    assert ledger_ids(postgres_url) == list(range(ROWS))  # every row once
    assert steps["load"].status == Status.COMPLETED
    if source is CHUNK_JOB:
        load = steps["load"]
        assert (load.read_count, load.write_count, load.commit_count) == (ROWS, ROWS, ROWS // SIZE)
        assert load.rollback_count == 1
    else:
        assert steps["load"].commit_count == 6
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("repository unreachable, retrying") for m in messages) == 1
    assert sum(m.startswith("repository reachable again after") for m in messages) == 1


def start_process(args: list[str], env: dict[str, str], stderr: Path) -> subprocess.Popen[bytes]:
    with stderr.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "batchctl", *args], env=env, stdout=subprocess.DEVNULL,
            stderr=err, stdin=subprocess.DEVNULL,
        )


def process_env(config: Config, gate: Gate) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHCTL_")}
    env.update(
        BATCHCTL_DATABASE_URL=config.database_url,
        BATCHCTL_JOBS_DIR=str(config.jobs_dir),
        BATCHCTL_LOG_DIR=str(config.log_dir),
        BATCHCTL_HEARTBEAT_INTERVAL=str(config.heartbeat_interval),
        BATCHCTL_HEARTBEAT_TIMEOUT=str(config.heartbeat_timeout),
        BATCHCTL_DB_OUTAGE_TIMEOUT=str(config.db_outage_timeout),
        OUTAGE_GATE_DIR=str(gate.reached_file.parent),
        PYTHONPATH=str(REPO_ROOT),
        NO_COLOR="1",
    )
    return env


@pytest.mark.parametrize("source", [CHUNK_JOB, TASKLET_JOB], ids=["chunk", "tasklet"])
def test_a_long_outage_fails_the_run_once_the_database_is_back_and_a_restart_completes_it(
    source: str, postgres_url: str, proxy: OutageProxy, gate: Gate, write_job: Any,
    jobs_dir: Path, tmp_path: Path,
) -> None:
    write_job("ledger", source)
    config = outage_config(postgres_url, proxy, jobs_dir, tmp_path, timeout=1.0)
    stderr = tmp_path / "stderr.txt"
    process = start_process(["start", "ledger"], process_env(config, gate), stderr)
    try:
        gate.wait_reached()
        proxy.cut()
        gate.open()
        # The run gives up riding once the outage outlasts db_outage_timeout, and waits to end.
        wait_until(lambda: "can be written again" in stderr.read_text())
        assert process.poll() is None  # never gone, never left live: it waits for the database
        proxy.restore()
        code = process.wait(DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
    lines = stderr.read_text().splitlines()
    assert code == 5, lines
    assert "db_outage_timeout (1 s)" in lines[-1] and " ERROR " not in lines[-1]
    direct = Config(database_url=postgres_url, jobs_dir=jobs_dir, log_dir=tmp_path / "logs")
    with Batch(direct) as batch:
        [failed] = batch.history("ledger")
        assert failed.status == Status.FAILED
        assert "db_outage_timeout" in (failed.exit_message or "")
        assert all(not s.status.is_live for s in batch.step_executions(failed.id))
        restarted = batch.restart(failed.id)
        assert restarted.status == Status.COMPLETED, restarted.exit_message
        if source is CHUNK_JOB:
            loads = [s for e in (failed, restarted) for s in batch.step_executions(e.id)
                     if s.name == "load"]
            assert sum(s.write_count for s in loads) == ROWS
            assert sum(s.read_count for s in loads) == ROWS
    assert ledger_ids(postgres_url) == list(range(ROWS))


COMMIT_JOB = f'''
import threading

from sqlalchemy import event, text

from batchctl import Job
from batchctl.items import JsonLinesWriter
from tests.faults import OutageProxy, client_port

job = Job("ledger")
ARMED = {{}}


@job.tasklet
def create(ctx):
    ctx.connection.execute(text("CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY)"))


def on_commit(connection):
    """The chunk's COMMIT (the next one in the chunk's thread after the armed write)."""
    if ARMED.get("thread") is not threading.current_thread():
        return
    ARMED["thread"] = None  # once
    if MODE == "lost":
        OutageProxy.active.cut()  # the COMMIT never reaches the server
    else:
        OutageProxy.active.cut_after_commit(client_port(connection))  # its answer never comes back


def arm(ctx):
    if ctx.state["batchctl"].get("position", 0) == {CUT_AT} and "done" not in ARMED:
        ARMED.update(thread=threading.current_thread(), done=True)
        event.listen(ctx.database, "commit", on_commit)


def write(items, ctx):
    ctx.connection.execute(text("INSERT INTO ledger (id) VALUES (:id)"), [{{"id": i}} for i in items])
    arm(ctx)


class Outside(JsonLinesWriter):
    """A file writer: outside the repository's transaction."""

    def write(self, items):
        super().write(items)
        arm(self.ctx)

    def open(self, ctx, state):
        self.ctx = ctx
        super().open(ctx, state)


job.chunk_step("load", reader=lambda ctx: range({ROWS}), processor=lambda n, ctx: {{"id": n}},
               writer=WRITER, size={SIZE})
'''


@pytest.mark.parametrize("mode", ["answered", "lost"])
def test_a_cut_commit_of_a_transactional_writer_is_settled_by_the_step_row(
    mode: str, postgres_url: str, proxy: OutageProxy, write_job: Any, jobs_dir: Path,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The chunk's rows commit with its checkpoint: once the database is back, the step row's
    version says whether the cut COMMIT went through (answered: it did, the run goes on; lost:
    it did not, the chunk is redone). Never UNKNOWN, every row once."""
    source = COMMIT_JOB.replace("WRITER", "lambda items, ctx: write([i['id'] for i in items], ctx)")
    write_job("ledger", f"MODE = {mode!r}\n" + source)
    caplog.set_level(logging.INFO, logger="batchctl")
    with Batch(outage_config(postgres_url, proxy, jobs_dir, tmp_path)) as batch:
        execution = run_through_the_cut(batch, proxy, "ledger")
        assert execution.status == Status.COMPLETED, execution.exit_message
        [load] = [s for s in batch.step_executions(execution.id) if s.name == "load"]
    assert ledger_ids(postgres_url) == list(range(ROWS))
    assert (load.read_count, load.write_count, load.commit_count) == (ROWS, ROWS, ROWS // SIZE)
    settled = [r.getMessage() for r in caplog.records if "the chunk is committed" in r.getMessage()]
    assert len(settled) == (1 if mode == "answered" else 0)


def test_a_cut_commit_of_a_writer_outside_the_transaction_is_unknown(
    postgres_url: str, proxy: OutageProxy, write_job: Any, jobs_dir: Path, tmp_path: Path,
) -> None:
    out = tmp_path / "out.jsonl"
    write_job("ledger", "MODE = 'answered'\n" + COMMIT_JOB.replace("WRITER", f"Outside({str(out)!r})"))
    with Batch(outage_config(postgres_url, proxy, jobs_dir, tmp_path)) as batch:
        execution = run_through_the_cut(batch, proxy, "ledger")
        assert execution.status == Status.UNKNOWN, execution.exit_message
        assert "may or may not have been committed" in (execution.exit_message or "")


# -- partitioned steps and workers -------------------------------------------------------------

PARTITIONED_JOB = '''
import os

from sqlalchemy import text

from batchctl import Job
from tests.faults import Gate

GATE = Gate(os.environ["OUTAGE_GATE_DIR"])
job = Job("ledger")


@job.tasklet
def create(ctx):
    ctx.connection.execute(text("CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY)"))


def ranges(ctx):
    return [{"lo": i * 15, "hi": (i + 1) * 15} for i in range(4)]


def write(items, ctx):
    ctx.connection.execute(text("INSERT INTO ledger (id) VALUES (:id)"), [{"id": i} for i in items])
    if items[0] == 35 and not GATE.reached_file.exists():
        GATE.reached()  # the test cuts every connection now, mid-transaction


job.chunk_step("load", reader=lambda ctx: range(ctx.partition["lo"], ctx.partition["hi"]),
               writer=write, size=5, partitioner=ranges, workers=2, mode=MODE)
'''


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Local worker processes inherit the environment: they must import tests.faults."""
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))


def start_remote_worker(config: Config, gate: Gate, stderr: Path) -> subprocess.Popen[bytes]:
    return start_process(["worker"], process_env(config, gate), stderr)


def stop_worker(worker: subprocess.Popen[bytes]) -> int:
    if worker.poll() is None:
        worker.terminate()
    return worker.wait(DEADLINE)


def partition_rows_add_up(batch: Batch, executions: list[Any]) -> None:
    loads = [s for e in executions for s in batch.step_executions(e.id)
             if s.partition_of == "load"]
    assert sum(s.write_count for s in loads) == 60
    assert sum(s.read_count for s in loads) == 60


@pytest.mark.parametrize("mode", ["thread", "process", "remote"])
def test_partitions_ride_through_a_short_outage(
    mode: str, postgres_url: str, proxy: OutageProxy, gate: Gate, write_job: Any, worker_env: None,
    jobs_dir: Path, tmp_path: Path,
) -> None:
    write_job("ledger", f"MODE = {mode!r}\n" + PARTITIONED_JOB)
    config = outage_config(postgres_url, proxy, jobs_dir, tmp_path)
    worker = start_remote_worker(config, gate, tmp_path / "worker.txt") if mode == "remote" else None
    try:
        with Batch(config) as batch:
            thread, outcome = run_in_thread(batch, "ledger")
            ride_out_short_outage(proxy, gate, outcome)
            thread.join(DEADLINE)
            [execution] = outcome
            assert not isinstance(execution, BaseException), execution
            assert execution.status == Status.COMPLETED, execution.exit_message
            partition_rows_add_up(batch, [execution])
    finally:
        if worker is not None:
            assert stop_worker(worker) == 0, (tmp_path / "worker.txt").read_text()
    assert ledger_ids(postgres_url) == list(range(60))


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_partitions_after_a_long_outage_end_failed_and_a_restart_completes_them(
    mode: str, postgres_url: str, proxy: OutageProxy, gate: Gate, write_job: Any, worker_env: None,
    jobs_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    from batchctl.errors import RepositoryOutage

    write_job("ledger", f"MODE = {mode!r}\n" + PARTITIONED_JOB)
    caplog.set_level(logging.INFO, logger="batchctl")
    with Batch(outage_config(postgres_url, proxy, jobs_dir, tmp_path, timeout=1.0)) as batch:
        thread, outcome = run_in_thread(batch, "ledger")
        gate.wait_reached(unless=lambda: outcome)
        proxy.cut()
        gate.open()
        wait_until(lambda: any("can be written again" in r.getMessage() for r in caplog.records))
        proxy.restore()
        thread.join(DEADLINE)
        [raised] = outcome
        assert isinstance(raised, RepositoryOutage), raised
    direct = Config(database_url=postgres_url, jobs_dir=jobs_dir, log_dir=tmp_path / "logs")
    with Batch(direct) as batch:
        [failed] = batch.history("ledger")
        assert failed.status == Status.FAILED and "db_outage_timeout" in (failed.exit_message or "")
        assert all(not s.status.is_live for s in batch.step_executions(failed.id))
        restarted = batch.restart(failed.id)
        assert restarted.status == Status.COMPLETED, restarted.exit_message
        partition_rows_add_up(batch, [failed, restarted])
    assert ledger_ids(postgres_url) == list(range(60))


def test_a_worker_rides_out_a_blip_and_exits_non_zero_after_a_long_outage(
    postgres_url: str, proxy: OutageProxy, gate: Gate, jobs_dir: Path, tmp_path: Path,
) -> None:
    config = outage_config(postgres_url, proxy, jobs_dir, tmp_path, timeout=1.0)
    stderr = tmp_path / "worker.txt"
    worker = start_remote_worker(config, gate, stderr)
    try:
        wait_until(lambda: "started" in stderr.read_text())
        proxy.cut()  # a blip: the worker's connections are cut, and come back
        wait_until(lambda: proxy.refused >= 2)
        proxy.restore()
        wait_until(lambda: "reachable again" in stderr.read_text())
        assert worker.poll() is None
        proxy.cut()  # and now for good
        code = worker.wait(DEADLINE)
    finally:
        if worker.poll() is None:
            worker.kill()
    lines = stderr.read_text().splitlines()
    assert code == 5, lines
    assert "db_outage_timeout (1 s)" in lines[-1]


def test_a_run_judged_lost_during_an_outage_stops_cleanly_when_the_database_is_back(
    postgres_url: str, proxy: OutageProxy, gate: Gate, write_job: Any, jobs_dir: Path,
    tmp_path: Path,
) -> None:
    """Another process (here one that reaches Postgres directly, with a short heartbeat timeout)
    marks the riding run lost: once the database is back the rider finds itself fenced off and
    stops without writing; a restart completes the instance exactly once."""
    write_job("ledger", CHUNK_JOB)
    direct = Config(database_url=postgres_url, jobs_dir=jobs_dir, log_dir=tmp_path / "logs",
                    heartbeat_interval=0.5, heartbeat_timeout=1.0)
    with Batch(outage_config(postgres_url, proxy, jobs_dir, tmp_path)) as batch, Batch(direct) as other:
        thread, outcome = run_in_thread(batch, "ledger")
        gate.wait_reached(unless=lambda: outcome)
        proxy.cut()
        gate.open()
        [lost] = wait_until(lambda: other.recover_lost("ledger"))
        proxy.restore()
        thread.join(DEADLINE)
        [execution] = outcome
        assert not isinstance(execution, BaseException), execution
        assert execution.id == lost.id and execution.status == Status.FAILED
        assert ledger_ids(postgres_url) == list(range(CUT_AT))  # the committed chunks only
        restarted = other.restart(execution.id)
        assert restarted.status == Status.COMPLETED, restarted.exit_message
    assert ledger_ids(postgres_url) == list(range(ROWS))


HEARTBEAT_JOB = '''
import os

from batchctl import Job
from tests.faults import Gate

GATE = Gate(os.environ["OUTAGE_GATE_DIR"])
job = Job("ledger")


@job.tasklet
def wait(ctx):
    GATE.reached()  # no SQL: only the heartbeat meets the outage
'''


def test_the_heartbeat_rides_out_an_outage_and_beats_again(
    postgres_url: str, proxy: OutageProxy, gate: Gate, write_job: Any, jobs_dir: Path,
    tmp_path: Path,
) -> None:
    """The heartbeat thread meets the outage alone: it neither ends its execution nor stops
    beating, and the run completes."""
    write_job("ledger", HEARTBEAT_JOB)
    direct = Config(database_url=postgres_url, jobs_dir=jobs_dir, log_dir=tmp_path / "logs")
    with Batch(outage_config(postgres_url, proxy, jobs_dir, tmp_path)) as batch, Batch(direct) as other:
        thread, outcome = run_in_thread(batch, "ledger")
        gate.wait_reached(unless=lambda: outcome)
        [running] = other.history("ledger")
        proxy.cut()
        wait_until(lambda: proxy.refused >= 3)  # the heartbeat tried, and tried again
        [during] = other.history("ledger")
        assert during.status == Status.STARTED
        proxy.restore()
        wait_until(lambda: other.history("ledger")[0].heartbeat_at > during.heartbeat_at)
        gate.open()
        thread.join(DEADLINE)
        [execution] = outcome
        assert not isinstance(execution, BaseException), execution
        assert execution.id == running.id and execution.status == Status.COMPLETED


@pytest.mark.parametrize("command, ready", [
    (["worker"], "started"),
    (["serve", "--host", "127.0.0.1", "--port", "0"], "serving"),
], ids=["worker", "serve"])
def test_a_process_told_to_stop_during_an_outage_does_not_wait_for_the_repository(
    command: list[str], ready: str, postgres_url: str, proxy: OutageProxy, gate: Gate,
    jobs_dir: Path, tmp_path: Path,
) -> None:
    import signal

    config = outage_config(postgres_url, proxy, jobs_dir, tmp_path, timeout=600.0)
    stderr = tmp_path / "stderr.txt"
    process = start_process(command, process_env(config, gate), stderr)
    try:
        wait_until(lambda: ready in stderr.read_text())
        proxy.cut()
        wait_until(lambda: "repository unreachable, retrying" in stderr.read_text())
        process.send_signal(signal.SIGTERM)
        code = process.wait(DEADLINE)  # not the 600 s of db_outage_timeout
    finally:
        if process.poll() is None:
            process.kill()
    lines = stderr.read_text().splitlines()
    assert code == 5, lines
    assert lines[-1].startswith("batchctl: error:") and "this process is stopping" in lines[-1]
    assert not any("Traceback" in line for line in lines), lines


@contextmanager
def commit_cut_of(proxy: OutageProxy, matches: Callable[[str, Any], bool]) -> Iterator[None]:
    """The COMMIT of the transaction of the first statement that `matches(statement,
    parameters)`, on any engine of this process, reaches the server and its answer is lost."""
    from sqlalchemy import Engine, event

    armed: list[bool] = []

    def on_execute(connection: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if not armed and matches(statement.lstrip().upper(), parameters):
            armed.append(True)
            proxy.cut_after_commit(client_port(connection))

    event.listen(Engine, "before_cursor_execute", on_execute)
    try:
        yield
    finally:
        event.remove(Engine, "before_cursor_execute", on_execute)


PARTITIONED_LEDGER = '''
from sqlalchemy import text

from batchctl import Job

job = Job("ledger")


@job.tasklet
def create(ctx):
    ctx.connection.execute(text("CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY)"))


@job.tasklet(partitioner=lambda ctx: [{"q": q} for q in range(4)], workers=2, mode="thread")
def load(ctx):
    ctx.connection.execute(text("INSERT INTO ledger (id) VALUES (:id)"), {"id": ctx.partition["q"]})
'''


def test_a_cut_commit_of_the_partitions_creates_each_partition_once(
    postgres_url: str, proxy: OutageProxy, write_job: Any, jobs_dir: Path, tmp_path: Path,
) -> None:
    """The partitions' INSERT committed but its answer was lost: the transaction, run again
    once the database is back, finds them and creates none twice (each would run its items
    again)."""
    write_job("ledger", PARTITIONED_LEDGER)
    with Batch(outage_config(postgres_url, proxy, jobs_dir, tmp_path)) as batch:
        with commit_cut_of(proxy, lambda sql, _: sql.startswith("INSERT INTO STEP_EXECUTION")
                           and "PARTITION_OF" in sql):
            execution = run_through_the_cut(batch, proxy, "ledger")
        assert execution.status == Status.COMPLETED, execution.exit_message
        parts = [s.name for s in batch.step_executions(execution.id) if s.partition_of == "load"]
        events = [e for e in batch.events(execution=execution.id, limit=1000)
                  if e.step_name and ":" in e.step_name]
    assert sorted(parts) == [f"load:{q:04d}" for q in range(4)]
    assert ledger_ids(postgres_url) == [0, 1, 2, 3]
    assert sorted(e.step_name for e in events if e.status == Status.STARTING) == sorted(parts)


def test_a_cut_commit_of_a_step_row_creates_it_once(
    postgres_url: str, proxy: OutageProxy, write_job: Any, jobs_dir: Path, tmp_path: Path,
) -> None:
    """A step's row committed but its answer was lost: run again once the database is back,
    its transaction finds the row rather than leaving it STARTED beside a second one."""
    write_job("ledger", PARTITIONED_LEDGER)
    with Batch(outage_config(postgres_url, proxy, jobs_dir, tmp_path)) as batch:
        with commit_cut_of(proxy, lambda sql, parameters: sql.startswith("INSERT INTO STEP_EXECUTION")
                           and isinstance(parameters, dict) and parameters.get("name") == "load"):
            execution = run_through_the_cut(batch, proxy, "ledger")
        assert execution.status == Status.COMPLETED, execution.exit_message
        steps = [s for s in batch.step_executions(execution.id) if not s.is_partition]
        events = batch.events(execution=execution.id, limit=1000)
    assert [(s.name, s.status) for s in steps] == [
        ("create", Status.COMPLETED), ("load", Status.COMPLETED)
    ]
    assert [e.status for e in events if e.step_name == "load"] == [
        Status.STARTED, Status.COMPLETED
    ]


def test_a_cut_commit_of_a_worker_row_registers_the_worker_once(
    postgres_url: str, proxy: OutageProxy, write_job: Any, jobs_dir: Path, tmp_path: Path,
) -> None:
    """A worker's row committed but its answer was lost: run again once the database is back,
    its transaction finds the row, so no second row stays behind, never retired."""
    write_job("ledger", PARTITIONED_LEDGER)
    with Batch(outage_config(postgres_url, proxy, jobs_dir, tmp_path)) as batch:
        with commit_cut_of(proxy, lambda sql, _: sql.startswith("INSERT INTO WORKER")):
            execution = run_through_the_cut(batch, proxy, "ledger")
        assert execution.status == Status.COMPLETED, execution.exit_message
    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as connection:
            workers = connection.execute(text("SELECT kind, stopped_at FROM worker")).all()
    finally:
        engine.dispose()
    assert len(workers) == 2 and all(stopped is not None for _, stopped in workers), workers


def test_a_cut_commit_of_a_new_execution_runs_it_rather_than_refusing_beside_it(
    postgres_url: str, proxy: OutageProxy, write_job: Any, jobs_dir: Path, tmp_path: Path,
) -> None:
    """`start`'s new execution committed but the answer was lost: run again once the database
    is back, the claim finds that execution and runs it, instead of saying the job is already
    running (beside an execution nobody would run)."""
    write_job("ledger", PARTITIONED_LEDGER)
    with Batch(outage_config(postgres_url, proxy, jobs_dir, tmp_path)) as batch:
        with commit_cut_of(proxy, lambda sql, _: sql.startswith("INSERT INTO JOB_EXECUTION")):
            execution = run_through_the_cut(batch, proxy, "ledger")
        history = batch.history("ledger")
    assert [(e.id, e.status) for e in history] == [(execution.id, Status.COMPLETED)]
    assert ledger_ids(postgres_url) == [0, 1, 2, 3]

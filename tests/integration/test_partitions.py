"""Partitioned steps (issue 5) on SQLite and Postgres: the same result as unpartitioned, restart
of only the partitions that did not complete, stop reaching every partition, bad partitioners.

Local process workers are real `python -m batchctl worker` processes started by the engine;
thread workers run in this process. Tests wait for states of the repository with a deadline,
never for a fixed time.
"""

from __future__ import annotations

import csv
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from batchctl.config import Config
from batchctl.model import Status
from batchctl.operator import Batch
from tests.conftest import in_daemon_thread, wait_for
from tests.integration.test_chunk_steps import sql

DEADLINE = 60.0  # seconds an awaited state may take on a loaded machine
MODES = ["process", "thread"]

# Three jobs that do the same work: unpartitioned, in 4 local processes, in 4 threads. Step
# `load` reads `src` by key range and writes `out_<job>` through the chunk's transaction; step
# `export` reads it back and writes a CSV file per partition, which `after_partitions` merges in
# partition order into `<job>/all.csv`.
SAME_WORK = '''
import csv
from pathlib import Path

from batchctl import Job
from batchctl.items import CsvWriter, SqlReader, SqlWriter

WORK = Path({work!r})
PARTITIONS = 8


def key_ranges(ctx):
    n = ctx.params["n"]
    return [
        {{"index": i, "lo": i * n // PARTITIONS, "hi": (i + 1) * n // PARTITIONS,
          "file": str(WORK / ctx.job_name / f"part-{{i:02d}}.csv")}}
        for i in range(PARTITIONS)
    ]


def everything(ctx):
    return {{"lo": 0, "hi": ctx.params["n"]}}


def enrich(row, ctx):
    """Filters every 7th row; the rest get a value and a tag."""
    if row["id"] % 7 == 0:
        return None
    return {{"id": row["id"], "value": row["amount"] * 3 + 1, "tag": f"t{{row['amount'] % 5}}"}}


def merge(ctx, partitions):
    """Concatenate the partitions' files in partition order, one header."""
    target = WORK / ctx.job_name / "all.csv"
    with target.open("w", newline="") as out:
        for number, partition in enumerate(partitions):
            lines = Path(partition.partition["file"]).read_text().splitlines(keepends=True)
            out.writelines(lines if number == 0 else lines[1:])


def define(name, mode=None):
    job = Job(name, params={{"n": int}})
    partitioned = {{}} if mode is None else {{"partitioner": key_ranges, "workers": 4, "mode": mode}}
    bounds = (lambda ctx: ctx.partition) if mode else everything
    job.chunk_step(
        "load",
        reader=SqlReader("SELECT id, amount FROM src WHERE id >= :lo AND id < :hi", key="id",
                         params=bounds, page_size=7),
        writer=SqlWriter(f"out_{{name}}"),
        processor=enrich,
        size=25,
        **partitioned,
    )
    if mode is None:
        target = WORK / name / "all.csv"
        export = {{}}
    else:
        target = lambda ctx: ctx.partition["file"]
        export = dict(partitioned, after_partitions=merge)
    job.chunk_step(
        "export",
        reader=SqlReader(f"SELECT id, value, tag FROM out_{{name}} WHERE id >= :lo AND id < :hi",
                         key="id", params=bounds, page_size=11),
        writer=CsvWriter(target),
        size=10,
        **export,
    )
    return job


plain = define("plain")
procs = define("procs", "process")
threads = define("threads", "thread")
'''

# A job whose partition 2 fails at item FAIL_AT while the file `fail` exists. Every run of a
# partition appends "<execution> <partition> <position it starts from>" to runs.txt.
FLAKY = '''
from pathlib import Path

from batchctl import Job
from batchctl.items import SqlWriter

WORK = Path({work!r})
FAIL_AT = 137
SIZE = 50


def quarters(ctx):
    return [{{"lo": i * SIZE, "hi": (i + 1) * SIZE}} for i in range(4)]


def numbers(ctx):
    return range(ctx.partition["lo"], ctx.partition["hi"])


def define(mode):
    job = Job(f"flaky_{{mode}}")

    @job.before_partition
    def record(ctx):
        with (WORK / "runs.txt").open("a") as runs:
            runs.write(f"{{ctx.execution_id}} {{ctx.step_name}} {{ctx.state.get('batchctl', {{}}).get('position', 0)}}\\n")

    @job.chunk(reader=numbers, writer=SqlWriter(f"out_{{mode}}"), size=5, partitioner=quarters,
               workers=2, mode=mode)
    def load(n, ctx):
        if n == FAIL_AT and (WORK / "fail").exists():
            raise RuntimeError(f"item {{n}} is poisoned")
        return {{"id": n}}

    return job


flaky_process = define("process")
flaky_thread = define("thread")
'''

# Six partitions on three workers: a stop meets three running partitions, each holding at its
# item 10 until the stop (or the file `gate`) lets it go, and three that no worker claimed.
SLOW = '''
import time
from pathlib import Path

from batchctl import Job
from batchctl.items import SqlWriter

WORK = Path({work!r})
PER_PARTITION = 200


def six(ctx):
    return [{{"lo": i * PER_PARTITION, "hi": (i + 1) * PER_PARTITION}} for i in range(6)]


def numbers(ctx):
    return range(ctx.partition["lo"], ctx.partition["hi"])


def define(mode):
    job = Job(f"slow_{{mode}}")

    @job.chunk(reader=numbers, writer=SqlWriter(f"out_{{mode}}"), size=5, partitioner=six,
               workers=3, mode=mode)
    def load(n, ctx):
        if n - ctx.partition["lo"] >= 10:
            while not (WORK / "gate").exists() and not ctx.stop_requested:
                time.sleep(0.01)
        return {{"id": n}}

    return job


slow_process = define("process")
slow_thread = define("thread")
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


def partitions(batch: Batch, execution_id: int, step: str) -> list[Any]:
    return [s for s in batch.step_executions(execution_id) if s.partition_of == step]


def manager(batch: Batch, execution_id: int, step: str) -> Any:
    [found] = [s for s in batch.step_executions(execution_id) if s.name == step]
    return found


COUNTERS = ("read_count", "write_count", "filter_count", "commit_count")


# -- the same result as unpartitioned -------------------------------------------------------------


def test_eight_partitions_on_four_processes_or_threads_give_the_unpartitioned_result(
    batch: Batch, write_job: Any, tmp_path: Path
) -> None:
    n = 1000
    sql(batch, "CREATE TABLE src (id INTEGER PRIMARY KEY, amount INTEGER)")
    for start in range(0, n, 250):
        values = ", ".join(f"({i}, {i * 37 % 1009})" for i in range(start, start + 250))
        sql(batch, f"INSERT INTO src (id, amount) VALUES {values}")
    for name in ("plain", "procs", "threads"):
        sql(batch, f"CREATE TABLE out_{name} (id INTEGER PRIMARY KEY, value INTEGER, tag TEXT)")
        (tmp_path / name).mkdir()
    write_job("same_work", SAME_WORK.format(work=str(tmp_path)))

    results = {}
    for name in ("plain", "procs", "threads"):
        execution = batch.start(name, {"n": n})
        assert execution.status == Status.COMPLETED, (name, execution.exit_message)
        results[name] = execution

    expected_rows = sql(batch, "SELECT id, value, tag FROM out_plain ORDER BY id")
    assert len(expected_rows) == n - len(range(0, n, 7))
    expected_csv = (tmp_path / "plain" / "all.csv").read_text()
    assert len(expected_csv.splitlines()) == len(expected_rows) + 1
    for name in ("procs", "threads"):
        execution = results[name]
        assert sql(batch, f"SELECT id, value, tag FROM out_{name} ORDER BY id") == expected_rows
        assert (tmp_path / name / "all.csv").read_text() == expected_csv, name
        for step in ("load", "export"):
            parts = partitions(batch, execution.id, step)
            assert [p.name for p in parts] == [f"{step}:{i:04d}" for i in range(8)]
            assert {p.status for p in parts} == {Status.COMPLETED}
            assert [p.partition["index"] for p in parts] == list(range(8))
            assert all(p.mode == {"procs": "process", "threads": "thread"}[name] for p in parts)
            assert all(p.host and p.pid for p in parts)
            # The partitioned step's counters are its partitions' sums, and the same as the
            # unpartitioned step's read, write and filter counts.
            total = manager(batch, execution.id, step)
            plain = manager(batch, results["plain"].id, step)
            for counter in COUNTERS:
                assert getattr(total, counter) == sum(getattr(p, counter) for p in parts)
            for counter in ("read_count", "write_count", "filter_count"):
                assert getattr(total, counter) == getattr(plain, counter), (name, step, counter)
        # Each partition read exactly its key range.
        load = partitions(batch, execution.id, "load")
        assert [p.read_count for p in load] == [125] * 8
    procs_pids = {p.pid for p in partitions(batch, results["procs"].id, "load")}
    assert results["procs"].pid not in procs_pids  # local processes, not the job's own
    threads_pids = {p.pid for p in partitions(batch, results["threads"].id, "load")}
    assert threads_pids == {results["threads"].pid}


# -- restart ----------------------------------------------------------------------------------------


def runs(tmp_path: Path) -> list[tuple[int, str, int]]:
    path = tmp_path / "runs.txt"
    if not path.exists():
        return []
    return [(int(e), p, int(pos)) for e, p, pos in (line.split() for line in path.read_text().splitlines())]


@pytest.mark.parametrize("mode", MODES)
def test_a_restart_after_one_partition_failed_reruns_only_that_one_from_its_checkpoint(
    batch: Batch, write_job: Any, tmp_path: Path, mode: str
) -> None:
    sql(batch, f"CREATE TABLE out_{mode} (id INTEGER PRIMARY KEY)")
    write_job("flaky", FLAKY.format(work=str(tmp_path)))
    (tmp_path / "fail").touch()

    failed = batch.start(f"flaky_{mode}", {})
    assert failed.status == Status.FAILED
    assert "step load failed: 3 of 4 partitions completed; load:0002 failed" in failed.exit_message
    assert "RuntimeError: item 137 is poisoned" in failed.exit_message
    first = partitions(batch, failed.id, "load")
    assert [p.status for p in first] == [Status.COMPLETED] * 2 + [Status.FAILED, Status.COMPLETED]
    assert manager(batch, failed.id, "load").status == Status.FAILED
    broken = first[2]
    assert broken.commit_count == 7 and broken.context["batchctl"]["position"] == 35  # items 100..134
    assert sorted(runs(tmp_path)) == sorted((failed.id, f"load:{i:04d}", 0) for i in range(4))

    (tmp_path / "fail").unlink()
    restarted = batch.restart(failed.id)
    assert restarted.status == Status.COMPLETED, restarted.exit_message
    assert restarted.resumed_from == failed.id
    # Only the failed partition ran again, from its checkpoint.
    again = partitions(batch, restarted.id, "load")
    assert [(p.name, p.status) for p in again] == [("load:0002", Status.COMPLETED)]
    assert again[0].read_count == 15 and again[0].write_count == 15
    assert [r for r in runs(tmp_path) if r[0] == restarted.id] == [(restarted.id, "load:0002", 35)]
    total = manager(batch, restarted.id, "load")
    assert total.status == Status.COMPLETED and total.read_count == 15
    ids = [row[0] for row in sql(batch, f"SELECT id FROM out_{mode} ORDER BY id")]
    assert ids == list(range(200))  # every item exactly once


# -- stop -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_stop_reaches_every_running_partition_and_a_restart_does_each_item_once(
    batch: Batch, other: Batch, write_job: Any, in_thread: Callable[..., Any], tmp_path: Path,
    mode: str,
) -> None:
    sql(batch, f"CREATE TABLE out_{mode} (id INTEGER PRIMARY KEY)")
    write_job("slow", SLOW.format(work=str(tmp_path)))
    running = in_thread(batch.start, f"slow_{mode}", {})

    def three_holding() -> Any:
        latest = other.history(f"slow_{mode}")
        if not latest:
            return None
        parts = partitions(other, latest[0].id, "load")
        busy = [p for p in parts if p.status == Status.STARTED and p.commit_count == 2]
        return latest[0] if len(busy) == 3 else None

    execution = wait_for(three_holding, timeout=DEADLINE)
    assert other.stop(execution.id).status == Status.STOPPING
    stopped = running.result(timeout=DEADLINE)
    assert stopped.status == Status.STOPPED, stopped.exit_message
    assert manager(batch, stopped.id, "load").status == Status.STOPPED
    parts = partitions(batch, stopped.id, "load")
    assert {p.status for p in parts} == {Status.STOPPED}
    started = [p for p in parts if p.commit_count > 0]
    unclaimed = [p for p in parts if p.commit_count == 0]
    assert len(started) == 3 and len(unclaimed) == 3
    for part in started:  # each finished the chunk it was in (items 10..14), then stopped
        assert (part.exit_message, part.context["batchctl"]["position"]) == ("stopped after a chunk", 15)
    assert all(p.exit_message == "stopped before it started" for p in unclaimed)
    assert sql(batch, f"SELECT count(*) FROM out_{mode}")[0][0] == 45

    (tmp_path / "gate").touch()
    restarted = batch.restart(stopped.id)
    assert restarted.status == Status.COMPLETED, restarted.exit_message
    again = partitions(batch, restarted.id, "load")
    assert len(again) == 6  # none had completed
    assert sorted(p.read_count for p in again) == [185] * 3 + [200] * 3
    ids = [row[0] for row in sql(batch, f"SELECT id FROM out_{mode} ORDER BY id")]
    assert ids == list(range(1200))


# -- partitioners that do not partition ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("partitioner", "message"),
    [
        ("lambda ctx: [{'a': 1}, 2]",
         "partitioner failed: JobDefinitionError: step work: a partitioner returns dicts, not int"),
        ("lambda ctx: ['x']",
         "partitioner failed: JobDefinitionError: step work: a partitioner returns dicts, not str"),
        ("lambda ctx: 1 / 0", "partitioner failed: ZeroDivisionError: division by zero"),
        ("lambda ctx: None",
         "partitioner failed: JobDefinitionError: step work: a partitioner returns a list of "
         "dicts, not NoneType"),
        ("lambda ctx: {'a': 1}",
         "partitioner failed: JobDefinitionError: step work: a partitioner returns a list of "
         "dicts, not dict"),
        ("lambda ctx: [{'when': object()}]",
         "partitioner failed: UnstorableValue: a partition context['when'] holds an object"),
    ],
)
def test_a_partitioner_that_returns_non_dicts_or_raises_fails_the_step_clearly(
    batch: Batch, write_job: Any, partitioner: str, message: str
) -> None:
    write_job("bad_split", f'''
        from batchctl import Job

        job = Job("bad_split")

        @job.tasklet(partitioner={partitioner}, mode="thread")
        def work(ctx):
            pass
    ''')
    execution = batch.start("bad_split", {})
    assert execution.status == Status.FAILED
    [step] = batch.step_executions(execution.id)
    assert step.status == Status.FAILED and step.exit_message.startswith(message), step.exit_message
    assert execution.exit_message.startswith(f"step work failed: {message}")


def test_a_partitioner_with_no_partitions_completes_the_step(
    batch: Batch, write_job: Any, tmp_path: Path
) -> None:
    merged = tmp_path / "merged.txt"
    write_job("none_to_do", f'''
        from pathlib import Path
        from batchctl import Job

        job = Job("none_to_do")

        def merge(ctx, partitions):
            Path({str(merged)!r}).write_text(repr(partitions))

        @job.tasklet(partitioner=lambda ctx: [], after_partitions=merge)
        def work(ctx):
            raise AssertionError("no partition should run")
    ''')
    execution = batch.start("none_to_do", {})
    assert execution.status == Status.COMPLETED, execution.exit_message
    assert [s.name for s in batch.step_executions(execution.id)] == ["work"]
    assert merged.read_text() == "[]"


def test_a_reader_that_cannot_be_copied_is_refused_in_threads_and_shared_in_processes(
    batch: Batch, write_job: Any
) -> None:
    write_job("locked", '''
        import threading
        from batchctl import Job

        class Numbers:
            """A reader holding a lock: it cannot be copied for each partition."""

            def __init__(self):
                self.lock = threading.Lock()

            def open(self, ctx, state):
                self.items = iter(range(ctx.partition["lo"], ctx.partition["hi"]))

            def read(self):
                with self.lock:
                    return next(self.items, None)

        def define(mode):
            job = Job(f"locked_{mode}")
            job.chunk_step("load", reader=Numbers(), writer=lambda items, ctx: None, size=4,
                           partitioner=lambda ctx: [{"lo": 0, "hi": 10}, {"lo": 10, "hi": 25}],
                           workers=2, mode=mode)
            return job

        in_threads = define("thread")
        in_processes = define("process")
    ''')
    refused = batch.start("locked_thread", {})
    assert refused.status == Status.FAILED
    assert (
        "step load: partitions in threads each need a copy of the reader, and Numbers cannot be "
        "copied (TypeError: cannot pickle '_thread.lock' object)" in refused.exit_message
    )
    shared = batch.start("locked_process", {})
    assert shared.status == Status.COMPLETED, shared.exit_message
    assert [p.read_count for p in partitions(batch, shared.id, "load")] == [10, 15]


def test_partition_listeners_and_ctx_partition_in_a_tasklet(
    batch: Batch, write_job: Any, tmp_path: Path
) -> None:
    out = tmp_path / "events.txt"
    write_job("listened", f'''
        from batchctl import Job

        job = Job("listened")
        OUT = {str(out)!r}

        def note(text):
            with open(OUT, "a") as f:
                f.write(text + "\\n")

        @job.before_partition
        def before(ctx):
            note(f"before {{ctx.step_name}} {{ctx.partition['letter']}}")

        @job.after_partition
        def after(ctx, partition):
            note(f"after {{partition.name}} {{partition.status.value}}")

        def merge(ctx, partitions):
            note("merged " + " ".join(p.partition["letter"] for p in partitions))

        @job.tasklet(partitioner=lambda ctx: [{{"letter": c}} for c in "abc"], workers=2,
                     mode="thread", after_partitions=merge)
        def work(ctx):
            note(f"work {{ctx.partition['letter']}}")
    ''')
    execution = batch.start("listened", {})
    assert execution.status == Status.COMPLETED, execution.exit_message
    events = out.read_text().splitlines()
    for i, letter in enumerate("abc"):
        name = f"work:{i:04d}"
        assert events.index(f"before {name} {letter}") < events.index(f"work {letter}")
        assert events.index(f"work {letter}") < events.index(f"after {name} COMPLETED")
    assert events[-1] == "merged a b c"


# -- local worker processes that die ------------------------------------------------------------------

DYING = '''
import os
import signal
from pathlib import Path

from batchctl import Job
from batchctl.items import SqlWriter

WORK = Path({work!r})

job = Job("dying", params={{"always": bool}})


def halves(ctx):
    return [{{"lo": 0, "hi": 40}}, {{"lo": 40, "hi": 80}}]


def numbers(ctx):
    return range(ctx.partition["lo"], ctx.partition["hi"])


@job.before_partition
def record(ctx):
    with (WORK / "runs.txt").open("a") as runs:
        runs.write(f"{{ctx.execution_id}} {{ctx.step_name}} {{ctx.state.get('batchctl', {{}}).get('position', 0)}}\\n")


@job.chunk(reader=numbers, writer=SqlWriter("out_dying"), size=5, partitioner=halves, workers=1)
def load(n, ctx):
    """Item 57 kills its worker process: once, or every time with `always`."""
    flag = WORK / "kill"
    if n == 57 and (ctx.params["always"] or flag.exists()):
        flag.unlink(missing_ok=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return {{"id": n}}
'''


def test_a_local_worker_process_that_dies_is_replaced_and_its_partition_resumes(
    batch: Batch, write_job: Any, tmp_path: Path
) -> None:
    sql(batch, "CREATE TABLE out_dying (id INTEGER PRIMARY KEY)")
    write_job("dying", DYING.format(work=str(tmp_path)))
    (tmp_path / "kill").touch()

    execution = batch.start("dying", {"always": False})
    assert execution.status == Status.COMPLETED, execution.exit_message
    assert not (tmp_path / "kill").exists()
    assert runs(tmp_path) == [
        (execution.id, "load:0000", 0), (execution.id, "load:0001", 0),
        (execution.id, "load:0001", 15),  # items 40..54 were committed before the kill
    ]
    parts = partitions(batch, execution.id, "load")
    assert [p.read_count for p in parts] == [40, 40]
    assert parts[0].pid != parts[1].pid  # a new process finished the second one
    ids = [row[0] for row in sql(batch, "SELECT id FROM out_dying ORDER BY id")]
    assert ids == list(range(80))


def test_a_partition_whose_local_workers_keep_dying_fails_the_step(
    batch: Batch, write_job: Any, tmp_path: Path
) -> None:
    sql(batch, "CREATE TABLE out_dying (id INTEGER PRIMARY KEY)")
    write_job("dying", DYING.format(work=str(tmp_path)))

    execution = batch.start("dying", {"always": True})
    assert execution.status == Status.FAILED
    assert "1 of 2 partitions completed; load:0001 failed: its local worker processes kept dying" in (
        execution.exit_message
    )
    # One worker and LOCAL_WORKER_RESPAWNS (2) replacements, each resuming at the checkpoint.
    again = [r for r in runs(tmp_path) if r[1] == "load:0001"]
    assert again == [(execution.id, "load:0001", 0)] + [(execution.id, "load:0001", 15)] * 2


# -- after_partitions --------------------------------------------------------------------------------


def test_a_failed_after_partitions_is_retried_on_restart_without_rerunning_partitions(
    batch: Batch, write_job: Any, tmp_path: Path
) -> None:
    merged = tmp_path / "merged.txt"
    write_job("merging", f'''
        from pathlib import Path
        from batchctl import Job

        WORK = Path({str(tmp_path)!r})
        job = Job("merging")

        def merge(ctx, partitions):
            if (WORK / "fail").exists():
                raise OSError("disk full")
            (WORK / "merged.txt").write_text(" ".join(f"{{p.name}}={{p.partition['n']}}" for p in partitions))

        @job.tasklet(partitioner=lambda ctx: [{{"n": n * n}} for n in range(5)], workers=3,
                     mode="thread", after_partitions=merge)
        def square(ctx):
            with (WORK / "runs.txt").open("a") as runs:
                runs.write(f"{{ctx.execution_id}} {{ctx.step_name}} 0\\n")
    ''')
    (tmp_path / "fail").touch()
    failed = batch.start("merging", {})
    assert failed.status == Status.FAILED
    assert "step square failed: after_partitions failed: OSError: disk full" in failed.exit_message
    assert len(runs(tmp_path)) == 5 and not merged.exists()

    (tmp_path / "fail").unlink()
    restarted = batch.restart(failed.id)
    assert restarted.status == Status.COMPLETED, restarted.exit_message
    assert len(runs(tmp_path)) == 5  # no partition ran again
    assert partitions(batch, restarted.id, "square") == []
    assert merged.read_text() == " ".join(f"square:{i:04d}={i * i}" for i in range(5))


# -- many threads -------------------------------------------------------------------------------------


def test_sixteen_worker_threads_reading_and_writing_the_repository_database_do_not_starve(
    batch: Batch, write_job: Any
) -> None:
    """Each thread holds its chunk step's connection and takes more to read: with more threads
    than the default pool (5 + 10) they waited for one another until the pool timed out."""
    sql(batch, "CREATE TABLE src (id INTEGER PRIMARY KEY)")
    sql(batch, "INSERT INTO src (id) VALUES " + ", ".join(f"({i})" for i in range(320)))
    sql(batch, "CREATE TABLE dst (id INTEGER PRIMARY KEY)")
    write_job("many", '''
        import time
        from batchctl import Job
        from batchctl.items import SqlReader, SqlWriter

        job = Job("many")

        def sixteen(ctx):
            return [{"lo": i * 20, "hi": (i + 1) * 20} for i in range(16)]

        def slowly(row, ctx):
            time.sleep(0.01)
            return row

        job.chunk_step(
            "copy",
            reader=SqlReader("SELECT id FROM src WHERE id >= :lo AND id < :hi", key="id",
                             params=lambda ctx: ctx.partition, page_size=5),
            writer=SqlWriter("dst"), processor=slowly, size=5,
            partitioner=sixteen, workers=16, mode="thread",
        )
    ''')
    execution = batch.start("many", {})
    assert execution.status == Status.COMPLETED, execution.exit_message
    parts = partitions(batch, execution.id, "copy")
    assert len(parts) == 16 and {p.read_count for p in parts} == {20}
    assert [row[0] for row in sql(batch, "SELECT id FROM dst ORDER BY id")] == list(range(320))


def test_when_every_worker_thread_ends_on_an_error_the_step_fails_instead_of_waiting(
    batch: Batch, write_job: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchctl.worker import Worker

    def broken(self: Worker) -> bool:
        raise RuntimeError("the claim query failed")

    monkeypatch.setattr(Worker, "_claim_and_run", broken)
    write_job("orphaned", '''
        from batchctl import Job

        job = Job("orphaned")

        @job.tasklet(partitioner=lambda ctx: [{"n": 1}, {"n": 2}], workers=2, mode="thread")
        def work(ctx):
            pass
    ''')
    execution = batch.start("orphaned", {})
    assert execution.status == Status.FAILED
    assert "0 of 2 partitions completed; work:0000 failed: its worker threads ended on an error" in (
        execution.exit_message
    )


def test_a_step_on_threads_ends_when_its_threads_do_not_at_its_next_poll(
    batch: Batch, write_job: Any, tmp_path: Path, hour_long_polls: threading.Event
) -> None:
    gate = tmp_path / "gate"
    write_job("gated_threads", f'''
        import time
        from pathlib import Path

        from batchctl import Job

        job = Job("gated_threads")

        @job.tasklet(partitioner=lambda ctx: [{{"n": 1}}, {{"n": 2}}], workers=2, mode="thread")
        def work(ctx):
            while not Path({str(gate)!r}).exists():
                time.sleep(0.01)
    ''')
    future = in_daemon_thread(batch.start, "gated_threads", {})
    try:
        assert hour_long_polls.wait(DEADLINE)  # it looked while the partitions were held
    finally:
        gate.touch()
    assert future.result(timeout=DEADLINE).status == Status.COMPLETED

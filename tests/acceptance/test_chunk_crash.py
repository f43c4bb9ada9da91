"""Exactly once under SIGKILL: a chunk job killed at 26 points, restarted until it completes.

The job runs in its own process (the installed `batchctl` script). Step `load` copies a CSV
file into a table of the repository's database (SqlWriter: rows and checkpoint in one
transaction); step `dump` copies the table into a CSV file (SqlReader -> CsvWriter, atomic, with
a checksum). The job kills itself with SIGKILL at the first point of CRASH_POINTS that is not in
CRASH_DONE: while reading, processing, writing, committing, just after a commit, and around the
atomic finish. After each kill the same `start` runs again (the killed execution is found lost
and the instance resumes) until one run completes. Then the table holds every input row exactly
once, the counters of all step executions add up, and the file is byte-identical to the one of
an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROWS = 300
LOAD_CHUNK = 7
DUMP_CHUNK = 9

# Per process run, the n-th event of a kind; each run resumes where the last one was killed.
POINTS = [
    "load.read:1", "load.process:1", "load.write:1", "load.wrote:1", "load.commit:1",
    "load.committed:1", "load.read:10", "load.process:15", "load.wrote:2", "load.commit:4",
    "load.committed:6", "load.read:33", "load.process:50", "load.wrote:5",
    "dump.read:1", "dump.process:3", "dump.write:1", "dump.wrote:1", "dump.commit:2",
    "dump.committed:3", "dump.read:20", "dump.wrote:3", "dump.process:30", "dump.commit:5",
    "dump.completing:1", "dump.completed:1",
]

JOB = '''
import os
import signal
import threading
from collections import Counter

from sqlalchemy import event

from batchctl import Job
from batchctl.items import CsvReader, CsvWriter, SqlReader, SqlWriter

DONE = os.environ.get("CRASH_DONE")


def _point():
    if not DONE:
        return None
    done = open(DONE).read().split() if os.path.exists(DONE) else []
    return next((p for p in os.environ["CRASH_POINTS"].split(",") if p not in done), None)


POINT = _point()
COUNTS = Counter()
STATE = {"chunk_thread": None, "in_commit": False}


def hit(name, n=1):
    """Count `n` events `name`; SIGKILL this process when the count passes the crash point."""
    if POINT is None or not POINT.startswith(name + ":"):
        return
    before = COUNTS[name]
    COUNTS[name] += n
    if before < int(POINT.split(":")[1]) <= COUNTS[name]:
        with open(DONE, "a") as handle:
            handle.write(POINT + "\\n")
        os.kill(os.getpid(), signal.SIGKILL)


job = Job("crashy", params={"run": str})


def on_commit(connection):
    """Just before the COMMIT of a chunk (after its checkpoint UPDATE)."""
    if STATE["in_commit"] and threading.get_ident() == STATE["chunk_thread"]:
        STATE["in_commit"] = False
        hit(STATE["step"] + ".commit")


@job.before_step
def watch_commits(ctx):
    STATE["step"] = ctx.step_name
    STATE["chunk_thread"] = threading.get_ident()
    if not event.contains(ctx.database, "commit", on_commit):
        event.listen(ctx.database, "commit", on_commit)


@job.after_chunk
def committed(ctx, step):
    hit(ctx.step_name + ".committed")


def mark_commit():
    STATE["in_commit"] = True


class Reader(CsvReader):
    def read_chunk(self, size, on_error):
        items = super().read_chunk(size, on_error)
        hit("load.read", len(items or ()))
        return items


class Writer(SqlWriter):
    def write(self, items):
        hit("load.write")
        super().write(items)
        hit("load.wrote")
        mark_commit()


@job.chunk(reader=Reader(os.environ["CRASH_IN"], types={"id": int, "amount": int}),
           writer=Writer("ledger"), size=%(load)d)
def load(row, ctx):
    hit("load.process")
    return {"id": row["id"], "name": row["name"].strip(), "amount": row["amount"] * 100}


class TableReader(SqlReader):
    def read_chunk(self, size, on_error):
        items = super().read_chunk(size, on_error)
        hit("dump.read", len(items or ()))
        return items


class FileWriter(CsvWriter):
    def write(self, items):
        hit("dump.write")
        super().write(items)
        hit("dump.wrote")
        mark_commit()

    def complete(self):
        hit("dump.completing")
        super().complete()
        hit("dump.completed")


@job.chunk(reader=TableReader("ledger", key="id", page_size=11),
           writer=FileWriter(os.environ["CRASH_OUT"], atomic=True, checksum=True),
           size=%(dump)d)
def dump(row, ctx):
    hit("dump.process")
    return {"id": row["id"], "name": row["name"], "amount": row["amount"], "cents": row["amount"] %% 100}
''' % {"load": LOAD_CHUNK, "dump": DUMP_CHUNK}


def _input(path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name", "amount"])
        for i in range(1, ROWS + 1):
            writer.writerow([i, f" Kund{i}, «{'é' * (i % 4)}» \"{i % 7}\" ", i * 37 % 1000])


def _batchctl() -> list[str]:
    script = Path(sys.executable).parent / "batchctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "batchctl"]


def _run(url: str, jobs: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = _batchctl() + ["--db", url, "--jobs-dir", str(jobs), "start", "crashy",
                          "--params", '{"run": "one"}']
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def _create_ledger(url: str) -> None:
    from batchctl.repository.connect import create_repository_engine

    engine = create_repository_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE ledger (id INTEGER PRIMARY KEY, name TEXT NOT NULL, amount INTEGER)"
        )
    engine.dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_exactly_once_under_sigkill_at_many_points(database, request, tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "crashy.py").write_text(textwrap.dedent(JOB))
    source = tmp_path / "in.csv"
    _input(source)
    url = (f"sqlite:///{tmp_path / 'repository.db'}" if database == "sqlite"
           else request.getfixturevalue("postgres_url"))
    _create_ledger(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHCTL_")}
    env.update(CRASH_IN=str(source), NO_COLOR="1")

    # The uninterrupted run, in a repository of its own.
    clean = tmp_path / "clean"
    clean.mkdir()
    clean_url = f"sqlite:///{clean / 'repository.db'}"
    _create_ledger(clean_url)
    done = _run(clean_url, jobs, {**env, "CRASH_OUT": str(clean / "out.csv")})
    assert done.returncode == 0, done.stderr
    expected = (clean / "out.csv").read_bytes()

    crashed = tmp_path / "crashed"
    crashed.mkdir()
    crash_env = {**env, "CRASH_OUT": str(crashed / "out.csv"), "CRASH_POINTS": ",".join(POINTS),
                 "CRASH_DONE": str(tmp_path / "done.txt")}
    kills = 0
    for _ in range(len(POINTS) + 5):
        done = _run(url, jobs, crash_env)
        if done.returncode == -signal.SIGKILL:
            kills += 1
            continue
        assert done.returncode == 0, f"after {kills} kills: {done.stdout}{done.stderr}"
        break
    used = (tmp_path / "done.txt").read_text().split()
    assert used == POINTS and kills == len(POINTS)

    from sqlalchemy import text

    from batchctl.repository import Repository

    repository = Repository.open(url)
    try:
        with repository.engine.connect() as connection:
            rows = connection.execute(text("SELECT id, amount FROM ledger ORDER BY id")).all()
        assert [tuple(row) for row in rows] == [(i, i * 37 % 1000 * 100) for i in range(1, ROWS + 1)]
        executions = repository.history("crashy", limit=None)
        assert len(executions) == kills + 1
        assert executions[0].status.value == "COMPLETED"
        assert all(e.status.value == "FAILED" for e in executions[1:])
        steps = [s for e in executions for s in repository.step_executions(e.id)]
        for name, size in (("load", LOAD_CHUNK), ("dump", DUMP_CHUNK)):
            mine = [s for s in steps if s.name == name]
            assert sum(s.read_count for s in mine) == ROWS, name
            assert sum(s.write_count for s in mine) == ROWS, name
            assert sum(s.commit_count for s in mine) == math.ceil(ROWS / size), name
            assert sum(s.read_skip_count + s.write_skip_count + s.filter_count for s in mine) == 0
    finally:
        repository.close()

    assert (crashed / "out.csv").read_bytes() == expected
    assert not (crashed / "out.csv.part").exists()
    assert (crashed / "out.csv.sha256").read_text() == (clean / "out.csv.sha256").read_text()
    parsed = list(csv.DictReader(io.StringIO(expected.decode("utf-8"))))
    assert [int(row["id"]) for row in parsed] == list(range(1, ROWS + 1))
    shutil.rmtree(clean)

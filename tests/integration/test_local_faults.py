"""Local faults through the command line (issue 14), on SQLite and Postgres: a disk that fills up
while a file writer writes, an output path that cannot be written, a log_dir that cannot be
written, and a SQLite repository locked past its busy timeout.

The full disk is simulated here so that it runs on every machine: the job's writers write
through a file object whose disk holds `limit` bytes (a write past it writes what fits, then
fails with ENOSPC, as a real file system does). tests/acceptance/test_local_faults.py does the
same on a real, small tmpfs where mounting is permitted.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Callable

import pytest

NO_ROWS = {"job_instance": 0, "job_execution": 0, "step_execution": 0}

JOB = '''
import errno
import os
from pathlib import Path

from batchctl import Job
from batchctl.items import CsvWriter, JsonLinesWriter

LIMITS = Path(%(limits)r)  # LIMITS/<file name>: how many bytes that file's disk holds


class SmallDisk:
    """A file object on a disk that holds LIMITS/<name> bytes, while that file exists."""

    def __init__(self, raw, name):
        self.raw = raw
        self.limit = LIMITS / name

    def write(self, data):
        if self.limit.exists():
            room = int(self.limit.read_text()) - self.raw.tell()
            if len(data) > room:
                self.raw.write(data[:max(room, 0)])
                self.raw.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.raw.write(data)

    def __getattr__(self, name):
        return getattr(self.raw, name)


class OnSmallDisk:
    def open(self, ctx, state):
        super().open(ctx, state)
        self._file = SmallDisk(self._file, self.target.name)


class Csv(OnSmallDisk, CsvWriter):
    pass


class Jsonl(OnSmallDisk, JsonLinesWriter):
    pass


def rows(ctx):
    for i in range(1, 201):
        yield {"id": i, "name": f"Kund {i} «{'é' * (i %% 4)}»", "amount": i * 37 %% 1000}


job = Job("dump", params={"run": str})


@job.chunk(reader=rows, writer=Csv(%(out)r + "/{run}.csv", atomic=True, checksum=True), size=9)
def to_csv(row, ctx):
    return row


@job.chunk(reader=rows, writer=Jsonl(%(out)r + "/{run}.jsonl"), size=7)
def to_jsonl(row, ctx):
    return row
'''


@pytest.fixture
def dump(write_job: Callable[[str, str], Path], tmp_path: Path) -> dict[str, Path]:
    limits, out = tmp_path / "limits", tmp_path / "out"
    limits.mkdir()
    out.mkdir()
    write_job("dump", JOB % {"limits": str(limits), "out": str(out)})
    return {"limits": limits, "out": out}


def _show(run_cli, target: str) -> dict:
    shown = run_cli("show", target, "--json")
    assert shown.code == 0, shown.err
    return json.loads(shown.out)


@pytest.mark.parametrize("full", ["full.csv.part", "full.jsonl"])
def test_a_disk_that_fills_up_fails_the_run_in_one_line_and_a_restart_completes(
    run_cli, dump, full: str
) -> None:
    limits, out = dump["limits"], dump["out"]
    assert run_cli("start", "dump", "--params", '{"run": "clean"}').code == 0
    expected = {name: (out / f"clean.{name}").read_bytes() for name in ("csv", "jsonl")}

    (limits / full).write_text("1500")  # a few chunks fit, then the disk is full mid-chunk
    failed = run_cli("start", "dump", "--params", '{"run": "full"}')
    assert failed.code == 1, failed
    target = out / full
    reason = f"disk full writing {target}: No space left on device"
    [line] = failed.out.splitlines()
    assert line.endswith(f"failed: {reason}"), line
    assert "Traceback" not in failed.err
    step_name = "to_csv" if ".csv" in full else "to_jsonl"
    [error] = [line for line in failed.err_lines if " ERROR " in line]
    assert error.endswith(f"step {step_name} FAILED: {reason}"), failed.err

    shown = _show(run_cli, "dump")
    assert shown["status"] == "FAILED"
    step = shown["steps"][-1]
    assert step["status"] == "FAILED" and step["exit_message"].splitlines()[0] == reason
    assert step["rollback_count"] == 1 and step["commit_count"] >= 1
    # The repository and the file agree: the file was cut back to the committed offset, and
    # holds exactly the committed chunks (no half-written chunk, no half-written checkpoint).
    offset = step["context"]["batchctl"]["writer"]["offset"]
    kind = "csv" if ".csv" in full else "jsonl"
    assert target.stat().st_size == offset
    assert target.read_bytes() == expected[kind][:offset]
    assert offset < 1500

    (limits / full).unlink()  # space is freed
    restarted = run_cli("restart", "dump")
    assert restarted.code == 0, restarted
    for name in ("csv", "jsonl"):
        assert (out / f"full.{name}").read_bytes() == expected[name]
    assert not (out / "full.csv.part").exists()
    assert (out / "full.csv.sha256").read_text().split()[0] == (
        (out / "clean.csv.sha256").read_text().split()[0]
    )
    steps = [s for e in json.loads(run_cli("history", "--json").out)
             for s in _show(run_cli, str(e["id"]))["steps"] if e["params"]["run"] == "full"]
    assert sum(s["write_count"] for s in steps if s["name"] == "to_" + kind) == 200


def test_an_output_path_that_is_a_folder_fails_the_step_naming_it(run_cli, dump) -> None:
    out = dump["out"]
    (out / "taken.jsonl").mkdir()
    failed = run_cli("start", "dump", "--params", '{"run": "taken"}')
    assert failed.code == 1
    reason = f"cannot write {out / 'taken.jsonl'}: Is a directory"
    assert failed.out.splitlines()[0].endswith(f"step to_jsonl failed: {reason}"), failed.out
    assert "Traceback" not in failed.err
    shown = _show(run_cli, "dump")
    assert [s["status"] for s in shown["steps"]] == ["COMPLETED", "FAILED"]

    (out / "taken.jsonl").rmdir()
    assert run_cli("restart", "dump").code == 0
    assert len((out / "taken.jsonl").read_text().splitlines()) == 200


def test_an_output_folder_whose_parent_is_a_file_fails_the_step_naming_it(
    run_cli, write_job, tmp_path: Path
) -> None:
    (tmp_path / "reports").write_text("a file where a folder should be")
    write_job("nested", f'''
        from batchctl import Job
        from batchctl.items import JsonLinesWriter

        job = Job("nested")

        @job.chunk(reader=lambda ctx: range(10), writer=JsonLinesWriter({str(tmp_path)!r} + "/reports/2024/out.jsonl"))
        def copy(n, ctx):
            return {{"n": n}}
    ''')
    failed = run_cli("start", "nested")
    assert failed.code == 1
    target = tmp_path / "reports" / "2024" / "out.jsonl"
    assert failed.out.splitlines()[0].endswith(
        f"cannot write {target}: {tmp_path / 'reports'} is a file, not a folder"
    ), failed.out
    (tmp_path / "reports").unlink()
    assert run_cli("restart", "nested").code == 0
    assert len(target.read_text().splitlines()) == 10


def test_a_log_dir_under_a_file_exits_5_before_recording_anything(
    run_cli, rows, monkeypatch, tmp_path: Path, dump
) -> None:
    """Root writes through any mode, so an unwritable folder is one under a regular file."""
    (tmp_path / "var").write_text("a file")
    monkeypatch.setenv("BATCHCTL_LOG_DIR", str(tmp_path / "var" / "logs"))
    assert rows() == NO_ROWS
    outcome = run_cli("start", "dump", "--params", '{"run": "x"}', "--detach")
    assert outcome.code == 5 and outcome.out == ""
    assert outcome.err_lines == [
        f"batchctl: error: log_dir {tmp_path / 'var' / 'logs'} cannot be created: Not a directory"
    ]
    assert rows() == NO_ROWS


# -- SQLite: a repository locked past its busy timeout -----------------------------------------------


# SQLite's file lock and busy timeout: Postgres has neither (its row locks are waited for).
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@sqlite_only
def test_a_repository_locked_past_the_busy_timeout_is_one_line_exit_5_and_writes_nothing(
    run_cli, rows, monkeypatch, dump, database_url: str
) -> None:
    assert rows() == NO_ROWS  # the schema exists
    monkeypatch.setenv("BATCHCTL_DATABASE_URL", database_url + "?timeout=0.2")
    holder = sqlite3.connect(database_url[len("sqlite:///"):], isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        outcome = run_cli("start", "dump", "--params", '{"run": "x"}')
        assert outcome.code == 5 and outcome.out == ""
        [line] = outcome.err_lines
        assert line == (
            f"batchctl: error: the job repository {database_url}?timeout=0.2 is locked by another "
            "process: still locked after the 0.2 s busy timeout (?timeout=S in the SQLite URL "
            "waits longer)"
        )
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    assert rows() == NO_ROWS
    assert run_cli("start", "dump", "--params", '{"run": "x"}').code == 0


@sqlite_only
def test_a_busy_timeout_that_is_not_a_number_of_seconds_exits_5(
    run_cli, monkeypatch, database_url: str
) -> None:
    monkeypatch.setenv("BATCHCTL_DATABASE_URL", database_url + "?timeout=soon")
    outcome = run_cli("history")
    assert outcome.code == 5
    assert outcome.err_lines == [
        f"batchctl: error: invalid database URL {database_url}?timeout=soon: timeout=soon is not "
        "a number of seconds from 0 to 86400"
    ]

"""Local faults, unit by unit (issue 14): a file writer on a full disk or an unwritable path,
batchctl's log lines on a full disk, and how SQLite lock and read-only errors are classified."""

from __future__ import annotations

import errno
import io
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from batchctl.errors import BatchctlError, ConfigError, OutputUnwritable, RepositoryLocked
from batchctl.faults import is_fatal
from batchctl.items import CsvWriter, JsonLinesWriter
from batchctl.items.files import unwritable
from batchctl.render import LossyStreamHandler
from batchctl.repository.connect import (
    SQLITE_BUSY_TIMEOUT_MS,
    is_locked,
    is_retryable,
    sqlite_busy_timeout_ms,
    translate_errors,
    unavailable,
)
from batchctl.steps import describe_exception
from tests.unit.test_items_csv import ctx

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullAfter:
    """A file object whose disk holds `room` more bytes: a write past them writes what fits,
    then fails with ENOSPC; closing it fails too while bytes are left in its buffer."""

    def __init__(self, raw: Any, room: int) -> None:
        self.raw = raw
        self.room = room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.raw.write(data[: self.room])
            self.raw.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return int(self.raw.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def test_a_full_disk_is_one_line_naming_the_file_and_the_writer_cuts_back_on_reset(tmp_path):
    path = tmp_path / "out.jsonl"
    writer = JsonLinesWriter(path)
    writer.open(ctx(), {})
    writer.write([{"n": 1}, {"n": 2}])
    committed = writer.state()
    writer._file = FullAfter(writer._file, 5)  # type: ignore[assignment]
    with pytest.raises(OutputUnwritable) as raised:
        writer.write([{"n": 3}, {"n": 4}])
    assert raised.value.message == f"disk full writing {path}: No space left on device"
    assert raised.value.errno == errno.ENOSPC
    assert is_fatal(raised.value)  # never retried nor skipped: a full disk fills again
    assert writer.state() == committed  # the offset counts only what was written whole
    assert path.stat().st_size == committed["offset"] + 5

    writer.close()  # what the chunk's rollback does: close (no error), reopen at the checkpoint
    writer.open(ctx(), committed)
    assert path.read_bytes() == b'{"n":1}\n{"n":2}\n'
    writer.write([{"n": 3}])
    writer.complete()
    assert path.read_bytes() == b'{"n":1}\n{"n":2}\n{"n":3}\n'


def test_a_close_that_fails_after_a_failed_write_is_quiet_but_not_otherwise(tmp_path):
    class Unflushable(io.BytesIO):
        def close(self) -> None:
            super().close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writer = JsonLinesWriter(tmp_path / "a.jsonl")
    writer.open(ctx(), {})
    writer._file.close()  # type: ignore[union-attr]
    writer._file = Unflushable()  # type: ignore[assignment]
    with pytest.raises(OutputUnwritable, match="disk full writing"):
        writer.close()  # nothing failed before: the close's error is the writer's error
    writer._file = Unflushable()  # type: ignore[assignment]
    writer._broken = True
    writer.close()  # after a failed write: the bytes it drops are beyond the checkpoint


def test_a_full_disk_at_completion_is_one_line(tmp_path, monkeypatch):
    writer = CsvWriter(tmp_path / "out.csv", atomic=True)
    writer.open(ctx(), {})
    writer.write([{"a": 1}])

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OutputUnwritable) as raised:
        writer.complete()
    assert raised.value.message == (
        f"disk full writing {tmp_path / 'out.csv.part'}: No space left on device"
    )
    assert not (tmp_path / "out.csv").exists()


def test_an_output_path_that_is_a_folder_is_one_line(tmp_path):
    (tmp_path / "out.csv").mkdir()
    writer = CsvWriter(tmp_path / "out.csv")
    with pytest.raises(OutputUnwritable) as raised:
        writer.open(ctx(), {})
    assert raised.value.message == f"cannot write {tmp_path / 'out.csv'}: Is a directory"
    writer.close()


def test_an_output_folder_under_a_file_names_the_file(tmp_path):
    (tmp_path / "out").write_text("")
    writer = JsonLinesWriter(tmp_path / "out" / "day" / "x.jsonl")
    with pytest.raises(OutputUnwritable) as raised:
        writer.open(ctx(), {})
    assert raised.value.message == (
        f"cannot write {tmp_path / 'out' / 'day' / 'x.jsonl'}: {tmp_path / 'out'} is a file, "
        "not a folder"
    )


def test_unwritable_names_the_other_path_and_says_disk_full_for_a_quota():
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/data/other")
    assert unwritable(Path("/data/out.csv"), quota).message == (
        "disk full writing /data/out.csv: Disk quota exceeded: /data/other"
    )
    read_only = OSError(errno.EROFS, os.strerror(errno.EROFS))
    assert unwritable(Path("/data/out.csv"), read_only).message == (
        "cannot write /data/out.csv: Read-only file system"
    )


def test_an_environment_error_of_a_step_is_summed_up_by_its_own_message():
    try:
        raise unwritable(Path("/o.csv"), ENOSPC) from ENOSPC
    except OutputUnwritable as exc:
        described = describe_exception(exc)
    assert described.splitlines()[0] == "disk full writing /o.csv: No space left on device"
    assert "Traceback" in described  # still there for `show --traceback`
    assert describe_exception(ValueError("x")).splitlines()[0] == "ValueError: x"


# -- log lines on a full disk ----------------------------------------------------------------------


class FillingStream(io.StringIO):
    """A stream on a disk that is full while `full` is set."""

    full = False

    def write(self, text: str) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(text)


def test_log_lines_that_cannot_be_written_are_counted_and_said_once_writing_works_again():
    stream = FillingStream()
    handler = LossyStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("batchctl.test-lossy")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("one")
        stream.full = True
        logger.warning("two")  # no exception, no "--- Logging error ---", no wait
        logger.warning("three")
        stream.full = False
        logger.warning("four")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().splitlines() == [
        "one",
        "batchctl: 2 log line(s) could not be written (No space left on device); some may be "
        "missing above",
        "four",
    ]


# -- SQLite: locked, read-only ---------------------------------------------------------------------


def _busy(path: Path) -> OperationalError:
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            waiter.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            return OperationalError("BEGIN IMMEDIATE", None, exc)
        finally:
            waiter.close()
    finally:
        holder.close()
    raise AssertionError("the lock was not held")


def test_a_lock_past_the_busy_timeout_is_repository_locked_and_never_retried(tmp_path):
    busy = _busy(tmp_path / "r.db")
    assert is_locked(busy) and not is_retryable(busy)
    url = f"sqlite:///{tmp_path / 'r.db'}?timeout=2.5"
    with pytest.raises(RepositoryLocked) as raised, translate_errors(url):
        raise busy
    assert raised.value.exit_code == 5
    assert raised.value.message == (
        f"the job repository {url} is locked by another process: still locked after the 2.5 s "
        "busy timeout (?timeout=S in the SQLite URL waits longer)"
    )


def test_the_busy_timeout_comes_from_the_url():
    assert sqlite_busy_timeout_ms("sqlite:///r.db") == SQLITE_BUSY_TIMEOUT_MS
    assert sqlite_busy_timeout_ms("sqlite:///r.db?timeout=0.25") == 250
    assert sqlite_busy_timeout_ms("r.db") == SQLITE_BUSY_TIMEOUT_MS  # not a URL: the default
    for bad in ("x", "-1", "nan", "1e9"):
        with pytest.raises(ConfigError, match=f"timeout={bad} is not a number of seconds"):
            sqlite_busy_timeout_ms(f"sqlite:///r.db?timeout={bad}")


def test_an_engine_waits_the_busy_timeout_of_its_url(tmp_path):
    from sqlalchemy import text

    from batchctl.repository.connect import create_repository_engine

    engine = create_repository_engine(f"sqlite:///{tmp_path / 'r.db'}?timeout=0.5")
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA busy_timeout")).scalar_one() == 500
    finally:
        engine.dispose()


def test_a_sqlite_file_that_may_not_be_written_is_read_only_not_unreachable(tmp_path, monkeypatch):
    database = tmp_path / "r.db"
    database.write_bytes(b"")
    url = f"sqlite:///{database}"
    cannot_open = OperationalError("BEGIN", None, sqlite3.OperationalError("unable to open database file"))
    assert unavailable(url, cannot_open).message.startswith("cannot reach the job repository")
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != database)
    assert unavailable(url, cannot_open).message == (
        f"the job repository {url} is read-only: the file {database} may not be written"
    )
    assert isinstance(unavailable(url, cannot_open), BatchctlError)


def test_a_repository_whose_disk_is_full_cannot_be_written_naming_the_full_folder(
    tmp_path, monkeypatch
):
    from batchctl.repository.connect import is_storage_error, is_unreachable

    url = f"sqlite:///{tmp_path / 'r.db'}"
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13  # type: ignore[attr-defined]
    error = OperationalError("COMMIT", None, full)
    assert is_storage_error(error) and is_unreachable(error) and not is_retryable(error)
    assert unavailable(url, error).message == (
        f"the job repository {url} cannot be written: database or disk is full"
    )

    class Full:
        f_bavail = 0
        f_flag = 0

    monkeypatch.setattr(os, "statvfs", lambda path: Full())
    assert unavailable(url, error).message == (
        f"the job repository {url} cannot be written: database or disk is full ({tmp_path} is full)"
    )
    with pytest.raises(BatchctlError) as raised, translate_errors(url):
        raise error
    assert raised.value.exit_code == 5

    disk_full = type("DiskFull", (Exception,), {"sqlstate": "53100"})  # psycopg's, in short
    postgres = OperationalError("INSERT", None, disk_full("could not extend file"))
    assert is_storage_error(postgres)
    assert unavailable("postgresql://u:pw@h/db", postgres).message == (
        "the job repository postgresql://u:***@h/db cannot be written: could not extend file"
    )

"""Local faults with real processes and real file systems (issue 14): the installed `batchctl`
script, a small tmpfs mounted by the test for a disk that fills up or is read-only, and a SQLite
repository locked by another process past its busy timeout.

Mounting needs root (or CAP_SYS_ADMIN): where the test cannot mount, it is skipped with the
reason. tests/integration/test_local_faults.py covers the same behaviour on every machine with a
simulated full disk.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

DUMP = '''
import os

from batchctl import Job
from batchctl.items import CsvWriter

job = Job("dump", params={"run": str})


def rows(ctx):
    for i in range(1, 2001):
        yield {"id": i, "name": f"Kund {i} «{'é' * (i % 4)}»", "amount": i * 37 % 1000}


@job.chunk(reader=rows, writer=CsvWriter(os.environ["DUMP_OUT"], atomic=True, checksum=True),
           size=50)
def copy(row, ctx):
    return row
'''


def _batchctl() -> list[str]:
    script = Path(sys.executable).parent / "batchctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "batchctl"]


class Cli:
    """`batchctl` in a new process, pointed at one repository and jobs folder."""

    def __init__(self, url: str, jobs: Path, env: dict[str, str]) -> None:
        self.url = url
        self.jobs = jobs
        self.env = env

    def argv(self, *args: str) -> list[str]:
        return _batchctl() + ["--db", self.url, "--jobs-dir", str(self.jobs), *args]

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), env={**self.env, **env}, capture_output=True,
                              text=True, timeout=120)

    def popen(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), env={**self.env, **env}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def history(self) -> list[dict[str, Any]]:
        done = self("history", "--json")
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout))

    def show(self, target: str) -> dict[str, Any]:
        done = self("show", target, "--json")
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    from tests.conftest import wait_for

    return wait_for(condition, timeout, what=what)


@pytest.fixture
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], Cli]:
    """cli("sqlite" | "postgres"): a Cli on a new repository of that database."""

    def make(database: str, *, url: str | None = None) -> Cli:
        jobs = tmp_path / "jobs"
        jobs.mkdir(exist_ok=True)
        if url is None:
            url = (f"sqlite:///{tmp_path / 'repository.db'}" if database == "sqlite"
                   else request.getfixturevalue("postgres_url"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHCTL_")}
        env.update(NO_COLOR="1", BATCHCTL_HEARTBEAT_INTERVAL="60",
                   BATCHCTL_HEARTBEAT_TIMEOUT="120", BATCHCTL_LOG_DIR=str(tmp_path / "logs"))
        return Cli(url, jobs, env)

    return make


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """mount_tmpfs("256k"): a new folder with a tmpfs of that size mounted on it, unmounted
    after the test; the test is skipped where mounting is not permitted."""
    mounted: list[Path] = []

    def mount(size: str, name: str = "disk") -> Path:
        folder = tmp_path / f"{name}-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                               str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def remount_read_only(folder: Path) -> None:
    done = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount a tmpfs read-only here: {done.stderr.strip()}")


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of `folder` with a ballast file, leaving about `leave` bytes."""
    ballast = folder / "ballast"
    stats = os.statvfs(folder)
    size = max(stats.f_bavail * stats.f_frsize - leave, 0)
    descriptor = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        written = 0
        block = b"\0" * 4096
        while written < size:
            try:
                written += os.write(descriptor, block[: size - written])
            except OSError:
                break
    finally:
        os.close(descriptor)
    return ballast


# -- a disk that fills up under a file writer ----------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_full_disk_fails_the_run_in_one_line_and_a_restart_after_freeing_space_completes(
    database: str, cli: Callable[..., Cli], mount_tmpfs: Callable[..., Path], tmp_path: Path
) -> None:
    run = cli(database)
    (run.jobs / "dump.py").write_text(textwrap.dedent(DUMP))
    clean = tmp_path / "clean"
    clean.mkdir()
    done = run("start", "dump", "--params", '{"run": "clean"}', DUMP_OUT=str(clean / "out.csv"))
    assert done.returncode == 0, done.stderr
    expected = (clean / "out.csv").read_bytes()
    assert len(expected) > 50_000

    disk = mount_tmpfs("256k")
    ballast = fill(disk, leave=24 * 1024)  # a few chunks fit, then the disk is full
    out = disk / "out.csv"
    failed = run("start", "dump", "--params", '{"run": "full"}', DUMP_OUT=str(out))
    assert failed.returncode == 1, failed.stderr
    assert failed.stdout.splitlines() == [
        failed.stdout.splitlines()[0].split(": step copy failed")[0]
        + f": step copy failed: disk full writing {out}.part: No space left on device"
    ]
    assert "Traceback" not in failed.stderr
    [error] = [line for line in failed.stderr.splitlines() if " ERROR " in line]
    assert error.endswith(
        f"step copy FAILED: disk full writing {out}.part: No space left on device"
    )

    [execution] = [e for e in run.history() if e["params"]["run"] == "full"]
    shown = run.show(str(execution["id"]))
    assert shown["status"] == "FAILED"
    [step] = shown["steps"]
    assert step["status"] == "FAILED" and step["rollback_count"] == 1
    offset = step["context"]["batchctl"]["writer"]["offset"]
    assert 0 < offset < 24 * 1024
    part = Path(f"{out}.part")
    assert part.stat().st_size == offset  # cut back to the checkpoint: no half-written chunk
    assert part.read_bytes() == expected[:offset]

    ballast.unlink()  # space is freed
    again = run("restart", str(execution["id"]), DUMP_OUT=str(out))
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == expected
    assert not part.exists()
    assert Path(f"{out}.sha256").read_text().split()[0] == (
        (clean / "out.csv.sha256").read_text().split()[0]
    )


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_an_output_file_on_a_read_only_file_system_fails_the_step_and_restarts_once_writable(
    database: str, cli: Callable[..., Cli], mount_tmpfs: Callable[..., Path]
) -> None:
    run = cli(database)
    (run.jobs / "dump.py").write_text(textwrap.dedent(DUMP))
    disk = mount_tmpfs("1m")
    remount_read_only(disk)
    out = disk / "out.csv"
    failed = run("start", "dump", "--params", '{"run": "ro"}', DUMP_OUT=str(out))
    assert failed.returncode == 1, failed.stderr
    assert failed.stdout.rstrip().endswith(
        f": step copy failed: cannot write {out}.part: Read-only file system"
    ), failed.stdout
    assert "Traceback" not in failed.stderr
    [execution] = run.history()
    assert execution["status"] == "FAILED"

    subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
    again = run("restart", "dump", DUMP_OUT=str(out))
    assert again.returncode == 0, again.stderr
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2001


# -- the log folder ----------------------------------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_a_log_dir_that_cannot_be_written_refuses_a_detached_start_before_recording_it(
    database: str, fault: str, cli: Callable[..., Cli], mount_tmpfs: Callable[..., Path],
    tmp_path: Path,
) -> None:
    run = cli(database)
    (run.jobs / "dump.py").write_text(textwrap.dedent(DUMP))
    logs = mount_tmpfs("64k", "logs")
    if fault == "read-only":
        remount_read_only(logs)
        reason = "Read-only file system"
    else:
        fill(logs)
        reason = "No space left on device"
    run.env["BATCHCTL_LOG_DIR"] = str(logs)
    done = run("start", "dump", "--params", '{"run": "x"}', "--detach",
               DUMP_OUT=str(tmp_path / "out.csv"))
    assert done.returncode == 5
    assert done.stderr.splitlines() == [f"batchctl: error: log_dir {logs} cannot be written: {reason}"]
    assert done.stdout == ""
    assert run.history() == []


CHATTY = '''
import os
from pathlib import Path

from batchctl import Job

job = Job("chatty")
BALLAST = Path(os.environ["LOG_BALLAST"])


@job.tasklet
def talk(ctx):
    for i in range(ctx.state.get("i", 0), 300):
        if i == 100:  # the log's disk is full from here
            descriptor = os.open(BALLAST, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:
                    os.write(descriptor, b"\\0" * 4096)
            except OSError:
                pass
            finally:
                os.close(descriptor)
        if i == 200:  # and has room again from here
            BALLAST.unlink()
        ctx.log.info("line %d %s", i, "y" * 100)
        ctx.state["i"] = i + 1
        yield
'''


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_a_log_disk_that_fills_up_mid_run_neither_stops_nor_hangs_the_run(
    database: str, cli: Callable[..., Cli], mount_tmpfs: Callable[..., Path]
) -> None:
    run = cli(database)
    (run.jobs / "chatty.py").write_text(textwrap.dedent(CHATTY))
    logs = mount_tmpfs("128k", "logs")
    run.env["BATCHCTL_LOG_DIR"] = str(logs)
    done = run("start", "chatty", "--detach", "--json", LOG_BALLAST=str(logs / "ballast"))
    assert done.returncode == 0, done.stderr
    launched = json.loads(done.stdout)
    ended = wait_until(
        lambda: next(e for e in run.history() if e["id"] == launched["id"])["status"]
        not in ("STARTING", "STARTED"),
        "the detached run ends",
    )
    assert ended
    shown = run.show(str(launched["id"]))
    assert shown["status"] == "COMPLETED", shown["exit_message"]
    log = Path(shown["log_path"]).read_text(encoding="utf-8", errors="replace")
    assert "line 0 " in log and "line 299 " in log
    assert "log line(s) could not be written (No space left on device)" in log


# -- SQLite: read-only, locked --------------------------------------------------------------------


TASK = '''
from batchctl import Job

job = Job("task", params={"n": int})


@job.tasklet
def only(ctx):
    pass
'''


def test_a_sqlite_repository_on_a_read_only_file_system_is_one_line_exit_5(
    cli: Callable[..., Cli], mount_tmpfs: Callable[..., Path]
) -> None:
    disk = mount_tmpfs("4m")
    run = cli("sqlite", url=f"sqlite:///{disk / 'repository.db'}")
    (run.jobs / "task.py").write_text(textwrap.dedent(TASK))
    assert run("start", "task", "--params", '{"n": 1}').returncode == 0
    before = (disk / "repository.db").read_bytes()
    remount_read_only(disk)
    for command in (("history",), ("start", "task", "--params", '{"n": 2}')):
        done = run(*command)
        assert done.returncode == 5, done
        assert done.stderr.splitlines() == [
            f"batchctl: error: the job repository {run.url} is read-only: its file system "
            f"({disk}) is mounted read-only"
        ]
    assert (disk / "repository.db").read_bytes() == before


def test_an_immutable_sqlite_file_is_one_line_exit_5(cli: Callable[..., Cli], tmp_path: Path) -> None:
    run = cli("sqlite")
    (run.jobs / "task.py").write_text(textwrap.dedent(TASK))
    assert run("start", "task", "--params", '{"n": 1}').returncode == 0
    database = tmp_path / "repository.db"
    marked = subprocess.run(["chattr", "+i", str(database)], capture_output=True, text=True)
    if marked.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {marked.stderr.strip()}")
    try:
        done = run("start", "task", "--params", '{"n": 2}')
        assert done.returncode == 5, done
        [line] = done.stderr.splitlines()
        assert line.startswith(f"batchctl: error: the job repository {run.url} is read-only: ")
    finally:
        subprocess.run(["chattr", "-i", str(database)], check=True)
    assert [e["params"] for e in run.history()] == [{"n": 1}]


SLOW = '''
import os
import time
from pathlib import Path

from batchctl import Job
from batchctl.items import CsvWriter

job = Job("slow")
SIGNALS = Path(os.environ["SIGNALS"])


def numbers(ctx):
    for i in range(100):
        yield {"id": i}


@job.chunk(reader=numbers, writer=CsvWriter(os.environ["SLOW_OUT"]), size=10)
def copy(item, ctx):
    if item["id"] == 35 and not (SIGNALS / "go").exists():
        (SIGNALS / "ready").touch()
        while not (SIGNALS / "go").exists():
            time.sleep(0.02)
    return item
'''


def test_a_sqlite_repository_locked_mid_run_ends_in_one_line_and_the_run_restarts(
    cli: Callable[..., Cli], tmp_path: Path
) -> None:
    database = tmp_path / "repository.db"
    run = cli("sqlite", url=f"sqlite:///{database}?timeout=0.3")
    (run.jobs / "slow.py").write_text(textwrap.dedent(SLOW))
    signals = tmp_path / "signals"
    signals.mkdir()
    out = tmp_path / "out.csv"
    env = {"SIGNALS": str(signals), "SLOW_OUT": str(out)}
    process = run.popen("start", "slow", **env)
    try:
        wait_until(lambda: (signals / "ready").exists() or process.poll() is not None,
                   "the run reaches its fourth chunk")
        assert process.poll() is None, process.communicate()
        holder = sqlite3.connect(database, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            (signals / "go").touch()
            stdout, stderr = process.communicate(timeout=60)
        finally:
            holder.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 5, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (
        f"batchctl: error: execution 1 of slow ended without recording its outcome: the job "
        f"repository {run.url} is locked by another process: still locked after the 0.3 s busy "
        "timeout (?timeout=S in the SQLite URL waits longer); the next command marks it FAILED "
        "(its process is gone), then it can be restarted"
    )
    assert stdout == ""

    [execution] = run.history()  # the next command finds the process gone
    assert execution["status"] == "FAILED" and "process lost" in execution["exit_message"]
    [step] = run.show("1")["steps"]
    assert step["write_count"] == 30  # three chunks committed; the fourth rolled back
    done = run("restart", "slow", **env)
    assert done.returncode == 0, done.stderr
    assert out.read_text().splitlines() == ["id"] + [str(i) for i in range(100)]


def test_a_sqlite_repository_whose_disk_fills_up_mid_run_ends_in_one_line_and_restarts(
    cli: Callable[..., Cli], mount_tmpfs: Callable[..., Path], tmp_path: Path
) -> None:
    disk = mount_tmpfs("2m")
    run = cli("sqlite", url=f"sqlite:///{disk / 'repository.db'}")
    (run.jobs / "slow.py").write_text(textwrap.dedent(SLOW))
    signals = tmp_path / "signals"
    signals.mkdir()
    out = tmp_path / "out.csv"
    env = {"SIGNALS": str(signals), "SLOW_OUT": str(out)}
    process = run.popen("start", "slow", **env)
    try:
        wait_until(lambda: (signals / "ready").exists() or process.poll() is not None,
                   "the run reaches its fourth chunk")
        assert process.poll() is None, process.communicate()
        ballast = fill(disk)
        (signals / "go").touch()
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 5, stderr
    assert "Traceback" not in stderr
    last = stderr.splitlines()[-1]
    assert last.startswith(
        f"batchctl: error: execution 1 of slow ended without recording its outcome: the job "
        f"repository {run.url} cannot be written: "
    ), last
    assert f"({disk} is full); the next command marks it FAILED" in last

    ballast.unlink()
    [execution] = run.history()
    assert execution["status"] == "FAILED" and "process lost" in execution["exit_message"]
    done = run("restart", "slow", **env)
    assert done.returncode == 0, done.stderr
    assert out.read_text().splitlines() == ["id"] + [str(i) for i in range(100)]

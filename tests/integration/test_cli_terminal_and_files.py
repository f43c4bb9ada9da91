"""What the command line leaves on a terminal and on disk (issue 8, section 9), on SQLite and
Postgres: user text is shown escaped, never as control codes; logs and the SQLite repository
are readable by their owner only, whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable, Iterator

import pytest

from batchctl.model import Status
from tests.conftest import wait_for

CLEAR = "\\x1b[2J"  # as Python source in the job module: the job's text holds the real codes
TITLE = "\\x1b]0;pwned\\x07"

JOBS = f'''
from batchctl import Job

job = Job("hostile", params={{"n": int}})

@job.tasklet
def boom(ctx):
    raise RuntimeError("bad {CLEAR}{TITLE} end\\nsecond {CLEAR}")


quiet = Job("quiet", params={{"n": int}})

@quiet.tasklet
def nothing(ctx):
    pass
'''


@pytest.fixture(autouse=True)
def _jobs(write_job: Callable[[str, str], Path]) -> None:
    write_job("jobs", JOBS)


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def assert_no_control_codes(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text, repr(text)


@pytest.mark.parametrize("command", [["history"], ["show", "1"]])
def test_exit_messages_are_shown_escaped(run_cli, command: list[str]) -> None:
    """`\\x1b[2J` would clear the screen and `\\x1b]0;...\\x07` set the window title."""
    assert run_cli("start", "hostile", "--params", '{"n": 1}').code == 1
    outcome = run_cli(*command)
    assert outcome.code == 0
    assert_no_control_codes(outcome.out + outcome.err)
    assert "bad \\x1b[2J\\x1b]0;pwned\\x07 end" in outcome.out


def test_the_json_output_keeps_the_message_as_it_is(run_cli) -> None:
    """JSON escapes control characters itself; a script gets the exact text back."""
    import json

    run_cli("start", "hostile", "--params", '{"n": 1}')
    outcome = run_cli("show", "1", "--json")
    assert_no_control_codes(outcome.out)
    assert json.loads(outcome.out)["exit_message"].startswith("step boom failed: RuntimeError: bad \x1b[2J")


def test_a_detached_run_log_is_private(run_cli, batch, umask_022: None, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BATCHCTL_LOG_DIR", str(tmp_path / "logs"))
    outcome = run_cli("start", "quiet", "--params", '{"n": 1}', "--detach")
    assert outcome.code == 0, outcome
    [execution] = batch.history("quiet")

    def finished():
        current = batch.execution(execution.id)
        return None if current.status.is_live else current

    ended = wait_for(finished, timeout=60)
    assert ended.status == Status.COMPLETED
    assert stat.S_IMODE(Path(ended.log_path).stat().st_mode) == 0o600


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_new_sqlite_repository_is_private(run_cli, umask_022: None, database_url: str) -> None:
    path = Path(database_url[len("sqlite:///"):])
    assert not path.exists()
    assert run_cli("start", "quiet", "--params", '{"n": 1}').code == 0
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file.exists():  # -wal and -shm may be gone once the last connection closed
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

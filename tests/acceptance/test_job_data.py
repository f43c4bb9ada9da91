"""A job's own data (issue 10), through the installed `batchctl` as real processes, on SQLite
and Postgres: a tasklet's SQL committed exactly once across a kill -9 and a restart, and the
items' relative paths resolved against the project directory whatever the current one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import text

from batchctl.launcher import process_alive
from batchctl.model import Status
from tests.conftest import wait_for

BATCHCTL = str(Path(sys.executable).parent / "batchctl")
DEADLINE = 90.0  # seconds an awaited state may take on a loaded machine

JOBS = '''
"""Jobs of the job-data tests."""

import os
import time

from sqlalchemy import text

from batchctl import Job
from batchctl.items import CsvReader, CsvWriter, JsonLinesWriter

rows = Job("rows", params={"n": int})


@rows.tasklet
def create(ctx):
    ctx.connection.execute(text("CREATE TABLE IF NOT EXISTS units (n INTEGER PRIMARY KEY)"))


@rows.tasklet
def insert(ctx):
    """Unit i inserts row i, then checkpoints: the insert commits with the checkpoint."""
    delay = float(os.environ.get("DATA_UNIT_DELAY", "0"))
    for i in range(ctx.state.get("done", 0), ctx.params["n"]):
        ctx.connection.execute(text("INSERT INTO units (n) VALUES (:n)"), {"n": i})
        if delay:
            time.sleep(delay)  # the process is killed here, between an insert and its checkpoint
        ctx.state["done"] = i + 1
        yield


files = Job("files", params={"tag": str})


@files.tasklet
def mark(ctx):
    (ctx.project_dir / f"mark-{ctx.params['tag']}").write_text(str(ctx.project_dir))


files.chunk_step(
    "copy",
    reader=CsvReader("data/in.csv", types={"n": int}),
    writer=CsvWriter("out/{tag}/copy.csv"),
    size=2,
)

files.chunk_step(
    "lines",
    reader=CsvReader(lambda ctx: "data/in.csv"),
    writer=JsonLinesWriter("out/{tag}/lines.jsonl"),
    size=2,
)
'''


class Project:
    """A project folder (config.toml, jobs/, data/) and commands run from another folder."""

    def __init__(self, database_url: str, tmp_path: Path) -> None:
        self.database_url = database_url
        self.dir = tmp_path / "project"
        (self.dir / "jobs").mkdir(parents=True)
        (self.dir / "jobs" / "data_jobs.py").write_text(JOBS)
        (self.dir / "data").mkdir()
        (self.dir / "data" / "in.csv").write_text("n,name\n1,one\n2,two\n3,three\n")
        (self.dir / "config.toml").write_text(
            textwrap.dedent(
                f"""\
                [batchctl]
                database = {json.dumps(database_url)}
                heartbeat_interval = 0.5
                heartbeat_timeout = 60
                """
            )
        )
        self.elsewhere = tmp_path / "elsewhere"
        self.elsewhere.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHCTL_")}
        self.env.update(BATCHCTL_CONFIG=str(self.dir / "config.toml"), NO_COLOR="1")
        self._repository: Any = None
        self._pids: set[int] = set()

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BATCHCTL, *args], env={**self.env, **(env or {})}, cwd=self.elsewhere,
            capture_output=True, text=True, timeout=DEADLINE,
        )

    def json(self, *args: str, env: dict[str, str] | None = None) -> Any:
        result = self.run(*args, "--json", env=env)
        assert result.returncode == 0, describe(result)
        return json.loads(result.stdout)

    def launch(self, job: str, params: dict[str, Any], env: dict[str, str] | None = None) -> Any:
        launched = self.json("start", job, "--params", json.dumps(params), "--detach", env=env)
        self._pids.add(launched["pid"])
        return launched

    @property
    def repository(self) -> Any:
        if self._repository is None:
            from batchctl.repository import Repository

            self._repository = Repository.open(self.database_url)
        return self._repository

    def wait_for_end(self, execution_id: int) -> Any:
        def ended() -> Any:
            execution = self.repository.execution(execution_id)
            return execution if not execution.status.is_live else None

        return wait_for(ended, timeout=DEADLINE)

    def units(self) -> list[int]:
        with self.repository.engine.connect() as connection:
            return [row[0] for row in connection.execute(text("SELECT n FROM units ORDER BY n"))]

    def close(self) -> None:
        for pid in self._pids:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self._repository is not None:
            self._repository.close()


@pytest.fixture
def project(database_url: str, tmp_path: Path) -> Iterator[Project]:
    opened = Project(database_url, tmp_path)
    try:
        yield opened
    finally:
        opened.close()


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"{result.args} exited {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"


def test_a_generator_tasklets_inserts_are_exactly_once_across_a_kill_and_a_restart(
    project: Project,
) -> None:
    n = 200
    launched = project.launch("rows", {"n": n}, env={"DATA_UNIT_DELAY": "0.05"})
    execution_id, pid = launched["id"], launched["pid"]

    def some_committed() -> bool:
        steps = project.repository.step_executions(execution_id)
        return any(step.name == "insert" and step.commit_count >= 3 for step in steps)

    wait_for(some_committed, timeout=DEADLINE)
    os.kill(pid, signal.SIGKILL)  # most likely between an insert and its checkpoint
    wait_for(lambda: not process_alive(pid), timeout=DEADLINE)

    restart = project.run("restart", str(execution_id))
    assert restart.returncode == 0, describe(restart)
    assert project.repository.execution(execution_id).status == Status.FAILED  # marked lost
    assert project.units() == list(range(n))  # every row once: none lost, none repeated


def test_items_paths_resolve_against_the_project_directory_from_any_current_folder(
    project: Project,
) -> None:
    foreground = project.run("start", "files", "--params", '{"tag": "fg"}')
    assert foreground.returncode == 0, describe(foreground)
    detached = project.launch("files", {"tag": "bg"})
    assert project.wait_for_end(detached["id"]).status == Status.COMPLETED

    for tag in ("fg", "bg"):
        out = project.dir / "out" / tag
        assert (out / "copy.csv").read_text().splitlines() == ["n,name", "1,one", "2,two", "3,three"]
        assert len((out / "lines.jsonl").read_text().splitlines()) == 3
        assert (project.dir / f"mark-{tag}").read_text() == str(project.dir.resolve())
    assert list(project.elsewhere.iterdir()) == []  # nothing landed in the current folder

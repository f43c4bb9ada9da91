"""The installed `batchctl` console script, run as a user would run it: a subprocess."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest

BATCHCTL = Path(sys.executable).parent / "batchctl"
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60  # seconds: a deadline for a hung process, never a pacing sleep

JOBS = """
    from batchctl import Job

    job = Job("hello", description="Says hello", params={"n": int})

    @job.tasklet
    def count(ctx):
        for i in range(ctx.params["n"]):
            ctx.state["i"] = i + 1
            yield

    broken = Job("broken")

    @broken.tasklet
    def explode(ctx):
        raise RuntimeError("kaboom")
"""

Run = Callable[..., subprocess.CompletedProcess[str]]


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any batchctl setting, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHCTL_")}
    env.update(NO_COLOR="1", **settings)
    return env


def runner(tmp_path: Path, url: str, jobs_dir: Path) -> Run:
    (jobs_dir / "hello.py").write_text(textwrap.dedent(JOBS))
    env = clean_env(BATCHCTL_DATABASE_URL=url, BATCHCTL_JOBS_DIR=str(jobs_dir))

    def invoke(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BATCHCTL), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )

    return invoke


@pytest.fixture
def run(tmp_path: Path, sqlite_url: str, jobs_dir: Path) -> Run:
    """run("start", "hello", ...): the console script in an empty folder, on this test's
    SQLite repository and jobs folder."""
    return runner(tmp_path, sqlite_url, jobs_dir)


@pytest.fixture
def run_on_each_database(tmp_path: Path, database_url: str, jobs_dir: Path) -> Run:
    """Like `run`, once on SQLite and once on Postgres."""
    return runner(tmp_path, database_url, jobs_dir)


def test_the_console_script_is_installed() -> None:
    assert BATCHCTL.is_file() and os.access(BATCHCTL, os.X_OK)


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BATCHCTL), "--help"], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    for command in ("start", "history", "show", "jobs", "db"):
        assert command in result.stdout


def test_python_m_batchctl_is_the_same_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "batchctl", "--help"], cwd=tmp_path, env=clean_env(),
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert "history" in result.stdout


def test_help_imports_neither_sqlalchemy_nor_alembic_nor_jobs(tmp_path: Path) -> None:
    probe = textwrap.dedent(
        """
        import atexit, sys
        atexit.register(lambda: print(sorted(
            m for m in sys.modules if m.split(".")[0] in ("sqlalchemy", "alembic", "batchctl_jobs")
        ), file=sys.stderr))
        from batchctl.cli import main
        main(["--help"])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=clean_env(), capture_output=True,
        text=True, timeout=TIMEOUT,
    )
    assert result.returncode == 0
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_start_of_a_job_that_completes_exits_0(run_on_each_database: Run) -> None:
    result = run_on_each_database("start", "hello", "--params", '{"n": 3}')
    assert result.returncode == 0, result.stderr
    assert "COMPLETED" in result.stdout
    assert "\x1b[" not in result.stdout + result.stderr


def test_a_failing_job_exits_1_and_history_shows_it_failed(run_on_each_database: Run) -> None:
    run = run_on_each_database
    result = run("start", "broken")
    assert result.returncode == 1
    history = run("history", "--json")
    assert history.returncode == 0, history.stderr
    [execution] = json.loads(history.stdout)
    assert execution["job"] == "broken"
    assert execution["status"] == "FAILED"
    assert execution["exit_message"].startswith("step explode failed: RuntimeError: kaboom")


def test_a_second_start_of_a_completed_instance_exits_4(run: Run) -> None:
    assert run("start", "hello", "--params", '{"n": 1}').returncode == 0
    result = run("start", "hello", "--params", '{"n": "1"}')
    assert result.returncode == 4
    assert result.stderr.count("\n") == 1
    assert "a different param value makes a new instance" in result.stderr


def test_an_unknown_job_exits_2_with_one_line(run: Run) -> None:
    result = run("start", "nope")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    # Run with no config file: the line also says where the jobs were looked for.
    assert line.startswith("batchctl: error: unknown job 'nope' (known jobs: broken, hello) "
                           "(no config.toml found from ")
    assert "jobs directory " in line


def test_show_json_after_a_run(run: Run) -> None:
    run("start", "hello", "--params", '{"n": 2}')
    result = run("show", "1", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "COMPLETED"
    assert [(s["name"], s["commit_count"]) for s in data["steps"]] == [("count", 2)]


def test_an_unreachable_database_exits_5_without_the_password(tmp_path: Path) -> None:
    env = clean_env(BATCHCTL_DATABASE_URL="postgresql://postgres:secretpw@127.0.0.1:1/x")
    for debug in ([], ["--debug"]):
        result = subprocess.run(
            [str(BATCHCTL), *debug, "history"], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=TIMEOUT,
        )
        assert result.returncode == 5
        assert "secretpw" not in result.stderr + result.stdout
        assert ("Traceback" in result.stderr) == bool(debug)


def test_a_config_toml_in_a_parent_folder_is_found_and_its_paths_are_relative_to_it(
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    (project / "my_jobs").mkdir(parents=True)
    (project / "my_jobs" / "hello.py").write_text(textwrap.dedent(JOBS))
    (project / "config.toml").write_text(
        '[batchctl]\ndatabase = "state/repo.db"\njobs_dir = "my_jobs"\n'
    )
    (project / "state").mkdir()
    below = project / "deep" / "below"
    below.mkdir(parents=True)

    result = subprocess.run(
        [str(BATCHCTL), "start", "hello", "--params", '{"n": 1}'], cwd=below, env=clean_env(),
        capture_output=True, text=True, timeout=TIMEOUT,
    )

    assert result.returncode == 0, result.stderr
    assert (project / "state" / "repo.db").is_file()
    assert not (below / "batchctl.db").exists()


def test_the_eod_example_posts_the_ledger_and_writes_balances(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = clean_env(
        BATCHCTL_DATABASE_URL=f"sqlite:///{tmp_path / 'repo.db'}",
        BATCHCTL_JOBS_DIR=str(REPOSITORY_ROOT / "jobs"),
    )
    params = json.dumps({"date": "2024-01-31", "out_dir": str(out)})

    result = subprocess.run(
        [str(BATCHCTL), "start", "eod", "--params", params], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=TIMEOUT,
    )

    assert result.returncode == 0, result.stderr
    with sqlite3.connect(out / "ledger.db") as ledger:
        rows, total = ledger.execute(
            "SELECT COUNT(*), SUM(amount_cents) FROM ledger WHERE business_date = '2024-01-31'"
        ).fetchone()
    ledger.close()
    assert rows == 5000
    with (out / "balances-20240131.csv").open(newline="") as handle:
        balances = list(csv.DictReader(handle))
    assert sum(int(b["entries"]) for b in balances) == 5000
    assert sum(int(b["balance_cents"]) for b in balances) == total
    assert len({b["account"] for b in balances}) == len(balances) > 1
    assert (out / "entries-20240131.csv").is_file()

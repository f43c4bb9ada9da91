"""The command line through Typer's CliRunner, on SQLite and Postgres: outcomes, exit codes and
the `--json` shapes of DESIGN.md's command-line contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from typer.testing import CliRunner, Result

from batchctl import cli

EXECUTION_KEYS = {
    "id",
    "job",
    "instance_id",
    "params",
    "status",
    "exit_code",
    "exit_message",
    "created_at",
    "started_at",
    "ended_at",
    "host",
    "pid",
}
STEP_KEYS = {"id", "name", "status", "started_at", "ended_at", "read_count", "write_count", "commit_count"}

JOBS = """
    from datetime import date
    from batchctl import Job, Param

    job = Job("hello", description="Says hello", params={"n": int, "day": Param(date, default=None)})

    @job.tasklet
    def greet(ctx):
        '''Greet n times.'''
        ctx.job_context["greeted"] = ctx.params["n"]

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

Invoke = Callable[..., Result]


@pytest.fixture
def invoke(
    cli_env: None, write_job: Callable[[str, str], Path]
) -> Iterator[Invoke]:
    """invoke("start", "hello", ...): the app through CliRunner, a new Batch per command (the
    invocation's context opens it and closes it)."""
    write_job("hello", JOBS)
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(cli.app, list(args))

    yield run


def parse(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_start_runs_the_job_and_exits_0(invoke: Invoke) -> None:
    result = invoke("start", "hello", "--params", '{"n": 2}')
    assert result.exit_code == 0, result.output
    assert "execution 1 of hello COMPLETED" in result.stdout


def test_start_of_a_failing_job_exits_1_and_says_why(invoke: Invoke) -> None:
    result = invoke("start", "broken")
    assert result.exit_code == 1
    assert "FAILED" in result.stdout
    assert "step explode failed: RuntimeError: kaboom" in result.stdout


def test_start_without_a_terminal_logs_plain_lines_to_stderr(invoke: Invoke) -> None:
    result = invoke("start", "hello", "--params", '{"n": 1}')
    assert "step greet started" in result.stderr
    assert "\x1b[" not in result.stderr + result.stdout


def test_start_of_a_failed_instance_says_it_resumes(invoke: Invoke) -> None:
    invoke("start", "broken")
    result = invoke("start", "broken")
    assert "resuming job broken from execution 1 (new execution 2)" in result.stderr


def test_a_detached_restart_says_it_resumes_and_json_says_nothing_but_json(invoke: Invoke) -> None:
    invoke("start", "broken")
    launched = invoke("restart", "broken", "--detach")
    assert launched.exit_code == 0, launched.output
    assert "resuming job broken from execution 1 (new execution 2)" in launched.stderr
    assert "execution 2 of broken launched" in launched.stdout
    ended = invoke("stop", "2", "--wait", "--timeout", "60")  # let the launched process end
    assert ended.exit_code in (0, 4), ended.output  # 4: it ended before the stop arrived
    again = invoke("start", "broken", "--json")
    assert again.exit_code == 1 and json.loads(again.stdout)["resumed_from"] == 2
    assert "resuming" not in again.stderr


def test_each_invocation_has_its_own_state(invoke: Invoke, tmp_path: Path) -> None:
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert invoke("--db", other, "start", "hello", "--params", '{"n": 1}').exit_code == 0
    assert parse(invoke("history", "--json")) == []  # back on the environment's repository
    assert len(parse(invoke("--db", other, "history", "--json"))) == 1


def test_start_json_prints_the_finished_execution_with_its_steps(invoke: Invoke) -> None:
    data = parse(invoke("start", "hello", "--params", '{"n": "3"}', "--json"))
    assert EXECUTION_KEYS <= data.keys()
    assert data["status"] == "COMPLETED"
    assert data["params"] == {"n": 3, "day": None}
    assert [step["name"] for step in data["steps"]] == ["greet", "count"]
    assert data["steps"][1]["commit_count"] == 3


def test_history_json_is_a_list_of_executions_newest_first(invoke: Invoke) -> None:
    invoke("start", "hello", "--params", '{"n": 1}')
    invoke("start", "broken")
    data = parse(invoke("history", "--json"))
    assert [(e["id"], e["job"], e["status"]) for e in data] == [(2, "broken", "FAILED"), (1, "hello", "COMPLETED")]
    for execution in data:
        assert EXECUTION_KEYS <= execution.keys()


def test_history_json_times_are_iso_8601_with_a_time_zone(invoke: Invoke) -> None:
    from datetime import datetime

    invoke("start", "hello", "--params", '{"n": 1}')
    [execution] = parse(invoke("history", "--json"))
    for key in ("created_at", "started_at", "ended_at"):
        assert datetime.fromisoformat(execution[key]).tzinfo is not None
    assert execution["exit_code"] == "COMPLETED"
    assert execution["exit_message"] is None
    assert isinstance(execution["pid"], int)
    assert execution["host"]


def test_history_filters_by_job_status_and_limit(invoke: Invoke) -> None:
    for n in (1, 2, 3):
        invoke("start", "hello", "--params", json.dumps({"n": n}))
    invoke("start", "broken")
    assert [e["id"] for e in parse(invoke("history", "hello", "--json"))] == [3, 2, 1]
    assert [e["id"] for e in parse(invoke("history", "--status", "failed", "--json"))] == [4]
    assert [e["id"] for e in parse(invoke("history", "--limit", "2", "--json"))] == [4, 3]


def test_history_of_an_empty_repository_is_an_empty_list(invoke: Invoke) -> None:
    assert parse(invoke("history", "--json")) == []


def test_history_prints_a_table(invoke: Invoke) -> None:
    invoke("start", "hello", "--params", '{"n": 1}')
    result = invoke("history")
    assert result.exit_code == 0
    header = result.stdout.splitlines()[0].split()
    assert header[:4] == ["id", "job", "params", "status"]
    assert "hello" in result.stdout and "COMPLETED" in result.stdout


def test_show_json_is_one_execution_with_its_steps(invoke: Invoke) -> None:
    invoke("start", "hello", "--params", '{"n": 2}')
    data = parse(invoke("show", "1", "--json"))
    assert EXECUTION_KEYS <= data.keys()
    assert data["id"] == 1
    assert data["context"] == {"greeted": 2}
    assert [step["name"] for step in data["steps"]] == ["greet", "count"]
    for step in data["steps"]:
        assert STEP_KEYS <= step.keys()
        assert step["status"] == "COMPLETED"


def test_show_of_a_failed_execution_includes_the_traceback(invoke: Invoke) -> None:
    invoke("start", "broken")
    data = parse(invoke("show", "1", "--json"))
    [step] = data["steps"]
    assert step["exit_message"].startswith("RuntimeError: kaboom")
    assert "Traceback" in step["exit_message"]


def test_show_prints_the_execution_and_its_steps(invoke: Invoke) -> None:
    invoke("start", "hello", "--params", '{"n": 2}')
    result = invoke("show", "1")
    assert result.exit_code == 0
    assert "greet" in result.stdout and "count" in result.stdout
    assert "COMPLETED" in result.stdout


def test_jobs_json_lists_description_params_and_steps(invoke: Invoke) -> None:
    data = parse(invoke("jobs", "--json"))
    assert [job["name"] for job in data] == ["broken", "hello"]
    hello = data[1]
    assert hello["description"] == "Says hello"
    assert hello["params"]["n"] == {"type": "int", "required": True}
    assert hello["params"]["day"]["required"] is False
    assert [step["name"] for step in hello["steps"]] == ["greet", "count"]
    assert hello["steps"][0]["description"] == "Greet n times."


def test_jobs_prints_a_table(invoke: Invoke) -> None:
    result = invoke("jobs")
    assert result.exit_code == 0
    assert "hello" in result.stdout and "Says hello" in result.stdout


def test_jobs_reports_a_broken_module_and_lists_the_others(
    invoke: Invoke, write_job: Callable[[str, str], Path]
) -> None:
    path = write_job("zz_broken", "import no_such_module_xyz\n")
    result = invoke("jobs", "--json")
    assert result.exit_code == 0
    assert [job["name"] for job in json.loads(result.stdout)] == ["broken", "hello"]
    assert f"{path}:1" in result.stderr


def test_a_broken_module_does_not_stop_other_jobs_from_running(
    invoke: Invoke, write_job: Callable[[str, str], Path]
) -> None:
    write_job("zz_broken", "raise SystemError('broken on import')\n")
    assert invoke("start", "hello", "--params", '{"n": 1}').exit_code == 0
    assert invoke("history").exit_code == 0


def test_db_upgrade_creates_the_schema(invoke: Invoke, database_url: str) -> None:
    from batchctl.repository.connect import create_repository_engine
    from batchctl.repository.migrate import HEAD_REVISION, current_revision

    result = invoke("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert f"revision {HEAD_REVISION}" in result.stderr
    engine = create_repository_engine(database_url)
    try:
        assert current_revision(engine) == HEAD_REVISION
    finally:
        engine.dispose()


def test_every_command_has_help(invoke: Invoke) -> None:
    for command in ("start", "history", "show", "jobs", "db"):
        result = invoke(command, "--help")
        assert result.exit_code == 0, command
        assert "Usage" in result.stdout


def test_a_password_in_a_reachable_database_url_is_never_printed(
    postgres_url: str, jobs_dir: Path, write_job: Callable[[str, str], Path],
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """Postgres only: the test server trusts local connections, so any password is accepted."""
    write_job("hello", JOBS)
    url = postgres_url.replace("postgresql://postgres@", "postgresql://postgres:secretpw@")
    assert "secretpw" in url
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BATCHCTL_CONFIG", raising=False)
    monkeypatch.setenv("BATCHCTL_DATABASE_URL", url)
    monkeypatch.setenv("BATCHCTL_JOBS_DIR", str(jobs_dir))
    runner = CliRunner()
    outputs = []
    for args in (["db", "upgrade"], ["start", "hello", "--params", '{"n": 1}'], ["--debug", "history"]):
        result = runner.invoke(cli.app, args)
        assert result.exit_code == 0, result.output
        outputs.append(result.stdout + result.stderr)
    assert not any("secretpw" in output for output in outputs)
    assert "postgresql://postgres:***@" in outputs[0]

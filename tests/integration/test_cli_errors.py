"""Every error of the command line, on SQLite and Postgres: its exit code, one line on stderr
(a traceback only with --debug or BATCHCTL_DEBUG=1), and nothing written to the repository."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

NO_ROWS = {"job_instance": 0, "job_execution": 0, "step_execution": 0}

JOB = """
    from batchctl import Job

    job = Job("hello", params={"n": int})

    @job.tasklet
    def greet(ctx):
        pass
"""

UNREACHABLE = {
    "postgres": "postgresql://postgres:secretpw@127.0.0.1:1/x",
    "sqlite": "sqlite:////nonexistent-batchctl-folder/deeper/repo.db",
}


@pytest.fixture(autouse=True)
def _hello(write_job: Callable[[str, str], Path]) -> None:
    write_job("hello", JOB)


def assert_one_line_error(outcome, code: int, *phrases: str) -> str:
    assert outcome.code == code, outcome
    assert len(outcome.err_lines) == 1, outcome.err
    [line] = outcome.err_lines
    assert line.startswith("batchctl: error: ")
    assert "Traceback" not in outcome.err
    for phrase in phrases:
        assert phrase in line
    assert outcome.out == ""
    return line


def test_invalid_json_params_exit_2(run_cli, rows) -> None:
    outcome = run_cli("start", "hello", "--params", "{n: 1")
    assert_one_line_error(outcome, 2, "--params is not valid JSON")
    assert rows() == NO_ROWS


def test_params_that_are_not_an_object_exit_2(run_cli, rows) -> None:
    outcome = run_cli("start", "hello", "--params", "[1, 2]")
    assert_one_line_error(outcome, 2, "JSON object")
    assert rows() == NO_ROWS


def test_an_unknown_job_exits_2_naming_it(run_cli, rows) -> None:
    outcome = run_cli("start", "nosuchjob", "--params", "{}")
    assert_one_line_error(outcome, 2, "unknown job 'nosuchjob'", "known jobs: hello")
    assert rows() == NO_ROWS


def test_an_ill_typed_param_exits_2_naming_it(run_cli, rows) -> None:
    outcome = run_cli("start", "hello", "--params", '{"n": "lots"}')
    assert_one_line_error(outcome, 2, "param 'n' must be an integer")
    assert rows() == NO_ROWS


def test_a_missing_param_exits_2_naming_it(run_cli, rows) -> None:
    outcome = run_cli("start", "hello")
    assert_one_line_error(outcome, 2, "missing param 'n'")
    assert rows() == NO_ROWS


def test_an_unknown_execution_id_exits_2(run_cli, rows) -> None:
    outcome = run_cli("show", "424242")
    assert_one_line_error(outcome, 2, "no execution with id 424242")
    assert rows() == NO_ROWS


def test_an_unknown_status_exits_2(run_cli, rows) -> None:
    outcome = run_cli("history", "--status", "DONE")
    assert_one_line_error(outcome, 2, "unknown status 'DONE'")


def test_a_command_line_usage_error_exits_2_with_one_line(run_cli) -> None:
    outcome = run_cli("show", "not-a-number")
    assert outcome.code == 2
    assert outcome.err_lines == [
        "batchctl: error: Invalid value for 'ID': 'not-a-number' is not a valid int. "
        "(see 'batchctl show --help')"
    ]


def test_starting_a_completed_instance_exits_4_with_the_hint(run_cli, rows) -> None:
    assert run_cli("start", "hello", "--params", '{"n": 5}').code == 0
    before = rows()

    outcome = run_cli("start", "hello", "--params", '{"n": "5"}')

    assert_one_line_error(outcome, 4, "already completed", "a different param value makes a new instance")
    assert rows() == before


def test_starting_an_instance_that_is_running_exits_4(run_cli, rows, batch) -> None:
    live, _ = batch.create_start("hello", {"n": 1})
    before = rows()

    outcome = run_cli("start", "hello", "--params", '{"n": 1}')

    assert_one_line_error(outcome, 4, "already running", f"execution {live.id}")
    assert rows() == before


def test_an_invalid_config_exits_5_naming_the_file_and_key(run_cli, tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[batchctl]\ndatabase_url = "x.db"\n')
    monkeypatch.delenv("BATCHCTL_DATABASE_URL")
    outcome = run_cli("--config", str(config), "history")
    assert_one_line_error(outcome, 5, str(config), "batchctl.database_url")


def test_invalid_toml_in_config_exits_5(run_cli, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "config.toml").write_text("[batchctl\n")
    monkeypatch.setenv("BATCHCTL_CONFIG", str(tmp_path / "config.toml"))
    outcome = run_cli("jobs")
    assert_one_line_error(outcome, 5, "invalid TOML")


def test_debug_adds_the_traceback(run_cli) -> None:
    outcome = run_cli("--debug", "start", "nosuchjob")
    assert outcome.code == 2
    assert "Traceback (most recent call last)" in outcome.err
    assert outcome.err_lines[-1].startswith("batchctl: error: unknown job 'nosuchjob'")


def test_batchctl_debug_adds_the_traceback(run_cli, monkeypatch) -> None:
    monkeypatch.setenv("BATCHCTL_DEBUG", "1")
    outcome = run_cli("start", "nosuchjob")
    assert outcome.code == 2
    assert "Traceback (most recent call last)" in outcome.err


@pytest.mark.parametrize("backend", sorted(UNREACHABLE))
def test_an_unreachable_database_exits_5(run_cli, monkeypatch, backend: str) -> None:
    monkeypatch.setenv("BATCHCTL_DATABASE_URL", UNREACHABLE[backend])
    outcome = run_cli("history")
    line = assert_one_line_error(outcome, 5, "cannot reach the job repository")
    assert "secretpw" not in line


@pytest.mark.parametrize("debug", [["--debug"], []])
@pytest.mark.parametrize("how", ["option", "environment", "config file"])
def test_the_database_password_is_never_printed(
    run_cli, monkeypatch, tmp_path: Path, how: str, debug: list[str]
) -> None:
    url = UNREACHABLE["postgres"]
    args = [*debug, "history"]
    if how == "option":
        args = ["--db", url, *args]
    elif how == "environment":
        monkeypatch.setenv("BATCHCTL_DATABASE_URL", url)
    else:
        monkeypatch.delenv("BATCHCTL_DATABASE_URL")
        (tmp_path / "config.toml").write_text(f'[batchctl]\ndatabase = "{url}"\n')

    outcome = run_cli(*args)

    assert outcome.code == 5
    assert "secretpw" not in outcome.err + outcome.out
    assert "postgresql://postgres:***@127.0.0.1:1/x" in outcome.err
    assert ("Traceback" in outcome.err) == bool(debug)

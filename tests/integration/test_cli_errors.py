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
    outcome = run_cli("history", "--limit", "not-a-number")
    assert outcome.code == 2
    assert outcome.err_lines == [
        "batchctl: error: Invalid value for '--limit' / '-n': 'not-a-number' is not a valid "
        "int range. (see 'batchctl history --help')"
    ]


def test_starting_a_completed_instance_exits_4_with_the_hint(run_cli, rows) -> None:
    assert run_cli("start", "hello", "--params", '{"n": 5}').code == 0
    before = rows()

    outcome = run_cli("start", "hello", "--params", '{"n": "5"}')

    assert_one_line_error(outcome, 4, "already completed", "a different param value makes a new instance")
    assert rows() == before


def test_starting_an_instance_that_is_running_exits_4(run_cli, rows, batch) -> None:
    live, _ = batch._create_start("hello", {"n": 1})
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


# -- issue 8, section 9: raw errors that must be one line -------------------------------------------

DEEP_PARAMS = '{"n": ' + "[" * 10_000 + "]" * 10_000 + "}"
HUGE_INT_PARAMS = '{"n": ' + "9" * 5_000 + "}"
HUGE_ID = "99999999999999999999"  # beyond the 64-bit ids of both databases


@pytest.mark.parametrize(
    ("params", "phrase"),
    [
        (DEEP_PARAMS, "--params is nested too deeply"),
        (HUGE_INT_PARAMS, "param 'n' holds an integer of more than 4000 digits"),
        ('{"n": "' + "9" * 5_000 + '"}', "param 'n' must be an integer"),
        ('{"n": NaN}', "param 'n' holds NaN"),
        ('{"n": 1, "x": [Infinity]}', "param 'x' holds Infinity"),
        ('{"n": -Infinity}', "param 'n' holds -Infinity"),
    ],
    ids=["deep", "huge-int", "huge-int-text", "nan", "nested-infinity", "minus-infinity"],
)
def test_params_python_json_accepts_but_json_has_not_exit_2(run_cli, rows, params: str, phrase: str) -> None:
    """RecursionError, Python's int/str digit limit and NaN literals were raw exit-1 errors
    (or accepted): each is one line naming the param, and nothing is recorded."""
    outcome = run_cli("start", "hello", "--params", params)
    line = assert_one_line_error(outcome, 2, phrase)
    assert len(line) < 200
    assert rows() == NO_ROWS


@pytest.mark.parametrize(
    "command",
    [["show", HUGE_ID], ["abandon", HUGE_ID], ["logs", HUGE_ID], ["stop", HUGE_ID],
     ["restart", HUGE_ID], ["stop", "9" * 5_000]],
    ids=["show", "abandon", "logs", "stop", "restart", "stop-5000-digits"],
)
def test_an_id_beyond_64_bits_is_no_execution_exit_2(run_cli, rows, command: list[str]) -> None:
    """An OverflowError on SQLite, 'bigint out of range' on Postgres: now a missing id."""
    outcome = run_cli(*command)
    assert_one_line_error(outcome, 2, "no execution with id 9")
    assert rows() == NO_ROWS


def test_a_limit_beyond_64_bits_is_a_usage_error(run_cli) -> None:
    outcome = run_cli("history", "--limit", HUGE_ID)
    assert_one_line_error(outcome, 2, "--limit", "is not in the range")


@pytest.mark.parametrize("how", ["option", "environment"])
@pytest.mark.parametrize("debug", [["--debug"], []])
def test_an_unencoded_at_sign_in_the_password_exits_5_showing_none_of_it(
    run_cli, monkeypatch, how: str, debug: list[str]
) -> None:
    """The driver used to print the password's tail as a host it could not resolve, exit 1."""
    url = "postgresql://u:S3cr@tPw@127.0.0.1/db"
    args = [*debug, "history"]
    if how == "option":
        args = ["--db", url, *args]
    else:
        monkeypatch.setenv("BATCHCTL_DATABASE_URL", url)
    outcome = run_cli(*args)
    assert outcome.code == 5
    assert "S3cr" not in outcome.err and "tPw" not in outcome.err
    assert outcome.err_lines[-1] == (
        "batchctl: error: invalid database URL postgresql://u:***@127.0.0.1/db: the password "
        "holds an '@'; percent-encode it as %40"
    )


def test_a_host_that_does_not_resolve_exits_5(run_cli, monkeypatch) -> None:
    monkeypatch.setenv("BATCHCTL_DATABASE_URL", "postgresql://u:secretpw@no-such-host.invalid/db")
    outcome = run_cli("history")
    line = assert_one_line_error(outcome, 5, "cannot reach the job repository")
    assert "secretpw" not in line


@pytest.mark.parametrize("value", ["nan", "inf", "0"])
def test_a_non_finite_heartbeat_interval_exits_5(run_cli, monkeypatch, value: str) -> None:
    monkeypatch.setenv("BATCHCTL_HEARTBEAT_INTERVAL", value)
    outcome = run_cli("history")
    assert_one_line_error(outcome, 5, "BATCHCTL_HEARTBEAT_INTERVAL must be greater than 0")


def test_a_nan_heartbeat_in_the_config_file_exits_5(run_cli, monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[batchctl]\nheartbeat_interval = nan\n")
    outcome = run_cli("history")
    assert_one_line_error(outcome, 5, "batchctl.heartbeat_interval", "got nan")


def read_only_url(database_url: str) -> str:
    """The same repository, opened read-only: a SQLite URI in mode=ro (the tests run as root,
    which a chmod would not stop), a Postgres session whose transactions are read-only."""
    if database_url.startswith("sqlite:///"):
        return f"sqlite:///file:{database_url[len('sqlite:///'):]}?mode=ro&uri=true"
    return database_url + "%20-cdefault_transaction_read_only%3Don"


def test_a_read_only_repository_exits_5(run_cli, rows, monkeypatch, database_url: str) -> None:
    assert rows() == NO_ROWS  # the schema exists
    monkeypatch.setenv("BATCHCTL_DATABASE_URL", read_only_url(database_url))
    outcome = run_cli("start", "hello", "--params", '{"n": 1}')
    assert_one_line_error(outcome, 5, "is read-only")
    assert rows() == NO_ROWS


def test_a_log_dir_that_is_a_file_exits_5_before_recording_anything(
    run_cli, rows, monkeypatch, tmp_path: Path
) -> None:
    (tmp_path / "logs").write_text("not a folder")
    monkeypatch.setenv("BATCHCTL_LOG_DIR", str(tmp_path / "logs"))
    outcome = run_cli("start", "hello", "--params", '{"n": 1}', "--detach")
    assert_one_line_error(outcome, 5, f"log_dir {tmp_path / 'logs'} is not a folder")
    assert rows() == NO_ROWS


# -- issue 10: errors that were still raw ---------------------------------------------------------


@pytest.mark.parametrize("url", ["postgresql://u@h:notaport/db", "postgresql://u:secretpw@h:80x/db"])
def test_a_port_that_is_not_a_number_exits_5(run_cli, monkeypatch, url: str) -> None:
    """SQLAlchemy's int() of the port was an "unexpected ValueError", exit 1."""
    monkeypatch.setenv("BATCHCTL_DATABASE_URL", url)
    outcome = run_cli("history")
    line = assert_one_line_error(outcome, 5, "invalid database URL", "is not a number")
    assert "secretpw" not in line


@pytest.mark.parametrize("command", [["history"], ["db", "upgrade"]])
def test_a_search_path_schema_that_does_not_exist_exits_5_saying_how_to_create_it(
    run_cli, monkeypatch, postgres_admin, command: list[str]
) -> None:
    """Postgres' "no schema has been selected to create in" was a raw ProgrammingError, exit 1."""
    from tests.conftest import postgres_schema_url

    monkeypatch.setenv("BATCHCTL_DATABASE_URL", postgres_schema_url("nope_batchctl_missing"))
    outcome = run_cli(*command)
    assert_one_line_error(
        outcome, 5, "schema 'nope_batchctl_missing'", "does not exist",
        'CREATE SCHEMA "nope_batchctl_missing"',
    )


def test_a_sqlite_file_in_a_missing_folder_names_the_folder(run_cli, monkeypatch, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    monkeypatch.setenv("BATCHCTL_DATABASE_URL", f"sqlite:///{missing / 'repo.db'}")
    outcome = run_cli("history")
    assert_one_line_error(outcome, 5, f"its folder {missing} does not exist", "mkdir -p")
    assert not missing.exists()


@pytest.mark.parametrize("key", ["heartbeat_timeout", "heartbeat_interval"])
def test_a_number_written_as_a_toml_string_exits_5(run_cli, monkeypatch, tmp_path: Path, key: str) -> None:
    """`heartbeat_timeout = "60"` was read as 60; the file's other type errors are refused."""
    (tmp_path / "config.toml").write_text(f'[batchctl]\n{key} = "60"\n')
    outcome = run_cli("history")
    assert_one_line_error(outcome, 5, f"batchctl.{key}", "must be a number of seconds",
                          "got the string '60'")


def test_the_environment_still_gives_numbers_as_text(run_cli, monkeypatch) -> None:
    monkeypatch.setenv("BATCHCTL_HEARTBEAT_TIMEOUT", "60")
    assert run_cli("history").code == 0

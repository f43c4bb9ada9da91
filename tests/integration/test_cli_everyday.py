"""Everyday use (issue 10): every command takes a job name, refusals say what to do next, and
what `history` and `show` print is readable. On SQLite and Postgres, through `cli.main`."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from batchctl.host import pid_scope
from batchctl.model import Status, utcnow
from batchctl.operator import Batch

JOBS = '''
from batchctl import Job
from batchctl.items import CsvReader

job = Job("daily", params={"date": str, "region": str, "fail": bool})


@job.tasklet
def first(ctx):
    ctx.log.info("first for %s", ctx.params["date"])


def keep(items, ctx):
    pass


job.chunk_step("load", reader=CsvReader("{csv}", types={"amount": int}), writer=keep, size=2,
               skip=ValueError)


@job.tasklet
def last(ctx):
    if ctx.params["fail"]:
        helper()


def helper():
    raise KeyError("no such account")


quick = Job("quick")


@quick.tasklet
def only(ctx):
    pass
'''

LONG = "y" * 150


@pytest.fixture
def jobs(write_job: Callable[[str, str], Path], tmp_path: Path) -> Path:
    data = tmp_path / "entries.csv"
    data.write_text(f"id,amount\n1,5\n2,x\n3,7\n4,{LONG}\n")
    return write_job("daily", JOBS.replace("{csv}", str(data)))


def start(run_cli: Any, date: str = "2024-01-31", region: str = "eu", fail: bool = False) -> Any:
    params = json.dumps({"date": date, "region": region, "fail": fail})
    return run_cli("start", "daily", "--params", params)


def one_error(outcome: Any, code: int) -> str:
    assert outcome.code == code, outcome
    [line] = outcome.err_lines
    assert line.startswith("batchctl: error: ")
    return line


# -- every command takes a job name -----------------------------------------------------------------


def test_show_logs_and_abandon_take_a_job_name_for_its_latest_execution(jobs: Path, run_cli: Any) -> None:
    start(run_cli, date="2024-01-30")
    assert start(run_cli, fail=True).code == 1

    shown = json.loads(run_cli("show", "daily", "--json").out)
    assert shown["id"] == 2 and shown["status"] == "FAILED"
    logs = run_cli("logs", "daily")
    assert "execution 2 has no log file" in one_error(logs, 2)
    abandoned = json.loads(run_cli("abandon", "daily", "--json").out)
    assert abandoned["id"] == 2 and abandoned["status"] == "ABANDONED"

    assert "unknown job 'nosuch'" in one_error(run_cli("show", "nosuch"), 2)
    assert "job quick has no executions" in one_error(run_cli("abandon", "quick"), 2)


def test_history_of_a_name_that_is_neither_a_job_nor_in_the_history_exits_2(
    jobs: Path, run_cli: Any
) -> None:
    assert "unknown job 'dialy'" in one_error(run_cli("history", "dialy"), 2)
    outcome = run_cli("history", "quick")  # a job, never run: simply no executions
    assert outcome.code == 0 and "no executions" in outcome.err


# -- refusals say what to do next -------------------------------------------------------------------


def test_restart_refusals_say_what_to_do_next(jobs: Path, run_cli: Any, batch: Batch) -> None:
    live, _ = batch._create_start("daily", {"date": "d1", "region": "eu", "fail": False},
                                  detach=True)
    line = one_error(run_cli("restart", str(live.id)), 4)
    assert f"still STARTING; 'batchctl stop {live.id}'" in line

    assert start(run_cli, date="d2", region="o'hare", fail=True).code == 1
    run_cli("abandon", "daily")
    line = one_error(run_cli("restart", "daily"), 4)
    assert "is ABANDONED" in line
    assert """batchctl start daily --params '{"date":"d2","fail":true,"region":"o'"'"'hare"}'""" in line


def test_stop_of_a_lost_run_says_it_was_lost_and_when(jobs: Path, run_cli: Any, batch: Batch) -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    execution, _ = batch._create_start("daily", {"date": "d1", "region": "eu", "fail": False},
                                       detach=True)
    batch.repository.update_execution(
        execution, status=Status.STARTED, pid=process.pid, host=socket.gethostname(),
        pid_scope=pid_scope(), heartbeat_at=utcnow(), started_at=utcnow(),
    )
    line = one_error(run_cli("stop", "daily"), 4)
    assert f"execution {execution.id} of job daily is not live (FAILED): it was found lost at " in line
    assert f"process lost: pid {process.pid}" in line
    assert f"'batchctl restart {execution.id}' resumes it" in line


# -- history -----------------------------------------------------------------------------------------


def test_history_shows_params_that_differ_first_and_who_resumed_a_failure(
    jobs: Path, run_cli: Any
) -> None:
    assert start(run_cli, date="2024-01-31", fail=True).code == 1
    assert run_cli("restart", "1").code == 1  # the same failure again
    assert start(run_cli, date="2024-02-01").code == 0

    table = run_cli("history").out
    rows = {int(line.split()[0]): line for line in table.splitlines()[1:]}
    assert "date=2024-02-01 fail=false region=eu" in rows[3]
    assert "date=2024-01-31 fail=true region=eu" in rows[1]
    assert "FAILED, resumed by 2" in rows[1] and "resumed by" not in rows[2]
    assert "last failed: KeyError: 'no such account'" in rows[2]  # the message's first line

    cut = run_cli("history", "-n", "2")
    assert len(cut.out.splitlines()) == 3
    assert "showing the 2 most recent; --limit N shows more" in cut.err
    assert "--limit" not in run_cli("history", "-n", "3").err
    assert "fail=true" in run_cli("history", "-n", "2", "--status", "failed").out


def test_history_since_and_until(jobs: Path, run_cli: Any, batch: Batch) -> None:
    assert start(run_cli).code == 0
    ids = lambda *args: [e["id"] for e in json.loads(run_cli("history", "--json", *args).out)]  # noqa: E731
    assert ids("--since", "1h") == [1]
    assert ids("--since", "2099-01-01") == []
    assert ids("--until", "2000-01-01") == []
    today = utcnow().astimezone().date().isoformat()
    assert ids("--since", today, "--until", today) == [1]
    assert ids("--until", "1h") == []
    line = one_error(run_cli("history", "--since", "yesterday"), 2)
    assert "--since: 'yesterday' is neither an ISO date" in line


# -- show --------------------------------------------------------------------------------------------


def test_show_leads_a_failure_with_its_exception_and_the_jobs_own_frame(
    jobs: Path, run_cli: Any
) -> None:
    assert start(run_cli, fail=True).code == 1
    text = run_cli("show", "1").out
    assert re.search(r"error\s+KeyError: 'no such account'", text)
    assert re.search(r"at\s+\S*daily\.py:\d+ in helper", text)
    assert "Traceback" not in text and "--traceback shows the traceback" in text
    full = run_cli("show", "1", "--traceback").out
    assert "Traceback (most recent call last)" in full and "in helper" in full
    assert "Traceback (most recent call last)" in json.loads(run_cli("show", "1", "--json").out)[
        "exit_message"
    ]


def test_show_of_a_restart_lists_the_steps_earlier_executions_completed(
    jobs: Path, run_cli: Any
) -> None:
    assert start(run_cli, fail=True).code == 1
    assert run_cli("restart", "1").code == 1
    text = run_cli("show", "2").out
    assert re.search(r"first\s+COMPLETED in execution 1", text)
    assert re.search(r"load\s+COMPLETED in execution 1", text)
    assert re.search(r"last\s+FAILED", text)
    steps = json.loads(run_cli("show", "2", "--json").out)["steps"]
    assert [step["name"] for step in steps] == ["last"]  # JSON: this execution's own steps


def test_show_names_the_column_of_a_skipped_csv_record_and_shows_it_whole(
    jobs: Path, run_cli: Any
) -> None:
    assert start(run_cli).code == 0
    text = run_cli("show", "1").out
    assert "ValueError: column 'amount': invalid literal for int()" in text
    assert LONG in "".join(text.split())  # whole, however it is wrapped
    [skip, *_] = json.loads(run_cli("show", "1", "--json").out)["skipped"]
    assert skip["error"].startswith("ValueError: column 'amount': ")


# -- the terminal, small things -----------------------------------------------------------------------


def test_batchctl_alone_prints_the_help_and_exits_0(run_cli: Any) -> None:
    outcome = run_cli()
    assert outcome.code == 0 and "Usage" in outcome.out and "error" not in outcome.err


def test_an_unknown_option_is_one_line_without_a_list_of_possibilities(run_cli: Any) -> None:
    line = one_error(run_cli("history", "--jsn"), 2)
    assert line == ("batchctl: error: no such option: --jsn (did you mean --json?) "
                    "(see 'batchctl history --help')")
    assert "Possible" not in one_error(run_cli("history", "--frobnicate"), 2)


def test_status_help_lists_the_statuses(run_cli: Any) -> None:
    text = " ".join(run_cli("history", "--help").out.split())
    for status in Status:
        assert status.value in text


def test_durations_under_a_second_are_milliseconds(jobs: Path, run_cli: Any) -> None:
    outcome = run_cli("start", "quick")
    assert re.search(r"COMPLETED in \d+ms$", outcome.out.strip()), outcome.out


def test_with_no_config_file_empty_answers_say_where_they_looked(
    run_cli: Any, tmp_path: Path, jobs_dir: Path
) -> None:
    outcome = run_cli("history")
    assert "no executions (no config.toml found from" in outcome.err
    assert f"jobs directory {jobs_dir}" in outcome.err and "database " in outcome.err
    assert "no config.toml found" in run_cli("jobs").err
    assert "no config.toml found" in one_error(run_cli("start", "eod"), 2)

    (tmp_path / "config.toml").write_text('[batchctl]\ndatabase = "other.db"\n')
    outcome = run_cli("history")
    assert outcome.err.strip() == "no executions"
    assert os.path.exists(tmp_path / "config.toml")

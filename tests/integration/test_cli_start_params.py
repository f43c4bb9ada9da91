"""`start` on the command line (issue 10), on SQLite and Postgres: `--param/-P`, the refusal of
undeclared params, `--dry-run` (writes nothing) and `--rerun`, with `show` and `history` saying
which instance a rerun repeats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from batchctl.model import instance_key

from tests.integration.test_cli_errors import assert_one_line_error

JOB = """
    from datetime import date
    from pathlib import Path

    from batchctl import Job, Param

    job = Job("eod", params={"date": date, "out_dir": Param(str, default="out")})

    @job.tasklet
    def post(ctx):
        if Path(__file__).with_name("failing").exists():
            raise RuntimeError("failing on purpose")
        ctx.log.info("posting %s to %s", ctx.params["date"], ctx.params["out_dir"])
"""

KEY = instance_key({"date": "2024-01-31", "out_dir": "out"})


@pytest.fixture(autouse=True)
def _eod(write_job: Callable[[str, str], Path]) -> None:
    write_job("eod", JOB)


@pytest.fixture
def failing(jobs_dir: Path) -> Callable[[bool], None]:
    """failing(True): the eod job fails until failing(False)."""

    def switch(on: bool) -> None:
        marker = jobs_dir / "failing"
        if on:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)

    return switch


def test_an_undeclared_param_exits_2_naming_the_closest_declared_one(run_cli, rows) -> None:
    before = rows()
    outcome = run_cli("start", "eod", "-P", "date=2024-01-31", "-P", "out_dri=/tmp/x")
    assert_one_line_error(
        outcome, 2,
        "unknown param 'out_dri' for job eod (did you mean 'out_dir'? declared: date, out_dir)",
    )
    assert rows() == before


def test_a_wrong_case_name_gets_the_same_hint(run_cli, rows) -> None:
    before = rows()
    outcome = run_cli("start", "eod", "--params", '{"Date": "2024-01-31"}')
    assert_one_line_error(outcome, 2, "unknown param 'Date' for job eod (did you mean 'date'?")
    assert rows() == before


def test_param_pairs_are_converted_by_the_declared_type(run_cli) -> None:
    outcome = run_cli("start", "eod", "-P", "date=2024-01-31", "--param", "out_dir=o", "--json")
    assert outcome.code == 0, outcome
    assert json.loads(outcome.out)["params"] == {"date": "2024-01-31", "out_dir": "o"}


def test_a_pair_and_the_json_make_the_same_instance(run_cli) -> None:
    assert run_cli("start", "eod", "-P", "date=2024-01-31").code == 0
    outcome = run_cli("start", "eod", "--params", '{"date": "2024-01-31"}')
    assert_one_line_error(outcome, 4, "already completed")


def test_a_name_in_both_the_json_and_a_pair_exits_2(run_cli, rows) -> None:
    before = rows()
    outcome = run_cli("start", "eod", "--params", '{"date": "2024-01-31"}', "-P", "date=2024-02-01")
    assert_one_line_error(outcome, 2, "param 'date' is given twice")
    assert rows() == before


def test_a_pair_without_an_equals_sign_exits_2_with_an_example(run_cli) -> None:
    outcome = run_cli("start", "eod", "-P", "date")
    assert_one_line_error(outcome, 2, "--param expects key=value", "-P date=2024-01-31")


def test_invalid_json_params_show_valid_input(run_cli) -> None:
    outcome = run_cli("start", "eod", "--params", "{date: 2024-01-31}")
    assert_one_line_error(outcome, 2, "--params is not valid JSON",
                          """--params '{"date": "2024-01-31"}'""")


# -- --dry-run ------------------------------------------------------------------------------------


def test_a_dry_run_of_new_params_prints_the_key_and_writes_nothing(run_cli, rows) -> None:
    before = rows()
    outcome = run_cli("start", "eod", "-P", "date=2024-01-31", "--dry-run")
    assert outcome.code == 0, outcome
    assert KEY in outcome.out
    assert "would start a new instance of job eod" in outcome.out
    assert "date=2024-01-31" in outcome.out or "2024-01-31" in outcome.out
    assert outcome.err == ""
    assert rows() == before


def test_a_dry_run_with_json_prints_the_plan(run_cli, rows) -> None:
    before = rows()
    outcome = run_cli("start", "eod", "-P", "date=2024-01-31", "--dry-run", "--json")
    assert outcome.code == 0, outcome
    plan = json.loads(outcome.out)
    assert plan["action"] == "new"
    assert plan["instance_key"] == KEY
    assert plan["params"] == {"date": "2024-01-31", "out_dir": "out"}
    assert plan["instance_id"] is None and plan["exit_code"] == 0
    assert rows() == before


def test_a_dry_run_of_a_completed_instance_says_why_it_is_refused(run_cli, rows) -> None:
    assert run_cli("start", "eod", "-P", "date=2024-01-31").code == 0
    before = rows()
    outcome = run_cli("start", "eod", "-P", "date=2024-01-31", "--dry-run")
    assert outcome.code == 4, outcome
    assert "would be refused (exit 4): job eod already completed" in " ".join(outcome.out.split())
    outcome = run_cli("start", "eod", "-P", "date=2024-01-31", "--dry-run", "--json")
    assert outcome.code == 4
    plan = json.loads(outcome.out)
    assert (plan["action"], plan["exit_code"], plan["last_status"]) == ("refused", 4, "COMPLETED")
    assert "--rerun" in plan["refusal"]
    assert rows() == before


def test_a_dry_run_of_a_failed_instance_names_the_execution_it_resumes(run_cli, rows, failing) -> None:
    failing(True)
    failed = json.loads(run_cli("start", "eod", "-P", "date=2024-01-31", "--json").out)
    before = rows()
    outcome = run_cli("start", "eod", "-P", "date=2024-01-31", "--dry-run", "--json")
    assert outcome.code == 0, outcome
    plan = json.loads(outcome.out)
    assert (plan["action"], plan["resumes"], plan["instance_id"]) == (
        "resume", failed["id"], failed["instance_id"],
    )
    assert f"from execution {failed['id']}" in plan["description"]
    assert rows() == before


def test_a_dry_run_with_bad_params_exits_2(run_cli, rows) -> None:
    before = rows()
    assert_one_line_error(run_cli("start", "eod", "--dry-run"), 2, "missing param 'date'")
    assert_one_line_error(run_cli("start", "eod", "-P", "date=2024-13-01", "--dry-run"), 2,
                          "param 'date' must be a date")
    assert rows() == before


# -- --rerun --------------------------------------------------------------------------------------


def test_a_rerun_of_a_completed_instance_is_shown_as_such(run_cli, rows) -> None:
    first = json.loads(run_cli("start", "eod", "-P", "date=2024-01-31", "--json").out)

    dry = run_cli("start", "eod", "-P", "date=2024-01-31", "--rerun", "--dry-run", "--json")
    assert dry.code == 0, dry
    assert json.loads(dry.out)["rerun_of"] == first["instance_id"]

    outcome = run_cli("start", "eod", "-P", "date=2024-01-31", "--rerun")
    assert outcome.code == 0, outcome
    assert f"rerun 1 of instance {first['instance_id']}" in outcome.err

    [again, _] = json.loads(run_cli("history", "eod", "--json").out)
    assert again["instance_id"] != first["instance_id"]
    assert (again["rerun_of"], again["rerun"]) == (first["instance_id"], 1)
    assert json.loads(run_cli("show", str(first["id"]), "--json").out)["rerun_of"] is None
    shown = json.loads(run_cli("show", str(again["id"]), "--json").out)
    assert (shown["rerun_of"], shown["rerun"]) == (first["instance_id"], 1)
    table = run_cli("show", str(again["id"])).out
    assert f"rerun 1 of instance {first['instance_id']}" in table
    assert rows()["job_instance"] == 2


def test_a_rerun_of_a_failed_instance_exits_4_suggesting_restart(run_cli, rows, failing) -> None:
    failing(True)
    failed = json.loads(run_cli("start", "eod", "-P", "date=2024-01-31", "--json").out)
    before = rows()
    outcome = run_cli("start", "eod", "-P", "date=2024-01-31", "--rerun")
    assert_one_line_error(outcome, 4, f"batchctl restart {failed['id']}")
    assert rows() == before

"""`sys.exit` in job code through the command line (issue 8): a module that exits is a load
problem of that module only, and a step that exits ends FAILED with exit code 1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

JOBS = {
    "fine": """
        from batchctl import Job

        job = Job("fine")

        @job.tasklet
        def only(ctx):
            pass
    """,
    "leaves_at_import": """
        import sys
        from batchctl import Job

        job = Job("never_seen")
        sys.exit(0)
    """,
    "leaves_in_a_step": """
        import sys
        from batchctl import Job

        job = Job("leaves")

        @job.tasklet
        def leave(ctx):
            sys.exit(0)
    """,
}


@pytest.fixture(autouse=True)
def _jobs(write_job: Callable[[str, str], Path]) -> None:
    for module, source in JOBS.items():
        write_job(module, source)


def test_a_module_that_calls_sys_exit_is_a_problem_of_that_module_only(run_cli) -> None:
    listed = run_cli("jobs", "--json")
    assert listed.code == 0
    assert {job["name"] for job in json.loads(listed.out)} == {"fine", "leaves"}
    assert "leaves_at_import.py" in listed.err and "sys.exit(0) while loading" in listed.err

    assert run_cli("start", "fine").code == 0


def test_starting_a_job_of_a_module_that_exits_is_an_unknown_job(run_cli) -> None:
    outcome = run_cli("start", "never_seen")
    assert outcome.code == 2
    assert "unknown job 'never_seen'" in outcome.err


def test_a_step_that_calls_sys_exit_0_makes_start_exit_1(run_cli) -> None:
    outcome = run_cli("start", "leaves", "--json")
    assert outcome.code == 1
    shown = json.loads(outcome.out)
    assert shown["status"] == "FAILED"
    assert shown["steps"][0]["exit_message"] == "the step called sys.exit(0)"

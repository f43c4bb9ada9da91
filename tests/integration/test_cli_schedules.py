"""`batchctl schedules` and `batchctl schedules NAME --next N --after ISO`: pure computations over
the config and the jobs; they write nothing to the repository. SQLite only: no database work."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest

from tests.integration.conftest import Outcome

JOBS = """
    from datetime import date
    from batchctl import Job

    job = Job("eod", params={"date": date})
    job.schedule("0 30 1 * * *", name="eod-ny", timezone="America/New_York",
                 params={"date": "{fire-1d:%Y-%m-%d}"})

    @job.tasklet
    def post(ctx):
        pass
"""

CONFIG = """
    [batchctl]

    [batchctl.schedules.eod-paris]
    job = "eod"
    cron = "30 1 * * 1-5"
    timezone = "Europe/Paris"
    params = {date = "{fire-1bd:%Y-%m-%d}"}

    [batchctl.schedules.eod-off]
    job = "eod"
    cron = "@daily"
    params = {date = "{fire:%Y-%m-%d}"}
    enabled = false
"""

BROKEN = """
    [batchctl.schedules.broken]
    job = "nope"
    cron = "30 1 * *"
"""


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """These commands need no repository beyond opening the Batch: SQLite is enough."""
    return f"sqlite:///{tmp_path / 'repository.db'}"


@pytest.fixture
def schedules_cli(
    run_cli: Callable[..., Outcome], write_job: Callable[[str, str], Path],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Outcome]:
    write_job("eod", JOBS)

    def run(*args: str, config: str = CONFIG) -> Outcome:
        path = tmp_path / "config.toml"
        path.write_text(textwrap.dedent(config))
        monkeypatch.setenv("BATCHCTL_CONFIG", str(path))
        return run_cli(*args)

    return run


def test_schedules_json_lists_config_and_code_schedules_with_their_next_fire(
    schedules_cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    outcome = schedules_cli("schedules", "--json")
    assert outcome.code == 0, outcome.err
    found = json.loads(outcome.out)
    assert [row["name"] for row in found] == ["eod-ny", "eod-off", "eod-paris"]
    ny, off, paris = found
    assert {key: ny[key] for key in ("job", "cron", "timezone", "enabled", "source")} == {
        "job": "eod", "cron": "0 30 1 * * *", "timezone": "America/New_York", "enabled": True,
        "source": "code",
    }
    assert ny["next_fire_local"][11:19] == "01:30:00"
    assert ny["next_fire_at"].endswith("+00:00")
    assert off["enabled"] is False and off["next_fire_at"] is None
    assert paris["source"] == "config" and paris["next_fire_local"][11:19] == "01:30:00"
    # The listing reads the repository for the paused state and the last fires (issue 11).
    assert paris["paused"] is False and paris["last_fire_at"] is None


def test_schedules_prints_a_table(schedules_cli: Callable[..., Outcome]) -> None:
    outcome = schedules_cli("schedules")
    assert outcome.code == 0, outcome.err
    header, *rows = outcome.out.splitlines()
    assert header.split()[:5] == ["schedule", "job", "cron", "time", "zone"]
    assert [row.split()[0] for row in rows] == ["eod-ny", "eod-off", "eod-paris"]
    assert "Europe/Paris" in rows[2] and " yes " in rows[2]


def test_invalid_schedules_go_to_stderr_after_the_valid_ones_and_exit_2(
    schedules_cli: Callable[..., Outcome]
) -> None:
    outcome = schedules_cli("schedules", "--json", config=CONFIG + BROKEN)
    assert outcome.code == 2
    assert [row["name"] for row in json.loads(outcome.out)] == ["eod-ny", "eod-off", "eod-paris"]
    assert outcome.err_lines == [
        f"batchctl: error: schedule 'broken' ({Path.cwd() / 'config.toml'}): cron '30 1 * *' "
        "has 4 fields; it needs 5 (minute hour day month weekday) or 6 (a leading seconds "
        "field, then those 5)",
        f"batchctl: error: schedule 'broken' ({Path.cwd() / 'config.toml'}): unknown job 'nope' "
        "(known jobs: eod)",
    ]


def test_next_fires_across_fall_back_as_json(
    schedules_cli: Callable[..., Outcome], tmp_path: Path
) -> None:
    outcome = schedules_cli(
        "schedules", "eod-ny", "--next", "3", "--after", "2025-11-01T12:00:00Z", "--json"
    )
    assert outcome.code == 0, outcome.err
    assert not (tmp_path / "repository.db").exists()  # a pure computation: nothing written
    assert json.loads(outcome.out) == [
        {"fire_at": "2025-11-02T05:30:00+00:00", "local": "2025-11-02T01:30:00-04:00",
         "params": {"date": "2025-11-01"}},
        {"fire_at": "2025-11-03T06:30:00+00:00", "local": "2025-11-03T01:30:00-05:00",
         "params": {"date": "2025-11-02"}},
        {"fire_at": "2025-11-04T06:30:00+00:00", "local": "2025-11-04T01:30:00-05:00",
         "params": {"date": "2025-11-03"}},
    ]


def test_next_fires_after_a_local_time_of_the_schedule(schedules_cli: Callable[..., Outcome]) -> None:
    outcome = schedules_cli("schedules", "eod-paris", "-n", "2", "--after", "2025-03-28T12:00")
    assert outcome.code == 0, outcome.err
    lines = outcome.out.splitlines()
    assert lines[0].split()[:2] == ["fire", "(Europe/Paris)"]
    assert lines[1].split() == ["2025-03-31", "01:30:00", "CEST", "2025-03-30", "23:30:00Z",
                                '{"date":"2025-03-28"}']
    assert lines[2].startswith("2025-04-01 01:30:00 CEST")


def test_next_fires_of_an_unknown_or_invalid_schedule(
    schedules_cli: Callable[..., Outcome]
) -> None:
    unknown = schedules_cli("schedules", "eod-london", "--next", "3")
    assert unknown.code == 2
    assert unknown.err_lines == [
        "batchctl: error: unknown schedule 'eod-london' (known schedules: eod-ny, eod-off, "
        "eod-paris)"
    ]
    broken = schedules_cli("schedules", "broken", config=CONFIG + BROKEN)
    assert broken.code == 2 and broken.out == ""
    assert broken.err_lines[0].endswith("or 6 (a leading seconds field, then those 5); unknown "
                                        "job 'nope' (known jobs: eod)")


def test_bad_after_and_next_without_a_name_are_usage_errors(
    schedules_cli: Callable[..., Outcome]
) -> None:
    bad = schedules_cli("schedules", "eod-ny", "--after", "tomorrow")
    assert (bad.code, bad.err_lines) == (
        2, ["batchctl: error: not an ISO 8601 instant: 'tomorrow' (for example "
            "2025-11-02T00:00:00+00:00)"],
    )
    alone = schedules_cli("schedules", "--next", "3")
    assert (alone.code, alone.err_lines) == (
        2, ["batchctl: error: --next and --after need a schedule NAME"]
    )


def test_schedules_has_help(schedules_cli: Callable[..., Outcome]) -> None:
    outcome = schedules_cli("schedules", "--help")
    assert outcome.code == 0 and "--next" in outcome.out and "--after" in outcome.out


def test_help_does_not_import_cronsim() -> None:
    probe = (
        "import sys\n"
        "from batchctl import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('cronsim' in sys.modules, 'batchctl.schedules' in sys.modules)\n"
        "import batchctl.job\n"  # job modules (and detached runs) import it: no cronsim either
        "print('cronsim' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip().splitlines()[-2:] == ["False False", "False"]


def test_readme_documents_scheduling() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for text in ("## Scheduling", "batchctl schedules", "--next", "{fire-1d:%Y-%m-%d}", "-1bd",
                 "[batchctl.schedules.", "job.schedule(", "batchctl scheduler"):
        assert text in readme, text

"""Schedules from config.toml and from job code, checked against the registry: one line per
problem, naming the schedule."""

from __future__ import annotations

import textwrap
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from batchctl.config import Config
from batchctl.errors import ConfigError, ScheduleError, UnknownSchedule
from batchctl.job import Job
from batchctl.registry import Registry
from batchctl.schedules import (
    Schedule,
    find_schedule,
    load_schedules,
    schedules_from_config,
)

UTC = timezone.utc
NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)  # a Monday


def eod_job() -> Job:
    job = Job("eod", params={"date": date})

    @job.tasklet
    def post(ctx: Any) -> None: ...

    return job


def registry(*jobs: Job) -> Registry:
    found = Registry()
    for job in jobs:
        found.jobs[job.name] = job
    return found


def config(tmp_path: Path, body: str = "") -> Config:
    path = tmp_path / "config.toml"
    path.write_text("[batchctl]\n" + textwrap.dedent(body))
    return Config.load(path, env={}, cwd=tmp_path)


def load(cfg: Config, *jobs: Job) -> tuple[list[Schedule], list[str]]:
    valid, problems = load_schedules(cfg, registry(*jobs), now=NOW)
    return valid, [str(problem) for problem in problems]


# -- config.toml -----------------------------------------------------------------------------


def test_config_keeps_the_schedule_tables_and_still_refuses_unknown_keys(tmp_path: Path) -> None:
    cfg = config(tmp_path, """
        [batchctl.schedules.eod-nightly]
        job = "eod"
        cron = "30 1 * * 1-5"
    """)
    assert cfg.schedules == {"eod-nightly": {"job": "eod", "cron": "30 1 * * 1-5"}}
    (tmp_path / "other").mkdir()
    assert config(tmp_path / "other").schedules == {}
    with pytest.raises(ConfigError, match="unknown key 'batchctl.schedule'"):
        config(tmp_path, '[batchctl.schedule.x]\njob = "eod"\n')
    with pytest.raises(ConfigError, match="'batchctl.schedules' must be"):
        config(tmp_path, 'schedules = "daily"\n')


def test_a_config_schedule_with_every_key(tmp_path: Path) -> None:
    cfg = config(tmp_path, """
        [batchctl.schedules.eod-nightly]
        job = "eod"
        cron = "30 1 * * 1-5"
        timezone = "Europe/Paris"
        params = {date = "{fire-1bd:%Y-%m-%d}"}
        catchup = "all"
        max_catchup = 3
        enabled = false
        grace = 30
    """)
    valid, problems = load(cfg, eod_job())
    assert problems == []
    assert valid == [Schedule(
        name="eod-nightly", job="eod", cron="30 1 * * 1-5", timezone="Europe/Paris",
        params={"date": "{fire-1bd:%Y-%m-%d}"}, catchup="all", max_catchup=3, enabled=False,
        grace=30, source="config",
    )]
    assert valid[0].defined_in == str(tmp_path / "config.toml")


def test_config_defaults() -> None:
    schedules, problems = schedules_from_config({"n": {"job": "eod", "cron": "@daily"}})
    assert problems == []
    schedule = schedules[0]
    assert (schedule.timezone, schedule.catchup, schedule.max_catchup) == ("UTC", "latest", 5)
    assert (schedule.enabled, schedule.grace, schedule.params) == (True, 60.0, {})


def test_config_tables_with_unknown_or_missing_keys() -> None:
    schedules, problems = schedules_from_config(
        {"a": {"job": "eod", "crn": "@daily"}, "b": "daily"}, "config.toml"
    )
    assert schedules == []
    assert [str(problem) for problem in problems] == [
        "schedule 'a' (config.toml): unknown key 'crn' (known keys: job, cron, timezone, params, "
        "catchup, max_catchup, enabled, grace)",
        "schedule 'a' (config.toml): missing cron",
        "schedule 'b' (config.toml): must be a table with job and cron",
    ]


# -- code ------------------------------------------------------------------------------------------


def test_job_schedule_builds_a_schedule_from_code(tmp_path: Path) -> None:
    job = eod_job()
    made = job.schedule(
        "30 1 * * 1-5", timezone="Europe/Paris", params={"date": "{fire-1d:%Y-%m-%d}"},
        catchup="skip",
    )
    assert job.schedules == [made]
    assert (made.name, made.job, made.source) == ("eod", "eod", "code")
    assert made.defined_in.startswith(__file__)
    valid, problems = load(config(tmp_path), job)
    assert (valid, problems) == ([made], [])


def test_a_params_function_is_validated_at_a_sample_fire(tmp_path: Path) -> None:
    job = eod_job()
    job.schedule("30 1 * * *", name="ok", params=lambda fire: {"date": fire.date().isoformat()})
    job.schedule("30 1 * * *", name="bad", params=lambda fire: {"date": "someday"})
    valid, problems = load(config(tmp_path), job)
    assert [schedule.name for schedule in valid] == ["ok"]
    assert len(problems) == 1 and problems[0].startswith("schedule 'bad' (")
    assert problems[0].endswith(
        "params at the fire of 2025-03-11T01:30:00+00:00: param 'date' must be a date "
        "(YYYY-MM-DD), got \"someday\""
    )


# -- validation -------------------------------------------------------------------------------------


def test_every_problem_is_one_line_naming_the_schedule(tmp_path: Path) -> None:
    cfg = config(tmp_path, """
        [batchctl.schedules.bad-cron]
        job = "eod"
        cron = "30 25 * * *"
        [batchctl.schedules.bad-zone]
        job = "eod"
        cron = "30 1 * * *"
        timezone = "Europe/Pariss"
        [batchctl.schedules.bad-job]
        job = "eodd"
        cron = "30 1 * * *"
        [batchctl.schedules.bad-params]
        job = "eod"
        cron = "30 1 * * *"
        params = {day = "{fire:%Y-%m-%d}"}
        [batchctl.schedules.bad-template]
        job = "eod"
        cron = "30 1 * * *"
        params = {date = "{fire-1y:%Y-%m-%d}"}
        [batchctl.schedules.bad-options]
        job = "eod"
        cron = "30 1 * * *"
        params = {date = "{fire:%Y-%m-%d}"}
        catchup = "every"
        max_catchup = 0
        grace = -1
        enabled = "yes"
        [batchctl.schedules."bad name"]
        job = "eod"
        cron = "30 1 * * *"
        params = {date = "2025-01-01"}
    """)
    valid, problems = load(cfg, eod_job())
    assert valid == []
    where = f"({tmp_path / 'config.toml'})"
    assert [line.replace(where, "(c)") for line in problems] == [
        "schedule 'bad name' (c): invalid name: use letters, digits, '_', '.', ':' or '-'",
        "schedule 'bad-cron' (c): invalid cron '30 25 * * *': bad hour field",
        "schedule 'bad-job' (c): unknown job 'eodd' (known jobs: eod)",
        "schedule 'bad-options' (c): catchup must be one of skip, latest, all, got 'every'",
        "schedule 'bad-options' (c): max_catchup must be an integer >= 1, got 0",
        "schedule 'bad-options' (c): grace must be a number of seconds >= 0, got -1",
        "schedule 'bad-options' (c): enabled must be true or false, got 'yes'",
        "schedule 'bad-params' (c): params at the fire of 2025-03-11T01:30:00+00:00: "
        "unknown param 'day' for job eod (did you mean 'date'? declared: date)",
        "schedule 'bad-template' (c): param 'date': template '{fire-1y:%Y-%m-%d}': cannot read "
        "{fire-1y:%Y-%m-%d} (write {fire}, {fire:%Y-%m-%d} or with an offset "
        "{fire-1d:%Y-%m-%d}; units w, d, bd, h, m)",
        "schedule 'bad-zone' (c): unknown time zone 'Europe/Pariss' (an IANA name such as "
        "'Europe/Paris')",
    ]
    assert all("\n" not in line for line in problems)


def test_one_name_in_config_and_in_code_is_a_problem_and_neither_is_used(tmp_path: Path) -> None:
    cfg = config(tmp_path, """
        [batchctl.schedules.eod]
        job = "eod"
        cron = "30 1 * * *"
        params = {date = "{fire:%Y-%m-%d}"}
        [batchctl.schedules.other]
        job = "eod"
        cron = "30 2 * * *"
        params = {date = "{fire:%Y-%m-%d}"}
    """)
    job = eod_job()
    job.schedule("30 1 * * *", params={"date": "{fire:%Y-%m-%d}"})
    valid, problems = load(cfg, job)
    assert [schedule.name for schedule in valid] == ["other"]
    assert len(problems) == 1
    assert problems[0].startswith(f"schedule 'eod': defined 2 times: {tmp_path / 'config.toml'} and ")
    assert "test_schedule_loading.py:" in problems[0]


def test_two_schedules_with_one_name_in_code(tmp_path: Path) -> None:
    job = eod_job()
    job.schedule("30 1 * * *", params={"date": "{fire:%Y-%m-%d}"})
    job.schedule("30 2 * * *", params={"date": "{fire:%Y-%m-%d}"})
    valid, problems = load(config(tmp_path), job)
    assert valid == []
    assert problems[0].startswith("schedule 'eod': defined 2 times: ")
    assert problems[0].endswith("(give each schedule its own name)")


def test_a_broken_config_table_still_owns_its_name(tmp_path: Path) -> None:
    cfg = config(tmp_path, '[batchctl.schedules.eod]\njob = "eod"\n')
    job = eod_job()
    job.schedule("30 1 * * *", params={"date": "{fire:%Y-%m-%d}"})
    valid, problems = load(cfg, job)
    assert valid == []
    assert "schedule 'eod': defined 2 times" in "\n".join(problems)


def test_find_schedule(tmp_path: Path) -> None:
    job = eod_job()
    job.schedule("30 1 * * *", name="good", params={"date": "{fire:%Y-%m-%d}"})
    job.schedule("30 1 * * *", name="bad", timezone="Nowhere/Land")
    valid, problems = load_schedules(config(tmp_path), registry(job), now=NOW)
    assert find_schedule("good", valid, problems).name == "good"
    with pytest.raises(ScheduleError, match="^schedule 'bad' .*: unknown time zone 'Nowhere/Land'"):
        find_schedule("bad", valid, problems)
    with pytest.raises(UnknownSchedule, match=r"unknown schedule 'ugly' \(known schedules: good\)"):
        find_schedule("ugly", valid, problems)

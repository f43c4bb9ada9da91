"""Schedules from config.toml (`[batchctl.schedules.NAME]`) and from job code
(`job.schedule(...)`), checked against the registry: each problem is one line naming the
schedule, and makes only that schedule unusable.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from batchctl.errors import BatchctlError, ScheduleError
from batchctl.schedules.schedule import (
    CATCHUP_POLICIES,
    DEFAULT_CATCHUP,
    DEFAULT_GRACE,
    DEFAULT_MAX_CATCHUP,
    DEFAULT_TIMEZONE,
    SOURCES,
    Schedule,
)

if TYPE_CHECKING:
    from batchctl.config import Config
    from batchctl.registry import Registry

CONFIG_KEYS = ("job", "cron", "timezone", "params", "catchup", "max_catchup", "enabled", "grace")
REQUIRED_KEYS = ("job", "cron")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")  # as job names
RESERVED_NAMES = ("pause", "resume", "trigger")  # `batchctl schedules pause NAME`, ...


@dataclass(frozen=True)
class ScheduleProblem:
    """Why one schedule cannot be used."""

    schedule: str
    where: str
    message: str

    @property
    def head(self) -> str:
        return f"schedule {self.schedule!r}" + (f" ({self.where})" if self.where else "")

    @property
    def line(self) -> str:
        """The message on one line: the first of its lines."""
        return (self.message.strip().splitlines() or ["invalid"])[0]

    def __str__(self) -> str:
        return f"{self.head}: {self.line}"


def schedules_from_config(
    tables: Mapping[str, Any], source: Path | str | None = None
) -> tuple[list[Schedule], list[ScheduleProblem]]:
    """The `[batchctl.schedules.NAME]` tables as schedules (not yet checked against the jobs)."""
    where = str(source) if source else "config"
    schedules: list[Schedule] = []
    problems: list[ScheduleProblem] = []
    for name, table in tables.items():
        if not isinstance(table, Mapping):
            problems.append(ScheduleProblem(name, where, "must be a table with job and cron"))
            continue
        unknown = [key for key in table if key not in CONFIG_KEYS]
        missing = [key for key in REQUIRED_KEYS if key not in table]
        for key in unknown:
            problems.append(ScheduleProblem(
                name, where, f"unknown key {key!r} (known keys: {', '.join(CONFIG_KEYS)})"
            ))
        if missing:
            problems.append(ScheduleProblem(name, where, f"missing {' and '.join(missing)}"))
        if unknown or missing:
            continue
        schedules.append(Schedule(
            name=name,
            job=table["job"],
            cron=table["cron"],
            timezone=table.get("timezone", DEFAULT_TIMEZONE),
            params=table.get("params", {}),
            catchup=table.get("catchup", DEFAULT_CATCHUP),
            max_catchup=table.get("max_catchup", DEFAULT_MAX_CATCHUP),
            enabled=table.get("enabled", True),
            grace=table.get("grace", DEFAULT_GRACE),
            source="config",
            defined_in=where,
        ))
    return schedules, problems


def load_schedules(
    config: Config, registry: Registry, *, now: datetime | None = None
) -> tuple[list[Schedule], list[ScheduleProblem]]:
    """Every schedule, from the config and from the registered jobs' code, checked.

    Returns the valid ones sorted by name and the problems of the others, one per line. `now`
    picks the sample fire at which params are rendered and validated (default: the clock).
    """
    from batchctl.model import utcnow

    now = now or utcnow()
    schedules, problems = schedules_from_config(
        getattr(config, "schedules", None) or {}, config.source
    )
    for job_name in sorted(registry.jobs):
        schedules.extend(getattr(registry.jobs[job_name], "schedules", ()))
    names: dict[str, list[Schedule]] = defaultdict(list)
    for schedule in schedules:
        names[schedule.name].append(schedule)
    taken: dict[str, str] = {p.schedule: p.where for p in problems}  # broken tables own a name
    valid: list[Schedule] = []
    for name in sorted(names):
        found = names[name]
        if len(found) > 1 or name in taken:
            places = [s.where for s in found] + ([taken[name]] if name in taken else [])
            problems.append(ScheduleProblem(
                name, "", f"defined {len(places)} times: {' and '.join(places)} "
                "(give each schedule its own name)"
            ))
            continue
        messages = check_schedule(found[0], registry, now=now)
        problems.extend(ScheduleProblem(name, found[0].where, message) for message in messages)
        if not messages:
            valid.append(found[0])
    problems.sort(key=lambda problem: problem.schedule)
    return valid, problems


def check_schedule(schedule: Schedule, registry: Registry, *, now: datetime) -> list[str]:
    """The problems of one schedule (empty when it can fire): its name, cron, time zone, job,
    options, and its params rendered at its next fire after `now` and converted by the job."""
    from batchctl.schedules.cron import next_fires, parse_cron, time_zone
    from batchctl.schedules.templates import check_templates, render_params

    problems: list[str] = []
    if not isinstance(schedule.name, str) or not _NAME.match(schedule.name):
        problems.append("invalid name: use letters, digits, '_', '.', ':' or '-'")
    elif schedule.name in RESERVED_NAMES:
        problems.append(
            f"invalid name: {schedule.name!r} is a command of 'batchctl schedules' "
            f"({', '.join(RESERVED_NAMES)} are reserved)"
        )
    problems += _option_problems(schedule)
    timing_ok = True
    for what, value, check in (
        ("cron", schedule.cron, parse_cron), ("time zone", schedule.timezone, time_zone)
    ):
        try:
            if not isinstance(value, str):
                raise ScheduleError(f"{what} must be a string, got {value!r}")
            check(value)
        except ScheduleError as exc:
            problems.append(exc.message)
            timing_ok = False
    job = None
    if not isinstance(schedule.job, str) or not schedule.job:
        problems.append(f"job must be a job's name, got {schedule.job!r}")
    else:
        try:
            job = registry.get(schedule.job)
        except BatchctlError as exc:
            problems.append(exc.message)
    if isinstance(schedule.params, Mapping):
        template_problems = check_templates(schedule.params)
        problems += template_problems
        if template_problems:
            return problems
    elif not callable(schedule.params):
        problems.append(
            f"params must be a table (dict) or a function, not {type(schedule.params).__name__}"
        )
        return problems
    if job is None or not timing_ok:
        return problems
    sample = (next_fires(schedule, now, 1) or [now])[0]
    try:
        job.convert_params(render_params(schedule, sample))
    except BatchctlError as exc:
        local = sample.astimezone(time_zone(schedule.timezone))
        problems.append(f"params at the fire of {local.isoformat()}: {exc.message}")
    return problems


def _option_problems(schedule: Schedule) -> list[str]:
    problems = []
    if schedule.catchup not in CATCHUP_POLICIES:
        problems.append(
            f"catchup must be one of {', '.join(CATCHUP_POLICIES)}, got {schedule.catchup!r}"
        )
    max_catchup = schedule.max_catchup
    if isinstance(max_catchup, bool) or not isinstance(max_catchup, int) or max_catchup < 1:
        problems.append(f"max_catchup must be an integer >= 1, got {max_catchup!r}")
    grace = schedule.grace
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace < 1e9:
        problems.append(f"grace must be a number of seconds >= 0, got {grace!r}")
    if not isinstance(schedule.enabled, bool):
        problems.append(f"enabled must be true or false, got {schedule.enabled!r}")
    if schedule.source not in SOURCES:
        problems.append(f"source must be one of {', '.join(SOURCES)}, got {schedule.source!r}")
    return problems


def find_schedule(
    name: str, valid: Iterable[Schedule], problems: Iterable[ScheduleProblem]
) -> Schedule:
    """The valid schedule called `name`; UnknownSchedule, or ScheduleError naming its problem."""
    from batchctl.errors import UnknownSchedule

    valid = list(valid)
    for schedule in valid:
        if schedule.name == name:
            return schedule
    mine = [problem for problem in problems if problem.schedule == name]
    if mine:
        raise ScheduleError(f"{mine[0].head}: {'; '.join(problem.line for problem in mine)}")
    known = ", ".join(sorted(schedule.name for schedule in valid)) or "none"
    raise UnknownSchedule(f"unknown schedule {name!r} (known schedules: {known})")

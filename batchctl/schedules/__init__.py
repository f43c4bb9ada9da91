"""Schedules: the timer trigger's pure part. What a schedule is, when it fires (daylight saving
included), the params of a fire, which missed fires to run, and loading and checking schedules
from config.toml and job code. Nothing here touches the repository or the clock: every function
takes the instants it needs.

The firing service (`batchctl scheduler`) builds on these: `load_schedules` at start and on
reload, `due_fires` on every wake-up, `render_params` for each fire it records, `iter_fires` to
know when to wake up next.
"""

from __future__ import annotations

from batchctl.schedules.catchup import Due, due_fires
from batchctl.schedules.cron import (
    Cron,
    fires_between,
    iter_fires,
    last_fires,
    next_fires,
    parse_cron,
    parse_instant,
    time_zone,
)
from batchctl.schedules.loading import (
    ScheduleProblem,
    check_schedule,
    find_schedule,
    load_schedules,
    schedules_from_config,
)
from batchctl.schedules.schedule import CATCHUP_POLICIES, Schedule
from batchctl.schedules.templates import render_params, render_template

__all__ = [
    "CATCHUP_POLICIES",
    "Cron",
    "Due",
    "Schedule",
    "ScheduleProblem",
    "check_schedule",
    "due_fires",
    "find_schedule",
    "fires_between",
    "iter_fires",
    "last_fires",
    "load_schedules",
    "next_fires",
    "parse_cron",
    "parse_instant",
    "render_params",
    "render_template",
    "schedules_from_config",
    "time_zone",
]

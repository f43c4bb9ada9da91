"""What `batchctl schedules` shows: a table for people, JSON for scripts (through `render`'s
consoles and JSON writer, as every command).

The scheduler's state kept in the repository (paused, the last fire and its execution's status)
is not known here yet: when it is, `schedule_dict` and `print_schedules` take it as one more
argument and add its keys and columns.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Sequence

from rich.table import Table

from batchctl import render
from batchctl.schedules.cron import next_fires, time_zone
from batchctl.schedules.schedule import Schedule
from batchctl.schedules.templates import render_params


def schedule_dict(schedule: Schedule, now: datetime) -> dict[str, Any]:
    """The JSON object of a schedule; its next fire after `now` (null when disabled or never)."""
    fire = next_fires(schedule, now, 1) if schedule.enabled else []
    return {
        "name": schedule.name,
        "job": schedule.job,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "enabled": schedule.enabled,
        "catchup": schedule.catchup,
        "max_catchup": schedule.max_catchup,
        "grace": schedule.grace,
        "source": schedule.source,
        "next_fire_at": fire[0].isoformat() if fire else None,
        "next_fire_local": _local(schedule, fire[0]).isoformat() if fire else None,
    }


def fire_dict(schedule: Schedule, fire_at: datetime) -> dict[str, Any]:
    """One fire: its instant in UTC, its local time with offset, and its rendered params."""
    return {
        "fire_at": fire_at.isoformat(),
        "local": _local(schedule, fire_at).isoformat(),
        "params": render_params(schedule, fire_at),
    }


def print_schedules(schedules: Sequence[Schedule], now: datetime, *, as_json: bool) -> None:
    rows = [schedule_dict(schedule, now) for schedule in schedules]
    if as_json:
        render.print_json(rows)
        return
    if not rows:
        render.stderr.print("no valid schedules")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("schedule", "job", "cron", "time zone", "enabled", "next fire", "next fire (UTC)"):
        table.add_column(column)
    for schedule, row in zip(schedules, rows):
        fire = row["next_fire_at"]
        table.add_row(
            schedule.name, schedule.job, schedule.cron, schedule.timezone,
            "yes" if schedule.enabled else "no",
            _local_text(schedule, datetime.fromisoformat(fire)) if fire else "-",
            _utc_text(datetime.fromisoformat(fire)) if fire else "-",
        )
    render.stdout.print(table)


def print_fires(schedule: Schedule, fires: Sequence[datetime], *, as_json: bool) -> None:
    rows = [fire_dict(schedule, fire) for fire in fires]
    if as_json:
        render.print_json(rows)
        return
    if not rows:
        render.stderr.print(f"schedule {schedule.name} has no fire in that range")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in (f"fire ({schedule.timezone})", "fire (UTC)", "params"):
        table.add_column(column)
    for fire, row in zip(fires, rows):
        table.add_row(
            _local_text(schedule, fire), _utc_text(fire), _params_text(row["params"])
        )
    render.stdout.print(table)


def _local(schedule: Schedule, fire: datetime) -> datetime:
    return fire.astimezone(time_zone(schedule.timezone))


def _local_text(schedule: Schedule, fire: datetime) -> str:
    return _local(schedule, fire).strftime("%Y-%m-%d %H:%M:%S %Z")


def _utc_text(fire: datetime) -> str:
    return fire.strftime("%Y-%m-%d %H:%M:%SZ")


def _params_text(params: dict[str, Any]) -> str:
    return json.dumps(params, separators=(",", ":"), default=str) if params else ""

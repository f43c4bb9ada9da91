"""What `batchctl schedules` shows: a table for people, JSON for scripts (through `render`'s
consoles and JSON writer, as every command).

The scheduler's state kept in the repository (paused, the last fire and its execution's status)
arrives as `states`, by schedule name (`Batch.schedule_states()`); a schedule absent from it was
never paused nor fired.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from rich.table import Table

from batchctl import render
from batchctl.schedules.cron import next_fires, time_zone
from batchctl.schedules.schedule import Schedule
from batchctl.schedules.templates import render_params

if TYPE_CHECKING:
    from batchctl.repository.fires import ScheduleState


def schedule_dict(
    schedule: Schedule, now: datetime, state: ScheduleState | None = None
) -> dict[str, Any]:
    """The JSON object of a schedule; its next fire after `now` (null when disabled, paused or
    never); from its `state`, whether it is paused and its last fire with its execution."""
    paused = state is not None and state.paused
    fire = next_fires(schedule, now, 1) if schedule.enabled and not paused else []
    last = state.last_fire if state is not None else None
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
        "paused": paused,
        "paused_at": state.paused_at.isoformat() if paused and state and state.paused_at else None,
        "last_fire_at": last.fire_at.isoformat() if last else None,
        "last_fire_manual": last.manual if last else None,
        "last_fire_outcome": last.outcome if last else None,
        "last_fire_reason": last.reason if last else None,
        "last_execution_id": last.execution_id if last else None,
        "last_status": state.last_status.value if state and state.last_status else None,
    }


def state_dict(name: str, state: ScheduleState) -> dict[str, Any]:
    """What `schedules pause|resume NAME --json` prints."""
    return {
        "name": name,
        "paused": state.paused,
        "paused_at": state.paused_at.isoformat() if state.paused_at else None,
        "resumed_at": state.resumed_at.isoformat() if state.resumed_at else None,
    }


def print_state(name: str, state: ScheduleState, *, as_json: bool) -> None:
    if as_json:
        render.print_json(state_dict(name, state))
        return
    if state.paused:
        render.stdout.print(f"schedule {render.printable(name)} is paused: no scheduler fires it "
                            f"until 'batchctl schedules resume {render.printable(name)}'")
    else:
        render.stdout.print(f"schedule {render.printable(name)} is active")


def print_fire(outcome: Any, *, as_json: bool) -> None:
    """What `schedules trigger NAME` prints: the fire and its launched execution."""
    execution = outcome.execution
    data = {
        "schedule": outcome.schedule,
        "fire_at": outcome.fire_at.isoformat(),
        "manual": outcome.manual,
        "outcome": outcome.outcome,
        "reason": outcome.reason,
        "execution": render.execution_dict(execution) if execution is not None else None,
    }
    if as_json:
        render.print_json(data)
        return
    if execution is not None:
        resumed = f", resuming execution {execution.resumed_from}" if execution.resumed_from else ""
        render.stdout.print(
            f"schedule {render.printable(outcome.schedule)} fired: execution {execution.id} of job "
            f"{render.printable(execution.job_name)} launched (pid {execution.pid}){resumed}"
        )


def fire_dict(schedule: Schedule, fire_at: datetime) -> dict[str, Any]:
    """One fire: its instant in UTC, its local time with offset, and its rendered params."""
    return {
        "fire_at": fire_at.isoformat(),
        "local": _local(schedule, fire_at).isoformat(),
        "params": render_params(schedule, fire_at),
    }


def print_schedules(
    schedules: Sequence[Schedule],
    now: datetime,
    *,
    as_json: bool,
    states: Mapping[str, ScheduleState] | None = None,
) -> None:
    states = states or {}
    rows = [schedule_dict(schedule, now, states.get(schedule.name)) for schedule in schedules]
    if as_json:
        render.print_json(rows)
        return
    if not rows:
        render.stderr.print("no valid schedules")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("schedule", "job", "cron", "time zone", "enabled", "next fire", "next fire (UTC)",
                   "last fire", "last status"):
        table.add_column(column)
    for schedule, row in zip(schedules, rows):
        fire = row["next_fire_at"]
        last = row["last_fire_at"]
        if last is None:
            status = "-"
        elif row["last_status"]:
            status = f"{row['last_status']} (execution {row['last_execution_id']})"
        else:
            status = row["last_fire_outcome"] + (f": {row['last_fire_reason']}" if row["last_fire_reason"] else "")
        table.add_row(
            schedule.name, schedule.job, schedule.cron, schedule.timezone,
            "paused" if row["paused"] else ("yes" if schedule.enabled else "no"),
            _local_text(schedule, datetime.fromisoformat(fire)) if fire else "-",
            _utc_text(datetime.fromisoformat(fire)) if fire else "-",
            _local_text(schedule, datetime.fromisoformat(last)) + (" (manual)" if row["last_fire_manual"] else "") if last else "-",
            render.printable(status),
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

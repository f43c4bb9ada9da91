"""Params of a fire: templates over the fire time in the schedule's zone, with offsets, or a
function of it."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest

from batchctl.errors import ScheduleError
from batchctl.schedules import Schedule, render_params, render_template
from batchctl.schedules.cron import time_zone

UTC = timezone.utc


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def in_zone(instant: str, zone: str) -> datetime:
    return at(instant).astimezone(time_zone(zone))


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{fire:%Y-%m-%d}", "2025-03-10"),  # Monday 01:30 in Paris
        ("{fire}", "2025-03-10T01:30:00+01:00"),
        ("{fire-1d:%Y-%m-%d}", "2025-03-09"),
        ("{fire+1d:%Y-%m-%d}", "2025-03-11"),
        ("{fire-1w:%Y-%m-%d}", "2025-03-03"),
        ("{fire-1bd:%Y-%m-%d}", "2025-03-07"),  # Monday -> Friday
        ("{fire-3bd:%a %d}", "Wed 05"),
        ("{fire+5bd:%a %d}", "Mon 17"),
        ("{fire-2h:%d %H:%M}", "09 23:30"),
        ("{fire+45m:%H:%M}", "02:15"),
        ("{fire-1d-2h:%d %H}", "08 23"),
        ("{ fire - 1d : %Y }", " 2025 "),
        ("data/{fire-1d:%Y/%m/%d}.csv", "data/2025/03/09.csv"),
        ("{{fire}} {fire:%H}", "{fire} 01"),
        ("no field", "no field"),
    ],
)
def test_templates_render_in_the_schedules_zone(template: str, expected: str) -> None:
    assert render_template(template, in_zone("2025-03-10 00:30", "Europe/Paris")) == expected


def test_business_days_skip_the_weekend_from_a_weekend() -> None:
    saturday = in_zone("2025-03-08 12:00", "UTC")
    assert render_template("{fire-1bd:%a %d}", saturday) == "Fri 07"
    assert render_template("{fire+1bd:%a %d}", saturday) == "Mon 10"
    assert render_template("{fire-0bd:%a %d}", saturday) == "Sat 08"


def test_days_keep_the_wall_clock_time_across_a_change_and_hours_are_elapsed() -> None:
    fire = in_zone("2025-03-31 00:30", "Europe/Paris")  # 02:30 CEST, the day after the change
    assert render_template("{fire-1d}", fire) == "2025-03-30T03:30:00+02:00"  # 02:30 did not exist
    assert render_template("{fire-2d}", fire) == "2025-03-29T02:30:00+01:00"
    assert render_template("{fire-24h}", fire) == "2025-03-30T01:30:00+01:00"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{date:%Y}", "unknown field 'date'"),
        ("{fire-1y:%Y}", "cannot read"),
        ("{fire:Y-m-d}", "no strftime directive"),
        ("{fire:%Y", "never closed"),
        ("fire}", "single '}'"),
        ("{fire-999999d}", "too large"),
    ],
)
def test_malformed_templates_say_why(template: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        render_template(template, in_zone("2025-03-10 00:30", "UTC"))


def test_render_params_renders_strings_and_keeps_other_values() -> None:
    schedule = Schedule(
        "s", "job", "30 1 * * *", timezone="America/New_York",
        params={"date": "{fire-1d:%Y-%m-%d}", "limit": 10, "dry": False},
    )
    # 2025-11-02 05:30Z is 01:30 EDT on the fall-back day
    assert render_params(schedule, at("2025-11-02 05:30")) == {
        "date": "2025-11-01", "limit": 10, "dry": False
    }


def test_render_params_calls_a_function_with_the_local_fire_time() -> None:
    seen: list[datetime] = []

    def params(fire: datetime) -> dict[str, Any]:
        seen.append(fire)
        return {"date": (fire - timedelta(days=1)).date()}

    schedule = Schedule("s", "job", "30 1 * * *", timezone="Europe/Paris", params=params)
    assert render_params(schedule, at("2025-01-14 00:30")) == {"date": date(2025, 1, 13)}
    assert seen[0].isoformat() == "2025-01-14T01:30:00+01:00"


def test_a_failing_or_wrong_params_function_is_a_schedule_error() -> None:
    def broken(fire: datetime) -> dict[str, Any]:
        raise KeyError("holidays")

    with pytest.raises(ScheduleError, match="params function failed at .*KeyError"):
        render_params(Schedule("s", "job", "* * * * *", params=broken), at("2025-01-01 00:00"))
    with pytest.raises(ScheduleError, match="must return a dict"):
        render_params(
            Schedule("s", "job", "* * * * *", params=lambda fire: [1]),  # type: ignore[arg-type,return-value]
            at("2025-01-01 00:00"),
        )


def test_a_bad_template_names_its_param() -> None:
    schedule = Schedule("s", "job", "* * * * *", params={"day": "{fire-1x}"})
    with pytest.raises(ScheduleError, match="param 'day': template"):
        render_params(schedule, at("2025-01-01 00:00"))

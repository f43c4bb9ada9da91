"""Cron expressions and fire instants, daylight saving included (DESIGN.md, "Time"): every
instant here is explicit; nothing reads the clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from batchctl.errors import ScheduleError
from batchctl.schedules import Schedule, fires_between, last_fires, next_fires, parse_cron
from batchctl.schedules.cron import parse_instant, time_zone

UTC = timezone.utc
NEW_YORK = "America/New_York"
PARIS = "Europe/Paris"


def at(text: str) -> datetime:
    """An instant written in UTC: at("2025-11-02 05:30")."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def local(fires: list[datetime], zone: str) -> list[str]:
    """Fires as local wall-clock times with their offset, to compare at a glance."""
    return [fire.astimezone(time_zone(zone)).strftime("%m-%d %H:%M:%S%z") for fire in fires]


def fires(cron: str, zone: str, after: str, n: int) -> list[datetime]:
    return next_fires(Schedule("s", "job", cron, timezone=zone), at(after), n)


# -- New York: fall back on 2025-11-02 (02:00 EDT -> 01:00 EST), spring forward on 2025-03-09
# (02:00 EST -> 03:00 EDT)


def test_a_daily_time_that_happens_twice_at_fall_back_fires_once_at_its_first_occurrence() -> None:
    found = fires("30 1 * * *", NEW_YORK, "2025-11-01 12:00", 3)
    assert found == [at("2025-11-02 05:30"), at("2025-11-03 06:30"), at("2025-11-04 06:30")]
    assert local(found, NEW_YORK) == [
        "11-02 01:30:00-0400", "11-03 01:30:00-0500", "11-04 01:30:00-0500"
    ]


def test_a_daily_time_in_the_spring_forward_gap_fires_at_the_first_instant_after_it() -> None:
    found = fires("30 2 * * *", NEW_YORK, "2025-03-08 12:00", 3)
    assert local(found, NEW_YORK) == [
        "03-09 03:00:00-0400", "03-10 02:30:00-0400", "03-11 02:30:00-0400"
    ]
    assert found[0] == at("2025-03-09 07:00")


def test_hourly_across_fall_back_fires_both_one_oclocks() -> None:
    found = fires("0 * * * *", NEW_YORK, "2025-11-02 03:30", 5)
    assert found == [
        at("2025-11-02 04:00"), at("2025-11-02 05:00"), at("2025-11-02 06:00"),
        at("2025-11-02 07:00"), at("2025-11-02 08:00"),
    ]
    assert local(found, NEW_YORK)[1:3] == ["11-02 01:00:00-0400", "11-02 01:00:00-0500"]


def test_hourly_across_fall_back_interleaves_both_occurrences_in_instant_order() -> None:
    found = fires("0,30 * * * *", NEW_YORK, "2025-11-02 04:15", 6)
    assert found == [
        at("2025-11-02 04:30"), at("2025-11-02 05:00"), at("2025-11-02 05:30"),
        at("2025-11-02 06:00"), at("2025-11-02 06:30"), at("2025-11-02 07:00"),
    ]


@pytest.mark.parametrize(
    ("after", "first"),
    [
        ("2025-11-02 05:45", "2025-11-02 06:00"),  # 01:45 EDT: next is 01:00 EST
        ("2025-11-02 05:15", "2025-11-02 05:30"),  # 01:15 EDT: next is 01:30 EDT
        ("2025-11-02 06:10", "2025-11-02 06:30"),  # 01:10 EST: next is 01:30 EST
    ],
)
def test_hourly_fires_after_an_instant_inside_the_repeated_hour(after: str, first: str) -> None:
    assert fires("0,30 * * * *", NEW_YORK, after, 1) == [at(first)]


def test_hourly_skips_nothing_real_at_spring_forward() -> None:
    """With `*` hours, a wall-clock time in the gap does not fire: every real hour still does."""
    found = fires("30 * * * *", NEW_YORK, "2025-03-09 05:00", 3)
    assert local(found, NEW_YORK) == [
        "03-09 00:30:00-0500", "03-09 01:30:00-0500", "03-09 03:30:00-0400"
    ]
    assert found[2] - found[1] == timedelta(hours=1)


def test_a_fixed_hour_with_a_wildcard_minute_fires_once_at_fall_back() -> None:
    """cronsim alone fires 01:00 and 01:30 twice here (it follows Debian cron's wildcard rule)."""
    found = fires("*/30 1 * * *", NEW_YORK, "2025-11-02 03:00", 4)
    assert local(found, NEW_YORK) == [
        "11-02 01:00:00-0400", "11-02 01:30:00-0400", "11-03 01:00:00-0500", "11-03 01:30:00-0500"
    ]


def test_a_fixed_hour_with_a_wildcard_minute_in_the_gap_fires_once_after_it() -> None:
    """cronsim alone fires nothing on 2025-03-09 here."""
    found = fires("*/20 2 * * *", NEW_YORK, "2025-03-08 12:00", 2)
    assert local(found, NEW_YORK) == ["03-09 03:00:00-0400", "03-10 02:00:00-0400"]


# -- Paris: spring forward on 2025-03-30 (02:00 CET -> 03:00 CEST), fall back on 2025-10-26
# (03:00 CEST -> 02:00 CET)


def test_paris_a_daily_time_in_the_gap_fires_at_three() -> None:
    found = fires("30 2 * * *", PARIS, "2025-03-29 12:00", 2)
    assert local(found, PARIS) == ["03-30 03:00:00+0200", "03-31 02:30:00+0200"]
    assert found[0] == at("2025-03-30 01:00")


def test_paris_a_daily_time_that_happens_twice_fires_once_in_summer_time() -> None:
    found = fires("30 2 * * *", PARIS, "2025-10-25 12:00", 2)
    assert local(found, PARIS) == ["10-26 02:30:00+0200", "10-27 02:30:00+0100"]
    assert found[0] == at("2025-10-26 00:30")


def test_paris_hourly_across_fall_back_fires_both_two_oclocks() -> None:
    found = fires("0 * * * *", PARIS, "2025-10-25 22:30", 4)
    assert local(found, PARIS) == [
        "10-26 01:00:00+0200", "10-26 02:00:00+0200", "10-26 02:00:00+0100", "10-26 03:00:00+0100"
    ]


def test_paris_a_weekday_cron_across_both_changes() -> None:
    spring = fires("30 1 * * 1-5", PARIS, "2025-03-28 12:00", 2)  # Friday -> Monday
    assert local(spring, PARIS) == ["03-31 01:30:00+0200", "04-01 01:30:00+0200"]
    autumn = fires("30 1 * * 1-5", PARIS, "2025-10-24 12:00", 1)
    assert autumn == [at("2025-10-27 00:30")]


# -- six fields: a leading seconds field, with the same daylight-saving rules


def test_a_seconds_field_fires_every_n_seconds() -> None:
    found = fires("*/15 * * * * *", "UTC", "2025-01-01 00:00:00", 5)
    assert [fire.strftime("%H:%M:%S") for fire in found] == [
        "00:00:15", "00:00:30", "00:00:45", "00:01:00", "00:01:15"
    ]


def test_a_seconds_cron_that_happens_twice_at_fall_back_fires_once() -> None:
    """cronsim alone fires `0 30 1 * * *` twice on 2025-11-02 in New York."""
    found = fires("0 30 1 * * *", NEW_YORK, "2025-11-01 12:00", 2)
    assert found == [at("2025-11-02 05:30"), at("2025-11-03 06:30")]


def test_a_seconds_cron_in_the_gap_fires_after_it() -> None:
    """cronsim alone skips 2025-03-09 for `10 30 2 * * *` in New York."""
    found = fires("10 30 2 * * *", NEW_YORK, "2025-03-08 12:00", 2)
    assert local(found, NEW_YORK) == ["03-09 03:00:00-0400", "03-10 02:30:10-0400"]


def test_every_second_across_fall_back_is_every_real_second_once() -> None:
    found = fires("* * * * * *", PARIS, "2025-10-26 00:59:58", 7300)
    assert found[0] == at("2025-10-26 00:59:59")
    assert all(b - a == timedelta(seconds=1) for a, b in zip(found, found[1:]))


def test_next_fires_is_strictly_after_the_instant() -> None:
    assert fires("30 1 * * *", "UTC", "2025-01-01 01:30", 1) == [at("2025-01-02 01:30")]
    assert fires("30 1 * * *", "UTC", "2025-01-01 01:29:59.5", 1) == [at("2025-01-01 01:30")]


def test_an_instant_with_another_offset_is_the_same_instant() -> None:
    schedule = Schedule("s", "job", "30 1 * * *", timezone=PARIS)
    after = datetime(2025, 1, 1, 8, 0, tzinfo=timezone(timedelta(hours=9)))  # 2024-12-31 23:00Z
    assert next_fires(schedule, after, 1) == [at("2025-01-01 00:30")]


def test_a_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_fires(Schedule("s", "job", "* * * * *"), datetime(2025, 1, 1), 1)


def test_fires_between_is_half_open_and_last_fires_takes_the_newest() -> None:
    schedule = Schedule("s", "job", "0 * * * *")
    between = fires_between(schedule, at("2025-01-01 00:00"), at("2025-01-01 03:00"))
    assert between == [at("2025-01-01 01:00"), at("2025-01-01 02:00"), at("2025-01-01 03:00")]
    newest = last_fires(schedule, at("2024-01-01 00:00"), at("2025-01-01 03:30"), 2)
    assert newest == [at("2025-01-01 02:00"), at("2025-01-01 03:00")]
    assert last_fires(schedule, at("2025-01-01 02:30"), at("2025-01-01 03:30"), 5) == [
        at("2025-01-01 03:00")
    ]


def test_last_fires_of_a_year_of_seconds_does_not_walk_the_year() -> None:
    schedule = Schedule("s", "job", "* * * * * *")
    newest = last_fires(schedule, at("2024-01-01 00:00"), at("2025-01-01 00:00"), 3)
    assert newest == [at("2024-12-31 23:59:58"), at("2024-12-31 23:59:59"), at("2025-01-01 00:00")]


# -- parsing


@pytest.mark.parametrize(
    ("expr", "fields"),
    [
        ("30 1 * * 1-5", ("0", "30", "1", "*", "*", "1-5")),
        ("  30  1 * *   MON-FRI ", ("0", "30", "1", "*", "*", "MON-FRI")),
        ("*/10 30 1 * * *", ("*/10", "30", "1", "*", "*", "*")),
        ("@daily", ("0", "0", "0", "*", "*", "*")),
        ("@Hourly", ("0", "0", "*", "*", "*", "*")),
        ("0 0 L * *", ("0", "0", "0", "L", "*", "*")),
    ],
)
def test_valid_crons_parse(expr: str, fields: tuple[str, ...]) -> None:
    assert parse_cron(expr).fields == fields


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "non-empty"),
        ("30 1 * *", "has 4 fields; it needs 5"),
        ("0 0 30 1 * * *", "has 7 fields"),
        ("61 * * * *", "invalid cron '61 \\* \\* \\* \\*': bad minute field"),
        ("0 25 * * *", "bad hour field"),
        ("0 0 * * 8", "bad day-of-week field"),
        ("0 0 30 2 *", "bad day-of-month field"),
        ("*/0 * * * *", "bad minute field"),
        ("@fortnightly", "unknown cron alias"),
        ("60 * * * * *", "bad second field"),
    ],
)
def test_invalid_crons_say_why(expr: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse_cron(expr)


def test_unknown_time_zone() -> None:
    with pytest.raises(ScheduleError, match="unknown time zone 'Europe/Pariss'"):
        time_zone("Europe/Pariss")
    with pytest.raises(ScheduleError, match="unknown time zone"):
        time_zone("../../etc/passwd")


def test_parse_instant_reads_a_naive_time_in_the_zone() -> None:
    zone = time_zone(NEW_YORK)
    assert parse_instant("2025-11-02T01:30", zone) == at("2025-11-02 05:30")
    assert parse_instant("2025-11-02", zone) == at("2025-11-02 04:00")
    assert parse_instant("2025-11-02T01:30:00Z", zone) == at("2025-11-02 01:30")
    with pytest.raises(ScheduleError, match="not an ISO 8601 instant"):
        parse_instant("yesterday", zone)

"""Which fires run now: on time within the grace, missed ones by the catch-up policy, never a
burst beyond the cap. Instants are explicit: no clock, no sleep."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from batchctl.schedules import Due, Schedule, due_fires
from batchctl.schedules.catchup import SKIPPED_COUNT_LIMIT

UTC = timezone.utc


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def hourly(catchup: str = "latest", max_catchup: int = 5, grace: float = 60) -> Schedule:
    return Schedule(
        "s", "job", "0 * * * *", catchup=catchup, max_catchup=max_catchup, grace=grace
    )


def test_a_fire_seen_within_the_grace_runs() -> None:
    due = due_fires(hourly(), at("2025-01-01 00:00"), at("2025-01-01 01:00:59"))
    assert due == Due(run=(at("2025-01-01 01:00"),))


def test_a_fire_seen_exactly_at_the_grace_is_on_time_and_just_after_it_is_missed() -> None:
    assert due_fires(hourly("skip"), at("2025-01-01 00:00"), at("2025-01-01 01:01")).run == (
        at("2025-01-01 01:00"),
    )
    late = due_fires(hourly("skip"), at("2025-01-01 00:00"), at("2025-01-01 01:01:00.001"))
    assert late.run == () and late.skipped == 1 and late.first_skipped == at("2025-01-01 01:00")


def test_nothing_is_due_before_the_next_fire_or_twice() -> None:
    assert due_fires(hourly(), at("2025-01-01 01:00"), at("2025-01-01 01:30")) == Due()
    assert due_fires(hourly(), at("2025-01-01 01:00"), at("2025-01-01 01:00:30")) == Due()


def test_a_clock_gone_back_fires_nothing_again() -> None:
    assert due_fires(hourly("all"), at("2025-01-01 05:00"), at("2025-01-01 03:00:10")) == Due()


def test_a_schedule_that_never_fired_missed_nothing() -> None:
    assert due_fires(hourly("all"), None, at("2025-01-01 05:30")) == Due()
    assert due_fires(hourly("all"), None, at("2025-01-01 05:00:10")).run == (
        at("2025-01-01 05:00"),
    )


def test_a_disabled_schedule_runs_nothing() -> None:
    schedule = Schedule("s", "job", "0 * * * *", enabled=False)
    assert due_fires(schedule, at("2025-01-01 00:00"), at("2025-01-01 05:00:10")) == Due()


# down from 00:30 to 05:00:10: fires 01:00 .. 04:00 are missed, 05:00 is on time
LAST, NOW = at("2025-01-01 00:30"), at("2025-01-01 05:00:10")


def test_skip_runs_only_the_on_time_fire() -> None:
    due = due_fires(hourly("skip"), LAST, NOW)
    assert due.run == (at("2025-01-01 05:00"),)
    assert due.caught_up == () and due.skipped == 4
    assert due.first_skipped == at("2025-01-01 01:00")


def test_latest_runs_the_most_recent_missed_fire_once() -> None:
    due = due_fires(hourly("latest"), LAST, NOW)
    assert due.run == (at("2025-01-01 04:00"), at("2025-01-01 05:00"))
    assert due.caught_up == (at("2025-01-01 04:00"),)
    assert due.skipped == 3


def test_all_runs_every_missed_fire_oldest_first_within_the_cap() -> None:
    due = due_fires(hourly("all", max_catchup=5), LAST, NOW)
    assert due.run == tuple(at(f"2025-01-01 0{h}:00") for h in (1, 2, 3, 4, 5))
    assert due.skipped == 0 and due.first_skipped is None


def test_all_beyond_the_cap_runs_the_most_recent_missed_fires() -> None:
    due = due_fires(hourly("all", max_catchup=2), LAST, NOW)
    assert due.caught_up == (at("2025-01-01 03:00"), at("2025-01-01 04:00"))
    assert due.run == due.caught_up + (at("2025-01-01 05:00"),)
    assert due.skipped == 2 and due.first_skipped == at("2025-01-01 01:00")


def test_latest_after_missing_without_an_on_time_fire() -> None:
    due = due_fires(hourly("latest"), LAST, at("2025-01-01 04:30"))
    assert due.run == (at("2025-01-01 04:00"),)


@pytest.mark.parametrize(("policy", "runs"), [("skip", 0), ("latest", 1), ("all", 5)])
def test_a_month_long_suspension_of_a_per_second_schedule_is_no_burst(
    policy: str, runs: int
) -> None:
    schedule = Schedule("s", "job", "* * * * * *", catchup=policy, max_catchup=5, grace=2)
    now = at("2025-02-01 00:00:00.5")
    due = due_fires(schedule, at("2025-01-01 00:00"), now)
    on_time = (at("2025-01-31 23:59:59"), at("2025-02-01 00:00"))  # within the 2 s grace
    assert due.run[len(due.run) - 2 :] == on_time
    assert len(due.caught_up) == runs
    assert due.caught_up == tuple(at("2025-01-31 23:59:58") - timedelta(seconds=i)
                                  for i in reversed(range(runs)))
    assert due.skipped == SKIPPED_COUNT_LIMIT  # "at least": more were skipped than counted
    assert due.first_skipped == at("2025-01-01 00:00:01")


def test_missed_fires_across_fall_back_follow_the_daylight_saving_rules() -> None:
    schedule = Schedule(
        "s", "job", "30 1 * * *", timezone="America/New_York", catchup="all", max_catchup=10
    )
    due = due_fires(schedule, at("2025-10-31 05:30"), at("2025-11-04 12:00"))
    assert due.run == (
        at("2025-11-01 05:30"), at("2025-11-02 05:30"), at("2025-11-03 06:30"),
        at("2025-11-04 06:30"),
    )

"""The scheduler's service loop, driven by a fake clock and an in-memory Batch: which fires it
asks for (on time, caught up by each policy, never a burst), pauses and resumes, refusals, a
reload, the heartbeat and stopping. No real sleep, no database, no process."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest

from batchctl.firing import FireOutcome
from batchctl.repository.fires import ScheduleState
from batchctl.scheduler import Scheduler
from batchctl.schedules import Schedule, ScheduleProblem

UTC = timezone.utc
T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class FakeClock:
    """Time stands still until the scheduler sleeps; a sleep jumps to its end, running the
    actions planned for instants on the way (a signal, a pause, a suspension)."""

    def __init__(self, start: datetime) -> None:
        self.current = start
        self.sleeps: list[datetime] = []
        self.plan: list[tuple[datetime, Callable[[], None]]] = []
        self.woken = False

    def now(self) -> datetime:
        return self.current

    def sleep(self, until: datetime) -> None:
        self.sleeps.append(until)
        due = sorted((p for p in self.plan if p[0] <= until), key=lambda p: p[0])
        for when, action in due:
            self.plan.remove((when, action))
            self.current = max(self.current, when)
            action()
            if self.woken:
                self.woken = False
                return
        self.current = max(self.current, until)

    def wake(self) -> None:
        self.woken = True

    def at(self, when: datetime, action: Callable[[], None]) -> None:
        self.plan.append((when, action))


@dataclass
class FakeBatch:
    """The Batch operations the scheduler calls, in memory, honouring their contract: a fire
    is recorded once; a refused job's fires are recorded as refused."""

    refuse: set[str] = field(default_factory=set)
    fires: dict[tuple[str, datetime], FireOutcome] = field(default_factory=dict)
    skipped: list[tuple[str, datetime]] = field(default_factory=list)
    states: dict[str, ScheduleState] = field(default_factory=dict)
    beats: int = 0
    pending_looks: int = 0
    retired: bool = False
    config: Any = field(default_factory=lambda: type("C", (), {"heartbeat_interval": 5.0})())

    def register_service(self, kind: str) -> int:
        assert kind == "scheduler"
        return 1

    def stop_waiting_for_repository(self) -> None:
        pass

    def service_heartbeat(self, service_id: int) -> None:
        self.beats += 1

    def retire_service(self, service_id: int) -> None:
        self.retired = True

    def schedule_states(self, names: Any = None) -> dict[str, ScheduleState]:
        return dict(self.states)

    def last_scheduled_fires(self) -> dict[str, datetime]:
        last: dict[str, datetime] = {}
        for (name, fire_at), outcome in self.fires.items():
            if not outcome.manual:
                last[name] = max(last.get(name, fire_at), fire_at)
        for name, fire_at in self.skipped:
            last[name] = max(last.get(name, fire_at), fire_at)
        return last

    def fire(self, schedule: Schedule, fire_at: datetime, *, manual: bool = False) -> FireOutcome:
        key = (schedule.name, fire_at)
        if key in self.fires:
            return FireOutcome(schedule.name, fire_at, "duplicate")
        if schedule.job in self.refuse:
            outcome = FireOutcome(schedule.name, fire_at, "refused", reason="already complete")
        else:
            outcome = FireOutcome(schedule.name, fire_at, "launched")
        self.fires[key] = outcome
        return outcome

    def skip_fire(self, schedule: Schedule, fire_at: datetime, reason: str) -> bool:
        self.skipped.append((schedule.name, fire_at))
        return True

    def launch_pending_fires(self) -> list[Any]:
        self.pending_looks += 1
        return []

    def launched(self, name: str | None = None) -> list[datetime]:
        return sorted(
            fire_at for (n, fire_at), o in self.fires.items()
            if o.outcome == "launched" and (name is None or n == name)
        )


def every(seconds: int, name: str = "s", **options: Any) -> Schedule:
    return Schedule(name, name + "-job", f"*/{seconds} * * * * *", grace=options.pop("grace", 2),
                    **options)


def scheduler(batch: FakeBatch, clock: FakeClock, *schedules: Schedule, **options: Any) -> Scheduler:
    return Scheduler(batch, list(schedules), clock=clock, **options)  # type: ignore[arg-type]


def run_until(s: Scheduler, clock: FakeClock, end: datetime) -> None:
    clock.at(end, s.request_stop)
    s.run()


def test_it_sleeps_until_each_fire_and_fires_each_once() -> None:
    batch, clock = FakeBatch(), FakeClock(at(3))
    s = scheduler(batch, clock, every(10))
    run_until(s, clock, at(35))
    assert batch.launched() == [at(10), at(20), at(30)]
    assert {at(10), at(20), at(30)} <= set(clock.sleeps)  # woke at the fire instants themselves
    assert batch.retired


def test_it_wakes_at_least_every_poll_and_beats() -> None:
    batch, clock = FakeBatch(), FakeClock(at(0))
    s = scheduler(batch, clock, Schedule("daily", "j", "0 3 * * *"), poll=5, heartbeat_interval=5)
    run_until(s, clock, at(60))
    gaps = [(b - a).total_seconds() for a, b in zip([at(0), *clock.sleeps], clock.sleeps)]
    assert max(gaps) <= 5
    assert batch.beats >= 10 and batch.pending_looks >= 10


def test_a_second_scheduler_on_the_same_state_fires_nothing_twice() -> None:
    batch = FakeBatch()
    first, second = FakeClock(at(0)), FakeClock(at(0))
    a, b = scheduler(batch, first, every(5)), scheduler(batch, second, every(5))
    for moment in (5, 10, 15):
        a.tick(at(moment))
        assert [o.outcome for o in b.tick(at(moment + 0.2))] in ([], ["duplicate"])
    assert batch.launched() == [at(5), at(10), at(15)]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("skip", []),
        ("latest", [100]),
        ("all", [70, 80, 90, 100]),
    ],
)
def test_a_suspension_past_the_grace_obeys_the_catchup_policy(policy: str, expected: list[int]) -> None:
    batch, clock = FakeBatch(), FakeClock(at(0))
    s = scheduler(batch, clock, every(10, catchup=policy, max_catchup=4))
    s.tick(at(3))
    s.tick(at(10.1))
    assert batch.launched() == [at(10)]
    # Suspended from 10.1 to 105 (SIGSTOP, a suspended laptop): fires 20..100 were missed.
    outcomes = s.tick(at(105))
    assert [o.fire_at for o in outcomes] == [at(t) for t in expected]
    assert batch.launched() == [at(10)] + [at(t) for t in expected]
    # No burst later either: the next wake-ups only fire on time.
    assert [o.fire_at for o in s.tick(at(110.5))] == [at(110)]
    assert s.tick(at(111)) == []


def test_skip_records_the_newest_missed_fire_so_it_is_not_skipped_again(caplog: Any) -> None:
    batch, clock = FakeBatch(), FakeClock(at(0))
    s = scheduler(batch, clock, every(10, catchup="skip"))
    s.tick(at(10.1))
    with caplog.at_level(logging.WARNING, "batchctl.scheduler"):
        s.tick(at(75))
        s.tick(at(76))
    assert batch.skipped == [("s", at(70))]
    assert sum("missed fire(s)" in r.message for r in caplog.records) == 1


def test_a_paused_schedule_fires_nothing_and_resumes_without_catching_up() -> None:
    batch, clock = FakeBatch(), FakeClock(at(0))
    s = scheduler(batch, clock, every(10, catchup="all"), every(10, "other"))
    s.tick(at(10.1))
    batch.states["s"] = ScheduleState("s", paused=True, paused_at=at(11))
    s.tick(at(20.1))
    s.tick(at(30.1))
    assert batch.launched("s") == [at(10)]
    assert batch.launched("other") == [at(10), at(20), at(30)]
    batch.states["s"] = ScheduleState("s", paused=False, paused_at=at(11), resumed_at=at(55))
    s.tick(at(55.1))
    assert batch.launched("s") == [at(10)]  # 20..50 were paused: not caught up
    s.tick(at(60.1))
    assert batch.launched("s") == [at(10), at(60)]


def test_a_refused_fire_is_logged_and_the_loop_goes_on(caplog: Any) -> None:
    batch, clock = FakeBatch(refuse={"s-job"}), FakeClock(at(3))
    s = scheduler(batch, clock, every(10))
    with caplog.at_level(logging.INFO, "batchctl.scheduler"):
        run_until(s, clock, at(25))
    assert [o.outcome for o in batch.fires.values()] == ["refused", "refused"]
    refusals = [r for r in caplog.records if "refused: already complete" in r.message]
    assert len(refusals) == 2 and all(r.levelno == logging.WARNING for r in refusals)


def test_an_error_of_the_database_is_logged_and_tried_again(caplog: Any) -> None:
    batch, clock = FakeBatch(), FakeClock(at(0))
    calls = []
    real_fire = batch.fire

    def flaky(schedule: Schedule, fire_at: datetime, *, manual: bool = False) -> FireOutcome:
        calls.append(fire_at)
        if len(calls) == 1:
            raise OSError("database unreachable")
        return real_fire(schedule, fire_at)

    batch.fire = flaky  # type: ignore[method-assign]
    s = scheduler(batch, clock, every(10))
    s.tick(at(10.1))
    s.tick(at(11))
    assert batch.launched() == [at(10)] and calls == [at(10), at(10)]


def test_a_disabled_schedule_never_fires() -> None:
    batch, clock = FakeBatch(), FakeClock(at(0))
    s = scheduler(batch, clock, every(10, enabled=False))
    run_until(s, clock, at(40))
    assert batch.fires == {}


def test_sighup_reloads_the_schedules() -> None:
    batch, clock = FakeBatch(), FakeClock(at(3))
    s = scheduler(batch, clock, every(10), load=lambda: ([every(10, "new")], []))
    clock.at(at(15), s.request_reload)
    run_until(s, clock, at(35))
    assert batch.launched("s") == [at(10)]
    assert batch.launched("new") == [at(20), at(30)]


def test_a_reload_with_an_invalid_schedule_keeps_the_running_ones(caplog: Any) -> None:
    batch, clock = FakeBatch(), FakeClock(at(3))
    problem = ScheduleProblem("bad", "config.toml", "invalid cron")
    s = scheduler(batch, clock, every(10), load=lambda: ([every(10, "new")], [problem]))
    clock.at(at(15), s.request_reload)
    with caplog.at_level(logging.ERROR, "batchctl.scheduler"):
        run_until(s, clock, at(35))
    assert batch.launched("s") == [at(10), at(20), at(30)] and batch.launched("new") == []
    assert any("bad" in r.message and "invalid cron" in r.message for r in caplog.records)


def test_a_stop_request_ends_the_loop_at_once() -> None:
    batch, clock = FakeBatch(), FakeClock(at(0))
    s = scheduler(batch, clock, Schedule("daily", "j", "0 3 * * *"), poll=3600)
    clock.at(at(1), s.request_stop)
    s.run()
    assert clock.current == at(1) and batch.retired

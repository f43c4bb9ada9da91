"""Firing schedules through `Batch`, on SQLite and Postgres: a fire is one row written with its
execution (exactly once, whoever fires it), refused fires are recorded with their reason, a
FAILED instance resumes, fires left unlaunched by a dead scheduler are launched, pause, resume
and manual triggers. Processes are not started here (the spawn is replaced): the acceptance
tests run real schedulers."""

from __future__ import annotations

import os
import threading
from datetime import datetime, timezone
from typing import Any, Callable

import pytest

from batchctl.config import Config
from batchctl.errors import UnknownSchedule
from batchctl.model import Status, Trigger, instance_key, params_to_json
from batchctl.operator import Batch, start_rule

UTC = timezone.utc
FIRE = datetime(2025, 3, 10, 0, 30, tzinfo=UTC)  # 01:30 in Paris

JOB = """
from batchctl import Job

daily = Job("daily", params={"day": str})

@daily.tasklet
def only(ctx):
    pass

daily.schedule("30 1 * * *", name="nightly", timezone="Europe/Paris",
               params={"day": "{fire:%Y-%m-%d}"})
"""


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Launches recorded instead of started: the spawned 'process' is this one."""
    launched: list[int] = []

    def spawn(config: Config, execution: Any, log_path: Any) -> int:
        launched.append(execution.id)
        return os.getpid()

    monkeypatch.setattr("batchctl.launcher.spawn", spawn)
    return launched


@pytest.fixture
def fired(batch: Batch, write_job: Callable[[str, str], Any], spawned: list[int]) -> Batch:
    write_job("daily", JOB)
    return batch


def test_a_fire_creates_and_launches_one_execution_recorded_with_it(fired: Batch, spawned: list[int]) -> None:
    schedule = fired.schedule("nightly")
    outcome = fired.fire(schedule, FIRE)

    assert outcome.outcome == "launched" and outcome.execution is not None
    execution = fired.execution(outcome.execution.id)
    assert execution.params == {"day": "2025-03-10"}
    assert (execution.trigger, execution.trigger_detail) == (
        "schedule", "nightly @ 2025-03-10T01:30:00+01:00"
    )
    assert execution.pid == os.getpid() and spawned == [execution.id]
    [row] = fired.repository.fires("nightly")
    assert (row.fire_at, row.execution_id, row.outcome, row.manual) == (FIRE, execution.id, "launched", False)
    assert row.launched_at is not None
    assert fired.last_scheduled_fires() == {"nightly": FIRE}


def test_a_fire_already_recorded_is_a_no_op(fired: Batch, spawned: list[int]) -> None:
    schedule = fired.schedule("nightly")
    fired.fire(schedule, FIRE)
    again = fired.fire(schedule, FIRE)
    assert again.outcome == "duplicate" and again.execution is None
    assert fired.repository.count_executions() == 1 and len(spawned) == 1


def test_schedulers_racing_for_one_fire_create_one_execution(config: Config, fired: Batch) -> None:
    schedule = fired.schedule("nightly")
    fired.schedule_states()  # the schema exists before the racers connect
    batches = [Batch(config) for _ in range(4)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(batches))

    def fire(batch: Batch) -> None:
        barrier.wait()
        try:
            outcomes.append(batch.fire(schedule, FIRE).outcome)
        except Exception as exc:  # reported by the assertion below
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=fire, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for batch in batches:
        batch.close()
    assert sorted(outcomes) == ["duplicate"] * 3 + ["launched"]
    assert fired.repository.count_executions() == 1
    assert len(fired.repository.fires("nightly")) == 1


def test_a_refused_fire_is_recorded_with_its_reason(fired: Batch) -> None:
    schedule = fired.schedule("nightly")
    done = fired.start("daily", {"day": "2025-03-10"})
    assert done.status == Status.COMPLETED

    outcome = fired.fire(schedule, FIRE)

    assert outcome.outcome == "refused" and "already completed" in (outcome.reason or "")
    [row] = fired.repository.fires("nightly")
    assert row.outcome == "refused" and row.execution_id is None and "already completed" in (row.reason or "")
    assert fired.fire(schedule, FIRE).outcome == "duplicate"
    assert fired.last_scheduled_fires() == {"nightly": FIRE}  # a refusal was a decision too


def test_a_fire_of_a_failed_instance_resumes_it(fired: Batch, write_job: Callable[[str, str], Any]) -> None:
    failed = fired.repository.create_execution(
        "daily", instance_key({"day": "2025-03-10"}), params_to_json({"day": "2025-03-10"}),
        start_rule,
    )
    failed = fired.repository.end_execution(failed, Status.FAILED, "boom")

    outcome = fired.fire(fired.schedule("nightly"), FIRE)

    assert outcome.outcome == "launched" and outcome.execution is not None
    assert outcome.execution.resumed_from == failed.id


def test_a_fire_left_unlaunched_by_a_dead_scheduler_is_launched(fired: Batch, spawned: list[int]) -> None:
    # What a scheduler killed between its transaction and its launch leaves behind.
    repository = fired.repository
    left = repository.create_execution(
        "daily", instance_key({"day": "2025-03-10"}), params_to_json({"day": "2025-03-10"}),
        start_rule, trigger=Trigger("schedule", "nightly @ ..."),
        also=repository.fire_recorder("nightly", FIRE),
    )
    assert left.pid is None and left.owner is None

    assert fired.launch_pending_fires(min_age=3600) == []  # too recent: its scheduler may be at it
    launched = fired.launch_pending_fires(min_age=0)

    assert [e.id for e in launched] == [left.id] and spawned == [left.id]
    assert fired.launch_pending_fires(min_age=0) == []  # it has a pid now
    assert repository.fires("nightly")[0].launched_at is not None


def test_only_fires_are_launched_by_schedulers(fired: Batch, spawned: list[int]) -> None:
    fired.repository.create_execution(
        "daily", instance_key({"day": "x"}), params_to_json({"day": "x"}), start_rule
    )
    assert fired.launch_pending_fires(min_age=0) == [] and spawned == []


def test_pause_resume_and_a_manual_trigger(fired: Batch, spawned: list[int]) -> None:
    assert fired.schedule_states() == {}
    paused = fired.pause_schedule("nightly")
    assert paused.paused and paused.paused_at is not None
    assert fired.pause_schedule("nightly").paused_at == paused.paused_at  # idempotent
    assert fired.schedule_states()["nightly"].paused

    manual = fired.trigger_schedule("nightly")  # a manual fire ignores the pause

    assert manual.outcome == "launched" and manual.manual and manual.execution is not None
    assert manual.execution.trigger_detail.endswith("(manual)")
    assert fired.last_scheduled_fires() == {}  # a manual fire is not the schedule's last fire
    state = fired.schedule_states()["nightly"]
    assert state.last_fire is not None and state.last_fire.manual
    assert state.last_status == Status.STARTING

    resumed = fired.resume_schedule("nightly")
    assert not resumed.paused and resumed.resumed_at is not None
    with pytest.raises(UnknownSchedule):
        fired.pause_schedule("nope")


def test_a_reserved_name_is_an_invalid_schedule(fired: Batch, write_job: Callable[[str, str], Any]) -> None:
    write_job("other", """
        from batchctl import Job
        other = Job("other")
        @other.tasklet
        def only(ctx):
            pass
        other.schedule("* * * * *", name="pause")
    """)
    valid, problems = fired.schedules()
    assert [s.name for s in valid] == ["nightly"]
    assert [p.schedule for p in problems] == ["pause"] and "reserved" in str(problems[0])

"""The live display of a foreground run, rendered into a captured terminal.

The display is driven by the observer events the engine sends, on a fake clock, and each
snapshot is what the terminal would show at that instant: no real time passes and nothing
sleeps. Only the running step may move; pending and ended rows must be still.
"""

from __future__ import annotations

import io
import logging
import re
from datetime import datetime, timezone
from typing import Iterator

import pytest
from rich.console import Console

from batchctl import Job, render
from batchctl.model import JobExecution, Status, StepExecution
from batchctl.steps import current_step

NOW = datetime(2024, 1, 31, 9, 0, tzinfo=timezone.utc)
SPINNER_FRAMES = set("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")  # rich's default "dots" spinner


def make_job() -> Job:
    job = Job("live")

    @job.tasklet
    def prepare(ctx):  # type: ignore[no-untyped-def]
        pass

    job.chunk_step("load", reader=lambda ctx: iter(()), writer=lambda items, ctx: None)

    @job.tasklet
    def publish(ctx):  # type: ignore[no-untyped-def]
        pass

    return job


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def display(clock: Clock) -> Iterator[render.LiveDisplay]:
    job = make_job()
    terminal = Console(file=io.StringIO(), force_terminal=True, width=120)
    with render.LiveDisplay(lambda name: job, console=terminal, get_time=clock,
                            auto_refresh=False) as shown:
        shown.execution_created(execution(Status.STARTING))
        yield shown


def execution(status: Status) -> JobExecution:
    return JobExecution(id=1, instance_id=1, job_name="live", params={}, status=status,
                        created_at=NOW)


def step(name: str, status: Status, step_id: int = 1) -> StepExecution:
    return StepExecution(id=step_id, job_execution_id=1, name=name, status=status, started_at=NOW)


def rows(display: render.LiveDisplay) -> dict[str, str]:
    """What the terminal shows now, one line per step, by step name."""
    snapshot = Console(record=True, force_terminal=True, width=120, file=io.StringIO())
    snapshot.print(display.progress.get_renderable())
    lines = snapshot.export_text().splitlines()
    return {name: next(line for line in lines if f" {name} " in line)
            for name in ("prepare", "load", "publish")}


def spinning(line: str) -> bool:
    return bool(SPINNER_FRAMES & set(line))


def elapsed(line: str) -> str | None:
    found = re.search(r"\d+:\d\d:\d\d", line)
    return found[0] if found else None


def test_pending_rows_are_still_and_show_no_time(display: render.LiveDisplay, clock: Clock) -> None:
    before = rows(display)
    clock.now += 1.3
    after = rows(display)
    assert before == after
    for line in after.values():
        assert not spinning(line) and elapsed(line) is None and "pending" in line


def test_a_running_step_of_unknown_total_spins_and_counts_its_time(
    display: render.LiveDisplay, clock: Clock
) -> None:
    display.step_started(step("prepare", Status.STARTED))
    clock.now += 2
    display.step_ended(step("prepare", Status.COMPLETED))
    display.step_started(step("load", Status.STARTED, 2))
    clock.now += 1
    display.step_progress(step("load", Status.STARTED, 2), 500, None)  # a CsvReader: no total
    clock.now += 6
    first = rows(display)
    clock.now += 0.25
    second = rows(display)

    assert spinning(first["load"]) and spinning(second["load"])
    assert first["load"] != second["load"]  # it moves
    assert elapsed(first["load"]) == "0:00:07" and "500 items" in first["load"]
    assert first["publish"] == second["publish"] and not spinning(first["publish"])
    assert not spinning(first["prepare"]) and elapsed(first["prepare"]) == "0:00:02"
    assert first["prepare"] == second["prepare"]


def test_nothing_spins_once_the_run_ended_failed_rows_included(
    display: render.LiveDisplay, clock: Clock
) -> None:
    display.step_started(step("prepare", Status.STARTED))
    display.step_ended(step("prepare", Status.COMPLETED))
    display.step_started(step("load", Status.STARTED, 2))
    display.step_progress(step("load", Status.STARTED, 2), 10, None)
    clock.now += 4
    display.step_ended(step("load", Status.FAILED, 2))
    display.job_ended(execution(Status.FAILED))
    ended = rows(display)
    clock.now += 30
    later = rows(display)

    assert ended == later
    assert not any(spinning(line) for line in later.values())
    assert "FAILED" in later["load"] and elapsed(later["load"]) == "0:00:04"
    assert "pending" in later["publish"]


def test_a_run_interrupted_mid_step_leaves_nothing_spinning(clock: Clock) -> None:
    job = make_job()
    terminal = Console(file=io.StringIO(), force_terminal=True, width=120)
    with render.LiveDisplay(lambda name: job, console=terminal, get_time=clock,
                            auto_refresh=False) as shown:
        shown.execution_created(execution(Status.STARTING))
        shown.step_started(step("prepare", Status.STARTED))
        clock.now += 1
        assert spinning(rows(shown)["prepare"])
    clock.now += 5
    assert not any(spinning(line) for line in rows(shown).values())


def test_log_lines_carry_an_iso_time_and_the_step_name(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("batchctl")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    terminal = Console(file=io.StringIO(), force_terminal=True, width=200, record=True)
    monkeypatch.setattr(render, "stderr", terminal)
    try:
        render.setup_logging(rich_output=True)
        token = current_step.set("load")
        try:
            logging.getLogger("batchctl.job.live").info("read %s \x1b[2J", "it")
        finally:
            current_step.reset(token)
        logging.getLogger("batchctl.job.live").info("between steps")
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    text = terminal.export_text()
    assert re.search(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\]", text), text
    assert "load: read it \\x1b[2J" in text
    assert "between steps" in text and ": between steps" not in text

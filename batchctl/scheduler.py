"""`batchctl scheduler`: the timer trigger, a service over `Batch`.

It sleeps until the next fire instant of its schedules, then asks `Batch` to fire what is due
(`catchup.due_fires`, from the last fire the repository recorded) and logs one line per fire,
refusal and catch-up. It decides nothing itself: exactly-once is the repository's (a fire is a
unique row written with its execution), what may start is `start_rule`'s, and the executions run
in processes of their own (launched detached), never in the scheduler's.

Every wake-up reads the paused schedules and the last fires from the repository, so two
schedulers (or more) on one repository obey the same pauses and never fire twice, with no
leader. It also launches the fires a dead scheduler recorded but never launched. SIGTERM or
Ctrl-C ends it at once (launched executions go on); SIGHUP reloads the schedules (the config
file's and the job modules'); invalid schedules at a reload keep the previous ones running.

The clock is injected (`Clock`: `now()` and `sleep(until)`), so tests drive the loop without
real sleeps.
"""

from __future__ import annotations

import logging
import os
import select
import signal
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

from batchctl.defaults import SCHEDULER_KIND, SCHEDULER_POLL
from batchctl.model import utcnow
from batchctl.schedules import Schedule, ScheduleProblem, due_fires, last_fires, next_fires

if TYPE_CHECKING:
    from batchctl.firing import FireOutcome
    from batchctl.operator import Batch

log = logging.getLogger("batchctl.scheduler")
_TICK = timedelta(microseconds=1)


class Clock(Protocol):
    """Where the scheduler reads the time and waits: the system's, or a test's."""

    def now(self) -> datetime:
        """The current instant, aware, in UTC."""
        ...

    def sleep(self, until: datetime) -> None:
        """Wait until `until`, or less when woken (a signal)."""
        ...

    def wake(self) -> None:
        """End the current or next `sleep` early (safe in a signal handler)."""
        ...


class SystemClock:
    """The system clock; `sleep` waits on a pipe, so that `wake()` (from a signal handler)
    ends it at once. A wait is at most SCHEDULER_POLL seconds: a clock that jumps (a
    suspended machine, NTP) is noticed within that."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def now(self) -> datetime:
        return utcnow()

    def sleep(self, until: datetime) -> None:
        delay = min((until - utcnow()).total_seconds(), SCHEDULER_POLL)
        if delay > 0:
            select.select([self._read], [], [], delay)
        self._drain()

    def wake(self) -> None:
        try:
            os.write(self._write, b"x")
        except BlockingIOError:  # the pipe is full: it will wake anyway
            pass

    def _drain(self) -> None:
        try:
            while os.read(self._read, 512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


Loader = Callable[[], "tuple[list[Schedule], list[ScheduleProblem]]"]


@dataclass
class Scheduler:
    """The service loop over `batch`'s schedules. `load` gives the schedules again on a reload
    (default: `batch.schedules(reload=True)`); `poll`: the longest sleep between two looks at
    pauses, unlaunched fires and the heartbeat."""

    batch: Batch
    schedules: list[Schedule]
    clock: Clock = field(default_factory=SystemClock)
    load: Loader | None = None
    poll: float = SCHEDULER_POLL
    heartbeat_interval: float | None = None
    service_id: int | None = None
    stopping: bool = False
    reload_requested: bool = False
    _last_beat: datetime | None = None

    # -- control (signal handlers call these) ------------------------------------------------------

    def request_stop(self) -> None:
        self.stopping = True
        self.batch.stop_waiting_for_repository()
        self.clock.wake()

    def request_reload(self) -> None:
        self.reload_requested = True
        self.clock.wake()

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """Register, then fire until asked to stop; retire on the way out."""
        self.service_id = self.batch.register_service(SCHEDULER_KIND)
        names = ", ".join(s.name for s in self.schedules) or "none"
        log.info(
            "scheduler %s (pid %s) started with %d schedule(s): %s",
            self.service_id, os.getpid(), len(self.schedules), names,
        )
        try:
            while not self.stopping:
                self.step()
        finally:
            try:
                self.batch.retire_service(self.service_id)
            except Exception as exc:  # the database may be gone: the heartbeat will age
                log.warning("could not retire scheduler %s: %s", self.service_id, exc)
            log.info("scheduler %s stopped", self.service_id)

    def step(self) -> None:
        """One wake-up: reload if asked, fire what is due, beat, then sleep until the next
        fire (or the poll)."""
        if self.reload_requested:
            self.reload_requested = False
            self.reload()
        now = self.clock.now()
        try:
            self.tick(now)
            self.heartbeat(now)
        except Exception as exc:  # the database unreachable, say: try again at the next wake
            log.error("scheduler: %s: %s", type(exc).__name__, getattr(exc, "message", exc))
        if not self.stopping and not self.reload_requested:
            self.clock.sleep(self.next_wake(self.clock.now()))

    def reload(self) -> None:
        """Read the schedules again; with any invalid one, keep the ones running."""
        load = self.load or (lambda: self.batch.schedules(reload=True))
        try:
            valid, problems = load()
        except Exception as exc:
            log.error("reload failed, keeping the %d schedule(s): %s", len(self.schedules),
                      getattr(exc, "message", exc))
            return
        if problems:
            for problem in problems:
                log.error("reload: %s", problem)
            log.error("reload refused (%d invalid schedule(s)): keeping the %d schedule(s)",
                      len(problems), len(self.schedules))
            return
        before = {s.name for s in self.schedules}
        after = {s.name for s in valid}
        self.schedules = list(valid)
        log.info(
            "reloaded %d schedule(s)%s%s", len(valid),
            f"; added {', '.join(sorted(after - before))}" if after - before else "",
            f"; removed {', '.join(sorted(before - after))}" if before - after else "",
        )

    def tick(self, now: datetime) -> list[FireOutcome]:
        """Fire every due fire of every schedule not paused, at `now`; launch the fires that
        a dead scheduler left unlaunched. Returns the outcomes (for tests)."""
        states = self.batch.schedule_states()
        lasts = self.batch.last_scheduled_fires()
        outcomes: list[FireOutcome] = []
        for schedule in self.schedules:
            state = states.get(schedule.name)
            if state is not None and state.paused:
                continue
            last = lasts.get(schedule.name)
            if state is not None and state.resumed_at is not None:
                # Fires while it was paused are not caught up: it fires again from its resume.
                last = state.resumed_at if last is None else max(last, state.resumed_at)
            outcomes += self._fire_due(schedule, last, now)
        self.batch.launch_pending_fires()
        return outcomes

    def _fire_due(self, schedule: Schedule, last: datetime | None, now: datetime) -> list[FireOutcome]:
        due = due_fires(schedule, last, now)
        if due.skipped:
            first = due.first_skipped.isoformat() if due.first_skipped else "?"
            log.warning(
                "schedule %s: %d missed fire(s) from %s skipped (catchup=%s)",
                schedule.name, due.skipped, first, schedule.catchup,
            )
            if not due.caught_up:
                # Nothing runs: record the newest missed fire, so that the next wake-up counts
                # from it instead of skipping the same fires again.
                cutoff = now - timedelta(seconds=schedule.grace) - _TICK
                newest = last_fires(schedule, last, cutoff, 1) if last is not None else []
                if newest:
                    self.batch.skip_fire(
                        schedule, newest[0], f"missed; catchup={schedule.catchup}"
                    )
        outcomes = []
        for fire_at in due.run:
            caught_up = fire_at in due.caught_up
            try:
                outcome = self.batch.fire(schedule, fire_at)
            except Exception as exc:
                log.error("schedule %s: fire at %s failed: %s", schedule.name,
                          fire_at.isoformat(), getattr(exc, "message", exc))
                continue
            _log_outcome(outcome, caught_up=caught_up, late=(now - fire_at).total_seconds())
            outcomes.append(outcome)
        return outcomes

    def heartbeat(self, now: datetime) -> None:
        interval = self.heartbeat_interval or self.batch.config.heartbeat_interval
        if self.service_id is None:
            return
        if self._last_beat is None or (now - self._last_beat).total_seconds() >= interval:
            self.batch.service_heartbeat(self.service_id)
            self._last_beat = now

    def next_wake(self, now: datetime) -> datetime:
        """The next fire instant of any schedule, or `now + poll` if that is sooner."""
        wake = now + timedelta(seconds=self.poll)
        for schedule in self.schedules:
            if not schedule.enabled:
                continue
            fire = next_fires(schedule, now, 1)
            if fire and fire[0] < wake:
                wake = fire[0]
        return wake


def _log_outcome(outcome: FireOutcome, *, caught_up: bool, late: float) -> None:
    what = f"schedule {outcome.schedule}: fire at {outcome.fire_at.isoformat()}"
    if caught_up:
        what += f" (missed, caught up {late:.0f}s late)"
    if outcome.outcome == "launched" and outcome.execution is not None:
        execution = outcome.execution
        resumed = f", resuming execution {execution.resumed_from}" if execution.resumed_from else ""
        log.info("%s: launched execution %s of job %s (pid %s)%s", what, execution.id,
                 execution.job_name, execution.pid, resumed)
    elif outcome.outcome == "refused":
        log.warning("%s: refused: %s", what, outcome.reason)
    else:
        log.debug("%s: already fired by another scheduler", what)


@contextmanager
def _signals(scheduler: Scheduler) -> Iterator[None]:
    """SIGTERM and SIGINT stop the scheduler, SIGHUP reloads it, while the block runs."""
    handlers: dict[int, Any] = {
        signal.SIGTERM: lambda *_: scheduler.request_stop(),
        signal.SIGINT: lambda *_: scheduler.request_stop(),
        signal.SIGHUP: lambda *_: scheduler.request_reload(),
    }
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_scheduler(batch: Batch, schedules: Sequence[Schedule]) -> None:
    """`batchctl scheduler`: run the service until SIGTERM or Ctrl-C (SIGHUP reloads)."""
    clock = SystemClock()
    scheduler = Scheduler(batch, list(schedules), clock=clock)
    try:
        with _signals(scheduler):
            scheduler.run()
    finally:
        clock.close()


__all__ = ["Clock", "Scheduler", "SystemClock", "run_scheduler"]

"""`Batch`'s schedule operations: fire a schedule exactly once, launch the fires a dead
scheduler left unlaunched, pause, resume and trigger. A mixin of `Batch` (operator.py), kept in a
module of its own; the rules of what may start stay `start_rule`'s, applied by `Batch.start`'s
own steps.

A fire, in one transaction: its row (schedule name, fire instant in UTC; unique) and its
execution, created by the same rule as `start` (a FAILED or STOPPED instance resumes; a live,
COMPLETED or UNKNOWN one is refused). A second scheduler finds the row and does nothing. A
refused fire is recorded with its reason in a transaction of its own. Then the execution is
launched detached, as `start --detach` does; a scheduler that died before launching it leaves
an execution STARTING with no pid and no owner, which any scheduler launches
(`launch_pending_fires`): a relaunch is safe, since the take-over is fenced and a second child
finds the execution owned and exits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Sequence, cast

from batchctl.defaults import PENDING_FIRE_AGE
from batchctl.errors import BatchctlError, Refused, StaleExecution, UsageError
from batchctl.model import JobExecution, Status, Trigger, utcnow

if TYPE_CHECKING:
    from batchctl.operator import Batch
    from batchctl.repository.fires import ScheduleState
    from batchctl.schedules import Schedule, ScheduleProblem

log = logging.getLogger("batchctl.scheduler")


@dataclass(frozen=True)
class FireOutcome:
    """What came of one fire of a schedule.

    `outcome`: "launched" (its execution was created and handed to a new process: `execution`),
    "refused" (recorded with the `reason`: the instance is live, COMPLETED or UNKNOWN, or its
    params were refused), or "duplicate" (already recorded: another scheduler fired it, or
    this one earlier). `error`: the refusal, for a caller that reports it (`schedules trigger`).
    """

    schedule: str
    fire_at: datetime
    outcome: str
    execution: JobExecution | None = None
    reason: str | None = None
    manual: bool = False
    error: BatchctlError | None = None

    @property
    def resumed(self) -> bool:
        return self.execution is not None and self.execution.resumed_from is not None


def fire_detail(schedule: Schedule, fire_at: datetime, *, manual: bool = False) -> str:
    """The trigger detail of a fire's execution: `<name> @ <fire instant in the schedule's
    zone, ISO 8601>`, and ` (manual)` for `schedules trigger`."""
    from batchctl.schedules import time_zone

    local = fire_at.astimezone(time_zone(schedule.timezone))
    return f"{schedule.name} @ {local.isoformat()}" + (" (manual)" if manual else "")


class ScheduleOperations:
    """The schedule side of `Batch`: `fire`, `launch_pending_fires`, `schedules`,
    `schedule_states`, `pause_schedule`, `resume_schedule`, `trigger_schedule`, and the
    service registration of a scheduler."""

    def _self(self) -> Batch:
        return cast("Batch", self)

    # -- loading --------------------------------------------------------------------------------

    def schedules(
        self, *, now: datetime | None = None, reload: bool = False
    ) -> tuple[list[Schedule], list[ScheduleProblem]]:
        """The valid schedules (config and code) and the problems of the others. `reload`
        reads the config file's schedules and the job modules again (a scheduler's SIGHUP);
        the database, jobs dir and other settings stay as they were."""
        from dataclasses import replace

        from batchctl.config import Config
        from batchctl.schedules import load_schedules

        batch = self._self()
        if reload:
            if batch.config.source is not None:
                fresh = Config.load(
                    batch.config.source, database_url=batch.config.database_url,
                    jobs_dir=batch.config.jobs_dir,
                )
                batch.config = replace(batch.config, schedules=fresh.schedules)
            _forget_job_modules()
            batch._registry = None
        return load_schedules(batch.config, batch.registry, now=now)

    def schedule(self, name: str, *, now: datetime | None = None) -> Schedule:
        """The valid schedule called `name` (UnknownSchedule, or ScheduleError naming its
        problems)."""
        from batchctl.schedules import find_schedule

        valid, problems = self.schedules(now=now)
        return find_schedule(name, valid, problems)

    def schedule_states(self, names: Sequence[str] | None = None) -> dict[str, ScheduleState]:
        """Paused or not, and the last fire with its execution's status, by schedule name
        (schedules never paused nor fired are absent)."""
        return cast("dict[str, ScheduleState]", self._self().repository.schedule_states(names))

    def last_scheduled_fires(self) -> dict[str, datetime]:
        """Each schedule's newest recorded fire that was not manual: catch-up counts from it."""
        return cast("dict[str, datetime]", self._self().repository.last_scheduled_fires())

    # -- operators ------------------------------------------------------------------------------

    def pause_schedule(self, name: str) -> ScheduleState:
        """Pause a schedule: no scheduler fires it until it is resumed. Fires missed meanwhile
        are not caught up."""
        self.schedule(name)
        return cast("ScheduleState", self._self().repository.set_schedule_paused(name, True))

    def resume_schedule(self, name: str) -> ScheduleState:
        """Resume a paused schedule: it fires again from now on."""
        self.schedule(name)
        return cast("ScheduleState", self._self().repository.set_schedule_paused(name, False))

    def trigger_schedule(self, name: str) -> FireOutcome:
        """Fire a schedule now, as a manual fire (recorded as such; it does not count as its
        last scheduled fire), whether or not it is paused or disabled."""
        schedule = self.schedule(name)
        return self.fire(schedule, utcnow(), manual=True)

    # -- firing ---------------------------------------------------------------------------------

    def fire(self, schedule: Schedule, fire_at: datetime, *, manual: bool = False) -> FireOutcome:
        """Fire `schedule` at the instant `fire_at` (UTC), exactly once whatever the number of
        schedulers: record the fire and create its execution in one transaction, then launch
        it detached. A fire already recorded is a no-op ("duplicate"); a refused one is
        recorded with its reason ("refused"). Errors of the environment (the database) raise,
        and nothing is recorded: the fire may be tried again."""
        from batchctl.repository.fires import DuplicateFire
        from batchctl.schedules import render_params

        batch = self._self()
        repository = batch.repository
        if repository.is_fire_recorded(schedule.name, fire_at):
            return FireOutcome(schedule.name, fire_at, "duplicate", manual=manual)
        trigger = Trigger("schedule", fire_detail(schedule, fire_at, manual=manual))
        try:
            try:
                params = render_params(schedule, fire_at)
            except BatchctlError:
                raise
            except Exception as exc:  # a params function of the job's authors
                raise UsageError(f"params of schedule {schedule.name}: {type(exc).__name__}: {exc}") from exc
            execution, _job = batch._create_start(
                schedule.job, params, detach=True, trigger=trigger,
                also=repository.fire_recorder(schedule.name, fire_at, manual=manual),
            )
        except DuplicateFire:
            return FireOutcome(schedule.name, fire_at, "duplicate", manual=manual)
        except (Refused, UsageError) as exc:
            recorded = repository.record_fire(
                schedule.name, fire_at, "refused", exc.message, manual=manual
            )
            outcome = "refused" if recorded else "duplicate"
            return FireOutcome(
                schedule.name, fire_at, outcome, reason=exc.message, manual=manual, error=exc
            )
        return FireOutcome(
            schedule.name, fire_at, "launched", execution=self._launch_fire(execution),
            manual=manual,
        )

    def skip_fire(self, schedule: Schedule, fire_at: datetime, reason: str) -> bool:
        """Record a missed fire that the catch-up policy does not run (so that later wake-ups
        count from it); whether this call recorded it."""
        return bool(self._self().repository.record_fire(schedule.name, fire_at, "skipped", reason))

    def launch_pending_fires(self, *, min_age: float = PENDING_FIRE_AGE) -> list[JobExecution]:
        """Launch the executions of fires that no process has taken over: STARTING, with no
        pid and no owner, recorded more than `min_age` seconds ago (a scheduler died between
        recording a fire and launching it). Returns those this call launched."""
        batch = self._self()
        launched = []
        for execution_id in batch.repository.pending_fire_executions(
            utcnow() - timedelta(seconds=min_age)
        ):
            execution = batch.repository.execution(execution_id)
            if execution.status != Status.STARTING or execution.pid or execution.owner:
                continue
            log.info(
                "execution %s of job %s was recorded by a scheduler that did not launch it: "
                "launching it", execution.id, execution.job_name,
            )
            found = self._launch_fire(execution)
            if found.pid is not None:
                launched.append(found)
        return launched

    def _launch_fire(self, execution: JobExecution) -> JobExecution:
        """Launch a fire's execution detached; one that another scheduler is launching (its
        version moved) is left to it."""
        batch = self._self()
        try:
            batch._prepare_log_dir()
            launched = batch._launch(execution)
        except StaleExecution:
            return batch.repository.execution(execution.id)  # another scheduler launched it
        except OSError as exc:
            log.error("execution %s could not be launched: %s", execution.id, exc)
            return batch.repository.execution(execution.id)
        except BatchctlError as exc:
            # A log_dir that cannot be made or written: the execution waits (STARTING) for a
            # later pass. A log file that could not be created ended it FAILED (see _launch).
            log.error("execution %s could not be launched: %s", execution.id, exc.message)
            return batch.repository.execution(execution.id)
        batch.repository.mark_fire_launched(execution.id)
        return launched

    # -- the service ----------------------------------------------------------------------------

    def register_service(self, kind: str) -> int:
        """Record a live service of `kind` (listed by `workers`); its id for heartbeats."""
        import os

        from batchctl.host import host_name

        return int(self._self().repository.register_worker(host_name(), os.getpid(), kind))

    def service_heartbeat(self, service_id: int) -> None:
        self._self().repository.worker_heartbeat(service_id, None)

    def retire_service(self, service_id: int) -> None:
        self._self().repository.retire_worker(service_id)


def _forget_job_modules() -> None:
    """Drop the imported job modules so that a new registry imports their current code."""
    import sys

    from batchctl.registry import MODULE_PREFIX

    for name in [n for n in sys.modules if n.startswith(MODULE_PREFIX + ".")]:
        del sys.modules[name]


__all__ = ["FireOutcome", "ScheduleOperations", "fire_detail"]

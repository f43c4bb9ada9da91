"""Start, stop, restart, abandon: the one place that decides what may happen to a job.

`Batch` is the facade for every caller (the CLI, Python code, a scheduler, an RPC handler, a
message consumer); each is a thin layer over it. The rules are small pure functions
(`start_rule`, `restart_rule`) that the repository runs inside the transaction that creates the
execution, so the decision and the write are atomic.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Mapping, Sequence

from batchctl.config import Config
from batchctl.defaults import STOP_WAIT_POLL
from batchctl.firing import ScheduleOperations
from batchctl.errors import (
    AlreadyComplete,
    AlreadyRunning,
    BatchctlError,
    EnvironmentProblem,
    NotAbandonable,
    NotLive,
    NotRerunnable,
    NotRestartable,
    Refused,
    StopTimeout,
    UsageError,
)
from batchctl.job import Job
from batchctl.model import (
    MAX_ID,
    ABANDONABLE_STATUSES,
    Event,
    JobExecution,
    JobInstance,
    PruneReport,
    SkippedItem,
    Status,
    StepExecution,
    Trigger,
    instance_key,
    params_to_json,
    parse_execution_id,
    utcnow,
)


LOST_PREFIX = "process lost"
"""How the exit message of an execution marked lost begins (a refusal recognises it by this)."""


# -- the rules ------------------------------------------------------------------------------------


def start_rule(last: JobExecution | None) -> JobExecution | None:
    """What `start` does given the instance's last execution: the execution to resume, or None
    to run afresh; a Refused error when it may not run."""
    if last is None or last.status == Status.ABANDONED:
        return None
    if last.status.is_live:
        raise AlreadyRunning(
            f"job {last.job_name} with these params is already running (execution {last.id}, "
            f"{last.status.value})"
        )
    if last.status == Status.COMPLETED:
        raise AlreadyComplete(
            f"job {last.job_name} already completed with these params (execution {last.id}); "
            "a different param value makes a new instance, and --rerun runs these params again"
        )
    if last.status.is_restartable:
        return last
    raise Refused(
        f"the last execution of this instance ({last.id}) is {last.status.value}: it may have "
        f"committed work; check it, then 'batchctl abandon {last.id}' to run the instance afresh"
    )


def rerun_rule(last: JobExecution | None) -> JobExecution | None:
    """What `start --rerun` does given the last execution of the params' instance: None (a new
    instance, linked to the first of these params, runs afresh) when it COMPLETED or was
    ABANDONED, or there is none; a Refused error otherwise. An instance that may resume is
    refused rather than repeated: its committed work would be done twice (restart it instead)."""
    if last is None or last.status in (Status.COMPLETED, Status.ABANDONED):
        return None
    if last.status.is_restartable:
        raise NotRerunnable(
            f"job {last.job_name} with these params is {last.status.value} (execution {last.id}); "
            f"only a COMPLETED instance runs again: resume it with 'batchctl restart {last.id}'"
        )
    return start_rule(last)  # live or UNKNOWN: refused as a start refuses them


def restart_rule(last: JobExecution | None) -> JobExecution | None:
    """What `restart` does: resume a STOPPED or FAILED last execution, refuse anything else."""
    if last is None:
        raise NotRestartable("this instance has no execution to restart")
    if last.status.is_live:
        raise AlreadyRunning(
            f"execution {last.id} of job {last.job_name} is still {last.status.value}; "
            f"'batchctl stop {last.id}' stops it at its next checkpoint, then restart it"
        )
    if not last.status.is_restartable:
        hint = ""
        if last.status == Status.COMPLETED:
            hint = " (a different param value makes a new instance)"
        elif last.status == Status.ABANDONED:
            hint = f"; to run the instance afresh: {start_command(last)}"
        raise NotRestartable(
            f"execution {last.id} of job {last.job_name} is {last.status.value}; only STOPPED or "
            f"FAILED executions restart{hint}"
        )
    return last


def start_command(execution: JobExecution) -> str:
    """The command line that starts `execution`'s instance again (a refusal's next step)."""
    import shlex

    command = f"batchctl start {shlex.quote(execution.job_name)}"
    if execution.params:
        command += " --params " + shlex.quote(json.dumps(execution.params, separators=(",", ":")))
    return command


def lost_reason(
    execution: JobExecution,
    *,
    now: datetime,
    timeout: float,
    pid_visible: Callable[[JobExecution], bool],
    process_alive: Callable[[int], bool],
) -> str | None:
    """Why a live execution is taken as lost (its process gone, or silent past the timeout),
    or None while it may still be running. Its pid is looked at only where `pid_visible` says
    it means something (the same host, boot and pid namespace); elsewhere the heartbeat alone
    decides."""
    if not execution.status.is_live:
        return None
    beat = execution.heartbeat_at or execution.created_at
    # Stored in the exit message and read on any machine: in UTC, and saying so.
    beat_text = beat.strftime("%Y-%m-%d %H:%M:%S UTC") if beat else "never"
    where = f"pid {execution.pid} on {execution.host}" if execution.pid else "no pid recorded yet"
    if execution.pid and pid_visible(execution) and not process_alive(execution.pid):
        return f"{LOST_PREFIX}: {where} is gone (last heartbeat {beat_text})"
    if beat is None or (now - beat).total_seconds() > timeout:
        return (
            f"{LOST_PREFIX}: no heartbeat for more than {timeout:g}s (last heartbeat {beat_text}, "
            f"{where})"
        )
    return None


def lost_status(execution: JobExecution) -> Status:
    """A lost execution that was stopping counts as stopped; any other as failed."""
    return Status.STOPPED if execution.status == Status.STOPPING else Status.FAILED


def parse_target(target: str | int) -> int | str:
    """An argument made only of digits is an execution id; anything else a job name."""
    if isinstance(target, int) or (target.isascii() and target.isdigit()):
        return parse_execution_id(target)
    return target


def _statuses(given: Sequence[Status | str]) -> list[Status]:
    """Statuses, or their names in any case (from a command line, a query string, a message);
    UsageError for an unknown name. The facade checks them so that every trigger refuses alike."""
    statuses = []
    for item in given:
        if isinstance(item, Status):
            statuses.append(item)
            continue
        try:
            statuses.append(Status(item.upper()))
        except ValueError:
            known = ", ".join(status.value for status in Status)
            raise UsageError(f"unknown status {item!r} (one of {known})") from None
    return statuses


def _remove_logs(paths: Sequence[str], problems: list[str], *, dry_run: bool) -> int:
    """Remove the log files of pruned executions (with `dry_run`, count those that exist);
    return how many. Called once their rows are committed gone, so a failure leaves a stray
    file, never a row without its log; a file that cannot be removed is named in `problems`."""
    from pathlib import Path

    removed = 0
    for name in paths:
        path = Path(name)
        if dry_run:
            removed += path.is_file()
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(f"could not remove {path}: {exc.strerror}")
            continue
        removed += 1
    return removed


def this_process() -> dict[str, Any]:
    """The host, pid and pid scope of this process, as an execution records them."""
    from batchctl.host import host_name, pid_scope

    return {"host": host_name(), "pid": os.getpid(), "pid_scope": pid_scope()}


@dataclass(frozen=True)
class HistoryPage:
    """One page of `history`: the executions, newest first; whether the limit cut rows off;
    and, for each shown execution that a later one resumed, that later execution's id."""

    executions: list[JobExecution]
    more: bool
    resumed_by: dict[int, int]


@dataclass(frozen=True)
class StartPlan:
    """What `start` would do with these params, decided by the rule `start` uses, without
    writing anything (`start --dry-run`, `Batch.plan_start`).

    `action` is one of "new" (a new instance), "resume" (of execution `resumes`), "afresh" (an
    instance whose last execution was abandoned runs again from its first step), "rerun" (a new
    instance, rerun number `rerun` of instance `rerun_of`), "refused" (`refusal` says why,
    `exit_code` is the refusal's). `instance_key` and `instance_id` are those of the instance
    it would run (`instance_id` None: one not made yet). `lost`: the instance's last execution
    is live but its process is lost; a start marks it so (FAILED or STOPPED) before deciding.
    """

    job: str
    params: dict[str, Any]
    instance_key: str
    action: str
    instance_id: int | None = None
    last_execution_id: int | None = None
    last_status: Status | None = None
    resumes: int | None = None
    rerun_of: int | None = None
    rerun: int = 0
    lost: str | None = None
    refusal: str | None = None
    exit_code: int = 0

    @property
    def description(self) -> str:
        """One sentence: what the start would do."""
        if self.action == "new":
            return f"would start a new instance of job {self.job}"
        if self.action == "resume":
            return f"would resume instance {self.instance_id} from execution {self.resumes}"
        if self.action == "afresh" and self.last_execution_id is None:
            return f"would run instance {self.instance_id}, which has no executions"
        if self.action == "afresh":
            return (
                f"would run instance {self.instance_id} afresh (its last execution, "
                f"{self.last_execution_id}, was abandoned)"
            )
        if self.action == "rerun":
            return f"would start rerun {self.rerun} of instance {self.rerun_of} as a new instance"
        return f"would be refused (exit {self.exit_code}): {self.refusal}"


# -- the API --------------------------------------------------------------------------------------


class Batch(ScheduleOperations):
    """Run and inspect jobs: the one facade that the CLI, the Python API and every trigger call.

    ```
    batch = Batch.from_config()
    execution = batch.start("eod", {"date": "2024-01-31"})
    ```

    Operations: `start`, `restart`, `stop`, `abandon`, `recover_lost`, `prune`; `plan_start`
    says what a start would do without doing it; reading: `history`,
    `execution`, `step_executions`, `skipped_items`, `jobs`, `job`, `workers`; `run_worker`;
    `upgrade_schema`; `close` (or use it as a context manager). Schedules (firing.py):
    `schedules`, `schedule`, `schedule_states`, `fire`, `launch_pending_fires`,
    `pause_schedule`, `resume_schedule`, `trigger_schedule`. Methods with a leading
    underscore are the steps these are made of and may change.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._repository: Any = None
        self._registry: Any = None
        # Opening the repository and discovering the jobs happen once, on first use, whichever
        # thread comes first: a second discovery racing the first would import half-loaded
        # job modules and find no jobs.
        self._opening = threading.RLock()

    @classmethod
    def from_config(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        database_url: str | None = None,
        jobs_dir: str | os.PathLike[str] | None = None,
    ) -> Batch:
        """A Batch over the configuration found as the CLI finds it (see `Config.load`)."""
        return cls(Config.load(path, database_url=database_url, jobs_dir=jobs_dir))

    @property
    def repository(self) -> Any:
        with self._opening:
            if self._repository is None:
                from batchctl.repository import Repository

                self._repository = Repository.open(
                    self.config.database_url, outage_timeout=self.config.db_outage_timeout
                )
            return self._repository

    @property
    def registry(self) -> Any:
        with self._opening:
            if self._registry is None:
                from batchctl.registry import Registry

                self._registry = Registry.discover(self.config.jobs_dir)
            return self._registry

    def upgrade_schema(self) -> str:
        """Create or migrate the repository schema (`batchctl db upgrade`); return the revision
        it is now at. DatabaseUnavailable when the database cannot be reached or written."""
        from batchctl.repository import Repository
        from batchctl.repository import translate_errors
        from batchctl.repository.migrate import HEAD_REVISION, upgrade

        # Until the repository offers `upgrade_schema()` itself, run the migrations here on an
        # unmigrated connection (opening one normally would already migrate).
        repository = self._repository or Repository.open(
            self.config.database_url, migrate=False, outage_timeout=self.config.db_outage_timeout
        )
        try:
            with translate_errors(self.config.database_url):  # unreachable, a missing schema
                upgrade(repository.engine)
        except Exception:
            if repository is not self._repository:
                repository.close()
            raise
        self._repository = repository
        return HEAD_REVISION

    def stop_waiting_for_repository(self) -> None:
        """This process is stopping (a service told to stop): an outage of the repository is
        no longer ridden out, so that it ends within seconds. Safe in a signal handler."""
        if self._repository is not None:
            self._repository.outage.cancel()

    def close(self) -> None:
        if self._repository is not None:
            self._repository.close()
            self._repository = None

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- jobs -----------------------------------------------------------------------------------

    def job(self, name: str) -> Job:
        return self.registry.get(name)

    def jobs(self) -> list[Job]:
        return [self.registry.jobs[name] for name in sorted(self.registry.jobs)]

    # -- running --------------------------------------------------------------------------------

    def start(
        self,
        job: str | Job,
        params: Mapping[str, Any] | None = None,
        *,
        detach: bool = False,
        observers: Iterable[Any] = (),
        on_tracker: Callable[[Any], None] | None = None,
        handle_signals: bool = False,
        trigger: Trigger | None = None,
        also: Callable[[Any, JobExecution], None] | None = None,
        rerun: bool = False,
    ) -> JobExecution:
        """Run `job` with `params` and return the execution.

        In this process by default, returning the finished execution; with `detach=True` in a
        new process, returning at once the STARTING execution (its `pid` is the new process's,
        its `log_path` the log file). A new instance runs afresh; a FAILED or STOPPED one
        resumes (`execution.resumed_from`); a live or COMPLETED one is refused.

        `rerun=True` runs params whose instance COMPLETED (or was abandoned) again, as a new
        instance linked to the first one of these params (`execution.rerun_of`, numbered
        `execution.rerun`); an instance that is live or may resume is refused (restart it).
        Without it a completed instance never runs again: a typo or a retry cannot repeat a day.

        `observers` first receive `execution_created(execution)` once the execution is
        recorded (before it runs or is launched: where a caller says "resuming"), then, in a
        foreground run, the engine's events. `on_tracker` receives the running execution's
        tracker (its `request_stop()` asks for a graceful stop). `handle_signals=True` routes
        Ctrl-C, SIGTERM and SIGHUP to that graceful stop while a foreground run lasts; only the
        main thread may install signal handlers, so it is off by default. `trigger` records what
        started it (a Python caller by default: `Trigger("api")`). `also(connection, execution)`
        runs in the transaction that records the execution (a trigger's ledger row: a message
        id, a schedule's fire), so it commits exactly when the execution does.
        """
        execution, found = self._create_start(
            job, params, detach=detach, trigger=trigger, also=also, rerun=rerun
        )
        return self._proceed(
            found, execution, detach=detach, observers=observers, on_tracker=on_tracker,
            handle_signals=handle_signals,
        )

    def restart(
        self,
        target: str | int,
        *,
        detach: bool = False,
        observers: Iterable[Any] = (),
        on_tracker: Callable[[Any], None] | None = None,
        handle_signals: bool = False,
        trigger: Trigger | None = None,
        also: Callable[[Any, JobExecution], None] | None = None,
    ) -> JobExecution:
        """Resume the STOPPED or FAILED instance named by `target`: an execution id, or a job
        name for the job's most recently created execution (see `start` for the keywords)."""
        execution, found = self._create_restart(target, detach=detach, trigger=trigger, also=also)
        return self._proceed(
            found, execution, detach=detach, observers=observers, on_tracker=on_tracker,
            handle_signals=handle_signals,
        )

    def _proceed(
        self,
        job: Job,
        execution: JobExecution,
        *,
        detach: bool,
        observers: Iterable[Any],
        on_tracker: Callable[[Any], None] | None,
        handle_signals: bool,
    ) -> JobExecution:
        """Tell the observers about a just recorded execution, then launch or run it."""
        observers = list(observers)
        for observer in observers:
            created = getattr(observer, "execution_created", None)
            if created is not None:
                created(execution)
        if detach:
            return self._launch(execution)
        return self._run(
            job, execution, observers=observers, on_tracker=on_tracker,
            handle_signals=handle_signals,
        )

    def plan_start(
        self, job: str | Job, params: Mapping[str, Any] | None = None, *, rerun: bool = False
    ) -> StartPlan:
        """What `start(job, params, rerun=rerun)` would do, writing nothing: the params are
        validated and converted (InvalidParams, as `start` raises it), then the instance and its
        last execution are read and judged by the rule `start` applies; a refusal is returned in
        the plan, not raised. A live last execution whose process is lost is judged as the
        start would find it once it marked it lost."""
        found = job if isinstance(job, Job) else self.job(job)
        converted = found.convert_params(params or {})
        self._check_partition_modes(found)
        key = instance_key(converted)
        instance, last = self.repository.current_instance(found.name, key)
        lost = self._lost_reason(last) if last is not None else None
        if last is not None and lost is not None:
            last = replace(last, status=lost_status(last))
        plan = StartPlan(
            job=found.name,
            params=params_to_json(converted),
            instance_key=instance.job_key if instance is not None else key,
            action="new",
            instance_id=instance.id if instance is not None else None,
            last_execution_id=last.id if last is not None else None,
            last_status=last.status if last is not None else None,
            lost=lost,
        )
        try:
            resumed = (rerun_rule if rerun else start_rule)(last)
        except Refused as exc:
            return replace(plan, action="refused", refusal=exc.message, exit_code=exc.exit_code)
        if instance is None:
            return plan
        if rerun:
            return self._rerun_plan(plan, instance, converted)
        if resumed is not None:
            return replace(plan, action="resume", resumes=resumed.id)
        return replace(plan, action="afresh")

    @staticmethod
    def _rerun_plan(plan: StartPlan, instance: JobInstance, converted: Mapping[str, Any]) -> StartPlan:
        number = instance.rerun + 1
        return replace(
            plan, action="rerun", instance_key=instance_key(converted, number), instance_id=None,
            rerun_of=instance.rerun_of or instance.id, rerun=number,
        )

    def _create_start(
        self,
        job: str | Job,
        params: Mapping[str, Any] | None = None,
        *,
        detach: bool = False,
        trigger: Trigger | None = None,
        also: Callable[[Any, JobExecution], None] | None = None,
        rerun: bool = False,
    ) -> tuple[JobExecution, Job]:
        """Record a STARTING execution for `start` without running it; `also(connection,
        execution)` runs in the same transaction (a schedule's fire)."""
        if detach:
            self._prepare_log_dir()
        found = job if isinstance(job, Job) else self.job(job)
        converted = found.convert_params(params or {})
        self._check_partition_modes(found)
        self.recover_lost(found.name)
        execution = self.repository.create_execution(
            found.name,
            instance_key(converted),
            params_to_json(converted),
            rerun_rule if rerun else start_rule,
            process=None if detach else this_process(),
            trigger=trigger,
            also=also,
            rerun_key=(lambda number: instance_key(converted, number)) if rerun else None,
        )
        return execution, found

    def _create_restart(
        self,
        target: str | int,
        *,
        detach: bool = False,
        trigger: Trigger | None = None,
        also: Callable[[Any, JobExecution], None] | None = None,
    ) -> tuple[JobExecution, Job]:
        """Record the STARTING execution of a restart without running it."""
        if detach:
            self._prepare_log_dir()
        previous = self._resolve(target)
        found = self.job(previous.job_name)
        self._check_partition_modes(found)
        self.recover_lost(previous.job_name)  # a lost execution restarts at once, as on start
        execution = self.repository.create_execution_of_instance(
            previous.instance_id,
            restart_rule,
            process=None if detach else this_process(),
            trigger=trigger,
            also=also,
        )
        return execution, found

    def _run(
        self,
        job: Job,
        execution: JobExecution,
        *,
        observers: Iterable[Any] = (),
        on_tracker: Callable[[Any], None] | None = None,
        handle_signals: bool = False,
    ) -> JobExecution:
        """Run an execution recorded by `_create_start` or `_create_restart` to its end; with
        `handle_signals`, Ctrl-C, SIGTERM and SIGHUP ask it to stop meanwhile."""
        from batchctl.engine import HeartbeatSettings, run_execution

        def run(on_tracker: Callable[[Any], None] | None) -> JobExecution:
            return run_execution(
                job,
                execution,
                self.repository,
                heartbeat=HeartbeatSettings(interval=self.config.heartbeat_interval),
                observers=observers,
                on_tracker=on_tracker,
                config=self.config,
            )

        if not handle_signals:
            return run(on_tracker)
        from batchctl.launcher import stop_on_signals

        with stop_on_signals() as hook:

            def attach(tracker: Any) -> None:
                hook.attach(tracker)
                if on_tracker is not None:
                    on_tracker(tracker)

            return run(attach)

    def _prepare_log_dir(self) -> None:
        """A detached run's log folder, checked before its execution is recorded."""
        from batchctl.launcher import prepare_log_dir

        prepare_log_dir(self.config)

    def _launch(self, execution: JobExecution) -> JobExecution:
        """Hand a STARTING execution to a new process; return it with that process's pid."""
        from batchctl import launcher

        log_path = launcher.log_path_for(self.config, execution)
        execution = self.repository.update_execution(execution, log_path=str(log_path))
        try:
            pid = launcher.spawn(self.config, execution, log_path)
        except EnvironmentProblem as exc:  # its log file cannot be created (exit 5)
            self._fail_unstarted(execution, exc.message)
            raise
        except OSError as exc:
            self._fail_unstarted(execution, f"could not start a process: {exc}")
            raise

        def record_child(current: JobExecution) -> dict[str, Any] | None:
            """The child's pid from the moment it exists, so that one killed while importing
            is judged lost at once; unless the child already took the execution over."""
            if current.status != Status.STARTING or current.owner is not None:
                return None
            return {**this_process(), "pid": pid}

        recorded = self._settle(execution, record_child)
        return recorded if recorded.pid == pid else replace(recorded, pid=pid)

    def _run_launched(self, execution_id: int, *, observers: Iterable[Any] = ()) -> JobExecution:
        """In the new process of a detached launch (the hidden `run-execution` command, its
        only caller): take the execution over and run it, stoppable by SIGTERM.

        Anything that prevents the job from even starting ends the execution FAILED with the
        reason, never leaving it STARTING.
        """
        execution = self.execution(execution_id)
        try:
            job = self.job(execution.job_name)
        except BatchctlError as exc:
            return self._fail_unstarted(execution, f"could not load job: {exc.message}")
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            return self._fail_unstarted(execution, f"could not load job: {reason}")
        return self._run(job, execution, observers=observers, handle_signals=True)

    def _fail_unstarted(self, execution: JobExecution, message: str) -> JobExecution:
        """End an execution that never started: FAILED (STOPPED if a stop came meanwhile)."""

        def decide(current: JobExecution) -> tuple[Status, str] | None:
            if current.status not in (Status.STARTING, Status.STOPPING) or current.owner:
                return None
            return lost_status(current), message

        return self._end(execution, decide)

    # -- stopping, abandoning, lost processes --------------------------------------------------------

    def stop(
        self,
        target: str | int,
        *,
        wait: bool = False,
        timeout: float | None = None,
        also: Callable[[Any, JobExecution], None] | None = None,
    ) -> JobExecution:
        """Ask the live execution named by `target` to stop; with `wait`, until it has ended.

        The engine stops at its next checkpoint or chunk boundary and ends STOPPED. Refused
        (NotLive) when the execution is not live, naming the job's other live executions.
        """
        execution = self._resolve(target)
        self.recover_lost(execution.job_name)
        stopping = self.repository.request_stop(execution.id, also=also)
        if stopping is None:
            raise NotLive(self._not_live_message(self.execution(execution.id)))
        if not wait:
            return stopping
        return self._wait_until_ended(stopping.id, timeout=timeout)

    def _wait_until_ended(self, execution_id: int, *, timeout: float | None = None) -> JobExecution:
        """Poll the execution until it is no longer live (StopTimeout after `timeout` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            execution = self.execution(execution_id)
            if execution.status.is_live:
                execution = self._recover(execution)
            if not execution.status.is_live:
                return execution
            if deadline is not None and time.monotonic() >= deadline:
                raise StopTimeout(
                    f"execution {execution_id} is still {execution.status.value} after "
                    f"{timeout:g}s"
                )
            time.sleep(STOP_WAIT_POLL)

    def abandon(
        self,
        target: str | int,
        *,
        also: Callable[[Any, JobExecution], None] | None = None,
    ) -> JobExecution:
        """Mark a STOPPED, FAILED or UNKNOWN execution ABANDONED: never to be restarted.
        `target` is an execution id, or a job name for the job's most recent execution
        (`also`: as for `start`, run in the transaction of the change; `stop` takes it too)."""
        execution = self.execution(target)
        execution_id = execution.id
        abandoned = self.repository.abandon(execution_id, also=also)
        if abandoned is None:
            current = self.execution(execution_id)
            later = self.repository.later_execution(current)
            if later is not None and current.status != Status.ABANDONED:
                raise NotAbandonable(
                    f"execution {execution_id} was resumed by execution {later.id} "
                    f"({later.status.value}); only the last execution of an instance can be "
                    "abandoned"
                )
            raise NotAbandonable(
                f"execution {execution_id} is {current.status.value}; only STOPPED, FAILED or "
                "UNKNOWN executions can be abandoned"
            )
        return abandoned

    def recover_lost(self, job_name: str | None = None) -> list[JobExecution]:
        """Mark every live execution (of `job_name`) whose process is lost FAILED, or STOPPED if
        it was stopping; return the executions marked."""
        marked = []
        for execution in self.repository.live_executions(job_name):
            recovered = self._recover(execution)
            if recovered is not execution and not recovered.status.is_live:
                marked.append(recovered)
        return marked

    def _recover(self, execution: JobExecution) -> JobExecution:
        """Mark `execution` lost if its process is: FAILED (STOPPED if it was stopping), its
        live steps and partitions with it. This revokes the process's ownership: if it is in
        fact still running (paused, or misjudged), its next write is refused."""

        def decide(current: JobExecution) -> tuple[Status, str] | None:
            reason = self._lost_reason(current)
            return None if reason is None else (lost_status(current), reason)

        return self._end(execution, decide)

    def _lost_reason(self, execution: JobExecution) -> str | None:
        """Why `execution` is taken as lost, judged from this process (see `lost_reason`)."""
        from batchctl.host import process_alive, same_pid_scope

        return lost_reason(
            execution,
            now=utcnow(),
            timeout=self.config.heartbeat_timeout,
            pid_visible=lambda e: same_pid_scope(e.host, e.pid_scope),
            process_alive=process_alive,
        )

    def _end(
        self,
        execution: JobExecution,
        decide: Callable[[JobExecution], tuple[Status, str] | None],
    ) -> JobExecution:
        """End the execution with the status and message `decide(current)` gives (None: leave
        it), with its live steps, re-reading after a lost update."""
        from batchctl.repository import settle

        return settle(
            execution,
            decide,
            lambda current, ending: self.repository.end_execution(current, *ending),
            lambda current: self.repository.execution(current.id),
        )

    def _settle(
        self, execution: JobExecution, decide: Callable[[JobExecution], dict[str, Any] | None]
    ) -> JobExecution:
        """Apply `decide`'s changes conditionally on the version, re-reading after a lost update."""
        from batchctl.repository import settle

        return settle(
            execution,
            decide,
            lambda current, changes: self.repository.update_execution(current, **changes),
            lambda current: self.repository.execution(current.id),
        )

    def _not_live_message(self, execution: JobExecution) -> str:
        message = f"execution {execution.id} of job {execution.job_name} is not live ({execution.status.value})"
        if execution.exit_message and execution.exit_message.startswith(LOST_PREFIX):
            # A run whose process died: say so and when it was found, not merely "not live".
            ended = execution.ended_at.astimezone().strftime("%Y-%m-%d %H:%M:%S") if execution.ended_at else "?"
            message += (
                f": it was found lost at {ended} ({execution.exit_message.splitlines()[0]}); "
                f"'batchctl restart {execution.id}' resumes it"
            )
        others = [e.id for e in self.repository.live_executions(execution.job_name)]
        if others:
            message += f"; live executions of {execution.job_name}: {', '.join(map(str, others))}"
        return message

    # -- housekeeping -------------------------------------------------------------------------------

    def prune(
        self,
        older_than: timedelta,
        *,
        keep_last: int | None = None,
        job: str | None = None,
        dry_run: bool = False,
        include_restartable: bool = False,
    ) -> PruneReport:
        """Delete executions that ended more than `older_than` ago (of `job`, or of every
        job), with their step executions, skipped items and log files, and the instances left
        with no execution; with `dry_run`, count what would go and write nothing.

        Never a live execution. Never the last execution of a FAILED or STOPPED instance (what
        a restart resumes, with the executions it resumes from) nor of an UNKNOWN one (a person
        must check it and abandon it first), unless `include_restartable`. `keep_last` keeps
        the N newest executions of each job whatever their age. The deletes run in short
        transactions (see repository/prune.py), so commands running meanwhile barely wait.
        """
        from batchctl.repository.prune import PruneRules

        if older_than <= timedelta(0):
            raise UsageError("older_than must be more than zero: it would prune what just ended")
        if keep_last is not None and keep_last < 0:
            raise UsageError(f"keep_last must be 0 or more, got {keep_last}")
        if job is not None and job not in self.registry.jobs:
            if self.repository.latest_execution(job) is None:
                self.registry.get(job)  # UnknownJob, naming any load problems
        try:
            cutoff = utcnow() - older_than
        except OverflowError:
            raise UsageError("older_than reaches before the year 1") from None
        rules = PruneRules(
            cutoff=cutoff,
            job=job,
            keep_last=keep_last or None,
            protect=() if include_restartable else ABANDONABLE_STATUSES,
        )
        report = PruneReport(cutoff=cutoff, dry_run=dry_run)
        for batch in self.repository.prune(rules, dry_run=dry_run):
            report.executions += batch.executions
            report.step_executions += batch.step_executions
            report.skipped_items += batch.skipped_items
            report.instances += batch.instances
            report.kept += batch.kept
            if batch.executions:
                report.batches += 1
                report.longest_transaction = max(report.longest_transaction, batch.seconds)
            report.log_files += _remove_logs(batch.log_paths, report.problems, dry_run=dry_run)
        if dry_run:
            report.longest_transaction = 0.0
        return report

    # -- partitions and workers ---------------------------------------------------------------------

    def run_worker(
        self,
        *,
        poll_interval: float = 2.0,
        execution_id: int | None = None,
        step_name: str | None = None,
        exit_when_idle: bool = False,
    ) -> int:
        """Claim and run partitions until SIGTERM (or, `exit_when_idle`, until none is left).

        With no `execution_id` this is a remote worker: it claims the remote partitions of the
        jobs it knows, which needs a Postgres repository. Returns the partitions it ran.
        """
        from batchctl.launcher import run_worker
        from batchctl.job import PartitionMode
        from batchctl.worker import ClaimFilter, Worker

        if execution_id is None:
            self._require_remote_partitions()
            claims = ClaimFilter(mode=PartitionMode.REMOTE, job_names=sorted(self.registry.jobs))
            kind = "remote"
        else:
            claims = ClaimFilter(execution_id=execution_id, step_name=step_name)
            kind = "process"
        worker = Worker(
            self.repository,
            self.job,
            kind=kind,
            claims=claims,
            heartbeat_interval=self.config.heartbeat_interval,
            heartbeat_timeout=self.config.heartbeat_timeout,
            exit_when_idle=exit_when_idle,
            poll_interval=poll_interval,
            project_dir=self.config.project_dir,
        )
        return run_worker(worker)

    def workers(self) -> list[Any]:
        """Workers alive within the heartbeat timeout, with what each is running."""
        from datetime import timedelta

        return self.repository.live_workers(utcnow() - timedelta(seconds=self.config.heartbeat_timeout))

    def _check_partition_modes(self, job: Job) -> None:
        if any(s.partitions is not None and s.partitions.mode == "remote" for s in job.steps):
            self._require_remote_partitions(job)
        if any(s.partitions is not None and s.partitions.mode == "dask" for s in job.steps):
            self._check_dask_repository(job)

    def _check_dask_repository(self, job: Job) -> None:
        """Dask workers share a SQLite repository only on its own machine: with the local
        cluster, or a scheduler on a loopback address (a file's locks are not to be trusted
        over a network file system, and a worker elsewhere would open a file of its own)."""
        from batchctl.host import is_loopback_address

        if self.repository.dialect != "sqlite":
            return
        database = self.repository.engine.url.database
        if database in (None, "", ":memory:"):
            raise UsageError(
                f"job {job.name} has dask partitioned steps, which cannot share an in-memory "
                "SQLite repository: use a SQLite file or Postgres"
            )
        scheduler = self.config.dask_scheduler
        if scheduler is not None and not is_loopback_address(scheduler):
            raise UsageError(
                f"job {job.name} has dask partitioned steps, and a SQLite repository is shared "
                f"only with Dask workers on this machine (the scheduler is {scheduler}): use a "
                "Postgres repository, or a scheduler on 127.0.0.1, or no dask_scheduler"
            )

    def _require_remote_partitions(self, job: Job | None = None) -> None:
        """Remote workers share partitions through Postgres; SQLite cannot serve other machines."""
        if self.repository.dialect == "postgresql":
            return
        what = f"job {job.name} has remote partitioned steps, which" if job else "remote workers"
        raise UsageError(f"{what} need a Postgres job repository (this one is {self.repository.dialect})")

    # -- reading --------------------------------------------------------------------------------

    def _resolve(self, target: str | int) -> JobExecution:
        """The execution named by an id, or the job's most recently created execution."""
        parsed = parse_target(target)
        if isinstance(parsed, int):
            return self.repository.execution(parsed)
        latest = self.repository.latest_execution(parsed)
        if latest is None:
            if parsed not in self.registry.jobs:
                self.registry.get(parsed)  # raises UnknownJob, naming any load problems
            raise UsageError(f"job {parsed} has no executions")
        return latest

    def execution(self, target: str | int, *, recover: bool = True) -> JobExecution:
        """One execution: by id, or by job name the job's most recently created execution (as
        `stop` and `restart` read their target). A live one whose process is lost is first
        marked so (unless `recover=False`: a pure read, for services that run `recover_lost`
        in the background)."""
        execution = self._resolve(target)
        if recover and execution.status.is_live:
            return self._recover(execution)
        return execution

    def earlier_steps(self, execution: JobExecution) -> list[StepExecution]:
        """The steps that earlier executions of its instance completed and that `execution`
        therefore skipped (it resumed them): what a restart's view would otherwise leave out."""
        if execution.resumed_from is None:
            return []
        own = {step.partition_of or step.name for step in self.step_executions(execution.id)}
        return [
            step
            for name, step in self.repository.resumable_steps(execution).items()
            if step.status == Status.COMPLETED and name not in own and not step.is_partition
        ]

    def step_executions(self, execution_id: int) -> list[StepExecution]:
        return self.repository.step_executions(execution_id)

    def skipped_items(self, execution_id: int) -> list[SkippedItem]:
        """The items the chunk steps of an execution skipped, with their errors."""
        return self.repository.skipped_items(execution_id)

    def events(
        self,
        after: int = 0,
        *,
        limit: int = 100,
        job: str | None = None,
        execution: int | None = None,
    ) -> list[Event]:
        """Status changes recorded after event id `after`, oldest first (the outbox the HTTP
        API streams and the message listener publishes)."""
        return self.repository.events_after(after, limit=limit, job_name=job, execution_id=execution)

    def history(
        self,
        job: str | None = None,
        *,
        statuses: Sequence[Status | str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = 20,
        before: int | None = None,
        recover: bool = True,
    ) -> list[JobExecution]:
        """Executions, newest first; `limit=None` for all; `since` (inclusive) and `until`
        (exclusive) bound their creation time; `before`: only ids below it (keyset pagination,
        stable while new executions are inserted). Lost processes are marked first (unless
        `recover=False`: a pure read). UnknownJob for a name that is neither a job nor in the
        history."""
        return self._history(job, statuses, since, until, limit, before, recover)[0]

    def history_page(
        self,
        job: str | None = None,
        *,
        statuses: Sequence[Status | str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = 20,
        before: int | None = None,
        recover: bool = True,
    ) -> HistoryPage:
        """`history`, with what a listing shows beside it: whether `limit` cut rows off, and
        which execution resumed each shown execution that a later one resumed."""
        executions, more = self._history(job, statuses, since, until, limit, before, recover)
        return HistoryPage(executions, more, self.repository.resumed_by(executions))

    def _history(
        self,
        job: str | None,
        statuses: Sequence[Status | str],
        since: datetime | None,
        until: datetime | None,
        limit: int | None,
        before: int | None,
        recover: bool,
    ) -> tuple[list[JobExecution], bool]:
        """The executions `history` lists, and whether `limit` cut rows off."""
        wanted = _statuses(statuses)
        if recover:
            self.recover_lost(job)
        fetch = None if limit is None else min(limit, MAX_ID - 1) + 1  # one more: were rows cut?
        found = self.repository.history(
            job, wanted, fetch, before_id=before, since=since, until=until
        )
        more = limit is not None and len(found) > limit
        executions = found[:limit] if more else found
        if job is not None and not found and job not in self.registry.jobs:
            if self.repository.latest_execution(job) is None:
                self.registry.get(job)  # UnknownJob, naming any load problems
        return executions, more

    def stats(self) -> Any:
        """The repository summed up (executions by job and status, durations, item counters):
        a `batchctl.repository.stats.RepositoryStats`, read without writing."""
        from batchctl.repository.stats import repository_stats

        return repository_stats(self.repository)

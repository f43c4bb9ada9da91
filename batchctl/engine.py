"""Runs one job execution in this process: its steps in order, checkpoints, stop requests.

The engine never prints. It reports progress to observers (the CLI's display is one) and logs
through `logging`; everything it learns is recorded in the repository.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from batchctl.defaults import DEFAULT_HEARTBEAT_INTERVAL, EXIT_MESSAGE_LIMIT, STOP_POLL_INTERVAL
from batchctl.errors import FENCED, DatabaseUnavailable, ExecutionTakenOver, RepositoryOutage
from batchctl.host import host_name, os_exit_raises, pid_scope
from batchctl.job import Job, Step, StepContext
from batchctl.model import JobExecution, Status, StepExecution, utcnow
from batchctl.partition import PartitionedStepRunner
from batchctl.repository import Fence, Repository, settle
from batchctl.repository.store import taken_over_message
from batchctl.runners import runner_for
from batchctl.steps import Observers, StepRunner, call_listeners, describe_exception

if TYPE_CHECKING:
    from batchctl.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeartbeatSettings:
    interval: float = DEFAULT_HEARTBEAT_INTERVAL
    poll_interval: float = STOP_POLL_INTERVAL


class ExecutionTracker:
    """Owns the running execution's row: the take-over, heartbeats, stop polling, and every
    status change.

    The process takes the execution over with an owner token of its own (`take_over`); every
    later change goes through `transition`, conditional on the row's version, and re-reads the
    row when another process changed it first. A row that is no longer live or no longer ours
    (it was judged lost, and perhaps restarted) means this process was fenced off: it raises
    ExecutionTakenOver and writes nothing more. A background thread heartbeats every
    `interval` and reads every `poll_interval` whether a stop was requested or the execution
    was taken away.
    """

    def __init__(
        self, repository: Repository, execution: JobExecution, settings: HeartbeatSettings
    ) -> None:
        self.repository = repository
        self.execution = execution
        self.settings = settings
        self.owner = uuid.uuid4().hex
        self.stop_event = threading.Event()
        self.taken_over: str | None = None  # why this process no longer owns the execution
        self._owning = False
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._record_stop = False
        self._thread = threading.Thread(
            target=self._beat, name=f"batchctl-heartbeat-{execution.id}", daemon=True
        )

    @property
    def fence(self) -> Fence:
        return Fence(self.execution.id, self.owner)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def take_over(self) -> JobExecution:
        """Become the execution's owner: STARTING -> STARTED with this process's token, host,
        pid and pid scope. A STOPPING one (stopped while it was starting) is owned only to be
        ended STOPPED. Any other status means another process decided its fate meanwhile (a
        slow start judged lost): ExecutionTakenOver, and the row is left as it is."""

        def decide(current: JobExecution) -> dict[str, Any]:
            process = {
                "host": host_name(),
                "pid": os.getpid(),
                "pid_scope": pid_scope(),
                "owner": self.owner,
                "heartbeat_at": utcnow(),
            }
            if current.status == Status.STARTING and current.owner is None:
                return {"status": Status.STARTED, "started_at": utcnow(), **process}
            if current.status == Status.STOPPING and current.owner is None:
                return process
            raise ExecutionTakenOver(
                taken_over_message(current.id, current.status.value, current.exit_message)
            )

        taken = self.transition(decide)
        self._owning = True
        return taken

    def transition(self, decide: Callable[[JobExecution], dict[str, Any] | None]) -> JobExecution:
        """Apply `decide(current)`'s changes; on a lost update re-read and decide again."""

        def guarded(current: JobExecution) -> dict[str, Any] | None:
            if self.taken_over is not None:
                raise ExecutionTakenOver(self.taken_over)
            return decide(current)

        def reread(current: JobExecution) -> JobExecution:
            self._refresh(self.repository.execution(current.id))
            return self.execution

        with self._lock:
            self.execution = settle(
                self.execution,
                guarded,
                lambda current, changes: self.repository.update_execution(current, **changes),
                reread,
            )
            return self.execution

    def end(self, status: Status, message: str) -> JobExecution:
        """End the execution with `status`, and every step it left live, conditional on its
        version (re-read and decided again on a lost update) and on this process owning it."""

        def decide(current: JobExecution) -> dict[str, Any] | None:
            if self.taken_over is not None:
                raise ExecutionTakenOver(self.taken_over)
            return {}

        def reread(current: JobExecution) -> JobExecution:
            self._refresh(self.repository.execution(current.id))
            return self.execution

        message = message[:EXIT_MESSAGE_LIMIT]
        with self._lock:
            self.execution = settle(
                self.execution,
                decide,
                lambda current, _: self.repository.end_execution(current, status, message),
                reread,
            )
            return self.execution

    def request_stop(self) -> None:
        """A stop asked from inside this process (Ctrl-C, SIGTERM): safe in a signal handler.

        The heartbeat thread records STOPPING, so no database work runs in the handler.
        """
        self._record_stop = True
        self.stop_event.set()

    def _refresh(self, current: JobExecution) -> None:
        self.execution = current
        if self._owning and (current.owner != self.owner or not current.status.is_live):
            self.taken_over = taken_over_message(
                current.id, current.status.value, current.exit_message
            )
            self.stop_event.set()
            log.error("%s", self.taken_over)
        elif current.status == Status.STOPPING:
            self.stop_event.set()

    def _beat(self) -> None:
        last_beat = utcnow()
        while not self._done.wait(self.settings.poll_interval):
            if self.taken_over is not None:
                return  # fenced off: this process writes nothing more
            try:
                self._poll()
                if (utcnow() - last_beat).total_seconds() >= self.settings.interval:
                    self.transition(lambda current: {"heartbeat_at": utcnow()})
                    last_beat = utcnow()
            except ExecutionTakenOver:
                return
            except DatabaseUnavailable:  # an outage, logged as such: the next beat may succeed
                pass
            except Exception:  # the next beat may succeed; the engine must go on
                log.warning("heartbeat of execution %s failed", self.execution.id, exc_info=True)

    def _poll(self) -> None:
        if self._record_stop:
            self._record_stop = False
            self.transition(_to_stopping)
        row = self.repository.execution(self.execution.id)
        if row.status == Status.STOPPING:
            self.stop_event.set()
        if row.version != self.execution.version:
            with self._lock:
                self._refresh(row)


def run_execution(
    job: Job,
    execution: JobExecution,
    repository: Repository,
    *,
    heartbeat: HeartbeatSettings | None = None,
    observers: Iterable[Any] = (),
    on_tracker: Callable[[ExecutionTracker], None] | None = None,
    config: Config | None = None,
) -> JobExecution:
    """Run `execution` of `job` to its end and return it as recorded.

    A failure inside the job is a recorded status (FAILED), not an exception for the caller.
    `on_tracker` receives the tracker once it runs, so that the caller can route a Ctrl-C or a
    SIGTERM to `request_stop`. `config` is what partitioned steps hand to their workers.
    """
    tracker = ExecutionTracker(repository, execution, heartbeat or HeartbeatSettings())
    tracker.start()
    if on_tracker is not None:
        on_tracker(tracker)
    try:
        with os_exit_raises():
            return JobRunner(job, tracker, Observers(observers), config).run()
    finally:
        tracker.close()


class JobRunner:
    """Runs one job execution: its steps in order, skipping those a restart finds completed."""

    def __init__(
        self, job: Job, tracker: ExecutionTracker, observers: Observers, config: Config | None
    ) -> None:
        self.job = job
        self.tracker = tracker
        self.repository = tracker.repository
        self.observers = observers
        self.config = config

    @property
    def execution(self) -> JobExecution:
        return self.tracker.execution

    def run(self) -> JobExecution:
        """Take the execution over, run it, and return it as recorded. A process fenced off
        (its execution judged lost and perhaps restarted by another) stops at once and returns
        the execution as the repository now has it."""
        try:
            started = self.tracker.take_over()
            self.repository = self.tracker.repository.fenced(self.tracker.fence)
            if started.status != Status.STARTED:
                return self._finish(Status.STOPPED, "stopped before its first step")
            self.observers.job_started(started)
            log.info("execution %s of job %s started", started.id, self.job.name)
            try:
                return self._run_started(started)
            except KeyboardInterrupt:
                return self._finish(Status.STOPPED, "interrupted")
        except RepositoryOutage as exc:
            self._end_after_outage(exc)
            raise
        except FENCED as exc:
            log.error("%s", self.tracker.taken_over or exc)
            ended = self.tracker.repository.execution(self.tracker.execution.id)
            self.observers.job_ended(ended)
            return ended
        except DatabaseUnavailable as exc:
            # The repository cannot be written (locked past the busy timeout, read-only, gone):
            # nothing more can be recorded, so the run ends here with one line. The execution
            # is left live, and its chunks as far as they committed; the next command finds its
            # process gone and marks it FAILED, and a restart resumes it.
            raise type(exc)(
                f"execution {self.execution.id} of {self.job.name} ended without recording "
                f"its outcome: {exc.message}; the next command marks it FAILED (its process "
                "is gone), then it can be restarted"
            ) from exc

    def _end_after_outage(self, outage: RepositoryOutage) -> None:
        """The repository was unreachable for longer than db_outage_timeout: wait for it (however
        long), then end the execution FAILED (STOPPED if it was stopping) with its live steps,
        naming the outage, so that it is never left live and a restart resumes it. The caller
        then raises the outage (the foreground process exits 5)."""
        log.error("%s; the execution ends once the repository can be written again", outage)
        tracker = self.tracker
        stopping = tracker.execution.status == Status.STOPPING or tracker.stop_event.is_set()
        status = Status.STOPPED if stopping else Status.FAILED
        message = str(outage)
        repository = self.repository
        while True:
            repository.await_reachable(patient=True)
            try:
                ended = tracker.end(status, message)
            except FENCED as exc:  # judged lost meanwhile by another process: its verdict stands
                log.error("%s", tracker.taken_over or exc)
                return
            except RepositoryOutage:
                continue  # gone again before the end was written
            self.observers.job_ended(ended)
            log.info("execution %s %s", ended.id, ended.status.value)
            return

    def _run_started(self, started: JobExecution) -> JobExecution:
        try:
            params = self.job.convert_params(started.params, stored=True)
        except Exception as exc:
            return self._finish(Status.FAILED, describe_exception(exc))
        job_context = dict(started.context)
        failure = call_listeners(self.job.listeners, "before_job", started)
        if failure is not None:
            return self._finish(Status.FAILED, f"before_job failed: {failure}")
        status, message = self._run_steps(params, job_context)
        outcome = self._finish(status, message)
        failure = call_listeners(self.job.listeners, "after_job", outcome)
        if failure is not None:
            log.error("after_job of execution %s failed: %s", outcome.id, failure)
        return outcome

    def _run_steps(self, params: dict[str, Any], job_context: dict[str, Any]) -> tuple[Status, str]:
        previous = self.repository.resumable_steps(self.execution)
        for step in self.job.steps:
            if self.tracker.stop_event.is_set():
                return Status.STOPPED, f"stopped before step {step.name}"
            earlier = previous.get(step.name)
            if earlier is not None and earlier.status == Status.COMPLETED:
                self.observers.step_skipped(step.name, earlier)
                log.info(
                    "step %s skipped: completed in execution %s",
                    step.name,
                    earlier.job_execution_id,
                )
                continue
            state = dict(earlier.context) if earlier is not None else {}
            step_execution = self._run_step(step, params, state, job_context)
            self._save_job_context(job_context)
            if step_execution.status != Status.COMPLETED:
                return step_execution.status, _step_outcome(step_execution)
        return Status.COMPLETED, ""

    def _save_job_context(self, job_context: dict[str, Any]) -> None:
        """Save the shared context after a step. One that cannot be stored has already failed
        the step (see run_with_step_listeners); its values are then lost, and logged."""
        try:
            self.tracker.transition(lambda current: {"context": dict(job_context)})
        except ExecutionTakenOver:
            raise
        except Exception as exc:
            log.error("the job context of execution %s was not saved: %s", self.execution.id, exc)

    def _run_step(
        self, step: Step, params: dict[str, Any], state: dict[str, Any], job_context: dict[str, Any]
    ) -> StepExecution:
        step_execution = self.repository.create_step_execution(self.execution.id, step.name, state)
        ctx = StepContext(
            job_name=self.job.name,
            step_name=step.name,
            params=params,
            state=state,
            job_context=job_context,
            execution_id=self.execution.id,
            step_execution_id=step_execution.id,
            stop_event=self.tracker.stop_event,
            database=self.repository.engine,
            project_dir=self.config.project_dir if self.config is not None else None,
        )
        self.observers.step_started(step_execution)
        log.info("step %s started", step.name)
        runner = self._runner(step, ctx, step_execution)
        status, message = runner.run(self.job.listeners)
        ended = runner.finish(status, message)
        self.observers.step_ended(ended)
        if ended.status in (Status.FAILED, Status.UNKNOWN) and ended.exit_message:
            # Its reason on stderr (and in a detached run's log), in one line: "step dump
            # FAILED: disk full writing out.csv: No space left on device".
            reason = ended.exit_message.strip().splitlines()[0]
            log.error("step %s %s: %s", step.name, ended.status.value, reason)
        else:
            log.info("step %s %s", step.name, ended.status.value)
        return ended

    def _runner(self, step: Step, ctx: StepContext, step_execution: StepExecution) -> StepRunner:
        args = (step, ctx, step_execution, self.repository, self.observers)
        if step.partitions is not None:
            assert self.config is not None, "a partitioned step needs the configuration"
            return PartitionedStepRunner(*args, job=self.job, config=self.config)
        return runner_for(step)(*args)

    def _finish(self, status: Status, message: str) -> JobExecution:
        def decide(current: JobExecution) -> dict[str, Any]:
            return {
                "status": status,
                "exit_code": status.value,
                "exit_message": message[:EXIT_MESSAGE_LIMIT] or None,
                "ended_at": utcnow(),
                "started_at": current.started_at or utcnow(),
            }

        finished = self.tracker.transition(decide)
        self.observers.job_ended(finished)
        log.info("execution %s %s", finished.id, finished.status.value)
        return finished


def _to_stopping(current: JobExecution) -> dict[str, Any] | None:
    if current.status not in (Status.STARTING, Status.STARTED):
        return None
    return {"status": Status.STOPPING}


def _step_outcome(step: StepExecution) -> str:
    outcome = f"step {step.name} {step.status.value.lower()}"
    return f"{outcome}: {step.exit_message}" if step.exit_message else outcome

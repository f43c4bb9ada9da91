"""Workers: claim partitions from the repository and run them, each from its own checkpoint.

One claim loop serves every kind of worker: `batchctl worker` processes on any machine that
reaches the Postgres repository (remote partitions), the local worker processes a partitioned
step starts, and worker threads inside the job's own process. A worker heartbeats while it
works; a partition whose worker stopped heartbeating is claimed again by another.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from batchctl.defaults import IDLE_SLICE, STOP_POLL_INTERVAL, WORKER_POLL_INTERVAL
from batchctl.errors import FENCED, DatabaseUnavailable, JobDefinitionError, RepositoryOutage
from batchctl.host import host_name, os_exit_raises
from batchctl.job import Job, PartitionMode, Step, StepContext
from batchctl.model import JobExecution, Status, StepExecution, utcnow
from batchctl.repository import Fence
from batchctl.runners import runner_for
from batchctl.steps import Observers, call_listeners

if TYPE_CHECKING:
    from batchctl.repository import Repository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimFilter:
    """Which partitions a worker may claim."""

    execution_id: int | None = None
    step_name: str | None = None
    job_names: Sequence[str] | None = None
    mode: PartitionMode | None = None
    partition_id: int | None = None  # one partition only (a Dask task is one partition)


class Worker:
    """Claims partitions and runs them until told to shut down (or, if `exit_when_idle`, until
    nothing is left to claim)."""

    def __init__(
        self,
        repository: Repository,
        resolve_job: Callable[[str], Job],
        *,
        kind: str,
        claims: ClaimFilter,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        exit_when_idle: bool = False,
        poll_interval: float = WORKER_POLL_INTERVAL,
        project_dir: Path | None = None,
        host: str | None = None,
    ) -> None:
        self.repository = repository
        self.resolve_job = resolve_job
        self.kind = kind
        self.claims = claims
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.exit_when_idle = exit_when_idle
        self.poll_interval = poll_interval
        self.project_dir = project_dir  # what the partitions' relative paths are relative to
        self.shutdown = threading.Event()
        # What names this worker in `show` and `workers`: its machine, or where it is known
        # better by another name (a Dask worker's address), that name.
        self.host = host or host_name()
        self.pid = os.getpid()
        self.id: int | None = None
        self.partitions_run = 0
        self._current: tuple[StepExecution, threading.Event] | None = None
        self._lock = threading.Lock()

    def request_shutdown(self) -> None:
        """Finish the current chunk, hand the partition back, and exit: safe in a signal handler."""
        self.shutdown.set()
        current = self._current
        if current is not None:
            current[1].set()

    def run(self) -> int:
        """The claim loop; returns how many partitions this worker ran."""
        self.id = self.repository.register_worker(self.host, self.pid, self.kind)
        log.info("worker %s (%s, pid %s on %s) started", self.id, self.kind, self.pid, self.host)
        beat = threading.Thread(target=self._heartbeat, name=f"batchctl-worker-{self.id}", daemon=True)
        beat.start()
        try:
            if self.exit_when_idle:  # never waits: no LISTEN connection held for nothing
                while not self.shutdown.is_set() and self._claim_and_run():
                    if self.claims.partition_id is not None:
                        break  # its one partition has been run: no claim left to try
            else:
                with self.repository.partition_notifications() as wait:
                    while not self.shutdown.is_set():
                        if not self._claim_and_run():
                            self._idle(wait)
        except RepositoryOutage as exc:
            # Unreachable past db_outage_timeout: stop claiming and exit non-zero. What this
            # worker held is claimed again by others once its heartbeat is stale.
            log.error("worker %s stops: %s", self.id, exc)
            raise
        finally:
            self.shutdown.set()
            beat.join()
            try:
                self.repository.retire_worker(self.id)
            except DatabaseUnavailable as exc:
                log.warning("worker %s could not retire: %s", self.id, exc)
            log.info("worker %s stopped after %s partition(s)", self.id, self.partitions_run)
        return self.partitions_run

    def _claim_and_run(self) -> bool:
        """Claim a partition and run it; False when there was none to claim."""
        partition = self._claim()
        if partition is None:
            return False
        self._run_partition(partition)
        return True

    def _idle(self, wait: Callable[[float], bool]) -> None:
        """Wait up to the poll interval for partitions: until notified of new ones, or told to
        shut down (a signal does not interrupt a wait in the database driver)."""
        deadline = time.monotonic() + self.poll_interval
        while not self.shutdown.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or wait(min(left, IDLE_SLICE)):
                return

    def _claim(self) -> StepExecution | None:
        assert self.id is not None
        return self.repository.claim_partition(
            self.id,
            self.host,
            self.pid,
            stale_before=utcnow() - timedelta(seconds=self.heartbeat_timeout),
            execution_id=self.claims.execution_id,
            step_name=self.claims.step_name,
            job_names=self.claims.job_names,
            mode=None if self.claims.mode is None else PartitionMode(self.claims.mode).value,
            partition_id=self.claims.partition_id,
        )

    def _heartbeat(self) -> None:
        last_beat = utcnow()
        while not self.shutdown.wait(STOP_POLL_INTERVAL):
            try:
                current = self._current
                if current is not None:
                    self._watch_job(*current)
                if (utcnow() - last_beat).total_seconds() >= self.heartbeat_interval:
                    assert self.id is not None
                    self.repository.worker_heartbeat(self.id, current[0].id if current else None)
                    last_beat = utcnow()
            except DatabaseUnavailable:  # an outage, logged as such: the next beat may succeed
                pass
            except Exception:  # the next beat may succeed; the partition must go on
                log.warning("heartbeat of worker %s failed", self.id, exc_info=True)

    def _watch_job(self, partition: StepExecution, stop_event: threading.Event) -> None:
        """Stop the partition when its job execution is stopping or has ended."""
        execution = self.repository.execution(partition.job_execution_id)
        if execution.status != Status.STARTED:
            stop_event.set()

    def _run_partition(self, partition: StepExecution) -> None:
        stop_event = threading.Event()
        if self.shutdown.is_set():
            stop_event.set()
        self._current = (partition, stop_event)
        try:
            with os_exit_raises():
                ClaimedPartition(self.repository, self.resolve_job, partition, stop_event, self).run()
            self.partitions_run += 1
        except FENCED as exc:
            log.warning("partition %s was taken over; it is left as it is (%s)", partition.name, exc)
        except RepositoryOutage:
            raise  # this worker stops claiming (see run)
        except Exception:  # recording the outcome failed: this worker goes on with others
            log.exception("partition %s: its outcome could not be recorded", partition.name)
        finally:
            self._current = None


class ClaimedPartition:
    """The worker's side of a partition: runs one partition it claimed, with the runner of its
    step's kind (the job's side, which splits and waits, is batchctl.partition's
    PartitionedStepRunner)."""

    def __init__(
        self,
        repository: Repository,
        resolve_job: Callable[[str], Job],
        partition: StepExecution,
        stop_event: threading.Event,
        worker: Worker,
    ) -> None:
        self.repository = repository
        self.resolve_job = resolve_job
        self.partition = partition
        self.stop_event = stop_event
        self.worker = worker

    def run(self) -> None:
        # Every write for the partition is conditional on its claim (the version) and on the
        # execution still being live: a worker paused past its timeout commits nothing more.
        self.repository = self.repository.fenced(Fence(self.partition.job_execution_id))
        execution = self.repository.execution(self.partition.job_execution_id)
        try:
            job = self.resolve_job(execution.job_name)
            step = job.step(self.partition.partition_of or "")
            params = job.convert_params(execution.params, stored=True)
        except Exception as exc:
            self._fail(f"could not load the partition's job: {type(exc).__name__}: {exc}")
            return
        try:
            step = own_items(step, self.partition.mode)
        except JobDefinitionError as exc:
            self._fail(str(exc))
            return
        ctx = self._context(job, execution, params)
        log.info("partition %s of execution %s started", self.partition.name, execution.id)
        failure = call_listeners(job.listeners, "before_partition", ctx)
        if failure is not None:
            self._fail(f"before_partition failed: {failure}")
            return
        runner = runner_for(step)(step, ctx, self.partition, self.repository, Observers())
        status, message = runner.run(job.listeners)
        if status == Status.STOPPED and self._handing_back(execution.id):
            self.repository.release_partition(runner.step_execution)
            log.info("partition %s handed back at its checkpoint", self.partition.name)
            return
        ended = runner.finish(status, message)
        failure = call_listeners(job.listeners, "after_partition", ctx, ended)
        if failure is not None:
            log.error("after_partition of %s failed: %s", ended.name, failure)
        log.info("partition %s %s", ended.name, ended.status.value)

    def _handing_back(self, execution_id: int) -> bool:
        """A worker shutting down hands its partition back unless the job itself is stopping."""
        if not self.worker.shutdown.is_set():
            return False
        return self.repository.execution(execution_id).status == Status.STARTED

    def _context(self, job: Job, execution: JobExecution, params: dict[str, Any]) -> StepContext:
        ctx = StepContext(
            job_name=job.name,
            step_name=self.partition.name,
            params=params,
            state=dict(self.partition.context),
            job_context=dict(execution.context),
            execution_id=execution.id,
            step_execution_id=self.partition.id,
            stop_event=self.stop_event,
            database=self.repository.engine,
            project_dir=self.worker.project_dir,
        )
        ctx.partition = dict(self.partition.partition or {})
        return ctx

    def _fail(self, message: str) -> None:
        self.repository.update_step_execution(
            self.partition,
            status=Status.FAILED,
            exit_code=Status.FAILED.value,
            exit_message=message,
            ended_at=utcnow(),
        )
        log.error("partition %s failed: %s", self.partition.name, message)


def own_items(step: Step, mode: PartitionMode | str | None) -> Step:
    """The step with a copy of its reader and writer for one partition.

    Partitions in threads of one process run at once, and a reader or writer object keeps the
    state of the one partition it reads or writes: each partition gets a copy of its own
    (taken from the step's object, which is never opened itself). Where an object cannot be
    copied, partitions that run one after another (processes, remote workers) share it; in
    threads that is refused.
    """
    if step.chunk is None:
        return step
    chunk = step.chunk
    reader = _own_item(step.name, "reader", chunk.reader, mode)
    writer = _own_item(step.name, "writer", chunk.writer, mode)
    if reader is chunk.reader and writer is chunk.writer:
        return step
    return replace(step, chunk=replace(chunk, reader=reader, writer=writer))


def _own_item(step_name: str, role: str, item: Any, mode: str | None) -> Any:
    if not callable(getattr(item, "read" if role == "reader" else "write", None)):
        return item  # a function reader or writer keeps no state between partitions
    try:
        return copy.deepcopy(item)
    except Exception as exc:
        if mode in (PartitionMode.THREAD, PartitionMode.DASK):  # a Dask worker may have threads
            raise JobDefinitionError(
                f"step {step_name}: partitions in threads each need a copy of the {role}, and "
                f"{type(item).__name__} cannot be copied ({type(exc).__name__}: {exc}); "
                "use mode=\"process\" or give it a __deepcopy__"
            ) from exc
        return item

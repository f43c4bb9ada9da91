"""Partitioned steps, from the job's own process: split, hand out, wait, combine.

The partitioner's contexts become STARTING partition rows in the repository; workers claim and
run them (local processes, threads of this process, or `batchctl worker` processes on other
machines); this runner waits until every partition has ended, combines their statuses (the
most severe wins) and counters, and calls the step's `after_partitions` aggregator.

A restart re-runs only the partitions that did not complete, each from its own checkpoint;
the partitioner is not called again (its contexts are saved in the step's state).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Iterable

from batchctl.defaults import PARTITION_POLL_INTERVAL, REMOTE_WAIT_LOG_INTERVAL
from batchctl.errors import FENCED, JobDefinitionError
from batchctl.executors import PartitionWork, Supervise, executor_for
from batchctl.job import Job, PartitionMode, PartitionSettings
from batchctl.model import STEP_COUNTERS, Status, StepExecution, storable_json, utcnow
from batchctl.repository.partitions import PartitionSpec, partition_name
from batchctl.steps import StepRunner, bookkeeping

if TYPE_CHECKING:
    from batchctl.config import Config

log = logging.getLogger(__name__)

PARTITION_BOOKKEEPING = ("partitions",)  # kept at the top level of the state before 0.2


class PartitionedStepRunner(StepRunner):
    """The job's side of a partitioned step: split, hand out, wait, combine (the worker's side,
    which runs one partition, is batchctl.worker's ClaimedPartition)."""

    def __init__(self, *args: Any, job: Job, config: Config, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.step.partitions is not None
        self.settings: PartitionSettings = self.step.partitions
        self.job = job
        self.config = config
        self.earlier_completed: list[StepExecution] = []

    def outcome(self) -> tuple[Status, str]:
        try:
            specs = self._specs()
        except FENCED:
            raise
        except Exception as exc:
            return Status.FAILED, f"partitioner failed: {type(exc).__name__}: {exc}"
        mode = self.settings.mode
        self.repository.create_partitions(self.ctx.execution_id, self.step.name, specs, mode.value)
        log.info("step %s: %d partition(s) to run (%s)", self.step.name, len(specs), mode.value)
        work = PartitionWork(self.job, self.step, self.ctx.execution_id, self.repository, self.config)
        with executor_for(work).run() as supervise:
            partitions = self._wait(supervise, work.wake)
        status, message = self._combine(partitions)
        if status == Status.COMPLETED and self.settings.after_partitions is not None:
            every = sorted(
                [*self.earlier_completed, *partitions], key=lambda p: p.partition_index or 0
            )
            try:
                self.settings.after_partitions(self.ctx, every)
            except FENCED:
                raise
            except Exception as exc:
                return Status.FAILED, f"after_partitions failed: {type(exc).__name__}: {exc}"
        return status, message

    # -- partitions -----------------------------------------------------------------------------

    def _specs(self) -> list[PartitionSpec]:
        book = bookkeeping(self.ctx.state, PARTITION_BOOKKEEPING)
        saved = book.get("partitions")
        if saved is None:
            contexts = self._split()
            book["partitions"] = contexts
            self.step_execution = self.repository.update_step_execution(
                self.step_execution, context=dict(self.ctx.state)
            )
            return [PartitionSpec(i, context, {}) for i, context in enumerate(contexts)]
        execution = self.repository.execution(self.ctx.execution_id)
        earlier = self.repository.resumable_steps(execution)
        specs = []
        for index, context in enumerate(saved):
            previous = earlier.get(partition_name(self.step.name, index))
            if previous is not None and previous.status.is_live:
                # Its execution was lost, but a worker may still be running it: from now on
                # that worker's checkpoints fail, so nothing is committed twice.
                previous = self.repository.fail_live_partition(
                    previous, f"taken over by execution {self.ctx.execution_id}"
                )
            if previous is not None and previous.status == Status.COMPLETED:
                self.earlier_completed.append(previous)
                continue
            state = dict(previous.context) if previous is not None else {}
            specs.append(PartitionSpec(index, context, state))
        return specs

    def _split(self) -> list[dict[str, Any]]:
        produced = self.settings.partitioner(self.ctx)
        if isinstance(produced, (str, bytes, dict)) or not isinstance(produced, Iterable):
            raise JobDefinitionError(
                f"step {self.step.name}: a partitioner returns a list of dicts, "
                f"not {type(produced).__name__}"
            )
        contexts = list(produced)
        for context in contexts:
            if not isinstance(context, dict):
                raise JobDefinitionError(
                    f"step {self.step.name}: a partitioner returns dicts, not {type(context).__name__}"
                )
            storable_json(context, "a partition context")  # saved as JSON: fail here, not later
        return contexts

    def _wait(self, supervise: Supervise, wake: threading.Event) -> list[StepExecution]:
        """Look at the partitions every PARTITION_POLL_INTERVAL, or at once when the executor
        says something it runs has ended, until none is live."""
        last_log = time.monotonic()
        while True:
            wake.clear()  # before the look: a wake during it is not lost
            partitions = self.repository.partitions_of(self.ctx.execution_id, self.step.name)
            if all(not p.status.is_live for p in partitions):
                return partitions
            if self.ctx.stop_requested:
                self._end_partitions_no_worker_runs()
            supervise(partitions)
            self._show_progress(partitions)
            if self.settings.mode == PartitionMode.REMOTE and time.monotonic() - last_log > REMOTE_WAIT_LOG_INTERVAL:
                waiting = sum(p.status == Status.STARTING for p in partitions)
                log.info("step %s: %d partition(s) waiting for workers", self.step.name, waiting)
                last_log = time.monotonic()
            wake.wait(PARTITION_POLL_INTERVAL)

    def _end_partitions_no_worker_runs(self) -> None:
        """On a stop, no worker claims a partition any more: end those waiting for one, and
        those whose worker died (silent past the heartbeat timeout), STOPPED and restartable."""
        execution_id, step_name = self.ctx.execution_id, self.step.name
        self.repository.end_unclaimed_partitions(
            execution_id, step_name, Status.STOPPED, "stopped before it started"
        )
        stale_before = utcnow() - timedelta(seconds=self.config.heartbeat_timeout)
        self.repository.end_orphaned_partitions(
            execution_id, step_name, stale_before, Status.STOPPED, "stopped: its worker was lost"
        )

    def _show_progress(self, partitions: list[StepExecution]) -> None:
        totals = _summed(partitions)
        if totals != {name: getattr(self.step_execution, name) for name in STEP_COUNTERS}:
            self.step_execution = replace(self.step_execution, **totals)  # type: ignore[arg-type]
            self.observers.step_checkpoint(self.step_execution)

    def _combine(self, partitions: list[StepExecution]) -> tuple[Status, str]:
        self.step_execution = self.repository.update_step_execution(
            self.step_execution, **_summed(partitions)
        )
        status = max([p.status for p in partitions], default=Status.COMPLETED)
        if status == Status.COMPLETED:
            return status, ""
        worst = next(p for p in partitions if p.status == status)
        done = sum(p.status == Status.COMPLETED for p in partitions) + len(self.earlier_completed)
        total = len(partitions) + len(self.earlier_completed)
        reason = f"{done} of {total} partitions completed; {worst.name} {status.value.lower()}"
        return status, f"{reason}: {worst.exit_message}" if worst.exit_message else reason


def _summed(partitions: list[StepExecution]) -> dict[str, int]:
    return {name: sum(getattr(p, name) for p in partitions) for name in STEP_COUNTERS}

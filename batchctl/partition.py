"""Partitioned steps, from the job's own process: split, hand out, wait, combine.

The partitioner's contexts become STARTING partition rows in the repository; workers claim and
run them (local processes, threads of this process, or `batchctl worker` processes on other
machines); this runner waits until every partition has ended, combines their statuses (the
most severe wins) and counters, and calls the step's `after_partitions` aggregator.

A restart re-runs only the partitions that did not complete, each from its own checkpoint;
the partitioner is not called again (its contexts are saved in the step's state).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterable, Iterator

from batchctl.errors import JobDefinitionError
from batchctl.job import Step, StepContext
from batchctl.model import STEP_COUNTERS, Status, StepExecution, utcnow

log = logging.getLogger("batchctl.engine")

PARTITION_POLL_INTERVAL = 0.2  # seconds between two looks at the partitions' statuses
LOCAL_WORKER_RESPAWNS = 2  # extra local worker processes started, per worker, after crashes
REMOTE_WAIT_LOG_INTERVAL = 30.0  # seconds between two "waiting for workers" log lines
THREAD_CONNECTIONS = 3  # connections a worker thread may use at once: its chunk step's, a read, a heartbeat


class PartitionedRun:
    """The runner of a partitioned step (the same interface as the tasklet and chunk runners)."""

    def __init__(
        self,
        step: Step,
        ctx: StepContext,
        step_execution: StepExecution,
        repository: Any,
        observers: Any,
        *,
        job: Any,
        config: Any,
    ) -> None:
        assert step.partitions is not None
        self.step = step
        self.settings = step.partitions
        self.ctx = ctx
        self.step_execution = step_execution
        self.repository = repository
        self.observers = observers
        self.job = job
        self.config = config
        self.earlier_completed: list[StepExecution] = []

    def run(self, listeners: list[Any]) -> tuple[Status, str]:
        from batchctl.engine import run_with_step_listeners

        return run_with_step_listeners(listeners, self.ctx, self._outcome, lambda: self.step_execution)

    def _outcome(self) -> tuple[Status, str]:
        try:
            specs = self._specs()
        except Exception as exc:
            return Status.FAILED, f"partitioner failed: {type(exc).__name__}: {exc}"
        self.repository.create_partitions(
            self.ctx.execution_id, self.step.name, specs, self.settings.mode
        )
        log.info("step %s: %d partition(s) to run (%s)", self.step.name, len(specs), self.settings.mode)
        with self._local_workers() as supervise:
            partitions = self._wait(supervise)
        status, message = self._combine(partitions)
        if status == Status.COMPLETED and self.settings.after_partitions is not None:
            every = sorted(
                [*self.earlier_completed, *partitions], key=lambda p: p.partition_index or 0
            )
            try:
                self.settings.after_partitions(self.ctx, every)
            except Exception as exc:
                return Status.FAILED, f"after_partitions failed: {type(exc).__name__}: {exc}"
        return status, message

    # -- partitions -----------------------------------------------------------------------------

    def _specs(self) -> list[Any]:
        from batchctl.repository.partitions import PartitionSpec, partition_name

        saved = self.ctx.state.get("partitions")
        if saved is None:
            contexts = self._split()
            self.ctx.state["partitions"] = contexts
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
                previous = self.repository.take_over_partition(
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
            json.dumps(context)  # a partition context is saved as JSON: fail here, not later
        return contexts

    def _wait(self, supervise: Any) -> list[StepExecution]:
        last_log = time.monotonic()
        while True:
            partitions = self.repository.partitions_of(self.ctx.execution_id, self.step.name)
            if all(not p.status.is_live for p in partitions):
                return partitions
            if self.ctx.stop_requested:
                self._end_partitions_no_worker_runs()
            supervise(partitions)
            self._show_progress(partitions)
            if self.settings.mode == "remote" and time.monotonic() - last_log > REMOTE_WAIT_LOG_INTERVAL:
                waiting = sum(p.status == Status.STARTING for p in partitions)
                log.info("step %s: %d partition(s) waiting for workers", self.step.name, waiting)
                last_log = time.monotonic()
            time.sleep(PARTITION_POLL_INTERVAL)

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
            from dataclasses import replace

            self.step_execution = replace(self.step_execution, **totals)
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

    # -- local workers --------------------------------------------------------------------------

    @contextmanager
    def _local_workers(self) -> Iterator[Any]:
        mode = self.settings.mode
        if mode == "thread":
            with self._threads() as supervise:
                yield supervise
        elif mode == "process":
            with self._processes() as supervise:
                yield supervise
        else:
            yield lambda partitions: None

    @contextmanager
    def _threads(self) -> Iterator[Any]:
        from batchctl.worker import ClaimFilter, Worker

        repository = self._thread_repository()
        workers = [
            Worker(
                repository,
                lambda name: self.job,
                kind="thread",
                claims=ClaimFilter(execution_id=self.ctx.execution_id, step_name=self.step.name),
                heartbeat_interval=self.config.heartbeat_interval,
                heartbeat_timeout=self.config.heartbeat_timeout,
                exit_when_idle=True,
            )
            for _ in range(self.settings.workers)
        ]
        threads = [
            threading.Thread(target=_logged(worker.run), name=f"batchctl-partition-{i}", daemon=True)
            for i, worker in enumerate(workers)
        ]
        for thread in threads:
            thread.start()

        def supervise(partitions: list[StepExecution]) -> None:
            """With every worker thread ended (on an error), nothing would run what is left."""
            if not any(thread.is_alive() for thread in threads):
                _fail_waiting(self.repository, partitions, "its worker threads ended on an error")

        try:
            yield supervise
        finally:
            for worker in workers:
                worker.request_shutdown()
            for thread in threads:
                thread.join()
            if repository is not self.repository:
                repository.close()

    def _thread_repository(self) -> Any:
        """Worker threads each hold a connection while they run a chunk step and take others
        to read and heartbeat: a repository of their own, its pool sized for them, so that they
        never wait for one another's connections (nor starve the job's heartbeat)."""
        from batchctl.repository import Repository
        from batchctl.repository.connect import create_repository_engine

        if self.repository.dialect == "sqlite" and self.repository.engine.url.database in (
            None, "", ":memory:"
        ):
            return self.repository  # an in-memory database lives in its engine only
        size = THREAD_CONNECTIONS * self.settings.workers + 2
        engine = create_repository_engine(self.repository.url, pool_size=size)
        return Repository(engine, self.repository.url)

    @contextmanager
    def _processes(self) -> Iterator[Any]:
        supervisor = _LocalProcesses(self)
        supervisor.start(self.settings.workers)
        try:
            yield supervisor.supervise
        finally:
            supervisor.close()


class _LocalProcesses:
    """The local worker processes of one partitioned step: started, replaced if they crash."""

    def __init__(self, run: PartitionedRun) -> None:
        self.run = run
        self.processes: list[subprocess.Popen[bytes]] = []
        self.respawns_left = LOCAL_WORKER_RESPAWNS * run.settings.workers

    def start(self, count: int) -> None:
        for _ in range(count):
            self.processes.append(self._spawn())

    def _spawn(self) -> subprocess.Popen[bytes]:
        from batchctl.launcher import child_env

        command = [
            sys.executable, "-m", "batchctl", "worker",
            "--execution", str(self.run.ctx.execution_id),
            "--step", self.run.step.name,
            "--exit-when-idle",
        ]
        return subprocess.Popen(command, env=child_env(self.run.config), stdin=subprocess.DEVNULL)

    def supervise(self, partitions: list[StepExecution]) -> None:
        """Retire crashed workers (their partitions become claimable at once) and replace them
        while partitions remain; with no worker left and none allowed, fail what is left."""
        import socket

        for process in list(self.processes):
            code = process.poll()
            if code is None:
                continue
            self.processes.remove(process)
            if code != 0:
                log.warning("local worker pid %s ended with %s", process.pid, code)
                self.run.repository.retire_workers_of_process(socket.gethostname(), process.pid)
        waiting = [p for p in partitions if p.status.is_live]
        if self.processes or not waiting:
            return
        if self.respawns_left > 0:
            self.respawns_left -= 1
            self.processes.append(self._spawn())
            return
        _fail_waiting(self.run.repository, waiting, "its local worker processes kept dying")

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _fail_waiting(repository: Any, partitions: list[StepExecution], message: str) -> None:
    """Fail the partitions still live, each only if unchanged since it was read (one that a
    worker has just ended keeps its outcome)."""
    for partition in partitions:
        if not partition.status.is_live:
            continue
        try:
            repository.update_step_execution(
                partition,
                status=Status.FAILED,
                exit_code=Status.FAILED.value,
                exit_message=message,
                ended_at=utcnow(),
            )
        except Exception:
            log.warning("could not fail partition %s", partition.name, exc_info=True)


def _logged(run: Any) -> Any:
    """A worker thread's target: an error that ends it goes to the log, not to stderr."""

    def target() -> None:
        try:
            run()
        except Exception:
            log.exception("a worker thread ended on an error")

    return target


def _summed(partitions: list[StepExecution]) -> dict[str, int]:
    return {name: sum(getattr(p, name) for p in partitions) for name in STEP_COUNTERS}

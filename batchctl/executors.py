"""Where the partitions of a partitioned step run: one PartitionExecutor per PartitionMode.

Whatever runs them, partitions are rows in the repository that a worker claims, checkpoints and
ends (batchctl.worker): the claim, the heartbeats, the checkpoints and the fencing live there.
An executor only starts what will claim them (threads of this process, local worker processes,
a Dask task per partition, or nothing: remote `batchctl worker` processes claim on their
own), supervises it while the
step waits, and shuts it down. A new place to run partitions is one class and one EXECUTORS
entry.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

from batchctl.defaults import LOCAL_WORKER_RESPAWNS, THREAD_CONNECTIONS
from batchctl.host import host_name
from batchctl.job import Job, PartitionMode, Step
from batchctl.model import StepExecution
from batchctl.worker import ClaimFilter, Worker

if TYPE_CHECKING:
    from batchctl.config import Config
    from batchctl.repository import Repository

log = logging.getLogger(__name__)

Supervise = Callable[[list[StepExecution]], None]
"""Called at each look at the partitions while the step waits for them."""


@dataclass(frozen=True)
class PartitionWork:
    """What an executor needs to know of the partitioned step it serves."""

    job: Job
    step: Step
    execution_id: int
    repository: Repository
    config: Config
    wake: threading.Event = field(default_factory=threading.Event, compare=False)
    """Set by an executor when something it runs has ended: the step looks at its partitions
    at once rather than at its next poll."""

    @property
    def workers(self) -> int:
        assert self.step.partitions is not None
        return self.step.partitions.workers


class PartitionExecutor(Protocol):
    """Runs the partitions of one step: `run()` is entered once they are rows in the
    repository, yields the step's `supervise`, and shuts everything down on exit."""

    def __init__(self, work: PartitionWork) -> None: ...

    def run(self) -> Any:  # a context manager yielding Supervise
        ...


class RemoteExecutor:
    """`batchctl worker` processes on any machine claim the partitions: nothing to start."""

    def __init__(self, work: PartitionWork) -> None:
        self.work = work

    @contextmanager
    def run(self) -> Iterator[Supervise]:
        yield lambda partitions: None


class ThreadExecutor:
    """`workers` threads of this process, each a worker that exits when nothing is left."""

    def __init__(self, work: PartitionWork) -> None:
        self.work = work

    @contextmanager
    def run(self) -> Iterator[Supervise]:
        work = self.work
        repository = self._repository()
        workers = [
            Worker(
                repository,
                lambda name: work.job,
                kind="thread",
                claims=ClaimFilter(execution_id=work.execution_id, step_name=work.step.name),
                heartbeat_interval=work.config.heartbeat_interval,
                heartbeat_timeout=work.config.heartbeat_timeout,
                exit_when_idle=True,
                project_dir=work.config.project_dir,
            )
            for _ in range(work.workers)
        ]
        threads = [
            threading.Thread(target=_logged(worker.run, then=work.wake.set),
                             name=f"batchctl-partition-{i}", daemon=True)
            for i, worker in enumerate(workers)
        ]
        for thread in threads:
            thread.start()

        def supervise(partitions: list[StepExecution]) -> None:
            """With every worker thread ended (on an error), nothing would run what is left."""
            if not any(thread.is_alive() for thread in threads):
                fail_waiting(work.repository, partitions, "its worker threads ended on an error")

        try:
            yield supervise
        finally:
            for worker in workers:
                worker.request_shutdown()
            for thread in threads:
                thread.join()
            if repository is not work.repository:
                repository.close()

    def _repository(self) -> Repository:
        """Worker threads each hold a connection while they run a chunk step and take others
        to read and heartbeat: a repository of their own, its pool sized for them, so that they
        never wait for one another's connections (nor starve the job's heartbeat)."""
        from batchctl.repository import Repository
        from batchctl.repository.connect import create_repository_engine

        shared = self.work.repository
        if shared.dialect == "sqlite" and shared.engine.url.database in (None, "", ":memory:"):
            return shared  # an in-memory database lives in its engine only
        size = THREAD_CONNECTIONS * self.work.workers + 2
        engine = create_repository_engine(shared.url, pool_size=size)
        return Repository(engine, shared.url, outage=shared.outage)  # one outage per process


class ProcessExecutor:
    """`workers` local worker processes (`python -m batchctl worker --execution ...`), replaced
    when they crash while partitions remain."""

    def __init__(self, work: PartitionWork) -> None:
        self.work = work
        self.processes: list[subprocess.Popen[bytes]] = []
        self.respawns_left = LOCAL_WORKER_RESPAWNS * work.workers

    @contextmanager
    def run(self) -> Iterator[Supervise]:
        for _ in range(self.work.workers):
            self.processes.append(self._spawn())
        try:
            yield self.supervise
        finally:
            self._close()

    def _spawn(self) -> subprocess.Popen[bytes]:
        from batchctl.launcher import child_env

        command = [
            sys.executable, "-m", "batchctl", "worker",
            "--execution", str(self.work.execution_id),
            "--step", self.work.step.name,
            "--exit-when-idle",
        ]
        return subprocess.Popen(command, env=child_env(self.work.config), stdin=subprocess.DEVNULL)

    def supervise(self, partitions: list[StepExecution]) -> None:
        """Retire crashed workers (their partitions become claimable at once) and replace them
        while partitions remain; with no worker left and none allowed, fail what is left."""
        for process in list(self.processes):
            code = process.poll()
            if code is None:
                continue
            self.processes.remove(process)
            if code != 0:
                log.warning("local worker pid %s ended with %s", process.pid, code)
                self.work.repository.retire_workers_of_process(host_name(), process.pid)
        waiting = [p for p in partitions if p.status.is_live]
        if self.processes or not waiting:
            return
        if self.respawns_left > 0:
            self.respawns_left -= 1
            self.processes.append(self._spawn())
            return
        fail_waiting(self.work.repository, waiting, "its local worker processes kept dying")

    def _close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class DaskExecutor:
    """One Dask task per partition on the configured Dask scheduler, or on a LocalCluster of
    `workers` processes (batchctl.dask_executor, imported only when a dask step runs)."""

    def __init__(self, work: PartitionWork) -> None:
        self.work = work

    def run(self) -> Any:
        from batchctl.dask_executor import run_on_dask

        return run_on_dask(self.work)


EXECUTORS: dict[PartitionMode, type[PartitionExecutor]] = {
    PartitionMode.PROCESS: ProcessExecutor,
    PartitionMode.THREAD: ThreadExecutor,
    PartitionMode.REMOTE: RemoteExecutor,
    PartitionMode.DASK: DaskExecutor,
}


def executor_for(work: PartitionWork) -> PartitionExecutor:
    assert work.step.partitions is not None
    return EXECUTORS[work.step.partitions.mode](work)


def fail_waiting(repository: Repository, partitions: list[StepExecution], message: str) -> None:
    """Fail the partitions still live, each re-read if a worker changed it since (a checkpoint
    does not save it; one its worker has just ended keeps its outcome)."""
    for partition in partitions:
        if not partition.status.is_live:
            continue
        try:
            repository.fail_live_partition(partition, message)
        except Exception:
            log.warning("could not fail partition %s", partition.name, exc_info=True)


def _logged(run: Callable[[], Any], then: Callable[[], None]) -> Callable[[], None]:
    """A worker thread's target: an error that ends it goes to the log, not to stderr; `then`
    runs however it ends."""

    def target() -> None:
        try:
            run()
        except Exception:
            log.exception("a worker thread ended on an error")
        finally:
            then()

    return target

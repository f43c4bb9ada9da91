"""Partitions on Dask (mode="dask"): each partition is one Dask task that claims it in the
repository and runs it through the same claim loop as every other worker.

Dask decides where a task runs, and may run one twice (it reschedules the tasks of a worker
that died): it promises nothing about exactly once. The repository does. A task runs its
partition only once it has claimed it, and every write of the partition is fenced by that
claim, so a second copy of a task finds nothing to claim and a dead worker's late writes are
rejected. Dask's own retries are off: batchctl decides what runs again.

The job's side, `run_on_dask` (entered through executors.DaskExecutor), connects to the cluster
(the configured scheduler, or a LocalCluster of the step's `workers` processes), submits one task
per partition, and supervises while the step waits: it retires the batchctl workers of Dask
workers that left the cluster (their partitions become claimable at once), submits a new
attempt, under a new key, for a partition whose worker died or that Dask gave up on
(KilledWorker), and fails, with one line, a partition whose attempts keep dying, whose task
raised, or that can no longer run (the scheduler lost). The worker's side,
`run_partition_task`, runs inside a Dask worker process.

Only this module imports dask and distributed, and only when a dask step runs.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Iterator, Literal

from batchctl.defaults import (
    DASK_CLAIM_POLL,
    DASK_CONNECT_TIMEOUT,
    DASK_LIVENESS_INTERVAL,
    DASK_RESUBMITS,
    THREAD_CONNECTIONS,
)
from batchctl.errors import EnvironmentProblem
from batchctl.executors import PartitionWork, Supervise, fail_waiting
from batchctl.host import host_name
from batchctl.model import Status, StepExecution, utcnow
from batchctl.worker import ClaimFilter, Worker

if TYPE_CHECKING:
    from distributed import Client, Future

    from batchctl.config import Config
    from batchctl.registry import Registry
    from batchctl.repository import Repository

log = logging.getLogger(__name__)

WORKER_KIND = "dask"  # how a Dask task's worker is listed by `batchctl workers`
ClaimState = Literal["claimable", "held", "ended"]
FUTURE_RUNNING = "pending"  # Dask's status of a future neither done nor failed (queued or running)


class DaskUnavailable(EnvironmentProblem):
    """The Dask cluster cannot be reached."""


# -- the worker's side: one partition in one Dask task ------------------------------------------


@dataclass(frozen=True)
class PartitionTask:
    """Everything a Dask task needs to run one partition: plain data, pickled to the worker."""

    config: Config
    execution_id: int
    job_name: str
    step_name: str
    partition_id: int
    partition_name: str
    job_host: str  # the job's machine: with a SQLite repository the task must run there


@dataclass(frozen=True)
class TaskOutcome:
    """What a task did: ran the partition to an end (`status`), or found nothing to run."""

    partition_name: str
    worker: str  # the Dask worker's address
    ran: bool
    status: str | None


def run_partition_task(task: PartitionTask) -> TaskOutcome:
    """Run one partition inside a Dask worker: wait until it is claimable (its previous worker
    ended or went silent), claim it, run it from its checkpoint. Returns without running it
    when it has ended or its execution no longer runs (a second copy of the task)."""
    from distributed import get_worker

    dask_worker = get_worker()
    repository, registry = _resources(task.config, dask_worker.state.nthreads, task.job_name)
    _refuse_foreign_sqlite(repository, task)
    state: ClaimState = "claimable"  # the common case: claim at once, look only if that fails
    while True:
        if state == "claimable":
            worker = _worker(repository, registry, task, dask_worker.address)
            if worker.run():
                ended = repository.step_execution(task.partition_id)
                return TaskOutcome(task.partition_name, dask_worker.address, ran=True,
                                   status=ended.status.value)
        state = _claim_state(repository, task)
        if state == "ended":
            return TaskOutcome(task.partition_name, dask_worker.address, ran=False, status=None)
        time.sleep(DASK_CLAIM_POLL)


def _worker(repository: Repository, registry: Registry, task: PartitionTask, address: str) -> Worker:
    """A batchctl worker for this one partition, named by the Dask worker's address."""
    return Worker(
        repository,
        registry.get,
        kind=WORKER_KIND,
        claims=ClaimFilter(
            execution_id=task.execution_id, step_name=task.step_name, partition_id=task.partition_id
        ),
        heartbeat_interval=task.config.heartbeat_interval,
        heartbeat_timeout=task.config.heartbeat_timeout,
        exit_when_idle=True,
        project_dir=task.config.project_dir,
        host=address,
    )


def _claim_state(repository: Repository, task: PartitionTask) -> ClaimState:
    """Whether the partition may be claimed now (live, its execution running, no live worker
    holding it), is held by a live worker (wait), or has nothing left to run (ended). The
    claim itself decides; this only saves claims that cannot succeed."""
    partition = repository.step_execution(task.partition_id)
    if not partition.status.is_live:
        return "ended"
    if repository.execution(task.execution_id).status != Status.STARTED:
        return "ended"
    if partition.status == Status.STARTING or partition.worker_id is None:
        return "claimable"
    alive_after = utcnow() - timedelta(seconds=task.config.heartbeat_timeout)
    if partition.worker_id in {w.id for w in repository.live_workers(alive_after)}:
        return "held"
    return "claimable"


def _refuse_foreign_sqlite(repository: Repository, task: PartitionTask) -> None:
    """A SQLite file is shared only by processes of its own machine (file locks over a network
    file system are not to be trusted): a Dask worker elsewhere must not open one."""
    if repository.dialect == "sqlite" and host_name() != task.job_host:
        raise EnvironmentProblem(
            f"partition {task.partition_name}: the SQLite repository is on {task.job_host} and "
            f"this Dask worker runs on {host_name()}; Dask workers on other machines need a "
            "Postgres repository"
        )


_resources_lock = threading.Lock()
_RESOURCES: dict[tuple[str, str], tuple[Repository, Registry]] = {}


def _resources(config: Config, threads: int, job_name: str) -> tuple[Repository, Registry]:
    """The repository and the jobs of `config`, opened once per Dask worker process and shared
    by its tasks (connecting and importing the job modules per task would cost every partition
    tens of milliseconds); the jobs are looked for again when `job_name` is not among them (a
    module added since). A module changed since is not reloaded: restart the Dask workers."""
    from batchctl.registry import Registry
    from batchctl.repository import Repository
    from batchctl.repository.connect import create_repository_engine

    key = (config.database_url, str(config.jobs_dir))
    with _resources_lock:
        found = _RESOURCES.get(key)
        if found is None:
            size = THREAD_CONNECTIONS * threads + 2
            engine = create_repository_engine(config.database_url, pool_size=size)
            found = (Repository(engine, config.database_url), Registry.discover(config.jobs_dir))
        elif job_name not in found[1].jobs:
            found = (found[0], Registry.discover(config.jobs_dir))
        _RESOURCES[key] = found
        return found


# -- the job's side: connect, submit, supervise ---------------------------------------------------


@contextmanager
def run_on_dask(work: PartitionWork) -> Iterator[Supervise]:
    """Run the step's live partitions as Dask tasks; yields the step's `supervise`. A cluster
    that cannot be reached fails every partition with one line (restartable)."""
    try:
        cluster = DaskCluster.connect(work)
    except DaskUnavailable as exc:
        waiting = work.repository.partitions_of(work.execution_id, work.step.name)
        fail_waiting(work.repository, waiting, exc.message)
        log.error("step %s: %s", work.step.name, exc.message)
        yield lambda partitions: None
        return
    tasks = DaskPartitions(work, cluster)
    try:
        tasks.submit_live()
        yield tasks.supervise
    finally:
        tasks.cancel()
        cluster.close()


@dataclass
class DaskCluster:
    """A client of the configured scheduler, or of a LocalCluster started for this step."""

    client: Client
    where: str  # the scheduler's address, for messages
    local: Any = None  # the LocalCluster this step started, closed with it

    @classmethod
    def connect(cls, work: PartitionWork) -> DaskCluster:
        from distributed import Client

        _quiet_dask_logs()
        address = work.config.dask_scheduler
        if address is None:
            return cls._local(work)
        try:
            client = Client(address, timeout=DASK_CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise DaskUnavailable(
                f"the Dask scheduler at {address} is unreachable ({_first_line(exc)})"
            ) from None
        return cls(client, address)

    @classmethod
    def _local(cls, work: PartitionWork) -> DaskCluster:
        """No scheduler configured: `workers` local processes of one thread each, so that the
        same job runs on a laptop."""
        from distributed import Client, LocalCluster

        try:
            local = LocalCluster(
                n_workers=work.workers, threads_per_worker=1, processes=True,
                # The scheduler serves HTTP whatever is asked: on a free loopback port, never
                # on 8787, which another cluster (or a second job) may hold.
                dashboard_address="127.0.0.1:0", silence_logs=logging.WARNING,
            )
        except Exception as exc:
            raise DaskUnavailable(f"a local Dask cluster could not start ({_first_line(exc)})") from None
        client = Client(local, set_as_default=False)
        return cls(client, str(local.scheduler_address), local)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.local is not None:
                self.local.close()


@dataclass
class DaskPartitions:
    """The step's partitions as Dask futures, one per partition attempt, and what to do when
    one ends before its partition does."""

    work: PartitionWork
    cluster: DaskCluster
    futures: dict[int, Future] = field(default_factory=dict)  # partition id -> its latest attempt
    attempts: dict[int, int] = field(default_factory=dict)
    answered_death_of: dict[int, int] = field(default_factory=dict)  # partition id -> worker id
    next_liveness: float = 0.0
    scheduler_lost: bool = False

    @property
    def repository(self) -> Repository:
        return self.work.repository

    def submit_live(self) -> None:
        for partition in self.repository.partitions_of(self.work.execution_id, self.work.step.name):
            if partition.status.is_live:
                self._submit(partition)

    def _submit(self, partition: StepExecution) -> None:
        from batchctl.dask_executor import run_partition_task  # pickled by reference

        attempt = self.attempts.get(partition.id, 0) + 1
        self.attempts[partition.id] = attempt
        task = PartitionTask(
            self.work.config, self.work.execution_id, self.work.job.name, self.work.step.name,
            partition.id,
            partition.name, host_name(),
        )
        key = f"batchctl-{self.work.execution_id}-{partition.name}-attempt-{attempt}"
        future = self.cluster.client.submit(run_partition_task, task, key=key, pure=False, retries=0)
        future.add_done_callback(lambda _: self.work.wake.set())
        self.futures[partition.id] = future

    def supervise(self, partitions: list[StepExecution]) -> None:
        """One look at the partitions the step waits for, and at their tasks."""
        if self.scheduler_lost:
            return
        live = [p for p in partitions if p.status.is_live]
        if self._lost_scheduler():
            self.scheduler_lost = True
            message = f"lost the Dask scheduler at {self.cluster.where}"
            log.error("step %s: %s", self.work.step.name, message)
            fail_waiting(self.repository, live, message)
            return
        alive = self._workers_alive()
        for partition in live:
            self._look_after(partition, alive)

    def _lost_scheduler(self) -> bool:
        """The client gave up on the scheduler, or is reconnecting to it with tasks lost (a new
        scheduler knows none of them). A task lost while the client stays connected lost only
        its worker (or the worker holding its result): `_look_after` submits it again."""
        status = self.cluster.client.status
        if status not in ("running", "connecting", "newly-created"):
            return True
        if not any(f.status in ("lost", "cancelled") for f in self.futures.values()):
            return False
        return status == "connecting" or not _answers(self.cluster.client.scheduler.address)

    def _workers_alive(self) -> set[int] | None:
        """The batchctl workers still alive, after retiring those whose Dask worker left the
        cluster (their partitions become claimable at once rather than after the heartbeat
        timeout); None between two looks, which are at most every DASK_LIVENESS_INTERVAL."""
        now = time.monotonic()
        if now < self.next_liveness:
            return None
        self.next_liveness = now + DASK_LIVENESS_INTERVAL
        alive_after = utcnow() - timedelta(seconds=self.work.config.heartbeat_timeout)
        rows = self.repository.live_workers(alive_after)  # before the cluster's view: see below
        try:
            present = set(self.cluster.client.nthreads())
        except Exception:  # the scheduler is not answering: the next look decides
            return None
        alive = set()
        for row in rows:
            # A worker that registered before the cluster was asked is in its answer, unless
            # its Dask worker has left: then it is gone, whatever its last heartbeat says.
            if row.kind == WORKER_KIND and row.execution_id == self.work.execution_id \
                    and row.host not in present:
                log.warning("Dask worker %s left the cluster; partition %s is claimable again",
                            row.host, row.partition_name)
                self.repository.retire_worker(row.id)
                continue
            alive.add(row.id)
        return alive

    def _look_after(self, partition: StepExecution, alive: set[int] | None) -> None:
        future = self.futures.get(partition.id)
        if future is None:
            return
        if future.status == FUTURE_RUNNING:
            worker_id = partition.worker_id
            if alive is None or worker_id is None or partition.status != Status.STARTED:
                return
            if worker_id in alive or self.answered_death_of.get(partition.id) == worker_id:
                return
            # Its worker died (or went silent) while Dask still counts the task as running:
            # a new attempt claims the partition; the old one, should it wake, is fenced.
            self.answered_death_of[partition.id] = worker_id
            future.cancel()
            self._again(partition, f"its worker on {partition.host} was lost")
            return
        current = self.repository.step_execution(partition.id)
        if not current.status.is_live:  # the task ended it after the step's look
            self.futures.pop(partition.id, None)
            return
        if future.status == "error":
            killed = _killed_worker(future)
            if killed is None:  # the task itself raised: running it again would raise again
                self.futures.pop(partition.id, None)
                fail_waiting(self.repository, [current], _task_failure(future))
                return
            # Dask counts a death against every task the dead worker held, queued ones too: a
            # partition that only waited beside a crashing one gets new attempts like any other.
            self._again(current, f"Dask gave up on its task (KilledWorker: {killed})")
            return
        self._again(current, "its Dask task ended before it did")

    def _again(self, partition: StepExecution, why: str) -> None:
        """A new attempt at the partition, unless the job no longer runs or it had enough."""
        if self.repository.execution(self.work.execution_id).status != Status.STARTED:
            self.futures.pop(partition.id, None)
            return
        if self.attempts.get(partition.id, 0) > DASK_RESUBMITS:
            self.futures.pop(partition.id, None)
            fail_waiting(self.repository, [partition],
                         f"{why}; gave up after {self.attempts[partition.id]} Dask tasks")
            return
        log.warning("partition %s: %s; submitting it again", partition.name, why)
        self._submit(partition)

    def cancel(self) -> None:
        """Forget every task: a task still queued never starts (one running finds its
        partition ended or its execution stopped, and returns)."""
        futures = list(self.futures.values())
        self.futures.clear()
        if futures and not self.scheduler_lost:
            try:
                self.cluster.client.cancel(futures)
            except Exception:
                log.debug("cancelling the Dask tasks failed", exc_info=True)


def _answers(address: str) -> bool:
    """Whether something accepts a TCP connection at a Dask address (`tcp://host:port`): the
    client notices a dead scheduler only after a while, a refused connection at once."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    if parts.hostname is None or parts.port is None:
        return True  # not a TCP address (inproc://): the client's status is all there is
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1.0):
            return True
    except OSError:
        return False


def _quiet_dask_logs() -> None:
    """Dask logs its progress to stderr at INFO, and a lost scheduler as tracebacks of its
    client's reconnection: batchctl says what matters in its own lines (one per lost or
    unreachable scheduler), so the job's output stays the job's."""
    logging.getLogger("distributed").setLevel(logging.WARNING)
    logging.getLogger("distributed.client").setLevel(logging.CRITICAL)


def _killed_worker(future: Future) -> str | None:
    """The first line of the task's KilledWorker (its workers kept dying), or None."""
    from distributed import KilledWorker

    error = future.exception()
    return _first_line(error) if isinstance(error, KilledWorker) else None


def _task_failure(future: Future) -> str:
    """One line for a task that raised."""
    error = future.exception()
    return f"its Dask task failed: {type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

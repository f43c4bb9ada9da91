"""Queries of partitioned steps: partitions as a queue in the repository, and the workers.

The repository itself is the queue (as in procrastinate): a partition is a step execution row;
a worker claims one with `SELECT ... FOR UPDATE SKIP LOCKED` on Postgres (on SQLite the claim
transaction holds the database's write lock), and a partition whose worker stopped
heartbeating is claimed again and resumes from its checkpoint.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator, Sequence

from sqlalchemy import Connection, and_, func, or_, select, text, update
from sqlalchemy.exc import DBAPIError

from batchctl.errors import UnknownExecution
from batchctl.model import Status, StepExecution, utcnow
from batchctl.repository.base import RepositoryBase, inserted_id, once, settle
from batchctl.repository.events import record_step_event, record_step_events
from batchctl.repository.rows import column_values, ending, from_row, step_execution_from_row
from batchctl.repository.tables import job_execution, step_execution, worker

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "batchctl_partitions"


@dataclass(frozen=True)
class PartitionSpec:
    """A partition to create: its place, its context, the state it resumes from."""

    index: int
    partition: dict[str, Any]
    context: dict[str, Any]


@dataclass(frozen=True)
class WorkerInfo:
    """A live worker and what it is doing, for `batchctl workers`."""

    id: int
    host: str
    pid: int
    kind: str
    started_at: datetime
    heartbeat_at: datetime
    step_execution_id: int | None
    partition_name: str | None
    execution_id: int | None
    job_name: str | None


class PartitionQueries(RepositoryBase):
    """The partition and worker queries; `Repository` (store.py) derives from this class."""

    # -- the owner's side -----------------------------------------------------------------------

    def create_partitions(
        self, job_execution_id: int, step_name: str, specs: Sequence[PartitionSpec], mode: str
    ) -> None:
        """Write: one STARTING step execution per partition, in one transaction; on Postgres
        the transaction also notifies waiting workers. Run again after a COMMIT whose answer
        was lost (an outage), it finds the partitions that COMMIT created: one created twice
        would run its items twice."""
        of_step = (
            step_execution.c.job_execution_id == job_execution_id,
            step_execution.c.partition_of == step_name,
        )

        def insert(connection: Connection) -> int:
            self._hold_fence(connection)
            if specs:
                connection.execute(
                    step_execution.insert(),
                    [
                        {
                            "job_execution_id": job_execution_id,
                            "name": partition_name(step_name, spec.index),
                            "status": Status.STARTING.value,
                            "version": 0,
                            "context": spec.context,
                            "partition_of": step_name,
                            "partition_index": spec.index,
                            "partition": spec.partition,
                            "mode": mode,
                        }
                        for spec in specs
                    ],
                )
                created = connection.execute(
                    select(step_execution.c.id, step_execution.c.name).where(
                        *of_step, step_execution.c.status == Status.STARTING.value
                    )
                ).all()
                record_step_events(connection, job_execution_id, created, Status.STARTING)
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})
            return len(specs)

        def committed(connection: Connection) -> int | None:
            return connection.execute(select(func.count()).where(*of_step)).scalar() or None

        self._write(once(insert, committed))

    def partitions_of(self, job_execution_id: int, step_name: str) -> list[StepExecution]:
        """Read: the partitions of one step in one job execution, in partition order."""
        query = (
            select(step_execution)
            .where(
                step_execution.c.job_execution_id == job_execution_id,
                step_execution.c.partition_of == step_name,
            )
            .order_by(step_execution.c.partition_index)
        )
        rows = self._read(lambda connection: connection.execute(query).all())
        return [step_execution_from_row(row) for row in rows]

    def end_unclaimed_partitions(
        self, job_execution_id: int, step_name: str, status: Status, message: str
    ) -> int:
        """Claim: end the partitions no worker has claimed (STARTING) with `status`."""
        unclaimed = step_execution.c.status == Status.STARTING.value
        return self._end_partitions(job_execution_id, step_name, unclaimed, status, message)

    def end_orphaned_partitions(
        self,
        job_execution_id: int,
        step_name: str,
        stale_before: datetime,
        status: Status,
        message: str,
    ) -> int:
        """Claim: end the partitions whose worker retired or last heartbeat before
        `stale_before` with `status`: a stop must not wait for a worker that died, and with
        the execution stopping no other worker may claim them."""
        orphaned = and_(
            step_execution.c.status == Status.STARTED.value,
            or_(
                step_execution.c.worker_id.is_(None),
                step_execution.c.worker_id.in_(_stale_workers(stale_before)),
            ),
        )
        return self._end_partitions(job_execution_id, step_name, orphaned, status, message)

    def _end_partitions(
        self, job_execution_id: int, step_name: str, which: Any, status: Status, message: str
    ) -> int:
        def change(connection: Connection) -> int:
            self._hold_fence(connection)
            ended = connection.execute(
                update(step_execution)
                .where(
                    step_execution.c.job_execution_id == job_execution_id,
                    step_execution.c.partition_of == step_name,
                    which,
                )
                .values(
                    **column_values(ending(status, message)),
                    version=step_execution.c.version + 1,
                )
                .returning(step_execution.c.id, step_execution.c.name)
            ).all()
            record_step_events(connection, job_execution_id, ended, status)
            return len(ended)

        return int(self._write(change))

    def fail_live_partition(self, partition: StepExecution, message: str) -> StepExecution:
        """Write: end a partition FAILED with `message` if it is live (one its worker has just
        ended keeps its outcome), conditional on its version and re-read after a lost update (a
        checkpoint meanwhile). A worker still running it fails its next checkpoint and commits
        nothing more. Returns the partition as it ended, with the checkpoint a restart resumes
        from: for a partition an execution no longer running left live, or one whose workers
        are gone."""

        def decide(current: StepExecution) -> dict[str, Any] | None:
            return ending(Status.FAILED, message) if current.status.is_live else None

        def apply(current: StepExecution, changes: dict[str, Any]) -> StepExecution:
            return self._write(lambda connection: self._update_step(connection, current, changes))

        def reread(current: StepExecution) -> StepExecution:
            found = self._read(lambda connection: self._step_execution_row(connection, current.id))
            if found is None:
                raise UnknownExecution(f"no step execution with id {current.id}")
            return found

        return settle(partition, decide, apply, reread)

    # -- the worker's side ----------------------------------------------------------------------

    def claim_partition(
        self,
        worker_id: int,
        host: str,
        pid: int,
        *,
        stale_before: datetime,
        execution_id: int | None = None,
        step_name: str | None = None,
        job_names: Sequence[str] | None = None,
        mode: str | None = None,
        partition_id: int | None = None,
    ) -> StepExecution | None:
        """Claim: the oldest partition that is waiting, or whose worker stopped heartbeating
        before `stale_before`, of a job execution still running; None when there is none."""
        stale_workers = _stale_workers(stale_before)
        claimable = or_(
            step_execution.c.status == Status.STARTING.value,
            and_(
                step_execution.c.status == Status.STARTED.value,
                or_(
                    step_execution.c.worker_id.is_(None),
                    step_execution.c.worker_id.in_(stale_workers),
                ),
            ),
        )
        query = (
            select(step_execution.c.id, step_execution.c.version)
            .join(job_execution, job_execution.c.id == step_execution.c.job_execution_id)
            .where(
                step_execution.c.partition_of.is_not(None),
                claimable,
                job_execution.c.status == Status.STARTED.value,
            )
            .order_by(step_execution.c.id)
            .limit(1)
        )
        if execution_id is not None:
            query = query.where(step_execution.c.job_execution_id == execution_id)
        if step_name is not None:
            query = query.where(step_execution.c.partition_of == step_name)
        if job_names is not None:
            query = query.where(job_execution.c.job_name.in_(list(job_names)))
        if mode is not None:
            query = query.where(step_execution.c.mode == mode)
        if partition_id is not None:
            query = query.where(step_execution.c.id == partition_id)
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True, of=step_execution)

        def change(connection: Connection) -> StepExecution | None:
            found = connection.execute(query).first()
            if found is None:
                return None
            now = utcnow()
            was = connection.execute(
                select(step_execution.c.status, step_execution.c.job_execution_id,
                       step_execution.c.name).where(step_execution.c.id == found.id)
            ).one()
            connection.execute(
                update(step_execution)
                .where(step_execution.c.id == found.id, step_execution.c.version == found.version)
                .values(
                    status=Status.STARTED.value,
                    worker_id=worker_id,
                    host=host,
                    pid=pid,
                    started_at=func.coalesce(step_execution.c.started_at, now),
                    version=found.version + 1,
                )
            )
            if was.status != Status.STARTED.value:
                record_step_event(
                    connection, was.job_execution_id, found.id, was.name, Status.STARTED
                )
            connection.execute(
                update(worker).where(worker.c.id == worker_id).values(step_execution_id=found.id)
            )
            row = connection.execute(
                select(step_execution).where(step_execution.c.id == found.id)
            ).one()
            return step_execution_from_row(row)

        return self._write(change)

    def release_partition(self, partition: StepExecution) -> None:
        """Write: hand a claimed partition back (STARTING, no worker), keeping its checkpoint."""

        released = {"status": Status.STARTING, "worker_id": None, "host": None, "pid": None}

        def change(connection: Connection) -> None:
            self._update_versioned(
                connection, step_execution, partition, released, what=f"partition {partition.name}"
            )
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})

        self._write(change)

    # -- workers --------------------------------------------------------------------------------

    def register_worker(self, host: str, pid: int, kind: str) -> int:
        """Write: a new worker, alive as of now. Run again after a COMMIT whose answer was lost
        (an outage), it finds the row that COMMIT created rather than leave a second one."""
        now = utcnow()

        def insert(connection: Connection) -> int:
            result = connection.execute(
                worker.insert().values(
                    host=host, pid=pid, kind=kind, started_at=now, heartbeat_at=now
                )
            )
            return inserted_id(result)

        def committed(connection: Connection) -> int | None:
            return connection.execute(
                select(worker.c.id).where(
                    worker.c.host == host, worker.c.pid == pid, worker.c.started_at == now
                )
            ).scalar()

        return int(self._write(once(insert, committed)))

    def worker_heartbeat(self, worker_id: int, step_execution_id: int | None) -> None:
        """Write: the worker is alive and doing `step_execution_id` (None: idle)."""
        self._write(
            lambda connection: connection.execute(
                update(worker)
                .where(worker.c.id == worker_id)
                .values(heartbeat_at=utcnow(), step_execution_id=step_execution_id)
            )
        )

    def retire_worker(self, worker_id: int) -> None:
        """Write: the worker has stopped; what it still held may be claimed at once."""
        self._write(
            lambda connection: connection.execute(
                update(worker)
                .where(worker.c.id == worker_id, worker.c.stopped_at.is_(None))
                .values(stopped_at=utcnow(), step_execution_id=None)
            )
        )

    def retire_workers_of_process(self, host: str, pid: int) -> None:
        """Write: every worker of a process known to be gone is retired."""
        self._write(
            lambda connection: connection.execute(
                update(worker)
                .where(worker.c.host == host, worker.c.pid == pid, worker.c.stopped_at.is_(None))
                .values(stopped_at=utcnow(), step_execution_id=None)
            )
        )

    def live_workers(self, alive_after: datetime) -> list[WorkerInfo]:
        """Read: workers not stopped that heartbeat after `alive_after`, with their partition."""
        query = (
            select(
                worker,
                step_execution.c.name.label("partition_name"),
                step_execution.c.job_execution_id.label("execution_id"),
                job_execution.c.job_name,
            )
            .outerjoin(step_execution, step_execution.c.id == worker.c.step_execution_id)
            .outerjoin(job_execution, job_execution.c.id == step_execution.c.job_execution_id)
            .where(worker.c.stopped_at.is_(None), worker.c.heartbeat_at >= alive_after)
            .order_by(worker.c.id)
        )
        rows = self._read(lambda connection: connection.execute(query).all())
        return [from_row(WorkerInfo, row) for row in rows]

    @contextmanager
    def partition_notifications(self) -> Iterator[Callable[[float], bool]]:
        """A `wait(timeout)` that returns when partitions may be claimable: on Postgres when
        LISTEN hears of new ones (True) or at the timeout (False), elsewhere at the timeout."""
        if self.dialect != "postgresql":

            def sleep(timeout: float) -> bool:
                time.sleep(timeout)
                return False

            yield sleep
            return
        import psycopg

        held: list[Any] = []  # the LISTENing connection, once made

        def listen() -> Any:
            raw = self.engine.raw_connection()
            held.append(raw)
            driver = raw.driver_connection
            assert driver is not None  # a raw connection checked out of the pool is open
            driver.autocommit = True
            driver.execute(f"LISTEN {NOTIFY_CHANNEL}")
            return driver

        def drop() -> None:
            while held:
                raw = held.pop()
                raw.invalidate()  # a LISTENing connection must not go back to the pool
                raw.close()

        def wait(timeout: float) -> bool:
            # A lost connection (a repository outage) is answered with True: the claim that
            # follows rides the outage out (RepositoryOutage past db_outage_timeout), and the
            # next wait listens on a new connection. A notification may have been missed.
            try:
                driver = held[0].driver_connection if held else listen()
                for _ in driver.notifies(timeout=timeout, stop_after=1):
                    return True
                return False
            except (DBAPIError, psycopg.Error) as exc:
                listening = bool(held)
                drop()
                if not listening:
                    time.sleep(timeout)  # no connection to wait on: wait as SQLite does
                log.info("the worker's LISTEN connection was lost: %s", exc)
                return True

        try:
            yield wait
        finally:
            drop()


def _stale_workers(stale_before: datetime) -> Any:
    """The ids of workers that retired or stopped heartbeating before `stale_before`."""
    return select(worker.c.id).where(
        or_(worker.c.stopped_at.is_not(None), worker.c.heartbeat_at < stale_before)
    )


def partition_name(step_name: str, index: int) -> str:
    """A partition's step execution name: `post:0003`."""
    return f"{step_name}:{index:04d}"


__all__ = ["PartitionQueries", "PartitionSpec", "WorkerInfo", "partition_name"]

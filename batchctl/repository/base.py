"""The database base class of the query classes: the engine, transactions, error translation,
versioned updates and fencing.

The query classes stack on it one way: `RepositoryBase` <- `PartitionQueries` (partitions.py)
and `PruneQueries` (prune.py) <- `Repository` (store.py). Whatever two of them share lives here (or, when it runs no query,
in rows.py), so that no class reaches up to one that derives from it.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Mapping, Protocol, Self, TypeVar

from sqlalchemy import Connection, CursorResult, Engine, Table, exists, literal, select, text, update

from sqlalchemy.exc import DBAPIError

from batchctl.defaults import DEFAULT_DB_OUTAGE_TIMEOUT
from batchctl.errors import ExecutionTakenOver, RepositoryInterrupted, StaleExecution
from batchctl.model import Status, StepExecution
from batchctl.repository.connect import (
    READ_ONLY,
    Outage,
    create_repository_engine,
    translate_errors,
    with_retries,
)
from batchctl.repository.events import record_execution_event, record_step_event
from batchctl.repository.migrate import current_revision, ensure_schema, upgrade
from batchctl.repository.rows import column_values, step_execution_from_row
from batchctl.repository.tables import LIVE_STATUS_SQL, job_execution, step_execution


class Versioned(Protocol):
    """A domain object saved with optimistic locking: an id and the version it was read at."""

    @property
    def id(self) -> int: ...

    @property
    def version(self) -> int: ...


V = TypeVar("V")
D = TypeVar("D")
R = TypeVar("R")
VersionedT = TypeVar("VersionedT", bound=Versioned)


@dataclass(frozen=True)
class Fence:
    """What a process's writes for an execution are conditional on: the execution is still live
    and, when `owner` is given, still owned by that token. Marking an execution lost (or
    ending it any other way) fails the condition, so a process that was paused past its
    heartbeat timeout, or judged lost by mistake, commits nothing more.

    The job's own process fences with its owner token; partition workers, which never own the
    execution, fence with liveness alone (their claim on the partition is its version).
    """

    execution_id: int
    owner: str | None = None


def taken_over_message(execution_id: int, status: str, exit_message: str | None) -> str:
    """What a fenced-off process says (and raises as ExecutionTakenOver): who ended its
    execution, in the first line of the exit message they left."""
    reason = (exit_message or "").strip().splitlines()
    because = f": {reason[0]}" if reason else ""
    return (
        f"execution {execution_id} was taken over by another process (it is {status}{because}); "
        "stopping without committing"
    )


def settle(
    current: V,
    decide: Callable[[V], D | None],
    apply: Callable[[V, D], R],
    reread: Callable[[V], V],
) -> V | R:
    """Optimistic locking's loop, written once: `decide(current)` what to change (None: nothing,
    and `current` is returned), `apply(current, decision)` it as a write conditional on the
    version, and on a lost update (StaleExecution) `reread(current)` and decide again, since
    the other process's change may have made the decision moot. Returns what `apply` returned.

    `decide` and `reread` may raise to give up (a Refused error, ExecutionTakenOver); the loop
    ends when a decision applies or none is left, as every lost update means another process
    made progress.
    """
    while True:
        decision = decide(current)
        if decision is None:
            return current
        try:
            return apply(current, decision)
        except StaleExecution:
            current = reread(current)


def once(
    change: Callable[[Connection], R], committed: Callable[[Connection], R | None]
) -> Callable[[Connection], R]:
    """`change`, a transaction that inserts, made safe for the outage ride to run again after a
    COMMIT whose answer was lost: on every run after the first, `committed(connection)` looks
    for what the first run's COMMIT may have created, and its answer, when not None, is the
    transaction's (nothing is inserted twice)."""
    runs = 0

    def run(connection: Connection) -> R:
        nonlocal runs
        runs += 1
        if runs > 1:
            found = committed(connection)
            if found is not None:
                return found
        return change(connection)

    return run


def inserted_id(result: CursorResult[Any]) -> int:
    """The id the database gave the row an INSERT of one row created."""
    key = result.inserted_primary_key
    assert key is not None, "not the result of an INSERT of one row"
    return int(key[0])


class RepositoryBase:
    """The engine, its transactions and the fence: what every query class builds on.

    `_read` and `_write` run one transaction each (retried where the database asks, and run
    again through an outage of the repository, see connect.Outage, with driver errors
    translated); a write of a step row goes through `_update_step`, which carries the fence of
    a `fenced` view in the same statement.
    """

    def __init__(self, engine: Engine, url: str, *, outage: Outage | None = None) -> None:
        self.engine = engine
        self.url = url
        self.fence: Fence | None = None
        self.outage = outage if outage is not None else Outage(url)

    @classmethod
    def open(
        cls, url: str, *, migrate: bool = True, outage_timeout: float = DEFAULT_DB_OUTAGE_TIMEOUT
    ) -> Self:
        """Connect to the repository at `url`, creating or migrating its schema if needed.
        `outage_timeout`: how long an outage of the repository is ridden out (connect.Outage)."""
        engine = create_repository_engine(url)
        repository = cls(engine, url, outage=Outage(url, outage_timeout))
        if migrate:
            try:
                repository._guard(lambda: ensure_schema(engine))
            except BaseException:
                engine.dispose()  # the caller never gets the repository to close it
                raise
        return repository

    def close(self) -> None:
        """Close every pooled connection (the repository cannot be used after)."""
        self.engine.dispose()

    def fenced(self, fence: Fence) -> Self:  # the view shares the engine and the outage
        """This repository (the same engine and pool) whose step writes are all conditional, in
        their own transaction, on `fence`: a write of a process that no longer owns the
        execution raises ExecutionTakenOver and commits nothing."""
        view = copy.copy(self)
        view.fence = fence
        return view

    @property
    def dialect(self) -> str:
        """The database's dialect name: "sqlite" or "postgresql"."""
        return self.engine.dialect.name

    def upgrade_schema(self, revision: str = "head") -> str | None:
        """Writes: create or migrate the schema to `revision` (Alembic), whatever revision it
        is at, as `batchctl db upgrade` does; returns the revision it is at after. Not retried
        (a migration may not be repeatable); an unreachable database is DatabaseUnavailable."""
        with translate_errors(self.url):
            upgrade(self.engine, revision)
            return current_revision(self.engine)

    # -- transactions ---------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, *, read_only: bool = False, serializable: bool = False) -> Iterator[Connection]:
        """One transaction on a pooled connection: committed when the block ends, rolled back
        if it raises. On SQLite a read transaction is a deferred BEGIN, a write one takes the
        write lock up front (see connect.py)."""
        with self.engine.connect() as connection:
            options: dict[str, Any] = {READ_ONLY: read_only}
            if serializable and self.dialect == "postgresql":
                options["isolation_level"] = "SERIALIZABLE"
            connection.execution_options(**options)
            with connection.begin():
                yield connection

    def _guard(self, work: Callable[[], R]) -> R:
        """Run `work` (one whole transaction), retrying where the database asks and through an
        outage of up to db_outage_timeout, with driver errors translated into domain errors
        (translate_errors). A write whose COMMIT was cut is run again: a versioned update then
        finds its own change (a lost update, which `settle` answers by re-reading)."""
        with translate_errors(self.url):
            return self.outage.ride(lambda: with_retries(work))

    @contextmanager
    def _unrepeatable(self) -> Iterator[None]:
        """Around a transaction that cannot be run again as it is (a chunk's, a tasklet's SQL):
        a lost connection becomes RepositoryInterrupted (the outage noted), for the step to
        redo its work from its last checkpoint; any other error is translated as usual."""
        with translate_errors(self.url):
            try:
                yield
            except DBAPIError as exc:
                if not self.outage.applies(exc):
                    raise
                self.outage.started(exc)
                raise RepositoryInterrupted(
                    f"the connection to the job repository was lost mid-transaction: {exc.orig}"
                ) from exc

    def await_reachable(self, *, patient: bool = False) -> bool:
        """Read: wait until the repository answers (RepositoryOutage once the outage has lasted
        db_outage_timeout, unless `patient`); whether it had to wait."""
        waited = False

        def probe() -> None:
            nonlocal waited
            try:
                with self.engine.connect() as connection:
                    connection.execute(select(literal(1)))
            except DBAPIError:
                waited = True
                raise

        with translate_errors(self.url):
            self.outage.ride(probe, patient=patient)
        return waited

    def _read(self, query: Callable[[Connection], R]) -> R:
        """Run `query(connection)` in a read transaction."""

        def work() -> R:
            with self._transaction(read_only=True) as connection:
                return query(connection)

        return self._guard(work)

    def _write(self, change: Callable[[Connection], R], *, serializable: bool = False) -> R:
        """Run `change(connection)` in a write transaction (serializable on Postgres if asked:
        for a decision read and acted on in one transaction)."""

        def work() -> R:
            with self._transaction(serializable=serializable) as connection:
                return change(connection)

        return self._guard(work)

    # -- versioned updates ----------------------------------------------------------------------

    def _update_versioned(
        self,
        connection: Connection,
        table: Table,
        current: Versioned,
        changes: Mapping[str, Any],
        *,
        what: str,
        fenced: bool = False,
    ) -> None:
        """UPDATE `table` SET `changes` and the next version WHERE id and version are
        `current`'s: the one optimistic-locking write. A lost update raises StaleExecution
        ("`what` was changed by another process"); with `fenced` (step rows) and a fence set,
        the fence is a condition of the same statement and its failure is ExecutionTakenOver."""
        statement = update(table).where(table.c.id == current.id, table.c.version == current.version)
        fence_applies = fenced and self.fence is not None
        if fence_applies:
            statement = statement.where(self._fence_holds())
        result = connection.execute(statement.values(**column_values(changes), version=current.version + 1))
        if result.rowcount != 1:
            if fence_applies:
                self._refuse_if_fenced_off(connection)
            raise StaleExecution(f"{what} was changed by another process")
        if "status" in changes:
            _record_status_change(connection, table, current, changes["status"])

    def _update_step(self, connection: Connection, step: VersionedT, changes: Mapping[str, Any]) -> VersionedT:
        """A step execution's (or a partition's) versioned, fenced update; the step after it."""
        self._update_versioned(
            connection, step_execution, step, changes, what=f"step execution {step.id}", fenced=True
        )
        return replace(step, **changes, version=step.version + 1)  # type: ignore[type-var]

    @staticmethod
    def _step_execution_row(connection: Connection, step_execution_id: int) -> StepExecution | None:
        """The step execution with that id, or None."""
        row = connection.execute(
            select(step_execution).where(step_execution.c.id == step_execution_id)
        ).first()
        return step_execution_from_row(row) if row is not None else None

    # -- fencing --------------------------------------------------------------------------------

    def _fence_holds(self) -> Any:
        """The fence as a condition of an UPDATE of a step row: the execution is live (and
        owned); on Postgres the execution row is share-locked, so that marking it lost waits
        for this transaction and a restart never reads a checkpoint this one is replacing."""
        fence = self.fence
        assert fence is not None
        condition = select(literal(1)).where(
            job_execution.c.id == fence.execution_id, text(f"job_execution.{LIVE_STATUS_SQL}")
        )
        if fence.owner is not None:
            condition = condition.where(job_execution.c.owner == fence.owner)
        if self.dialect == "postgresql":
            condition = condition.with_for_update(read=True)
        return exists(condition)

    def _hold_fence(self, connection: Connection) -> None:
        """In a write transaction without an UPDATE to carry the fence: check it (and on
        Postgres share-lock the execution row until the commit)."""
        if self.fence is None:
            return
        found = connection.execute(select(literal(1)).where(self._fence_holds())).scalar()
        if found is None:
            self._refuse_if_fenced_off(connection)

    def _refuse_stale_step(self, connection: Connection, step: Versioned) -> None:
        """A step UPDATE matched no row: say whether the execution was taken over (fenced off)
        or only the step row changed (a lost update)."""
        if self.fence is not None:
            self._refuse_if_fenced_off(connection)
        raise StaleExecution(f"step execution {step.id} was changed by another process")

    def _refuse_if_fenced_off(self, connection: Connection) -> None:
        """Raise ExecutionTakenOver unless the fenced execution is still live (and owned)."""
        fence = self.fence
        assert fence is not None
        row = connection.execute(
            select(job_execution.c.status, job_execution.c.owner, job_execution.c.exit_message)
            .where(job_execution.c.id == fence.execution_id)
        ).first()
        if row is None:
            raise ExecutionTakenOver(f"execution {fence.execution_id} is gone")
        live = Status(row.status).is_live
        if live and (fence.owner is None or row.owner == fence.owner):
            return
        raise ExecutionTakenOver(taken_over_message(fence.execution_id, row.status, row.exit_message))


def _record_status_change(connection: Connection, table: Table, current: Any, status: Any) -> None:
    """The outbox event of a versioned update that set a status, in its transaction."""
    if table is job_execution:
        record_execution_event(connection, current.id, status)
    elif table is step_execution:
        record_step_event(connection, current.job_execution_id, current.id, current.name, status)


__all__ = ["Fence", "RepositoryBase", "Versioned", "inserted_id", "settle", "taken_over_message"]

"""The job repository: every query batchctl runs, on SQLite and Postgres alike.

Each public method says what it does to the database: *reads*, *writes* (an update conditional
on the row's version: a lost update raises StaleExecution), or *claims* (an atomic decision the
database guarantees: a constraint or a conditional update). The rules of what may start, stop or
restart are the operator's; they arrive here as a `decide` function run inside the transaction.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import date, datetime
from typing import Any, Callable, Iterator, Sequence, TypeVar

from sqlalchemy import Connection, Engine, Row, and_, exists, func, literal, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from batchctl.errors import (
    AlreadyRunning,
    CommitUnknown,
    ExecutionTakenOver,
    StaleExecution,
    UnknownExecution,
)
from batchctl.model import (
    ABANDONABLE_STATUSES,
    LIVE_STATUSES,
    STOPPABLE_STATUSES,
    STEP_COUNTERS,
    JobExecution,
    SkippedItem,
    Status,
    StepExecution,
    storable_json,
    utcnow,
)
from batchctl.repository.connect import (
    READ_ONLY,
    create_repository_engine,
    is_unreachable,
    unavailable,
    with_retries,
)
from batchctl.repository.migrate import ensure_schema
from batchctl.repository.partitions import PartitionQueries
from batchctl.repository.tables import (
    LIVE_STATUS_SQL,
    job_execution,
    job_instance,
    skipped_item,
    step_execution,
)

Decide = Callable[[JobExecution | None], JobExecution | None]
"""Given the instance's last execution, return the execution to resume from (None: afresh),
or raise a Refused error."""

_EXECUTION_COLUMNS = (*job_execution.c, job_instance.c.params)
ITEM_TEXT_LIMIT = 4_000  # characters of a skipped item's JSON (or repr) kept in the repository
ERROR_TEXT_LIMIT = 4_000  # characters of a skipped item's error kept

# A chunk's checkpoint: every counter and the context, conditional on the version, as the
# driver's own SQL (see Repository._checkpoint).
_CHECKPOINT_KEYS = frozenset((*STEP_COUNTERS, "context"))
_CHECKPOINT_SQL: dict[tuple[str, bool, bool], str] = {}


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


def _checkpoint_sql(dialect: Any, fenced: bool, owned: bool) -> str:
    """The checkpoint UPDATE with positional parameters: the counters, the context, the new
    version, the id, the old version, then (fenced) the execution id and (owned) the owner."""
    key = (dialect.name, fenced, owned)
    found = _CHECKPOINT_SQL.get(key)
    if found is None:
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        table = dialect.identifier_preparer.format_table(step_execution)
        sets = ", ".join(f"{name} = {mark}" for name in (*STEP_COUNTERS, "context", "version"))
        found = f"UPDATE {table} SET {sets} WHERE id = {mark} AND version = {mark}"
        if fenced:
            executions = dialect.identifier_preparer.format_table(job_execution)
            owner = f" AND owner = {mark}" if owned else ""
            lock = " FOR SHARE" if dialect.name == "postgresql" else ""
            found += (
                f" AND EXISTS (SELECT 1 FROM {executions} WHERE id = {mark} AND "
                f"{LIVE_STATUS_SQL}{owner}{lock})"
            )
        _CHECKPOINT_SQL[key] = found
    return found


def _context_json(value: Any) -> str:
    """A step's context as JSONText stores it; UnstorableValue naming the bad key."""
    return storable_json(value, "ctx.state")


class Repository(PartitionQueries):
    """Persists instances, executions and step executions; decides nothing."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        self.fence: Fence | None = None

    def fenced(self, fence: Fence) -> Repository:
        """This repository (the same engine and pool) whose step writes are all conditional, in
        their own transaction, on `fence`: a write of a process that no longer owns the
        execution raises ExecutionTakenOver and commits nothing."""
        view = copy.copy(self)
        view.fence = fence
        return view

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Repository:
        """Connect to the repository at `url`, creating or migrating its schema if needed."""
        engine = create_repository_engine(url)
        repository = cls(engine, url)
        if migrate:
            repository._guard(lambda: ensure_schema(engine))
        return repository

    def close(self) -> None:
        self.engine.dispose()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # -- transactions ---------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, *, read_only: bool = False, serializable: bool = False) -> Iterator[Connection]:
        with self.engine.connect() as connection:
            options: dict[str, Any] = {READ_ONLY: read_only}
            if serializable and self.dialect == "postgresql":
                options["isolation_level"] = "SERIALIZABLE"
            connection.execution_options(**options)
            with connection.begin():
                yield connection

    def _guard(self, work: Callable[[], Any]) -> Any:
        """Run `work`, retrying where the database asks and naming an unreachable database."""
        try:
            return with_retries(work)
        except DBAPIError as exc:
            if is_unreachable(exc):
                raise unavailable(self.url, exc) from exc
            raise

    def _read(self, query: Callable[[Connection], Any]) -> Any:
        def work() -> Any:
            with self._transaction(read_only=True) as connection:
                return query(connection)

        return self._guard(work)

    def _write(self, change: Callable[[Connection], Any], *, serializable: bool = False) -> Any:
        def work() -> Any:
            with self._transaction(serializable=serializable) as connection:
                return change(connection)

        return self._guard(work)

    # -- claims ---------------------------------------------------------------------------------

    def create_execution(
        self,
        job_name: str,
        job_key: str,
        params: dict[str, Any],
        decide: Decide,
        *,
        process: dict[str, Any] | None = None,
    ) -> JobExecution:
        """Claim: create the instance if new, and a STARTING execution of it if `decide` allows.
        `process`: the host, pid and pid_scope of the process that will run it, when known.

        The decision and the insert are one serializable transaction, and the partial unique
        index on live executions refuses a second live execution whatever the race.
        """

        def change(connection: Connection) -> JobExecution:
            instance_id = self._instance_id(connection, job_name, job_key, params)
            return self._insert_execution(connection, instance_id, decide, process or {})

        return self._claim(change)

    def create_execution_of_instance(
        self, instance_id: int, decide: Decide, *, process: dict[str, Any] | None = None
    ) -> JobExecution:
        """Claim: a new STARTING execution of an existing instance if `decide` allows."""
        return self._claim(
            lambda connection: self._insert_execution(connection, instance_id, decide, process or {})
        )

    def _claim(self, change: Callable[[Connection], JobExecution]) -> JobExecution:
        try:
            return self._write(change, serializable=True)
        except IntegrityError as exc:
            if "live" in str(exc.orig) or "job_execution.instance_id" in str(exc.orig):
                raise AlreadyRunning(
                    "this job instance is already running (started by another process)"
                ) from exc
            raise

    def _instance_id(
        self, connection: Connection, job_name: str, job_key: str, params: dict[str, Any]
    ) -> int:
        key = and_(job_instance.c.job_name == job_name, job_instance.c.job_key == job_key)
        found = connection.execute(select(job_instance.c.id).where(key)).scalar()
        if found is not None:
            return int(found)
        insert = _dialect_insert(connection).values(
            job_name=job_name, job_key=job_key, params=params, created_at=utcnow()
        )
        connection.execute(insert.on_conflict_do_nothing())
        return int(connection.execute(select(job_instance.c.id).where(key)).scalar_one())

    def _insert_execution(
        self,
        connection: Connection,
        instance_id: int,
        decide: Decide,
        process: dict[str, Any],
    ) -> JobExecution:
        last = self._last_execution_of_instance(connection, instance_id)
        resumed = decide(last)
        now = utcnow()
        values = {
            "instance_id": instance_id,
            "job_name": _instance_job_name(connection, instance_id),
            "status": Status.STARTING.value,
            "version": 0,
            "created_at": now,
            "heartbeat_at": now,
            "host": process.get("host"),
            "pid": process.get("pid"),
            "pid_scope": process.get("pid_scope"),
            "context": dict(resumed.context) if resumed else {},
            "resumed_from": resumed.id if resumed else None,
        }
        new_id = connection.execute(job_execution.insert().values(**values)).inserted_primary_key[0]
        return _execution(self._execution_row(connection, int(new_id)))

    def request_stop(self, execution_id: int) -> JobExecution | None:
        """Claim: STARTING/STARTED -> STOPPING in one conditional update.

        Returns the execution after the request (STOPPING), or None when it was not live.
        An execution already STOPPING is returned unchanged.
        """

        def change(connection: Connection) -> JobExecution | None:
            connection.execute(
                update(job_execution)
                .where(
                    job_execution.c.id == execution_id,
                    job_execution.c.status.in_([s.value for s in STOPPABLE_STATUSES]),
                )
                .values(status=Status.STOPPING.value, version=job_execution.c.version + 1)
            )
            row = self._execution_row(connection, execution_id)
            if row is None:
                raise UnknownExecution(f"no execution with id {execution_id}")
            found = _execution(row)
            return found if found.status == Status.STOPPING else None

        return self._write(change)

    def abandon(self, execution_id: int) -> JobExecution | None:
        """Claim: STOPPED/FAILED/UNKNOWN -> ABANDONED in one conditional update, only for the
        last execution of its instance (one that a later execution resumed is history). Any
        step execution it left live ends ABANDONED with it.

        Serializable, as the insert of a restart is: of a restart and an abandon of the same
        execution at once, one wins and the other is refused. Returns the abandoned execution,
        or None when its status or a later execution did not allow it.
        """
        allowed = [s.value for s in ABANDONABLE_STATUSES]
        later = job_execution.alias("later")
        no_later = ~exists(
            select(literal(1)).where(
                later.c.instance_id == job_execution.c.instance_id, later.c.id > job_execution.c.id
            )
        )

        def change(connection: Connection) -> JobExecution | None:
            result = connection.execute(
                update(job_execution)
                .where(
                    job_execution.c.id == execution_id,
                    job_execution.c.status.in_(allowed),
                    no_later,
                )
                .values(status=Status.ABANDONED.value, version=job_execution.c.version + 1)
            )
            row = self._execution_row(connection, execution_id)
            if row is None:
                raise UnknownExecution(f"no execution with id {execution_id}")
            if result.rowcount != 1:
                return None
            _end_live_steps(connection, execution_id, Status.ABANDONED, "execution abandoned")
            return _execution(row)

        return self._write(change, serializable=True)

    def later_execution(self, execution: JobExecution) -> JobExecution | None:
        """Read: the first execution of the same instance created after `execution`."""
        query = (
            select(*_EXECUTION_COLUMNS)
            .join(job_instance, job_instance.c.id == job_execution.c.instance_id)
            .where(
                job_execution.c.instance_id == execution.instance_id,
                job_execution.c.id > execution.id,
            )
            .order_by(job_execution.c.id)
            .limit(1)
        )
        row = self._read(lambda connection: connection.execute(query).first())
        return _execution(row) if row is not None else None

    # -- writes ---------------------------------------------------------------------------------

    def update_execution(self, execution: JobExecution, **changes: Any) -> JobExecution:
        """Write: apply `changes` if the row is still at `execution.version`; return the new one."""
        values = {k: (v.value if isinstance(v, Status) else v) for k, v in changes.items()}
        if "context" in changes:
            storable_json(changes["context"], "ctx.job_context")

        def change(connection: Connection) -> None:
            result = connection.execute(
                update(job_execution)
                .where(
                    job_execution.c.id == execution.id,
                    job_execution.c.version == execution.version,
                )
                .values(**values, version=execution.version + 1)
            )
            if result.rowcount != 1:
                raise StaleExecution(
                    f"execution {execution.id} was changed by another process"
                )

        self._write(change)
        return replace(execution, **changes, version=execution.version + 1)

    def end_execution(
        self, execution: JobExecution, status: Status, message: str, **changes: Any
    ) -> JobExecution:
        """Write: end a live execution with `status` (conditional on its version, as
        `update_execution`), and in the same transaction every step execution it left live:
        a lost execution's steps and partitions end with it, and a worker still running one of
        them fails its next checkpoint."""
        values = {
            "status": status,
            "exit_code": status.value,
            "exit_message": message or None,
            "ended_at": utcnow(),
            **changes,
        }
        columns = {k: (v.value if isinstance(v, Status) else v) for k, v in values.items()}

        def change(connection: Connection) -> None:
            result = connection.execute(
                update(job_execution)
                .where(
                    job_execution.c.id == execution.id,
                    job_execution.c.version == execution.version,
                )
                .values(**columns, version=execution.version + 1)
            )
            if result.rowcount != 1:
                raise StaleExecution(f"execution {execution.id} was changed by another process")
            _end_live_steps(connection, execution.id, status, message)

        self._write(change)
        return replace(execution, **values, version=execution.version + 1)

    def create_step_execution(
        self, job_execution_id: int, name: str, context: dict[str, Any]
    ) -> StepExecution:
        """Write: a new STARTED step execution (fenced)."""
        now = utcnow()

        def change(connection: Connection) -> int:
            self._hold_fence(connection)
            result = connection.execute(
                step_execution.insert().values(
                    job_execution_id=job_execution_id,
                    name=name,
                    status=Status.STARTED.value,
                    version=0,
                    started_at=now,
                    context=context,
                )
            )
            return int(result.inserted_primary_key[0])

        new_id = self._write(change)
        return StepExecution(
            id=new_id,
            job_execution_id=job_execution_id,
            name=name,
            status=Status.STARTED,
            started_at=now,
            context=dict(context),
        )

    def update_step_execution(self, step: StepExecution, **changes: Any) -> StepExecution:
        """Write: apply `changes` if the row is still at `step.version` (and the fence holds);
        return the new one."""
        values = {k: (v.value if isinstance(v, Status) else v) for k, v in changes.items()}
        if "context" in changes:
            _context_json(changes["context"])

        def change(connection: Connection) -> None:
            statement = update(step_execution).where(
                step_execution.c.id == step.id, step_execution.c.version == step.version
            )
            if self.fence is not None:
                statement = statement.where(self._fence_holds())
            result = connection.execute(statement.values(**values, version=step.version + 1))
            if result.rowcount != 1:
                self._refuse_stale_step(connection, step)

        self._write(change)
        return replace(step, **changes, version=step.version + 1)

    def check_fence(self, step: StepExecution) -> None:
        """Read: raise as a fenced write would (ExecutionTakenOver, StaleExecution) unless this
        process still owns `step` at its version. Asked before work that no transaction can
        undo (a file writer's chunk), so that a process that lost its claim leaves the file to
        the one that took it over."""

        def query(connection: Connection) -> None:
            version = connection.execute(
                select(step_execution.c.version).where(step_execution.c.id == step.id)
            ).scalar()
            if self.fence is not None:
                self._refuse_if_fenced_off(connection)
            if version != step.version:
                raise StaleExecution(f"step execution {step.id} was changed by another process")

        self._read(query)

    # -- fencing ----------------------------------------------------------------------------------

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

    def _refuse_stale_step(self, connection: Connection, step: StepExecution) -> None:
        """A step UPDATE matched no row: say whether the execution was taken over (fenced off)
        or only the step row changed (a lost update)."""
        if self.fence is not None:
            self._refuse_if_fenced_off(connection)
        raise StaleExecution(f"step execution {step.id} was changed by another process")

    def _refuse_if_fenced_off(self, connection: Connection) -> None:
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

    def commit_chunk(
        self,
        step: StepExecution,
        changes: dict[str, Any],
        work: Callable[[Connection], Any] | None = None,
        skipped: list[SkippedItem] | None = None,
        *,
        connection: Connection | None = None,
    ) -> StepExecution:
        """Write: one chunk's checkpoint, in one transaction: first `work(connection)` (a writer
        writing through the repository's own database), then the chunk's `skipped` items, then
        the step's `changes` (counters, context), conditional on the step's version. On the
        `connection` of `chunk_connection()` when given, else on one from the pool.

        `work` runs first and may still add to `changes` and `skipped` (the item-by-item replay
        of a failed chunk does): they are read after it returns. Without `work` the transaction
        is retried where the database asks; with it never (the work may not be repeatable): the
        error reaches the caller with everything rolled back. When the COMMIT itself fails the
        outcome is unknown: CommitUnknown.
        """

        def run() -> None:
            if connection is not None:
                commit(connection)
            else:
                with self.engine.connect() as pooled:
                    commit(pooled)

        def commit(connection: Connection) -> None:
            transaction = connection.begin()
            try:
                if work is not None:
                    work(connection)
                if skipped:
                    connection.execute(skipped_item.insert(), [_skip_row(s) for s in skipped])
                self._checkpoint(connection, step, changes)
            except BaseException:
                transaction.rollback()
                raise
            try:
                transaction.commit()
            except DBAPIError as exc:
                raise CommitUnknown(
                    f"the commit of a chunk of step execution {step.id} failed; it may or "
                    f"may not have been committed: {exc.orig}"
                ) from exc

        if work is None:
            self._guard(run)
        else:
            try:
                run()
            except DBAPIError as exc:
                if is_unreachable(exc):
                    raise unavailable(self.url, exc) from exc
                raise
        return replace(step, **changes, version=step.version + 1)

    def chunk_connection(self) -> Connection:
        """A connection for a chunk step to hold while it runs, for `commit_chunk`: no pool
        checkout per chunk, and on Postgres no pre-ping round trip per chunk. Close it after."""
        return self.engine.connect()

    def _checkpoint(self, connection: Connection, step: StepExecution, changes: dict[str, Any]) -> None:
        fence = self.fence
        if changes.keys() == _CHECKPOINT_KEYS:
            # The chunk loop's statement, straight to the driver: SQLAlchemy's execution costs
            # more than the UPDATE itself, once per chunk. The fence is one more condition of
            # the same statement: no extra round trip.
            owned = fence is not None and fence.owner is not None
            sql = _checkpoint_sql(connection.dialect, fence is not None, owned)
            params = [changes[name] for name in STEP_COUNTERS]
            params += [_context_json(changes["context"]), step.version + 1, step.id, step.version]
            if fence is not None:
                params.append(fence.execution_id)
                if owned:
                    params.append(fence.owner)
            cursor = connection.connection.driver_connection.cursor()
            try:
                cursor.execute(sql, params)
                updated = cursor.rowcount
            finally:
                cursor.close()
        else:
            if "context" in changes:
                _context_json(changes["context"])
            statement = update(step_execution).where(
                step_execution.c.id == step.id, step_execution.c.version == step.version
            )
            if fence is not None:
                statement = statement.where(self._fence_holds())
            updated = connection.execute(statement.values(**changes, version=step.version + 1)).rowcount
        if updated != 1:
            self._refuse_stale_step(connection, step)

    # -- reads ----------------------------------------------------------------------------------

    def skipped_items(self, execution_id: int) -> list[SkippedItem]:
        """Read: the items skipped by the steps of one job execution, in the order skipped."""
        query = (
            select(skipped_item, step_execution.c.name.label("step_name"))
            .join(step_execution, step_execution.c.id == skipped_item.c.step_execution_id)
            .where(step_execution.c.job_execution_id == execution_id)
            .order_by(skipped_item.c.id)
        )
        rows = self._read(lambda connection: connection.execute(query).all())
        return [from_row(SkippedItem, row) for row in rows]

    def execution(self, execution_id: int) -> JobExecution:
        """Read: one execution; UnknownExecution if there is none."""
        row = self._read(lambda connection: self._execution_row(connection, execution_id))
        if row is None:
            raise UnknownExecution(f"no execution with id {execution_id}")
        return _execution(row)

    def latest_execution(self, job_name: str) -> JobExecution | None:
        """Read: the job's most recently created execution."""
        query = (
            select(*_EXECUTION_COLUMNS)
            .join(job_instance, job_instance.c.id == job_execution.c.instance_id)
            .where(job_execution.c.job_name == job_name)
            .order_by(job_execution.c.id.desc())
            .limit(1)
        )
        row = self._read(lambda connection: connection.execute(query).first())
        return _execution(row) if row is not None else None

    def history(
        self,
        job_name: str | None = None,
        statuses: Sequence[Status] = (),
        limit: int | None = 20,
    ) -> list[JobExecution]:
        """Read: executions, newest first."""
        query = select(*_EXECUTION_COLUMNS).join(
            job_instance, job_instance.c.id == job_execution.c.instance_id
        )
        if job_name is not None:
            query = query.where(job_execution.c.job_name == job_name)
        if statuses:
            query = query.where(job_execution.c.status.in_([s.value for s in statuses]))
        query = query.order_by(job_execution.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        rows = self._read(lambda connection: connection.execute(query).all())
        return [_execution(row) for row in rows]

    def live_executions(self, job_name: str | None = None) -> list[JobExecution]:
        """Read: every STARTING, STARTED or STOPPING execution, newest first.

        The condition is the live index's own literal WHERE, so that both databases answer
        from that small partial index however large the repository grows.
        """
        query = (
            select(*_EXECUTION_COLUMNS)
            .join(job_instance, job_instance.c.id == job_execution.c.instance_id)
            .where(text(f"job_execution.{LIVE_STATUS_SQL}"))
            .order_by(job_execution.c.id.desc())
        )
        if job_name is not None:
            query = query.where(job_execution.c.job_name == job_name)
        rows = self._read(lambda connection: connection.execute(query).all())
        return [_execution(row) for row in rows]

    def step_executions(self, execution_id: int) -> list[StepExecution]:
        """Read: the step executions of one job execution, in the order they started."""
        query = (
            select(step_execution)
            .where(step_execution.c.job_execution_id == execution_id)
            .order_by(step_execution.c.id)
        )
        rows = self._read(lambda connection: connection.execute(query).all())
        return [_step_execution(row) for row in rows]

    def step_execution(self, step_execution_id: int) -> StepExecution:
        """Read: one step execution; UnknownExecution if there is none."""
        query = select(step_execution).where(step_execution.c.id == step_execution_id)
        row = self._read(lambda connection: connection.execute(query).first())
        if row is None:
            raise UnknownExecution(f"no step execution with id {step_execution_id}")
        return _step_execution(row)

    def resumable_steps(self, execution: JobExecution) -> dict[str, StepExecution]:
        """Read: for a restart, the latest step execution of each step along the chain of
        executions this one resumes (an execution that ran afresh ends the chain)."""

        def query(connection: Connection) -> dict[str, StepExecution]:
            chain: list[int] = []
            previous = execution.resumed_from
            while previous is not None:
                chain.append(previous)
                previous = connection.execute(
                    select(job_execution.c.resumed_from).where(job_execution.c.id == previous)
                ).scalar()
            if not chain:
                return {}
            rows = connection.execute(
                select(step_execution)
                .where(step_execution.c.job_execution_id.in_(chain))
                .order_by(step_execution.c.id)
            ).all()
            return {row.name: _step_execution(row) for row in rows}

        return self._read(query)

    def count_executions(self) -> int:
        """Read: how many executions the repository holds."""
        query = select(func.count()).select_from(job_execution)
        return int(self._read(lambda connection: connection.execute(query).scalar_one()))

    # -- rows -----------------------------------------------------------------------------------

    @staticmethod
    def _execution_row(connection: Connection, execution_id: int) -> Row[Any] | None:
        query = (
            select(*_EXECUTION_COLUMNS)
            .join(job_instance, job_instance.c.id == job_execution.c.instance_id)
            .where(job_execution.c.id == execution_id)
        )
        return connection.execute(query).first()

    @staticmethod
    def _last_execution_of_instance(
        connection: Connection, instance_id: int
    ) -> JobExecution | None:
        query = (
            select(*_EXECUTION_COLUMNS)
            .join(job_instance, job_instance.c.id == job_execution.c.instance_id)
            .where(job_execution.c.instance_id == instance_id)
            .order_by(job_execution.c.id.desc())
            .limit(1)
        )
        row = connection.execute(query).first()
        return _execution(row) if row is not None else None


def taken_over_message(execution_id: int, status: str, exit_message: str | None) -> str:
    reason = (exit_message or "").strip().splitlines()
    because = f": {reason[0]}" if reason else ""
    return (
        f"execution {execution_id} was taken over by another process (it is {status}{because}); "
        "stopping without committing"
    )


def _end_live_steps(connection: Connection, execution_id: int, status: Status, message: str) -> None:
    """End the step executions (partitions included) an ending execution left live."""
    connection.execute(
        update(step_execution)
        .where(
            step_execution.c.job_execution_id == execution_id,
            step_execution.c.status.in_([s.value for s in LIVE_STATUSES]),
        )
        .values(
            status=status.value,
            exit_code=status.value,
            exit_message=message or None,
            ended_at=utcnow(),
            version=step_execution.c.version + 1,
        )
    )


def _instance_job_name(connection: Connection, instance_id: int) -> str:
    return str(
        connection.execute(
            select(job_instance.c.job_name).where(job_instance.c.id == instance_id)
        ).scalar_one()
    )


def _dialect_insert(connection: Connection) -> Any:
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(job_instance)


T = TypeVar("T")


def from_row(cls: type[T], row: Row[Any], **overrides: Any) -> T:
    """A domain dataclass from a row whose columns are named as its fields."""
    mapping = row._mapping
    values = {f.name: mapping[f.name] for f in fields(cls) if f.init and f.name in mapping}  # type: ignore[arg-type]
    values.update(overrides)
    return cls(**values)


def _execution(row: Row[Any]) -> JobExecution:
    return from_row(JobExecution, row, status=Status(row.status))


def _step_execution(row: Row[Any]) -> StepExecution:
    return from_row(StepExecution, row, status=Status(row.status))


def _skip_row(skipped: SkippedItem) -> dict[str, Any]:
    return {
        "step_execution_id": skipped.step_execution_id,
        "phase": skipped.phase,
        "position": skipped.position,
        "item": _item_text(skipped.item),
        "error": skipped.error_text[:ERROR_TEXT_LIMIT],
        "created_at": skipped.created_at or utcnow(),
    }


def _item_text(item: Any) -> str | None:
    """A skipped item as JSON where it can be (dataclasses as objects), else its repr."""
    if item is None:
        return None
    try:
        text = json.dumps(item, default=_item_json, ensure_ascii=False, sort_keys=False)
    except (TypeError, ValueError):
        text = repr(item)
    return text[:ITEM_TEXT_LIMIT]


def _item_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return str(value)


__all__ = ["Repository", "Decide", "Fence", "taken_over_message"]

"""The job repository: every query batchctl runs, on SQLite and Postgres alike.

Each public method says what it does to the database: *reads*, *writes* (an update conditional
on the row's version: a lost update raises StaleExecution), or *claims* (an atomic decision the
database guarantees: a constraint or a conditional update). The rules of what may start, stop or
restart are the operator's; they arrive here as a `decide` function run inside the transaction.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, Callable, Sequence

from sqlalchemy import (
    ColumnElement, Connection, Row, and_, exists, func, literal, select, text, update,
)
from sqlalchemy.exc import DBAPIError

from batchctl.errors import CommitUnknown, StaleExecution, UnknownExecution
from batchctl.model import (
    ABANDONABLE_STATUSES,
    LIVE_STATUSES,
    Event,
    STEP_COUNTERS,
    STOPPABLE_STATUSES,
    JobExecution,
    JobInstance,
    SkippedItem,
    Status,
    StepExecution,
    Trigger,
    utcnow,
)
from batchctl.repository.base import Fence, inserted_id, once, taken_over_message
from batchctl.repository.events import (
    events_after,
    latest_event_id,
    record_execution_event,
    record_step_event,
    record_step_events,
)
from batchctl.repository.fires import FireQueries
from batchctl.repository.partitions import PartitionQueries
from batchctl.repository.prune import PruneQueries
from batchctl.repository.rows import (
    column_values,
    context_json,
    ending,
    execution_from_row,
    from_row,
    skip_row,
    step_execution_from_row,
)
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

Also = Callable[[Connection, JobExecution], None]
"""Extra work a caller runs in the transaction of a change, given the changed execution: a
trigger's ledger row (a message id, a schedule's fire) that must commit exactly when the change
does. It may raise to roll the change back."""

_EXECUTION_COLUMNS = (
    *job_execution.c, job_instance.c.params, job_instance.c.rerun_of, job_instance.c.rerun
)

# A chunk's checkpoint: every counter and the context, conditional on the version, as the
# driver's own SQL (see Repository._checkpoint).
_CHECKPOINT_KEYS = frozenset((*STEP_COUNTERS, "context"))
_CHECKPOINT_SQL: dict[tuple[str, bool, bool], str] = {}


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


class Repository(PartitionQueries, FireQueries, PruneQueries):
    """Persists instances, executions and step executions; decides nothing.

    The engine, transactions, fencing and versioned updates are RepositoryBase's (base.py),
    the partition and worker queries PartitionQueries' (partitions.py), the schedules' fires
    FireQueries' (fires.py), pruning PruneQueries' (prune.py); this class adds the executions'
    claims, writes and reads.
    """

    # -- claims ---------------------------------------------------------------------------------

    def create_execution(
        self,
        job_name: str,
        job_key: str,
        params: dict[str, Any],
        decide: Decide,
        *,
        process: dict[str, Any] | None = None,
        trigger: Trigger | None = None,
        also: Also | None = None,
        rerun_key: Callable[[int], str] | None = None,
    ) -> JobExecution:
        """Claim: create the instance if new, and a STARTING execution of it if `decide` allows.
        `process`: the host, pid and pid_scope of the process that will run it, when known;
        `trigger`: what started it; `also(connection, execution)`: run in the same transaction.

        The instance of `job_key` is its latest deliberate rerun if it has any (see
        `current_instance`). With `rerun_key` this is such a rerun: `decide` is asked about that
        instance's last execution (it refuses what may not run again), then a new instance
        numbered one past it, keyed `rerun_key(number)` and linked to the first instance of the
        params, runs afresh; when the params have no instance yet, their first one is made.

        The decision and the insert are one serializable transaction, and the partial unique
        index on live executions refuses a second live execution whatever the race (two reruns
        at once: the second finds the first's new instance live).
        """

        def change(connection: Connection, now: datetime) -> JobExecution:
            current = self._current_instance(connection, job_name, job_key)
            if current is None:
                instance_id = self._insert_instance(connection, job_name, job_key, params)
            elif rerun_key is None:
                instance_id = current.id
            else:
                decide(self._last_execution_of_instance(connection, current.id))
                number = current.rerun + 1
                instance_id = self._insert_instance(
                    connection, job_name, rerun_key(number), params,
                    rerun_of=current.rerun_of or current.id, rerun=number,
                )
            return self._insert_execution(
                connection, instance_id, decide, process or {}, trigger, also, now
            )

        return self._claim(job_execution.c.job_name == job_name, change)

    def create_execution_of_instance(
        self,
        instance_id: int,
        decide: Decide,
        *,
        process: dict[str, Any] | None = None,
        trigger: Trigger | None = None,
        also: Also | None = None,
    ) -> JobExecution:
        """Claim: a new STARTING execution of an existing instance if `decide` allows (`also`:
        as for `create_execution`)."""
        return self._claim(
            job_execution.c.instance_id == instance_id,
            lambda connection, now: self._insert_execution(
                connection, instance_id, decide, process or {}, trigger, also, now
            ),
        )

    def _claim(
        self, of: ColumnElement[bool], change: Callable[[Connection, datetime], JobExecution]
    ) -> JobExecution:
        """A serializable write that inserts an execution created at `now`: the live index
        refusing a second live execution is AlreadyRunning (translated with every driver error
        in connect.py). Run again after a COMMIT whose answer was lost (an outage), it returns
        the execution that COMMIT created (`of` the same job or instance, created at this
        claim's time) rather than refuse to run beside it."""
        now = utcnow()

        def committed(connection: Connection) -> JobExecution | None:
            found = connection.execute(
                select(job_execution.c.id).where(of, job_execution.c.created_at == now)
            ).scalar()
            row = None if found is None else self._execution_row(connection, found)
            return None if row is None else execution_from_row(row)

        claim = once(lambda connection: change(connection, now), committed)
        return self._write(claim, serializable=True)

    def current_instance(
        self, job_name: str, job_key: str
    ) -> tuple[JobInstance | None, JobExecution | None]:
        """Read: the instance that `create_execution` would use for `job_key` (see
        `_current_instance`) and its last execution; (None, None) when there is none yet."""

        def query(connection: Connection) -> tuple[JobInstance | None, JobExecution | None]:
            instance = self._current_instance(connection, job_name, job_key)
            if instance is None:
                return None, None
            return instance, self._last_execution_of_instance(connection, instance.id)

        return self._read(query)

    @staticmethod
    def _current_instance(connection: Connection, job_name: str, job_key: str) -> JobInstance | None:
        """The instance of `job_key`, or its latest deliberate rerun: a rerun (`start --rerun`)
        stands for its params from then on, so a plain start after a failed rerun resumes it.
        Two indexed lookups: the unique (job_name, job_key), then the reruns by `rerun_of`."""
        key = and_(job_instance.c.job_name == job_name, job_instance.c.job_key == job_key)
        first = connection.execute(select(job_instance).where(key)).first()
        if first is None:
            return None
        latest = connection.execute(
            select(job_instance)
            .where(job_instance.c.rerun_of == first.id)
            .order_by(job_instance.c.rerun.desc())
            .limit(1)
        ).first()
        return from_row(JobInstance, latest if latest is not None else first)

    def _insert_instance(
        self,
        connection: Connection,
        job_name: str,
        job_key: str,
        params: dict[str, Any],
        *,
        rerun_of: int | None = None,
        rerun: int = 0,
    ) -> int:
        key = and_(job_instance.c.job_name == job_name, job_instance.c.job_key == job_key)
        insert = _dialect_insert(connection).values(
            job_name=job_name, job_key=job_key, params=params, created_at=utcnow(),
            rerun_of=rerun_of, rerun=rerun,
        )
        connection.execute(insert.on_conflict_do_nothing())
        return int(connection.execute(select(job_instance.c.id).where(key)).scalar_one())

    def _insert_execution(
        self,
        connection: Connection,
        instance_id: int,
        decide: Decide,
        process: dict[str, Any],
        trigger: Trigger | None,
        also: Also | None,
        now: datetime,
    ) -> JobExecution:
        last = self._last_execution_of_instance(connection, instance_id)
        resumed = decide(last)
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
            "trigger": (trigger or Trigger()).kind,
            "trigger_detail": (trigger or Trigger()).detail,
            "context": dict(resumed.context) if resumed else {},
            "resumed_from": resumed.id if resumed else None,
        }
        new_id = inserted_id(connection.execute(job_execution.insert().values(**values)))
        record_execution_event(connection, new_id, Status.STARTING)
        row = self._execution_row(connection, new_id)
        assert row is not None  # inserted in this transaction
        execution = execution_from_row(row)
        if also is not None:
            also(connection, execution)
        return execution

    def request_stop(self, execution_id: int, *, also: Also | None = None) -> JobExecution | None:
        """Claim: STARTING/STARTED -> STOPPING in one conditional update.

        Returns the execution after the request (STOPPING), or None when it was not live.
        An execution already STOPPING is returned unchanged. `also(connection, execution)` runs
        in the same transaction when the execution is STOPPING.
        """

        def change(connection: Connection) -> JobExecution | None:
            result = connection.execute(
                update(job_execution)
                .where(
                    job_execution.c.id == execution_id,
                    job_execution.c.status.in_([s.value for s in STOPPABLE_STATUSES]),
                )
                .values(status=Status.STOPPING.value, version=job_execution.c.version + 1)
            )
            if result.rowcount == 1:
                record_execution_event(connection, execution_id, Status.STOPPING)
            row = self._execution_row(connection, execution_id)
            if row is None:
                raise UnknownExecution(f"no execution with id {execution_id}")
            found = execution_from_row(row)
            if found.status != Status.STOPPING:
                return None
            if also is not None:
                also(connection, found)
            return found

        return self._write(change)

    def abandon(self, execution_id: int, *, also: Also | None = None) -> JobExecution | None:
        """Claim: STOPPED/FAILED/UNKNOWN -> ABANDONED in one conditional update, only for the
        last execution of its instance (one that a later execution resumed is history). Any
        step execution it left live ends ABANDONED with it.

        Serializable, as the insert of a restart is: of a restart and an abandon of the same
        execution at once, one wins and the other is refused. Returns the abandoned execution,
        or None when its status or a later execution did not allow it. `also(connection,
        execution)` runs in the same transaction when it was abandoned.
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
            record_execution_event(connection, execution_id, Status.ABANDONED)
            _end_live_steps(connection, execution_id, Status.ABANDONED, "execution abandoned")
            abandoned = execution_from_row(row)
            if also is not None:
                also(connection, abandoned)
            return abandoned

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
        return execution_from_row(row) if row is not None else None

    # -- writes ---------------------------------------------------------------------------------

    def update_execution(self, execution: JobExecution, **changes: Any) -> JobExecution:
        """Write: apply `changes` if the row is still at `execution.version`; return the new one."""
        if "context" in changes:
            context_json(changes["context"], "ctx.job_context")

        def change(connection: Connection) -> None:
            self._update_versioned(
                connection, job_execution, execution, changes, what=f"execution {execution.id}"
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
        values = {**ending(status, message or None), **changes}

        def change(connection: Connection) -> None:
            self._update_versioned(
                connection, job_execution, execution, values, what=f"execution {execution.id}"
            )
            _end_live_steps(connection, execution.id, status, message)

        self._write(change)
        return replace(execution, **values, version=execution.version + 1)

    def create_step_execution(
        self, job_execution_id: int, name: str, context: dict[str, Any]
    ) -> StepExecution:
        """Write: a new STARTED step execution (fenced). Run again after a COMMIT whose answer
        was lost (an outage), it finds the row that COMMIT created (its start time is this
        call's) rather than leave it STARTED beside a second one."""
        now = utcnow()

        def committed(connection: Connection) -> int | None:
            return connection.execute(
                select(step_execution.c.id).where(
                    step_execution.c.job_execution_id == job_execution_id,
                    step_execution.c.name == name,
                    step_execution.c.started_at == now,
                )
            ).scalar()

        def insert(connection: Connection) -> int:
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
            new_id = inserted_id(result)
            record_step_event(connection, job_execution_id, new_id, name, Status.STARTED)
            return new_id

        new_id = self._write(once(insert, committed))
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
        if "context" in changes:
            context_json(changes["context"])
        return self._write(lambda connection: self._update_step(connection, step, changes))

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

    def commit_chunk(
        self,
        step: StepExecution,
        work: Callable[[Connection], tuple[dict[str, Any], list[SkippedItem]]],
        *,
        connection: Connection | None = None,
        repeatable: bool = False,
    ) -> StepExecution:
        """Write: one chunk's checkpoint, in one transaction: `work(connection)` (a writer may
        write through the repository's own database there) returns the step's `changes`
        (counters, context) and the chunk's skipped items; then the skipped items and the
        changes, conditional on the step's version (and the fence). On the `connection` of
        `step_connection()` when given, else on one from the pool.

        A `repeatable` transaction is retried where the database asks; otherwise never (the
        work may not be repeatable): the error reaches the caller with everything rolled back.
        When the COMMIT itself fails the outcome is unknown: CommitUnknown.
        """
        committed: dict[str, Any] = {}

        def run() -> None:
            if connection is not None:
                commit(connection)
            else:
                with self.engine.connect() as pooled:
                    commit(pooled)

        def commit(connection: Connection) -> None:
            transaction = connection.begin()
            try:
                changes, skipped = work(connection)
                if skipped:
                    connection.execute(skipped_item.insert(), [skip_row(s) for s in skipped])
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
            committed.update(changes)

        if repeatable:
            self._guard(run)
        else:
            with self._unrepeatable():
                run()
        return replace(step, **committed, version=step.version + 1)

    def commit_step(
        self, step: StepExecution, changes: dict[str, Any], *, connection: Connection
    ) -> StepExecution:
        """Write: the step's `changes` (a tasklet's checkpoint, or a step's end) on `connection`,
        in the transaction that holds the SQL the step ran there through `ctx.connection`, or in
        a new one when it ran none: the step's own SQL and its record commit together, or
        neither does. The update is conditional on the step's version and the fence, in the
        same statement, like every step write; a failure rolls everything back.

        A transaction that holds the step's SQL is never retried (that SQL cannot be run again:
        the error reaches the caller with it rolled back); an empty one is, where the database
        asks. When the COMMIT itself fails the outcome is unknown: CommitUnknown.
        """
        if "context" in changes:
            context_json(changes["context"])
        holds_work = connection.in_transaction()

        def run() -> StepExecution:
            transaction = connection.get_transaction() if holds_work else None
            if transaction is None:
                transaction = connection.begin()
            try:
                updated = self._update_step(connection, step, changes)
            except BaseException:
                transaction.rollback()
                raise
            try:
                transaction.commit()
            except DBAPIError as exc:
                raise CommitUnknown(
                    f"the commit of step execution {step.id} failed; it may or may not have "
                    f"been committed: {exc.orig}"
                ) from exc
            return updated

        if holds_work:
            with self._unrepeatable():
                return run()
        return self._guard(run)

    def step_committed(self, step: StepExecution) -> bool:
        """Read, once the repository answers (riding out the outage): whether the write of
        `step` at `step.version` whose COMMIT failed was committed, as its version says: True
        at the next version, False still at this one. Raises ExecutionTakenOver when the
        execution was taken over meanwhile, StaleExecution when the row changed otherwise."""

        def query(connection: Connection) -> bool:
            version = connection.execute(
                select(step_execution.c.version).where(step_execution.c.id == step.id)
            ).scalar()
            if self.fence is not None:
                self._refuse_if_fenced_off(connection)
            if version == step.version + 1:
                return True
            if version == step.version:
                return False
            raise StaleExecution(f"step execution {step.id} was changed by another process")

        return self._read(query)

    def step_connection(self) -> Connection:
        """A connection for a step to hold while it runs: a chunk step's for `commit_chunk`
        (no pool checkout per chunk, and on Postgres no pre-ping round trip per chunk), a
        tasklet's as `ctx.connection` for `commit_step`. It begins no transaction until its
        first statement (on SQLite a BEGIN IMMEDIATE: the write lock is taken then, and held
        until the commit). Close it after."""
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
            params += [context_json(changes["context"]), step.version + 1, step.id, step.version]
            if fence is not None:
                params.append(fence.execution_id)
                if owned:
                    params.append(fence.owner)
            driver = connection.connection.driver_connection
            assert driver is not None  # the connection is in a transaction
            cursor = driver.cursor()
            try:
                cursor.execute(sql, params)
                updated = cursor.rowcount
            finally:
                cursor.close()
            if updated != 1:
                self._refuse_stale_step(connection, step)
        else:
            if "context" in changes:
                context_json(changes["context"])
            self._update_step(connection, step, changes)

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
        return execution_from_row(row)

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
        return execution_from_row(row) if row is not None else None

    def events_after(
        self,
        after_id: int,
        *,
        limit: int = 100,
        job_name: str | None = None,
        execution_id: int | None = None,
    ) -> list[Event]:
        """Read: status changes with an id above `after_id`, oldest first, at most `limit`."""
        return self._read(
            lambda connection: events_after(
                connection, after_id, limit=limit, job_name=job_name, execution_id=execution_id
            )
        )

    def latest_event_id(self) -> int:
        """Read: the newest event's id (0 for none)."""
        return self._read(latest_event_id)

    def history(
        self,
        job_name: str | None = None,
        statuses: Sequence[Status] = (),
        limit: int | None = 20,
        *,
        before_id: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[JobExecution]:
        """Read: executions, newest first. `before_id`: only ids below it (keyset pagination:
        a page is stable while newer executions are inserted); `since` / `until`: created at or
        after / before these instants."""
        query = select(*_EXECUTION_COLUMNS).join(
            job_instance, job_instance.c.id == job_execution.c.instance_id
        )
        if job_name is not None:
            query = query.where(job_execution.c.job_name == job_name)
        if since is not None:
            query = query.where(job_execution.c.created_at >= since)
        if until is not None:
            query = query.where(job_execution.c.created_at < until)
        if statuses:
            query = query.where(job_execution.c.status.in_([s.value for s in statuses]))
        if before_id is not None:
            query = query.where(job_execution.c.id < before_id)
        query = query.order_by(job_execution.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        rows = self._read(lambda connection: connection.execute(query).all())
        return [execution_from_row(row) for row in rows]

    def resumed_by(self, executions: Sequence[JobExecution]) -> dict[int, int]:
        """Read: for each of `executions` that a later execution resumed, that execution's id.
        Looked up through the instances (indexed), not `resumed_from` (which is not)."""
        instances = sorted({execution.instance_id for execution in executions})
        if not instances:
            return {}
        query = select(job_execution.c.id, job_execution.c.resumed_from).where(
            job_execution.c.instance_id.in_(instances),
            job_execution.c.resumed_from.is_not(None),
        )
        rows = self._read(lambda connection: connection.execute(query).all())
        wanted = {execution.id for execution in executions}
        return {row.resumed_from: row.id for row in rows if row.resumed_from in wanted}

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
        return [execution_from_row(row) for row in rows]

    def step_executions(self, execution_id: int) -> list[StepExecution]:
        """Read: the step executions of one job execution, in the order they started."""
        query = (
            select(step_execution)
            .where(step_execution.c.job_execution_id == execution_id)
            .order_by(step_execution.c.id)
        )
        rows = self._read(lambda connection: connection.execute(query).all())
        return [step_execution_from_row(row) for row in rows]

    def step_execution(self, step_execution_id: int) -> StepExecution:
        """Read: one step execution; UnknownExecution if there is none."""
        found = self._read(lambda connection: self._step_execution_row(connection, step_execution_id))
        if found is None:
            raise UnknownExecution(f"no step execution with id {step_execution_id}")
        return found

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
            return {row.name: step_execution_from_row(row) for row in rows}

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
        return execution_from_row(row) if row is not None else None


def _end_live_steps(connection: Connection, execution_id: int, status: Status, message: str) -> None:
    """End the step executions (partitions included) an ending execution left live."""
    ended = connection.execute(
        update(step_execution)
        .where(
            step_execution.c.job_execution_id == execution_id,
            step_execution.c.status.in_([s.value for s in LIVE_STATUSES]),
        )
        .values(**column_values(ending(status, message or None)), version=step_execution.c.version + 1)
        .returning(step_execution.c.id, step_execution.c.name)
    ).all()
    record_step_events(connection, execution_id, ended, status)


def _instance_job_name(connection: Connection, instance_id: int) -> str:
    return str(
        connection.execute(
            select(job_instance.c.job_name).where(job_instance.c.id == instance_id)
        ).scalar_one()
    )


def _dialect_insert(connection: Connection) -> Any:
    """The dialect's INSERT of a job instance (for ON CONFLICT DO NOTHING). The dialect module
    is imported here, not at the top: loading the Postgres dialect would cost every SQLite
    command tens of milliseconds of start-up."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(job_instance)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(job_instance)


__all__ = ["Repository", "Decide", "Fence", "taken_over_message"]

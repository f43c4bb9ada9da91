"""Queries of schedules: their fires and their paused state.

A fire is a unique row (schedule name, fire instant in UTC). A scheduler writes it in the
transaction that creates the fire's execution (`fire_recorder`, the hook `create_execution`
runs), so two schedulers on one repository never fire twice: the second finds the row and its
transaction is rolled back (DuplicateFire). A fire that was refused or skipped is recorded alone,
insert-or-ignore. Whether a schedule is paused is kept here too, so every scheduler obeys it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Sequence

from sqlalchemy import Connection, and_, func, select, update

from batchctl.model import JobExecution, Status, utcnow
from batchctl.repository.base import RepositoryBase
from batchctl.repository.tables import job_execution, schedule_fire, schedule_state

FIRE_OUTCOMES = ("launched", "refused", "skipped")


class DuplicateFire(Exception):
    """The fire is already recorded: another scheduler (or this one, earlier) fired it.
    Raised inside the transaction that would create its execution, to roll it back."""


@dataclass(frozen=True)
class ScheduleFire:
    """One recorded fire of a schedule and what came of it."""

    id: int
    schedule: str
    fire_at: datetime
    execution_id: int | None
    outcome: str
    reason: str | None
    manual: bool
    created_at: datetime
    launched_at: datetime | None


@dataclass(frozen=True)
class ScheduleState:
    """What operators decided about a schedule, and its last fire with its execution's status."""

    name: str
    paused: bool = False
    paused_at: datetime | None = None
    resumed_at: datetime | None = None
    last_fire: ScheduleFire | None = None
    last_status: Status | None = None


def _fire_from_row(row: Any) -> ScheduleFire:
    return ScheduleFire(
        id=row.id, schedule=row.schedule, fire_at=row.fire_at, execution_id=row.execution_id,
        outcome=row.outcome, reason=row.reason, manual=bool(row.manual),
        created_at=row.created_at, launched_at=row.launched_at,
    )


def _insert_or_ignore(connection: Connection, table: Any, values: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; whether a row was inserted. The dialect module is
    imported here, as in store.py: loading Postgres's would slow every SQLite command."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    statement = insert(table).values(**values).on_conflict_do_nothing()
    # RETURNING, not rowcount: with RETURNING (SQLAlchemy's default for an INSERT on
    # Postgres) psycopg reports a rowcount of -1.
    result = connection.execute(statement.returning(*table.primary_key.columns))
    return result.first() is not None


class FireQueries(RepositoryBase):
    """The fire and schedule-state queries; mixed into `Repository` (store.py)."""

    # -- claims ---------------------------------------------------------------------------------

    @staticmethod
    def fire_recorder(
        schedule: str, fire_at: datetime, *, manual: bool = False
    ) -> Callable[[Connection, JobExecution], None]:
        """Claim, as the hook of `create_execution`: record the fire of `schedule` at `fire_at`
        with its execution in the execution's transaction; DuplicateFire (rolling it back) when
        the fire is already recorded."""

        def record(connection: Connection, execution: JobExecution) -> None:
            inserted = _insert_or_ignore(connection, schedule_fire, {
                "schedule": schedule, "fire_at": fire_at, "execution_id": execution.id,
                "outcome": "launched", "reason": None, "manual": manual,
                "created_at": utcnow(),
            })
            if not inserted:
                raise DuplicateFire(f"the fire of {schedule} at {fire_at.isoformat()} is recorded")

        return record

    def record_fire(
        self, schedule: str, fire_at: datetime, outcome: str, reason: str | None = None,
        *, manual: bool = False,
    ) -> bool:
        """Claim: record a fire that created no execution (refused, skipped) in a transaction
        of its own, unless that fire is already recorded; whether this call recorded it."""
        assert outcome in FIRE_OUTCOMES
        values = {
            "schedule": schedule, "fire_at": fire_at, "execution_id": None, "outcome": outcome,
            "reason": reason, "manual": manual, "created_at": utcnow(),
        }
        return self._write(lambda connection: _insert_or_ignore(connection, schedule_fire, values))

    def is_fire_recorded(self, schedule: str, fire_at: datetime) -> bool:
        """Read: whether that fire is already recorded (a cheap look before trying to fire)."""
        query = select(schedule_fire.c.id).where(
            schedule_fire.c.schedule == schedule, schedule_fire.c.fire_at == fire_at
        )
        return self._read(lambda connection: connection.execute(query).first() is not None)

    # -- writes ---------------------------------------------------------------------------------

    def mark_fire_launched(self, execution_id: int) -> None:
        """Write: the fire's execution was handed to a new process."""
        statement = (
            update(schedule_fire)
            .where(schedule_fire.c.execution_id == execution_id)
            .values(launched_at=utcnow())
        )
        self._write(lambda connection: connection.execute(statement))

    def set_schedule_paused(self, name: str, paused: bool) -> ScheduleState:
        """Write: pause or resume a schedule (every scheduler reads it before firing)."""
        now = utcnow()

        def change(connection: Connection) -> ScheduleState:
            current = connection.execute(
                select(schedule_state).where(schedule_state.c.name == name)
            ).first()
            if current is None:
                _insert_or_ignore(connection, schedule_state, {
                    "name": name, "paused": False, "paused_at": None, "resumed_at": None,
                })
                was_paused = False
            else:
                was_paused = bool(current.paused)
            if paused and not was_paused:
                values = {"paused": True, "paused_at": now}
            elif not paused and was_paused:
                values = {"paused": False, "resumed_at": now}
            else:
                values = {}
            if values:
                connection.execute(
                    update(schedule_state).where(schedule_state.c.name == name).values(**values)
                )
            row = connection.execute(
                select(schedule_state).where(schedule_state.c.name == name)
            ).one()
            return ScheduleState(
                name=name, paused=bool(row.paused), paused_at=row.paused_at,
                resumed_at=row.resumed_at,
            )

        return self._write(change)

    # -- reads ----------------------------------------------------------------------------------

    def schedule_states(self, names: Sequence[str] | None = None) -> dict[str, ScheduleState]:
        """Read: the state of each schedule that has one (paused, resumed) or has fired, with
        its newest fire (manual ones included) and that fire's execution's status."""
        newest = (
            select(schedule_fire.c.schedule, func.max(schedule_fire.c.fire_at).label("fire_at"))
            .group_by(schedule_fire.c.schedule)
            .subquery()
        )
        fires = (
            select(schedule_fire, job_execution.c.status.label("execution_status"))
            .join(newest, and_(
                newest.c.schedule == schedule_fire.c.schedule,
                newest.c.fire_at == schedule_fire.c.fire_at,
            ))
            .outerjoin(job_execution, job_execution.c.id == schedule_fire.c.execution_id)
        )
        states = select(schedule_state)
        if names is not None:
            fires = fires.where(schedule_fire.c.schedule.in_(list(names)))
            states = states.where(schedule_state.c.name.in_(list(names)))

        def query(connection: Connection) -> dict[str, ScheduleState]:
            found: dict[str, ScheduleState] = {}
            for row in connection.execute(states):
                found[row.name] = ScheduleState(
                    name=row.name, paused=bool(row.paused), paused_at=row.paused_at,
                    resumed_at=row.resumed_at,
                )
            for row in connection.execute(fires):
                base = found.get(row.schedule) or ScheduleState(name=row.schedule)
                status = Status(row.execution_status) if row.execution_status else None
                found[row.schedule] = ScheduleState(
                    name=base.name, paused=base.paused, paused_at=base.paused_at,
                    resumed_at=base.resumed_at, last_fire=_fire_from_row(row), last_status=status,
                )
            return found

        return self._read(query)

    def last_scheduled_fires(self) -> dict[str, datetime]:
        """Read: each schedule's newest recorded fire that was not manual (whatever its
        outcome): the fires at or before it were decided, and catch-up counts from it."""
        query = (
            select(schedule_fire.c.schedule, func.max(schedule_fire.c.fire_at))
            .where(schedule_fire.c.manual.is_(False))
            .group_by(schedule_fire.c.schedule)
        )
        rows = self._read(lambda connection: connection.execute(query).all())
        return {name: fire_at for name, fire_at in rows}

    def fires(self, schedule: str | None = None) -> list[ScheduleFire]:
        """Read: recorded fires (of one schedule), oldest first."""
        query = select(schedule_fire).order_by(schedule_fire.c.fire_at, schedule_fire.c.id)
        if schedule is not None:
            query = query.where(schedule_fire.c.schedule == schedule)
        rows = self._read(lambda connection: connection.execute(query).all())
        return [_fire_from_row(row) for row in rows]

    def pending_fire_executions(self, created_before: datetime) -> list[int]:
        """Read: the ids of executions of fires that no process took over: STARTING, no pid,
        no owner, created before `created_before` (a scheduler died between recording the fire
        and launching it). Oldest first."""
        query = (
            select(job_execution.c.id)
            .join(schedule_fire, schedule_fire.c.execution_id == job_execution.c.id)
            .where(
                job_execution.c.status == Status.STARTING.value,
                job_execution.c.pid.is_(None),
                job_execution.c.owner.is_(None),
                job_execution.c.created_at < created_before,
            )
            .order_by(job_execution.c.id)
        )
        rows = self._read(lambda connection: connection.execute(query).all())
        return [int(row[0]) for row in rows]

"""The outbox of status changes: written in the transaction of each change, read in id order.

Every write that changes an execution's or a step's status also inserts an event row, in the
same transaction (so an event exists exactly when its change was committed). The HTTP API
streams them and the message listener publishes them; both resume after the last id they saw.
"""

from __future__ import annotations

from typing import Any, Iterable

from sqlalchemy import Connection, func, insert, literal, select

from batchctl.model import Event, Status, utcnow
from batchctl.repository.tables import event, job_execution


def record_execution_event(connection: Connection, execution_id: int, status: Status | str) -> None:
    """Insert the event of an execution's change to `status`."""
    _insert(connection, execution_id, status, literal(None), literal(None))


def record_step_event(
    connection: Connection, execution_id: int, step_execution_id: int, step_name: str,
    status: Status | str,
) -> None:
    """Insert the event of a step execution's (or a partition's) change to `status`."""
    _insert(connection, execution_id, status, literal(step_execution_id), literal(step_name))


def record_step_events(
    connection: Connection, execution_id: int, steps: Iterable[Any], status: Status | str
) -> None:
    """The events of several steps of one execution changed to `status` at once (rows with
    `id` and `name`, as an UPDATE ... RETURNING gives them)."""
    for step in steps:
        record_step_event(connection, execution_id, step.id, step.name, status)


def _insert(
    connection: Connection, execution_id: int, status: Status | str, step_id: Any, step_name: Any
) -> None:
    value = status.value if isinstance(status, Status) else str(status)
    source = select(
        job_execution.c.id, step_id, job_execution.c.job_name, step_name, literal(value),
        literal(utcnow(), event.c.at.type),
    ).where(job_execution.c.id == execution_id)
    connection.execute(
        insert(event).from_select(
            ["execution_id", "step_execution_id", "job_name", "step_name", "status", "at"], source
        )
    )


def latest_event_id(connection: Connection) -> int:
    """The newest event's id (0 for none): what changed since a reader last looked."""
    return connection.execute(select(func.max(event.c.id))).scalar() or 0


def events_after(
    connection: Connection,
    after_id: int,
    *,
    limit: int,
    job_name: str | None = None,
    execution_id: int | None = None,
) -> list[Event]:
    """Events with an id above `after_id`, oldest first, at most `limit`."""
    query = select(event).where(event.c.id > after_id).order_by(event.c.id).limit(limit)
    if job_name is not None:
        query = query.where(event.c.job_name == job_name)
    if execution_id is not None:
        query = query.where(event.c.execution_id == execution_id)
    return [
        Event(
            id=row.id, execution_id=row.execution_id, job_name=row.job_name,
            status=Status(row.status), at=row.at, step_execution_id=row.step_execution_id,
            step_name=row.step_name,
        )
        for row in connection.execute(query)
    ]

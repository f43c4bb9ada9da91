"""The message listener's queries: the ledger of command message ids, and the cursors of the
event publishers.

Exactly once in effect over at-least-once delivery: a command's message id is a unique row of
`command_message`, inserted by `MessageLedger.recorder(...)` as the `also` hook of the change
it asks for (the insert of a start's or a restart's execution, a stop's or an abandon's status
change), so the row exists exactly when the change was committed. A redelivered message finds
it (`find`) and does nothing. The listener acknowledges a message only after that commit.

Pruning: `command_message` is a per-execution child table, listed in prune.py's
EXECUTION_CHILDREN: its rows are deleted with their execution.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable

from sqlalchemy import Connection, delete, select, update

from batchctl.model import JobExecution, utcnow
from batchctl.repository.base import RepositoryBase
from batchctl.repository.tables import command_message, publish_cursor

@dataclass(frozen=True)
class CommandRecord:
    """A command message the listener carried out: which change it made to which execution."""

    message_id: str
    command: str
    execution_id: int | None
    outcome: str
    created_at: datetime


class MessageLedger:
    """Reads and writes of the message ledger and the publishing cursors, over a repository's
    engine (`batch.repository`)."""

    def __init__(self, repository: RepositoryBase) -> None:
        self.repository = repository

    # -- commands -------------------------------------------------------------------------------

    def find(self, message_id: str) -> CommandRecord | None:
        """Read: the record of a message id carried out before, or None."""
        query = select(command_message).where(command_message.c.message_id == message_id)
        row = self.repository._read(lambda connection: connection.execute(query).first())
        if row is None:
            return None
        return CommandRecord(
            message_id=row.message_id, command=row.command, execution_id=row.execution_id,
            outcome=row.outcome, created_at=row.created_at,
        )

    @staticmethod
    def recorder(message_id: str, command: str) -> Callable[[Connection, JobExecution], None]:
        """The `also` hook that records `message_id` in the transaction of the change (a second
        insert of the same id fails the transaction on the unique constraint)."""

        def record(connection: Connection, execution: JobExecution) -> None:
            connection.execute(
                command_message.insert().values(
                    message_id=message_id, command=command, execution_id=execution.id,
                    outcome=execution.status.value, created_at=utcnow(),
                )
            )

        return record

    # -- event publishing -----------------------------------------------------------------------

    def cursor(self, name: str) -> int:
        """Read: the last event id the destination `name` confirmed (0: none yet)."""
        query = select(publish_cursor.c.event_id).where(publish_cursor.c.name == name)
        found = self.repository._read(lambda connection: connection.execute(query).scalar())
        return int(found or 0)

    def advance(self, name: str, event_id: int) -> None:
        """Write: the destination `name` confirmed every event up to `event_id` (never moves
        back)."""

        def change(connection: Connection) -> None:
            result = connection.execute(
                update(publish_cursor)
                .where(publish_cursor.c.name == name, publish_cursor.c.event_id < event_id)
                .values(event_id=event_id, updated_at=utcnow())
            )
            if result.rowcount:
                return
            exists = connection.execute(
                select(publish_cursor.c.event_id).where(publish_cursor.c.name == name)
            ).first()
            if exists is None:
                connection.execute(
                    publish_cursor.insert().values(name=name, event_id=event_id, updated_at=utcnow())
                )

        self.repository._write(change)



"""The repository's tables: the declared schema that the migrations must build."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Sequence

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

from batchctl.model import LIVE_STATUSES, Status


def status_in_sql(statuses: Sequence[Status], column: str = "status") -> str:
    """`status IN ('A', 'B')` as literal SQL text, in the order given. Literal, not bound: a
    partial index is used only by a query whose WHERE implies the index's own, which the
    planners (SQLite's above all) check on the literal terms."""
    values = ", ".join(f"'{status.value}'" for status in statuses)
    return f"{column} IN ({values})"


# The partial unique index's WHERE (migration 0001 wrote the same text as a literal; a test
# checks that the two agree) and every query that must be answered from that index.
LIVE_STATUS_SQL = status_in_sql(LIVE_STATUSES)
LIVE_INDEX = "uq_job_execution_live"
"""The partial unique index on job_execution(instance_id) WHERE LIVE_STATUS_SQL: at most one live
execution per instance. Its violation is translated into AlreadyRunning (see connect.py)."""

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the repository")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def storable_text(value: str) -> str:
    """Text as both databases can store it: a NUL (which Postgres refuses) and lone surrogates
    (which UTF-8 cannot encode) are written as backslash escapes. Exit messages and skipped
    items come from job code and its exceptions, so they may hold anything."""
    if value.isascii():
        return value.replace("\x00", "\\x00")
    escaped = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return escaped.replace("\x00", "\\x00")


class SafeText(TypeDecorator[str]):
    """Text that a job or its exceptions supplied: stored whatever it holds (see storable_text)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else storable_text(str(value))


class JSONText(TypeDecorator[Any]):
    """JSON kept as text: the same bytes on SQLite and Postgres, never pickle. Strict JSON: a
    NaN or an infinity is refused (ValueError) rather than written as text no parser reads."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        if value is None:
            return None
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)

    def process_result_value(self, value: str | None, dialect: Any) -> Any:
        return None if value is None else json.loads(value)


# BigInteger ids, as an INTEGER PRIMARY KEY on SQLite (its rowid).
Id = BigInteger().with_variant(Integer(), "sqlite")

job_instance = Table(
    "job_instance",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_name", String(200), nullable=False),
    Column("job_key", String(64), nullable=False),
    Column("params", JSONText, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # A deliberate rerun (`start --rerun`) of a completed instance is an instance of its own:
    # `rerun_of` is the first instance of the same params, `rerun` its number (0 for that first
    # one), part of the key so that the unique (job_name, job_key) still holds.
    Column("rerun_of", Id, ForeignKey("job_instance.id")),
    Column("rerun", Integer, nullable=False, server_default="0"),
    UniqueConstraint("job_name", "job_key"),
    Index("ix_job_instance_rerun_of", "rerun_of"),
)

job_execution = Table(
    "job_execution",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("instance_id", Id, ForeignKey("job_instance.id"), nullable=False),
    Column("job_name", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("version", Integer, nullable=False),
    Column("exit_code", String(32)),
    Column("exit_message", SafeText),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("ended_at", UTCDateTime),
    Column("heartbeat_at", UTCDateTime),
    Column("host", String(255)),
    Column("pid", Integer),
    # Where `pid` can be judged (boot id and pid namespace), and the owner token of the process
    # running the execution: every write of that process is conditional on it (fencing).
    Column("pid_scope", String(100)),
    Column("owner", String(32)),
    # What started it: cli, api, schedule, http or mq, and a detail (the schedule and its fire
    # time, the token's name, the message id).
    Column("trigger", String(16)),
    Column("trigger_detail", SafeText),
    Column("context", JSONText, nullable=False),
    Column("resumed_from", Id, ForeignKey("job_execution.id")),
    Column("log_path", Text),
    Index("ix_job_execution_job_name_id", "job_name", "id"),
    Index("ix_job_execution_instance_id", "instance_id"),
    Index("ix_job_execution_status", "status"),
    # Deleting an execution (prune) checks this foreign key: without the index, a table scan
    # per deleted row.
    Index("ix_job_execution_resumed_from", "resumed_from"),
    # At most one live execution per instance: the database's guarantee, not Python's. The
    # index is partial (WHERE LIVE_STATUS_SQL), as migration 0001 creates it; the WHERE is not
    # declared here because a `postgresql_where` would load the Postgres dialect on every
    # SQLite command (tens of milliseconds of start-up).
    Index(LIVE_INDEX, "instance_id", unique=True, info={"where": LIVE_STATUS_SQL}),
)

step_execution = Table(
    "step_execution",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_execution_id", Id, ForeignKey("job_execution.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("version", Integer, nullable=False),
    Column("exit_code", String(32)),
    Column("exit_message", SafeText),
    Column("started_at", UTCDateTime),
    Column("ended_at", UTCDateTime),
    Column("context", JSONText, nullable=False),
    Column("read_count", Integer, nullable=False, server_default="0"),
    Column("write_count", Integer, nullable=False, server_default="0"),
    Column("filter_count", Integer, nullable=False, server_default="0"),
    Column("commit_count", Integer, nullable=False, server_default="0"),
    Column("rollback_count", Integer, nullable=False, server_default="0"),
    Column("read_skip_count", Integer, nullable=False, server_default="0"),
    Column("process_skip_count", Integer, nullable=False, server_default="0"),
    Column("write_skip_count", Integer, nullable=False, server_default="0"),
    # A partition of a partitioned step: its step's name, its place, its context, who runs it.
    Column("partition_of", String(200)),
    Column("partition_index", Integer),
    Column("partition", JSONText),
    Column("mode", String(8)),
    Column("worker_id", Id),
    Column("host", String(255)),
    Column("pid", Integer),
    Index("ix_step_execution_job_execution_id", "job_execution_id"),
    Index("ix_step_execution_status_partition_of", "status", "partition_of"),
)

# Items a chunk step skipped (read, process or write), recorded in the chunk's own transaction.
skipped_item = Table(
    "skipped_item",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("step_execution_id", Id, ForeignKey("step_execution.id"), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("position", BigInteger),
    Column("item", SafeText),
    Column("error", SafeText, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_skipped_item_step_execution_id", "step_execution_id"),
)

# A process (or thread) that claims and runs partitions; alive while its heartbeat is fresh.
worker = Table(
    "worker",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("kind", String(16), nullable=False),  # remote, process, thread, scheduler
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("stopped_at", UTCDateTime),
    Column("step_execution_id", Id),
    Index("ix_worker_heartbeat_at", "heartbeat_at"),
)


# The outbox of status changes: one row per change of an execution's or a step's status,
# written in the transaction of the change; read in id order by the event stream and the
# message listener. Append-only; pruned with its execution.
event = Table(
    "event",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("execution_id", Id, ForeignKey("job_execution.id"), nullable=False),
    Column("step_execution_id", Id),
    Column("job_name", String(200), nullable=False),
    Column("step_name", String(200)),
    Column("status", String(16), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_event_execution_id", "execution_id"),
)


# The fires of schedules: one row per (schedule, fire instant in UTC), unique, written in the
# transaction that creates the fire's execution (so a second scheduler finds it and does
# nothing), or alone for a fire that was refused or skipped. `outcome`: launched (an execution
# was created; `launched_at` once its process was spawned), refused (with the `reason`), skipped
# (a missed fire the catch-up policy did not run). `manual`: `batchctl schedules trigger`.
schedule_fire = Table(
    "schedule_fire",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("schedule", String(200), nullable=False),
    Column("fire_at", UTCDateTime, nullable=False),
    Column("execution_id", Id, ForeignKey("job_execution.id")),
    Column("outcome", String(16), nullable=False),
    Column("reason", SafeText),
    Column("manual", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("launched_at", UTCDateTime),
    UniqueConstraint("schedule", "fire_at"),
    Index("ix_schedule_fire_execution_id", "execution_id"),
)

# Operators' state of a schedule, obeyed by every scheduler: paused (since `paused_at`), and
# when it was last resumed (fires before `resumed_at` are not caught up).
schedule_state = Table(
    "schedule_state",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("paused", Boolean, nullable=False),
    Column("paused_at", UTCDateTime),
    Column("resumed_at", UTCDateTime),
)

# The message listener's ledger of commands it carried out (`batchctl listen`): one row per
# message id, written in the transaction of the command's change (the execution's insert for
# start and restart, the status change for stop and abandon), so that a redelivered message
# finds it and does nothing. A per-execution child table: pruned with its execution
# (batchctl.repository.prune.EXECUTION_CHILDREN).
command_message = Table(
    "command_message",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("message_id", String(255), nullable=False, unique=True),
    Column("command", String(16), nullable=False),
    Column("execution_id", Id),
    Column("outcome", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_command_message_execution_id", "execution_id"),
)

# Where each event publisher got to in the outbox: the last event id a broker confirmed, keyed
# by the destination (broker address without credentials, exchange or stream).
publish_cursor = Table(
    "publish_cursor",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("event_id", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

"""Engines for SQLite and Postgres, and the translation of driver errors into domain errors.

SQLite runs in WAL mode with a busy timeout, and a write transaction takes the write lock up
front (`BEGIN IMMEDIATE`), so concurrent CLI processes queue instead of failing with "database
is locked". A read transaction is a plain deferred `BEGIN`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from batchctl.config import mask_url
from batchctl.errors import ConfigError, DatabaseUnavailable

SQLITE_BUSY_TIMEOUT_MS = 30_000  # how long a SQLite writer waits for the lock before failing
RETRY_ATTEMPTS = 20  # serialization failures retried before the error reaches the caller
RETRY_BACKOFF = 0.01  # seconds, doubled per attempt up to RETRY_BACKOFF_MAX
RETRY_BACKOFF_MAX = 0.5
READ_ONLY = "batchctl_read_only"  # execution option: begin a deferred (read) transaction

T = TypeVar("T")


def create_repository_engine(url: str, *, pool_size: int | None = None) -> Engine:
    """An engine for the repository URL; `postgresql://` means psycopg 3. `pool_size`: the
    connections its pool keeps (SQLAlchemy's default, 5, unless given), plus 10 more at need."""
    pool = {"pool_size": pool_size} if pool_size else {}
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"invalid database URL: {mask_url(url)}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, pool)
    if backend == "postgresql":
        try:
            return create_engine(parsed, pool_pre_ping=True, **pool)
        except Exception as exc:  # a missing driver or a bad option
            raise ConfigError(f"cannot use {mask_url(url)}: {exc}") from None
    raise ConfigError(f"unsupported database {backend!r} in {mask_url(url)}: use sqlite or postgresql")


def _sqlite_engine(url: Any, pool: dict[str, Any]) -> Engine:
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **pool)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        # Straight to the driver: this runs for every transaction (each chunk of a chunk step).
        connection.connection.driver_connection.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def is_retryable(exc: BaseException) -> bool:
    """True for errors the database asks us to answer by running the transaction again."""
    if not isinstance(exc, DBAPIError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in ("40001", "40P01"):  # serialization failure, deadlock detected
        return True
    message = str(exc.orig).lower()
    return "database is locked" in message or "database is busy" in message


def is_unreachable(exc: BaseException) -> bool:
    """True when the error means we could not talk to the database at all."""
    if not isinstance(exc, OperationalError):
        return False
    if getattr(exc, "connection_invalidated", False):
        return True
    message = str(exc.orig).lower()
    return any(
        phrase in message
        for phrase in (
            "connection",
            "could not connect",
            "unable to open database",
            "does not exist",
            "authentication failed",
            "server closed",
            "timeout expired",
        )
    )


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailable:
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()
    detail = reason[0] if reason else type(exc).__name__
    return DatabaseUnavailable(f"cannot reach the job repository {mask_url(url)}: {detail}")


def with_retries(work: Callable[[], T]) -> T:
    """Run `work` (one whole transaction) again while the database asks for a retry."""
    delay = RETRY_BACKOFF
    for attempt in range(RETRY_ATTEMPTS):
        try:
            return work()
        except DBAPIError as exc:
            if not is_retryable(exc) or attempt == RETRY_ATTEMPTS - 1:
                raise
        time.sleep(delay)
        delay = min(delay * 2, RETRY_BACKOFF_MAX)
    raise AssertionError("unreachable")

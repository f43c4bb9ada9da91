"""Engines for SQLite and Postgres, and the translation of driver errors into domain errors.

SQLite runs in WAL mode with a busy timeout, and a write transaction takes the write lock up
front (`BEGIN IMMEDIATE`), so concurrent CLI processes queue instead of failing with "database
is locked". A read transaction is a plain deferred `BEGIN`.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InternalError,
    OperationalError,
)

from batchctl.config import mask_url
from batchctl.defaults import (
    DEFAULT_DB_OUTAGE_TIMEOUT,
    OUTAGE_BACKOFF,
    OUTAGE_BACKOFF_MAX,
    OUTAGE_SLICE,
)
from batchctl.errors import (
    AlreadyRunning,
    ConfigError,
    DatabaseUnavailable,
    RepositoryInterrupted,
    RepositoryLocked,
    RepositoryOutage,
)
from batchctl.repository.tables import LIVE_INDEX, job_execution

SQLITE_BUSY_TIMEOUT_MS = 30_000  # how long a SQLite writer waits for the lock before failing
SQLITE_BUSY = 5  # SQLite's primary result code when the busy timeout ran out (no extended code)
SQLITE_STORAGE = (10, 13)  # SQLITE_IOERR, SQLITE_FULL: its file (or -wal, -shm) cannot be written
DISK_FULL_SQLSTATE = "53100"  # Postgres: disk_full
RETRY_ATTEMPTS = 20  # serialization failures retried before the error reaches the caller
RETRY_BACKOFF = 0.01  # seconds, doubled per attempt up to RETRY_BACKOFF_MAX
RETRY_BACKOFF_MAX = 0.5
READ_ONLY = "batchctl_read_only"  # execution option: begin a deferred (read) transaction
INVALID_SCHEMA_NAME = "3F000"  # Postgres: no schema of the search path exists to create in
SQLITE_FILE_MODE = 0o600  # a new SQLite repository: readable by its owner only (it holds params)

T = TypeVar("T")

log = logging.getLogger("batchctl.repository")

# Postgres SQLSTATEs of a server going away or not yet back: class 08 (connection exception),
# admin_shutdown, crash_shutdown, cannot_connect_now ("the database system is starting up").
_OUTAGE_SQLSTATES = ("57P01", "57P02", "57P03")
_OUTAGE_PHRASES = (
    "connection",
    "could not connect",
    "server closed",
    "timeout expired",
    "eof detected",
    "consuming input failed",
    "could not receive",
    "could not send",
    "terminating connection",
    "the database system is",
    "no route to host",
)


def create_repository_engine(url: str, *, pool_size: int | None = None) -> Engine:
    """An engine for the repository URL; `postgresql://` means psycopg 3. `pool_size`: the
    connections its pool keeps (SQLAlchemy's default, 5, unless given), plus 10 more at need."""
    pool = {"pool_size": pool_size} if pool_size else {}
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"invalid database URL: {mask_url(url)}") from None
    except ValueError as exc:  # SQLAlchemy reads the port with int()
        raise ConfigError(f"invalid database URL {mask_url(url)}: {_url_problem(url, exc)}") from None
    if parsed.host and "@" in parsed.host:
        # An unencoded '@' in the password: the URL parser ends the password at the first '@'
        # and takes the rest for the host, which the driver would then print in its error.
        raise ConfigError(
            f"invalid database URL {mask_url(url)}: the password holds an '@'; "
            "percent-encode it as %40"
        )
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


def _url_problem(url: str, exc: ValueError) -> str:
    """What is wrong with a URL SQLAlchemy's parser refused with a ValueError: its port."""
    match = re.search(r"@[^/?#]*?:([^/?#]*)", url)
    if match and not match.group(1).isdigit():
        return f"the port {match.group(1)!r} is not a number"
    return str(exc)


def _check_sqlite_folder(url: str, database: str | None) -> None:
    """A SQLite file whose folder is missing (or is a file) would fail on connecting with
    "unable to open database file", which names neither; say which folder, before connecting."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    folder = os.path.dirname(os.path.abspath(database))
    if os.path.isdir(folder):
        return
    problem = "is a file, not a folder" if os.path.exists(folder) else "does not exist: create it (mkdir -p)"
    raise DatabaseUnavailable(
        f"cannot reach the job repository {mask_url(url)}: its folder {folder} {problem}, "
        "or fix the database setting"
    )


def sqlite_busy_timeout_ms(url: Any) -> int:
    """The busy timeout of a SQLite URL: `?timeout=S` (seconds, as Python's sqlite3 names it),
    else SQLITE_BUSY_TIMEOUT_MS."""
    try:
        given = (make_url(url) if isinstance(url, str) else url).query.get("timeout")
    except (ArgumentError, ValueError):
        given = None
    if given is None:
        return SQLITE_BUSY_TIMEOUT_MS
    try:
        seconds = float(given if isinstance(given, str) else given[-1])
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 86_400:  # NaN fails both
        raise ConfigError(
            f"invalid database URL {mask_url(str(url))}: timeout={given} is not a number of "
            "seconds from 0 to 86400"
        )
    return int(seconds * 1000)


def _sqlite_engine(url: Any, pool: dict[str, Any]) -> Engine:
    _create_private_file(url.database)
    busy_ms = sqlite_busy_timeout_ms(url)
    engine = create_engine(url, connect_args={"timeout": busy_ms / 1000}, **pool)

    @event.listens_for(engine, "do_connect")
    def _before_connect(*_: Any) -> None:
        # On first use, as any other unreachable database: opening a repository connects nothing.
        _check_sqlite_folder(url.render_as_string(hide_password=True), url.database)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        statement = "BEGIN" if read_only else "BEGIN IMMEDIATE"
        # Straight to the driver: this runs for every transaction (each chunk of a chunk step).
        try:
            connection.connection.driver_connection.execute(statement)
        except sqlite3.OperationalError as exc:
            # SQLAlchemy wraps no error raised in an event: wrap it as it would, so that a lock
            # that outlasted the busy timeout is translated like any other driver error.
            raise OperationalError(statement, None, exc) from exc

    return engine


def _create_private_file(database: str | None) -> None:
    """Create a missing SQLite file readable by its owner only, before SQLite creates it
    world-readable under the usual 022 umask. Its -wal and -shm files take the database file's
    permissions (SQLite copies them), so they are private too. An existing file is left as it
    is: whoever created it chose its mode."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SQLITE_FILE_MODE))
    except OSError:  # it exists, or its folder does not: SQLite says which on connecting
        pass


def is_retryable(exc: BaseException) -> bool:
    """True for errors the database asks us to answer by running the transaction again. A
    SQLite lock that outlasted the busy timeout is not one: it was waited for already."""
    if not isinstance(exc, DBAPIError) or is_locked(exc):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in ("40001", "40P01"):  # serialization failure, deadlock detected
        return True
    message = str(exc.orig).lower()
    return "database is locked" in message or "database is busy" in message


def is_locked(exc: BaseException) -> bool:
    """True when SQLite gave up waiting for another connection's lock: the busy timeout ran out
    (SQLITE_BUSY with no extended code; a BUSY_SNAPSHOT and the like are answered by a retry)."""
    if not isinstance(exc, OperationalError):
        return False
    return getattr(exc.orig, "sqlite_errorcode", None) == SQLITE_BUSY


def is_storage_error(exc: BaseException) -> bool:
    """True when the database could not write its files: a full disk (SQLite's "database or
    disk is full", Postgres's disk_full) or an I/O error (SQLite's "disk I/O error", which is
    what a full disk gives while it creates its -wal or -shm file)."""
    if not isinstance(exc, DBAPIError):
        return False
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in SQLITE_STORAGE:
        return True
    return getattr(exc.orig, "sqlstate", None) == DISK_FULL_SQLSTATE


def is_unreachable(exc: BaseException) -> bool:
    """True when the error means we could not talk to the database at all, or may not write
    to it (a read-only SQLite file or folder, a Postgres standby, a full disk): the
    environment, not batchctl, must change."""
    if is_read_only(exc) or is_storage_error(exc):
        return True
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
            "failed to resolve host",
            "could not translate host name",
        )
    )


def is_outage(exc: BaseException) -> bool:
    """True when a Postgres connection was lost or could not be made, as in a restart or a
    fail-over of the server: what `Outage` rides out. Never for SQLite (a local file has no
    outage: its errors, locked or read-only, are answered as they are), never for a refused
    password or a missing database (a wrong configuration does not heal by waiting), never
    for a read-only server."""
    if not isinstance(exc, DBAPIError) or is_read_only(exc):
        return False
    orig = exc.orig
    if not type(orig).__module__.startswith("psycopg"):
        return False
    if getattr(exc, "connection_invalidated", False):
        return True
    sqlstate = getattr(orig, "sqlstate", None) or ""
    if sqlstate.startswith("08") or sqlstate in _OUTAGE_SQLSTATES:
        return True
    if sqlstate:  # any other answer of the server: it is there
        return False
    message = str(orig).lower()
    if "authentication failed" in message or "does not exist" in message:
        return False
    return any(phrase in message for phrase in _OUTAGE_PHRASES)


class Outage:
    """How this process rides out a repository that stopped answering (a Postgres restart or
    fail-over), shared by every thread and every view of one repository.

    `ride(work)` runs `work` (one whole transaction) and, when it fails because the connection
    was lost or refused (`is_outage`), runs it again after a capped exponential backoff
    (OUTAGE_BACKOFF doubled up to OUTAGE_BACKOFF_MAX), until it succeeds or the outage has
    lasted `timeout` seconds: then RepositoryOutage, and every later call fails at once until
    the repository answers again. Only once the repository has answered in this process: an
    unreachable database at start-up is a configuration error, reported at once (exit 5).

    The first failure logs "repository unreachable, retrying" once for the whole process; the
    first success after it logs "repository reachable again after N s".
    """

    def __init__(self, url: str, timeout: float = DEFAULT_DB_OUTAGE_TIMEOUT) -> None:
        self.url = url
        self.timeout = timeout
        self.reached = False  # the repository answered at least once in this process
        self._since: float | None = None  # monotonic time the current outage was first seen
        self._lock = threading.Lock()
        self._cancelled = False  # the process is stopping: give up at once (see cancel)

    def applies(self, exc: BaseException) -> bool:
        """Whether `exc` is an outage this process rides out."""
        return self.reached and is_outage(exc)

    def interrupted(self, exc: BaseException | None) -> bool:
        """Whether `exc` (or what it was raised from) is a lost connection to the repository:
        a RepositoryInterrupted, or an outage error a step's own SQL met."""
        while exc is not None:
            if isinstance(exc, RepositoryInterrupted):
                return True
            if isinstance(exc, DBAPIError):
                return self.applies(exc)
            exc = exc.__cause__
        return False

    @property
    def down(self) -> bool:
        return self._since is not None

    def started(self, exc: BaseException) -> float:
        """Note that the repository is unreachable (logged once); when the outage began."""
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
                log.warning(
                    "repository unreachable, retrying for up to %g s: %s",
                    self.timeout, _first_line(exc),
                )
            return self._since

    def ended(self) -> None:
        """The repository answered: end the outage, if there was one (logged once)."""
        if self._since is None:
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.warning("repository reachable again after %.1f s", time.monotonic() - since)

    def cancel(self) -> None:
        """The process is stopping (SIGTERM, Ctrl-C of a service or worker): from now on an
        outage is not ridden out, and a ride waiting for the repository gives up within
        OUTAGE_SLICE. Safe in a signal handler (it only sets a flag)."""
        self._cancelled = True

    def gave_up(self, exc: BaseException) -> RepositoryOutage:
        if self._cancelled:
            return RepositoryOutage(
                f"the job repository {mask_url(self.url)} is unreachable and this process is "
                f"stopping: {_first_line(exc)}"
            )
        return RepositoryOutage(
            f"the job repository {mask_url(self.url)} was unreachable for longer than "
            f"db_outage_timeout ({self.timeout:g} s): {_first_line(exc)}"
        )

    def ride(self, work: Callable[[], T], *, patient: bool = False) -> T:
        """Run `work` until it succeeds, riding out an outage of up to `timeout` seconds
        (RepositoryOutage after that); `patient`: however long it lasts."""
        delay = OUTAGE_BACKOFF
        while True:
            try:
                result = work()
            except DBAPIError as exc:
                if not self.applies(exc):
                    raise
                since = self.started(exc)
                left = since + self.timeout - time.monotonic()
                if (left <= 0 or self._cancelled) and not patient:
                    raise self.gave_up(exc) from exc
                self._pause(delay if patient else min(delay, left), patient)
                delay = min(delay * 2, OUTAGE_BACKOFF_MAX)
                continue
            self.reached = True
            if self._since is not None:
                self.ended()
            return result


    def _pause(self, seconds: float, patient: bool) -> None:
        """Sleep `seconds`, in slices, so that `cancel()` is seen within OUTAGE_SLICE."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0 or (self._cancelled and not patient):
                return
            time.sleep(min(left, OUTAGE_SLICE))


def _first_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def is_read_only(exc: BaseException) -> bool:
    """True when the database refused a write because it is read-only."""
    if not isinstance(exc, (OperationalError, InternalError)):
        return False
    if getattr(exc.orig, "sqlstate", None) == "25006":  # read_only_sql_transaction
        return True
    message = str(exc.orig).lower()
    return "readonly database" in message or "read-only file system" in message


# SQLite names no index in a unique violation, only its columns; no other unique index of the
# schema is on exactly these columns.
_SQLITE_LIVE_VIOLATION = "UNIQUE constraint failed: " + ", ".join(
    f"{job_execution.name}.{column.name}"
    for index in job_execution.indexes
    if index.name == LIVE_INDEX
    for column in index.columns
)


def is_live_index_violation(exc: BaseException) -> bool:
    """True when a write was refused by the partial unique index on live executions: a second
    live execution of one instance. Told by the constraint's name on Postgres, by the columns
    that SQLite's message names (SQLite gives no name) on SQLite."""
    if not isinstance(exc, IntegrityError):
        return False
    diag = getattr(exc.orig, "diag", None)
    if diag is not None:  # psycopg
        return getattr(diag, "constraint_name", None) == LIVE_INDEX
    return str(exc.orig).strip() == _SQLITE_LIVE_VIOLATION


@contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Driver errors become domain errors here and nowhere else, chained to the driver's:
    a database that cannot be reached or written -> DatabaseUnavailable (exit 5); a second
    live execution of an instance -> AlreadyRunning (exit 4). Anything else passes unchanged.
    `url` names the repository in the message (its password masked)."""
    try:
        yield
    except DBAPIError as exc:
        if is_locked(exc):
            raise locked(url) from exc
        if is_unreachable(exc):
            raise unavailable(url, exc) from exc
        if getattr(exc.orig, "sqlstate", None) == INVALID_SCHEMA_NAME:
            raise missing_schema(url) from exc
        if is_live_index_violation(exc):
            raise AlreadyRunning(
                "this job instance is already running (started by another process)"
            ) from exc
        raise


def missing_schema(url: str) -> ConfigError:
    """Postgres found no schema of the search path to create the tables in: name the schema
    the URL asks for (`options=-csearch_path=...`) and how to create it."""
    wanted = search_path(url)
    if wanted:
        first = wanted.split(",")[0].strip()
        return ConfigError(
            f"the schema {wanted!r} of the search_path in {mask_url(url)} does not exist: "
            f'create it (CREATE SCHEMA "{first}";) or change options=-csearch_path in the URL'
        )
    return ConfigError(
        f"no schema of the search_path of {mask_url(url)} exists: create one (CREATE SCHEMA "
        "...;) and name it in the URL with ?options=-csearch_path%3Dname"
    )


def search_path(url: str) -> str | None:
    """The search_path a Postgres URL sets through `options` (`-csearch_path=x` or
    `-c search_path=x`), or None."""
    try:
        options = make_url(url).query.get("options")
    except (ArgumentError, ValueError):
        return None
    for option in (options,) if isinstance(options, str) else (options or ()):
        match = re.search(r"-c\s*search_path\s*=\s*(\S+)", option)
        if match:
            return match.group(1)
    return None


def locked(url: str) -> RepositoryLocked:
    """The RepositoryLocked for a SQLite repository whose lock outlasted the busy timeout."""
    seconds = f"{sqlite_busy_timeout_ms(url) / 1000:g}"
    return RepositoryLocked(
        f"the job repository {mask_url(url)} is locked by another process: still locked after "
        f"the {seconds} s busy timeout (?timeout=S in the SQLite URL waits longer)"
    )


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailable:
    """The DatabaseUnavailable for a driver error that `is_unreachable`, naming `url` masked."""
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()
    detail = reason[0] if reason else type(exc).__name__
    if is_read_only(exc):
        return DatabaseUnavailable(f"the job repository {mask_url(url)} is read-only: {detail}")
    why = _sqlite_read_only(url)
    if why is not None:  # SQLite cannot even open a WAL database it may not write
        return DatabaseUnavailable(f"the job repository {mask_url(url)} is read-only: {why}")
    if is_storage_error(exc):
        full = _sqlite_full(url)
        where = f" ({full} is full)" if full else ""
        return DatabaseUnavailable(
            f"the job repository {mask_url(url)} cannot be written: {detail}{where}"
        )
    return DatabaseUnavailable(f"cannot reach the job repository {mask_url(url)}: {detail}")


def _sqlite_read_only(url: str) -> str | None:
    """Why an existing SQLite repository file cannot be written, or None: a file system mounted
    read-only, a file (or folder) that may not be written, even by root (`chattr +i`)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") or not os.path.isfile(database):
        return None
    folder = os.path.dirname(os.path.abspath(database))
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"its file system ({folder}) is mounted read-only"
    except OSError:
        return None
    if not os.access(database, os.W_OK):
        return f"the file {database} may not be written"
    if not os.access(folder, os.W_OK):
        return f"its folder {folder} may not be written (SQLite writes its -wal and -shm files there)"
    return None


def _sqlite_full(url: str) -> str | None:
    """The folder of a SQLite repository whose file system has no space left, or None."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database.startswith(("file:", ":")):
        return None
    folder = os.path.dirname(os.path.abspath(database))
    try:
        return folder if os.statvfs(folder).f_bavail == 0 else None
    except OSError:
        return None


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

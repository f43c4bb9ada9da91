"""Shared fixtures: a job repository on SQLite and on Postgres, a jobs folder, a Batch.

Postgres tests are required: each test gets a schema of its own on the server named by
BATCHCTL_TEST_POSTGRES_URL (default: the local server's `test` database), dropped afterwards.
"""

from __future__ import annotations

import os
import textwrap
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

import pytest

from batchctl.config import Config
from batchctl.operator import Batch

POSTGRES_URL = os.environ.get(
    "BATCHCTL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
DATABASES = ["sqlite", "postgres"]


def _admin_engine() -> Any:
    from batchctl.repository.connect import create_repository_engine

    return create_repository_engine(POSTGRES_URL)


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Any]:
    """An engine on the test Postgres server; fails (never skips) when it is unreachable."""
    from sqlalchemy import text

    engine = _admin_engine()
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # pragma: no cover - the environment is broken
        pytest.fail(f"Postgres is required for these tests and unreachable at {POSTGRES_URL}: {exc}")
    yield engine
    engine.dispose()


def postgres_schema_url(schema: str) -> str:
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def postgres_url(postgres_admin: Any) -> Iterator[str]:
    """A Postgres URL whose default schema is new, empty and this test's own."""
    from sqlalchemy import text

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with postgres_admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield postgres_schema_url(schema)
    with postgres_admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'repository.db'}"


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The repository URL, once for SQLite and once for Postgres."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'repository.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "jobs"
    folder.mkdir()
    return folder


@pytest.fixture
def write_job(jobs_dir: Path) -> Callable[[str, str], Path]:
    """Write a job module into the test's jobs folder: write_job("name", source)."""

    def write(module: str, source: str) -> Path:
        path = jobs_dir / f"{module}.py"
        path.write_text(textwrap.dedent(source))
        return path

    return write


@pytest.fixture
def config(database_url: str, jobs_dir: Path, tmp_path: Path) -> Config:
    return Config(
        database_url=database_url,
        jobs_dir=jobs_dir,
        log_dir=tmp_path / "logs",
        heartbeat_interval=1.0,
        heartbeat_timeout=10.0,
    )


@pytest.fixture
def batch(config: Config) -> Iterator[Batch]:
    with Batch(config) as opened:
        yield opened


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05,
             *, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(interval)


def in_daemon_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
    """A future of fn run in a daemon thread: a job that hangs fails the test that waits for it
    with a deadline, and never holds up the end of the suite."""
    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future

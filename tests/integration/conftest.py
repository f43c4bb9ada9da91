"""Fixtures for integration tests: the CLI run in this process, and row counts of the repository."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from batchctl import cli


@dataclass
class Outcome:
    """What one `batchctl` command did: its exit code and what it printed."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


@pytest.fixture(autouse=True)
def _restore_batchctl_logging() -> Iterator[None]:
    """`start` points the batchctl logger at the current stderr; undo it after each test."""
    logger = logging.getLogger("batchctl")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, jobs_dir: Path
) -> None:
    """Run commands from an empty folder, pointed at this test's repository and jobs folder."""
    monkeypatch.chdir(tmp_path)
    for name in ("BATCHCTL_CONFIG", "BATCHCTL_DEBUG", "BATCHCTL_LOG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BATCHCTL_DATABASE_URL", database_url)
    monkeypatch.setenv("BATCHCTL_JOBS_DIR", str(jobs_dir))
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.fixture
def run_cli(cli_env: None, capsys: pytest.CaptureFixture[str]) -> Callable[..., Outcome]:
    """run_cli("start", "hello", ...): `batchctl.cli.main` with its exit code and output. Each
    command opens and closes its own Batch, as a new process would."""

    def run(*args: str) -> Outcome:
        capsys.readouterr()
        try:
            cli.main(list(args))
        except SystemExit as exit_:
            code = exit_.code
        else:  # pragma: no cover - main always exits
            raise AssertionError("main() returned without exiting")
        captured = capsys.readouterr()
        return Outcome(code if isinstance(code, int) else 1, captured.out, captured.err)

    return run


def count_rows(database_url: str) -> dict[str, int]:
    """How many rows each repository table holds (creating the schema if there is none)."""
    from sqlalchemy import func, select

    from batchctl.repository import Repository
    from batchctl.repository.tables import job_execution, job_instance, step_execution

    repository = Repository.open(database_url)
    try:
        with repository.engine.connect() as connection:
            return {
                table.name: connection.execute(select(func.count()).select_from(table)).scalar_one()
                for table in (job_instance, job_execution, step_execution)
            }
    finally:
        repository.close()


@pytest.fixture
def rows(database_url: str) -> Callable[[], dict[str, int]]:
    """rows(): the row count of each repository table, now."""
    return lambda: count_rows(database_url)


@pytest.fixture
def hour_long_polls(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The step looks at its partitions once an hour, unless its executor wakes it when what it
    runs ends. Returns an event set once the step has looked at them."""
    from batchctl import partition

    looked = threading.Event()
    show_progress = partition.PartitionedStepRunner._show_progress

    def show_and_tell(self: Any, partitions: list[Any]) -> None:
        show_progress(self, partitions)
        looked.set()

    monkeypatch.setattr(partition, "PARTITION_POLL_INTERVAL", 3600.0)
    monkeypatch.setattr(partition.PartitionedStepRunner, "_show_progress", show_and_tell)
    return looked

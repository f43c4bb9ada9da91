"""Reads that sum the repository up (what `/metrics` exports): executions by job and status,
durations bucketed per job, and the item counters of the steps. Each is one aggregate query
(a read transaction; nothing is written), so a scrape costs the same on 100 or 100,000 rows
of Python: the database does the counting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from sqlalchemy import Connection, case, func, literal_column, select

from batchctl.repository.tables import job_execution, step_execution

DURATION_BUCKETS = (1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0)
"""Upper bounds, in seconds, of the execution-duration histogram's buckets (+Inf follows)."""


@dataclass(frozen=True)
class DurationHistogram:
    """Cumulative counts of ended executions whose duration is at most each bound."""

    buckets: tuple[int, ...]  # one per DURATION_BUCKETS bound, cumulative
    count: int
    total_seconds: float


@dataclass(frozen=True)
class RepositoryStats:
    """The repository summed up: what `/metrics` exports."""

    executions: dict[tuple[str, str], int] = field(default_factory=dict)  # (job, status) -> n
    durations: dict[str, DurationHistogram] = field(default_factory=dict)  # job -> histogram
    items: dict[str, dict[str, int]] = field(default_factory=dict)  # job -> counter -> sum


def _duration_sql(dialect: str) -> Any:
    """Seconds between started_at and ended_at, computed by the database."""
    if dialect == "sqlite":  # naive UTC text: julianday reads it
        return literal_column(
            "(julianday(job_execution.ended_at) - julianday(job_execution.started_at)) * 86400.0"
        )
    return func.extract("epoch", job_execution.c.ended_at - job_execution.c.started_at)


def repository_stats(repository: Any) -> RepositoryStats:
    """Read: the executions by job and status, their durations, the item counters."""

    def query(connection: Connection) -> RepositoryStats:
        counts = connection.execute(
            select(job_execution.c.job_name, job_execution.c.status, func.count())
            .group_by(job_execution.c.job_name, job_execution.c.status)
        ).all()
        duration = _duration_sql(connection.dialect.name)
        ended = (job_execution.c.ended_at.is_not(None), job_execution.c.started_at.is_not(None))
        columns = [func.sum(case((duration <= bound, 1), else_=0)) for bound in DURATION_BUCKETS]
        durations = connection.execute(
            select(job_execution.c.job_name, func.count(), func.sum(duration), *columns)
            .where(*ended)
            .group_by(job_execution.c.job_name)
        ).all()
        counters = ("read_count", "write_count", "read_skip_count", "process_skip_count",
                    "write_skip_count")
        items = connection.execute(
            select(job_execution.c.job_name, *(func.sum(step_execution.c[name]) for name in counters))
            .join(job_execution, job_execution.c.id == step_execution.c.job_execution_id)
            .where(step_execution.c.partition_of.is_(None))  # a partitioned step sums its own
            .group_by(job_execution.c.job_name)
        ).all()
        return RepositoryStats(
            executions={(row[0], row[1]): int(row[2]) for row in counts},
            durations={
                row[0]: DurationHistogram(
                    buckets=tuple(int(value or 0) for value in row[3:]),
                    count=int(row[1]),
                    total_seconds=float(row[2] or 0.0),
                )
                for row in durations
            },
            items={row[0]: _items(counters, row[1:]) for row in items},
        )

    return repository._read(query)  # type: ignore[no-any-return]


def _items(names: Sequence[str], values: Sequence[Any]) -> dict[str, int]:
    sums = {name: int(value or 0) for name, value in zip(names, values)}
    return {
        "read": sums["read_count"],
        "written": sums["write_count"],
        "skipped": sums["read_skip_count"] + sums["process_skip_count"] + sums["write_skip_count"],
    }

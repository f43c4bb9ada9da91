"""/metrics: the repository summed up in Prometheus' text format (version 0.0.4)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from batchctl.model import LIVE_STATUSES
from batchctl.repository.stats import DURATION_BUCKETS, RepositoryStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{name}="{_label(value)}"' for name, value in labels.items()) + "}"


def _family(name: str, kind: str, help: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help}", f"# TYPE {name} {kind}", *samples]


def metrics_text(stats: RepositoryStats, workers: Sequence[Any]) -> str:
    """The exposition text: executions by job and status, live executions, a histogram of
    execution durations per job, items read / written / skipped per job, live workers."""
    lines: list[str] = []
    lines += _family(
        "batchctl_executions", "gauge", "Job executions in the repository, by job and status.",
        (f"batchctl_executions{_labels(job=job, status=status)} {count}"
         for (job, status), count in sorted(stats.executions.items())),
    )
    live: dict[str, int] = {}
    for (job, status), count in stats.executions.items():
        if status in {s.value for s in LIVE_STATUSES}:
            live[job] = live.get(job, 0) + count
    lines += _family(
        "batchctl_live_executions", "gauge",
        "Executions STARTING, STARTED or STOPPING, by job.",
        (f"batchctl_live_executions{_labels(job=job)} {count}" for job, count in sorted(live.items())),
    )
    histogram: list[str] = []
    for job, durations in sorted(stats.durations.items()):
        for bound, count in zip(DURATION_BUCKETS, durations.buckets):
            histogram.append(
                f"batchctl_execution_duration_seconds_bucket{_labels(job=job, le=f'{bound:g}')} {count}"
            )
        histogram.append(
            f"batchctl_execution_duration_seconds_bucket{_labels(job=job, le='+Inf')} {durations.count}"
        )
        histogram.append(
            f"batchctl_execution_duration_seconds_sum{_labels(job=job)} {durations.total_seconds:.6f}"
        )
        histogram.append(f"batchctl_execution_duration_seconds_count{_labels(job=job)} {durations.count}")
    lines += _family(
        "batchctl_execution_duration_seconds", "histogram",
        "Durations of ended executions, from start to end, by job.", histogram,
    )
    for counter, help in (
        ("read", "Items read by chunk steps, by job."),
        ("written", "Items written by chunk steps, by job."),
        ("skipped", "Items skipped (read, process or write) by chunk steps, by job."),
    ):
        name = f"batchctl_items_{counter}_total"
        lines += _family(
            name, "counter", help,
            (f"{name}{_labels(job=job)} {items[counter]}" for job, items in sorted(stats.items.items())),
        )
    kinds: dict[str, int] = {}
    for worker in workers:
        kinds[worker.kind] = kinds.get(worker.kind, 0) + 1
    lines += _family(
        "batchctl_live_workers", "gauge",
        "Workers and services with a fresh heartbeat, by kind.",
        (f"batchctl_live_workers{_labels(kind=kind)} {count}" for kind, count in sorted(kinds.items())),
    )
    return "\n".join(lines) + "\n"

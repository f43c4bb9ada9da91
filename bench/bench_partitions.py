"""Partitioned steps (issue 5): CPU-bound work on 1 and 2 local processes beside
multiprocessing.Pool(1) and Pool(2); I/O-bound work (50 ms per item) on 1, 2, 4 and 8 workers,
in threads and in processes, beside a ThreadPoolExecutor doing the same sleeps.

    python bench/run.py --only partitions-cpu --only partitions-io
    python bench/bench_partitions.py [--quick] [--database sqlite]     # standalone

The CPU job: a chunk step over the numbers 0..N, split into 8 key ranges, whose processor spins
a pure-Python integer recurrence per item (about a millisecond each, several seconds in all).
The baseline maps the same function over the same 8 ranges with a `multiprocessing.Pool` (fork).
Each run is a subprocess of its own that times `Batch.start` (the worker processes' start-up is
part of the figure, as it is of a user's run) or the pool's creation and map. The I/O job sleeps
50 ms per item: throughput should grow with the workers, near linearly.

Where the time goes is noted from the repository's own timestamps: `start-up` is from the step's
start to the first partition claimed (spawning `python -m batchctl worker`, its imports, its
registration); `tail` from the last partition's end to the step's end (the owner's polling);
`busy` is the share of the workers' wall time spent inside partitions.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, Context, Row, bench, child_result, holds, load_average  # noqa: E402

PARTITIONS = 8
CPU_ITEMS, CPU_QUICK_ITEMS = 8_000, 3_000
CPU_ROUNDS = 10_000  # iterations of the recurrence per item (about 1 ms of CPU)
CPU_CHUNK = 50
CPU_SPEEDUP = 1.8  # the 2-process run at least this much faster than the 1-process run
CPU_RUNS, CPU_QUICK_RUNS = 3, 1  # interleaved runs per side (the best is reported)

IO_SECONDS = 0.05  # simulated latency per item
IO_ITEMS, IO_QUICK_ITEMS = 320, 160
IO_CHUNK = 5
IO_WORKERS = (1, 2, 4, 8)
IO_EFFICIENCY = 0.8  # throughput at k workers at least this share of k times that at 1

CPU_FUNCTIONS = f'''
ROUNDS = {CPU_ROUNDS}


def ranges(ctx):
    n, parts = ctx.params["n"], ctx.params["partitions"]
    return [{{"lo": i * n // parts, "hi": (i + 1) * n // parts}} for i in range(parts)]


def numbers(ctx):
    return range(ctx.partition["lo"], ctx.partition["hi"])


def burn(n, ctx=None):
    x = n
    for _ in range(ROUNDS):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    return x


def discard(items, ctx):
    pass
'''
"""The CPU job's reader, processor and writer (bench_dask.py runs the same job on Dask)."""

JOBS = f'''
"""Jobs of bench_partitions.py: one per mode and worker count."""

import time

from batchctl import Job
{CPU_FUNCTIONS}

def wait(n, ctx):
    time.sleep({IO_SECONDS!r})
    return n


for mode in ("process", "thread"):
    for workers in (1, 2, 4, 8):
        for kind, processor, size in (("cpu", burn, {CPU_CHUNK}), ("io", wait, {IO_CHUNK})):
            job = Job(f"{{kind}}_{{mode}}_{{workers}}", params={{"n": int, "partitions": int}})
            job.chunk_step("work", reader=numbers, writer=discard, processor=processor, size=size,
                           partitioner=ranges, workers=workers, mode=mode)
            globals()[job.name] = job
'''


# -- the contenders, each run in a process of its own ------------------------------------------------


def run_batchctl(url: str, jobs_dir: str, job: str, items: int) -> dict[str, Any]:
    from batchctl import Batch
    from batchctl.config import Config

    config = Config(database_url=url, jobs_dir=Path(jobs_dir), log_dir=Path(jobs_dir))
    with Batch(config) as batch:
        batch.job(job)  # set-up: the jobs module, the schema (migrated on first use)
        batch.repository.count_executions()
        started = time.perf_counter()
        execution = batch.start(job, {"n": items, "partitions": PARTITIONS})
        elapsed = time.perf_counter() - started
        if execution.status.value != "COMPLETED":
            raise SystemExit(f"{job} ended {execution.status.value}: {execution.exit_message}")
        steps = batch.step_executions(execution.id)
    [total] = [s for s in steps if not s.is_partition]
    parts = [s for s in steps if s.is_partition]
    if total.read_count != items:
        raise SystemExit(f"{job} read {total.read_count} items of {items}")
    return {"seconds": elapsed, **_where_time_went(total, parts)}


def _where_time_went(total: Any, parts: list[Any]) -> dict[str, Any]:
    def at(moment: datetime) -> float:
        return moment.timestamp()

    first = min(at(p.started_at) for p in parts)
    last = max(at(p.ended_at) for p in parts)
    by_worker: dict[Any, list[Any]] = {}
    for part in parts:
        by_worker.setdefault((part.host, part.pid, part.worker_id), []).append(part)
    busy = sum(at(p.ended_at) - at(p.started_at) for p in parts)
    spans = sum(max(at(p.ended_at) for p in ps) - min(at(p.started_at) for p in ps)
                for ps in by_worker.values())
    return {
        "startup": first - at(total.started_at),
        "tail": at(total.ended_at) - last,
        "busy": busy / spans if spans else 1.0,
        "workers_used": len(by_worker),
        "span": last - first,  # from the first partition claimed to the last one ended
    }


def _burn_range(bounds: tuple[int, int]) -> int:
    x = 0
    for n in range(*bounds):
        y = n
        for _ in range(CPU_ROUNDS):
            y = (y * 1103515245 + 12345) & 0x7FFFFFFF
        x ^= y
    return x


def run_pool(processes: int, items: int) -> dict[str, Any]:
    """The hand-written baseline: the same function over the same ranges, Pool(processes)."""
    import multiprocessing

    bounds = [(i * items // PARTITIONS, (i + 1) * items // PARTITIONS) for i in range(PARTITIONS)]
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(_burn_range, bounds, chunksize=1)
    return {"seconds": time.perf_counter() - started}


def run_sleeps(threads: int, items: int) -> dict[str, Any]:
    """The I/O baseline: the same sleeps in a ThreadPoolExecutor(threads), by partition."""
    from concurrent.futures import ThreadPoolExecutor

    def partition(index: int) -> None:
        for _ in range(index * items // PARTITIONS, (index + 1) * items // PARTITIONS):
            time.sleep(IO_SECONDS)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(partition, range(PARTITIONS)))
    return {"seconds": time.perf_counter() - started}


def _child(argv: list[str]) -> None:
    side, *rest = argv
    if side == "batchctl":
        url, jobs_dir, job, items = rest
        result = run_batchctl(url, jobs_dir, job, int(items))
    elif side == "pool":
        result = run_pool(int(rest[0]), int(rest[1]))
    else:
        result = run_sleeps(int(rest[0]), int(rest[1]))
    print(json.dumps(result))


# -- the benchmarks ---------------------------------------------------------------------------------


def _measure(*argv: str) -> dict[str, Any]:
    return child_result(__file__, *argv)


def _jobs_dir(ctx: Context) -> Path:
    folder = ctx.path("partition-jobs")
    if not folder.exists():
        folder.mkdir()
        (folder / "bench_partition_jobs.py").write_text(JOBS)
    return folder


def _run_job(ctx: Context, database: str, job: str, items: int, tag: str) -> dict[str, Any]:
    url = ctx.repository_url(database, f"part_{tag}")
    return _measure("batchctl", url, str(_jobs_dir(ctx)), job, str(items))


def _where(result: dict[str, Any]) -> str:
    return (f"start-up {result['startup']:.2f}s, tail {result['tail']:.2f}s, "
            f"busy {result['busy']:.0%} of {result['workers_used']} worker(s)")


def _worker_start(ctx: Context, database: str) -> tuple[float, float]:
    """Median wall and CPU seconds of a local worker process that finds nothing to do: what
    each worker of a process-mode step costs before its first partition."""
    from common import run_measured

    url = ctx.repository_url(database, "part_empty")
    env = {**os.environ, "BATCHCTL_DATABASE_URL": url, "BATCHCTL_JOBS_DIR": str(_jobs_dir(ctx)),
           "NO_COLOR": "1"}
    command = [PYTHON, "-m", "batchctl", "worker", "--execution", "1", "--step", "work",
               "--exit-when-idle"]
    run_measured(command, env=env)  # creates the schema
    samples = [run_measured(command, env=env) for _ in range(5)]
    return statistics.median(w for w, _ in samples), statistics.median(c for _, c in samples)


@bench("partitions-cpu", help="CPU-bound partitioned job on 1 and 2 processes vs Pool(1)/Pool(2)")
def partitions_cpu(ctx: Context) -> Iterator[Row]:
    items = CPU_QUICK_ITEMS if ctx.quick else CPU_ITEMS
    runs = CPU_QUICK_RUNS if ctx.quick else CPU_RUNS
    for database in ctx.databases:
        mine: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
        pool: dict[int, list[float]] = {1: [], 2: []}
        for attempt in range(runs):
            for processes in (1, 2) if attempt % 2 == 0 else (2, 1):
                job = f"cpu_process_{processes}"
                mine[processes].append(_run_job(ctx, database, job, items, f"{job}_{attempt}"))
                pool[processes].append(_measure("pool", str(processes), str(items))["seconds"])
        best = {k: min(mine[k], key=lambda r: r["seconds"]) for k in (1, 2)}
        for processes in (1, 2):
            result = best[processes]
            yield Row(
                f"CPU, {items:,} items, {processes} process(es)", database, result["seconds"],
                min(pool[processes]),
                note=f"batchctl vs Pool({processes}), best of {runs}; {_where(result)}",
            )
        wall, cpu = _worker_start(ctx, database)
        yield Row(
            "a local worker process's start-up", database, wall,
            note=f"python -m batchctl worker that finds nothing: {cpu:.2f}s CPU (imports: "
                 "SQLAlchemy, batchctl, the jobs) - paid once per worker, in parallel",
        )
        speedup = best[1]["seconds"] / best[2]["seconds"]
        baseline = min(pool[1]) / min(pool[2])
        medians = (statistics.median(r["seconds"] for r in mine[1])
                   / statistics.median(r["seconds"] for r in mine[2]))
        yield Row(
            "CPU speedup, 1 -> 2 processes", database, f"{speedup:.2f}x", f"{baseline:.2f}x",
            holds(f">= {CPU_SPEEDUP:g}x"), unit="x", passed=speedup >= CPU_SPEEDUP,
            note=f"baseline: Pool(1) -> Pool(2); ratio of medians {medians:.2f}x; "
                 f"{os.cpu_count()} CPUs, {load_average()}",
        )


@bench("partitions-io", help="I/O-bound partitioned job (50 ms/item) on 1, 2, 4, 8 workers")
def partitions_io(ctx: Context) -> Iterator[Row]:
    items = IO_QUICK_ITEMS if ctx.quick else IO_ITEMS
    for database in ctx.databases:
        for mode in ("thread", "process"):
            single = None
            for workers in IO_WORKERS:
                job = f"io_{mode}_{workers}"
                result = _run_job(ctx, database, job, items, job)
                baseline = _measure("sleeps", str(workers), str(items))["seconds"]
                rate, ideal = items / result["seconds"], items / baseline
                single = single or rate
                efficiency = rate / (single * workers)
                yield Row(
                    f"I/O {'threads' if mode == 'thread' else 'processes'}, {workers} worker(s)",
                    database,
                    rate, ideal, holds(f">= {IO_EFFICIENCY:.0%} of linear"), unit="items/s",
                    passed=efficiency >= IO_EFFICIENCY, compare=False,
                    note=f"{efficiency:.0%} of {workers} x the 1-worker rate; "
                         f"{result['seconds']:.2f}s; {_where(result)}; "
                         f"{items / result['span']:.0f} items/s from the first claim to the last end",
                )


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        _child(argv[1:])
        return 0
    sys.modules.setdefault("bench_partitions", sys.modules[__name__])  # run.py must not load us twice
    import run

    return run.main(["--only", "partitions-cpu", "--only", "partitions-io", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

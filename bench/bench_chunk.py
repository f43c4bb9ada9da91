"""Chunk steps (issue 4): a CSV -> table job beside a hand-written loop doing the same work.

    python bench/run.py --only chunk            # through the registry
    python bench/bench_chunk.py [--quick]       # standalone

The job: `CsvReader(types=...) -> SqlWriter("ledger")` into the repository's own database,
chunk size 1000, no processor (the reader converts). The loop: `csv.reader`, the same
conversion, `executemany` into SQLite / COPY into Postgres, and a checkpoint UPDATE committed
with every 1000 rows. Each run is a subprocess of its own that times its work only (imports, the
schema and the CREATE TABLE are set-up, outside the time), and reports its peak memory
(`ru_maxrss`). Peak memory is measured at two input sizes: it must not grow with the input.
"""

from __future__ import annotations

import csv
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, Context, Row, bench, holds, within  # noqa: E402

ROWS = 1_000_000
QUICK_ROWS = 200_000
CHUNK = 1000
RATIO = 1.10  # batchctl at most this factor of the loop's time
MEMORY_SIZES = (250_000, 1_000_000)  # rows; peak memory at the larger within MEMORY_SLACK
QUICK_MEMORY_SIZES = (50_000, 200_000)
MEMORY_SLACK_MB = 8.0  # what "flat" allows between the two sizes (allocator noise)
RUNS = 5  # interleaved runs per side and database (the best is reported, the median noted)
QUICK_RUNS = 1

ACCOUNTS = ("cash", "receivables", "payables", "revenue", "expenses", "inventory", "equity")
TYPES = {"id": int, "amount_cents": int, "quantity": int}
CREATE = (
    "CREATE TABLE ledger (id BIGINT PRIMARY KEY, account TEXT, amount_cents BIGINT,"
    " quantity INTEGER, memo TEXT)"
)


def make_input(path: Path, rows: int) -> Path:
    """A deterministic CSV of `rows` journal lines (about 50 bytes each)."""
    if path.exists():
        return path
    rng = random.Random(rows)
    partial = path.with_suffix(".part")
    with partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "account", "amount_cents", "quantity", "memo"])
        for number in range(1, rows + 1):
            writer.writerow([
                number, rng.choice(ACCOUNTS), rng.randint(-500_000, 500_000),
                rng.randint(1, 99), f"line {number}",
            ])
    partial.replace(path)
    return path


# -- the two contenders, each run in a process of its own ---------------------------------------------


def run_batchctl(url: str, source: str, workdir: str) -> dict[str, Any]:
    from batchctl import Batch, Job
    from batchctl.config import Config
    from batchctl.items import CsvReader, SqlWriter

    job = Job("bench_load", params={"run": str})
    job.chunk_step(
        "load", reader=CsvReader(source, types=TYPES), writer=SqlWriter("ledger"), size=CHUNK
    )
    config = Config(database_url=url, jobs_dir=Path(workdir), log_dir=Path(workdir))
    with Batch(config) as batch:
        with batch.repository.engine.begin() as connection:  # set-up: schema and table
            connection.exec_driver_sql(CREATE)
        started = time.perf_counter()
        execution = batch.start(job, {"run": "1"})
        elapsed = time.perf_counter() - started
        if execution.status.value != "COMPLETED":
            raise SystemExit(f"the job ended {execution.status.value}: {execution.exit_message}")
        [step] = batch.step_executions(execution.id)
        written = step.write_count
    return {"seconds": elapsed, "rows": written}


def run_loop(url: str, source: str, workdir: str) -> dict[str, Any]:
    """What a competent hand-written job does: stream, convert, insert, checkpoint per 1000."""
    if url.startswith("sqlite"):
        return _loop_sqlite(url.removeprefix("sqlite:///"), source)
    return _loop_postgres(url, source)


def _convert(row: list[str]) -> tuple[Any, ...]:
    return (int(row[0]), row[1], int(row[2]), int(row[3]), row[4])


def _loop_sqlite(path: str, source: str) -> dict[str, Any]:
    import sqlite3

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(CREATE)
    db.execute("CREATE TABLE checkpoint (id INTEGER PRIMARY KEY, position INTEGER, context TEXT)")
    db.execute("INSERT INTO checkpoint VALUES (1, 0, '{}')")
    insert = "INSERT INTO ledger (id, account, amount_cents, quantity, memo) VALUES (?, ?, ?, ?, ?)"
    started = time.perf_counter()
    done = 0
    with open(source, newline="") as handle:
        rows = csv.reader(handle)
        next(rows)
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            batch.append(_convert(row))
            if len(batch) == CHUNK:
                done = _commit_sqlite(db, insert, batch, done)
        if batch:
            done = _commit_sqlite(db, insert, batch, done)
    elapsed = time.perf_counter() - started
    db.close()
    return {"seconds": elapsed, "rows": done}


def _commit_sqlite(db: Any, insert: str, batch: list[tuple[Any, ...]], done: int) -> int:
    done += len(batch)
    db.execute("BEGIN IMMEDIATE")
    db.executemany(insert, batch)
    db.execute("UPDATE checkpoint SET position = ?, context = ? WHERE id = 1",
               (done, json.dumps({"position": done})))
    db.execute("COMMIT")
    batch.clear()
    return done


def _loop_postgres(url: str, source: str) -> dict[str, Any]:
    import psycopg

    scheme, _, rest = url.partition("://")
    db = psycopg.connect(f"postgresql://{rest}")
    db.execute(CREATE)
    db.execute("CREATE TABLE checkpoint (id INTEGER PRIMARY KEY, position INTEGER, context TEXT)")
    db.execute("INSERT INTO checkpoint VALUES (1, 0, '{}')")
    db.commit()
    copy_sql = "COPY ledger (id, account, amount_cents, quantity, memo) FROM STDIN"
    started = time.perf_counter()
    done = 0
    with open(source, newline="") as handle:
        rows = csv.reader(handle)
        next(rows)
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            batch.append(_convert(row))
            if len(batch) == CHUNK:
                done = _commit_postgres(db, copy_sql, batch, done)
        if batch:
            done = _commit_postgres(db, copy_sql, batch, done)
    elapsed = time.perf_counter() - started
    db.close()
    return {"seconds": elapsed, "rows": done}


def _commit_postgres(db: Any, copy_sql: str, batch: list[tuple[Any, ...]], done: int) -> int:
    done += len(batch)
    with db.cursor() as cursor:
        with cursor.copy(copy_sql) as copy:
            for row in batch:
                copy.write_row(row)
        cursor.execute("UPDATE checkpoint SET position = %s, context = %s WHERE id = 1",
                       (done, json.dumps({"position": done})))
    db.commit()
    batch.clear()
    return done


def _child(argv: list[str]) -> None:
    side, url, source, workdir = argv
    result = (run_batchctl if side == "batchctl" else run_loop)(url, source, workdir)
    result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# -- the benchmark ----------------------------------------------------------------------------------


def _measure(side: str, url: str, source: Path, workdir: Path) -> dict[str, Any]:
    done = subprocess.run(
        [PYTHON, __file__, "--child", side, url, str(source), str(workdir)],
        capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{side} run failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fresh(ctx: Context, database: str, tag: str) -> str:
    return ctx.repository_url(database, f"chunk_{tag}")


@bench("chunk", help="CSV -> table chunk job vs a hand-written loop; peak memory at two sizes")
def chunk_throughput(ctx: Context) -> Iterator[Row]:
    rows = QUICK_ROWS if ctx.quick else ROWS
    runs = QUICK_RUNS if ctx.quick else RUNS
    source = make_input(ctx.path(f"ledger-{rows}.csv"), rows)
    for database in ctx.databases:
        times: dict[str, list[float]] = {"batchctl": [], "loop": []}
        for attempt in range(runs):
            for side in ("batchctl", "loop") if attempt % 2 == 0 else ("loop", "batchctl"):
                result = _measure(side, _fresh(ctx, database, f"{side}{attempt}"), source, ctx.workdir)
                if result["rows"] != rows:
                    raise RuntimeError(f"{side} wrote {result['rows']} rows of {rows}")
                times[side].append(result["seconds"])
        mine, loop = min(times["batchctl"]), min(times["loop"])
        medians = statistics.median(times["batchctl"]) / statistics.median(times["loop"])
        note = (f"{rows:,} rows, chunk {CHUNK}: {rows / mine:,.0f} vs {rows / loop:,.0f} rows/s "
                f"(best of {runs}; ratio of medians {medians:.2f}x)")
        yield Row(f"CSV -> table, {rows:,} rows", database, mine, loop, within(RATIO), note=note)

        sizes = QUICK_MEMORY_SIZES if ctx.quick else MEMORY_SIZES
        peaks = []
        for size in sizes:
            small = make_input(ctx.path(f"ledger-{size}.csv"), size)
            result = _measure("batchctl", _fresh(ctx, database, f"mem{size}"), small, ctx.workdir)
            peaks.append(result["maxrss_mb"])
        loop_peak = _measure("loop", _fresh(ctx, database, "memloop"), source, ctx.workdir)["maxrss_mb"]
        flat = peaks[1] - peaks[0] <= MEMORY_SLACK_MB
        yield Row(
            "peak memory (MB)", database,
            f"{peaks[0]:.0f} -> {peaks[1]:.0f}", f"{loop_peak:.0f}",
            holds(f"flat (+<= {MEMORY_SLACK_MB:g} MB)"), unit="MB", passed=flat,
            note=f"batchctl at {sizes[0]:,} -> {sizes[1]:,} rows; the loop at {rows:,}",
        )


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        _child(argv[1:])
        return 0
    sys.modules.setdefault("bench_chunk", sys.modules[__name__])  # run.py must not load us twice
    import run

    return run.main(["--only", "chunk", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

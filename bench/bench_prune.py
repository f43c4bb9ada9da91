"""Pruning (issue 10): `batchctl prune` of 90,000 of 100,000 executions, and what it leaves.

    python bench/run.py --only prune [--quick] [--database sqlite]

The repository is `populate`'s 100,000 executions of 5 jobs (all ended in 2020);
`prune --older-than 1d --keep-last 2000` removes 90,000 of them with their 270,000 step
executions and their instances. The baseline is what a DBA would write by hand: the same
deletes in one transaction with the bare driver, run on the same rows just before and rolled
back. batchctl's figure to watch is its longest transaction (how long a busy repository waits
for the write lock), the baseline's being the whole delete.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from typing import Any, Iterator

from common import (
    JOB_NAMES,
    Context,
    Row,
    at_most,
    batchctl_command,
    bench,
    clean_env,
    populate,
    run_once,
    stopwatch,
)

EXECUTIONS = 100_000
KEEP_LAST = 2_000  # per job: 5 jobs keep 10,000
PRUNED = EXECUTIONS - KEEP_LAST * len(JOB_NAMES)
LONGEST_TRANSACTION = 0.5  # seconds: the longest a prune batch may hold the write lock
PRUNE_SECONDS = 120.0  # the whole prune of 90,000 executions
TIMING_RUNS, QUICK_TIMING_RUNS = 5, 3

JOBS = f'''
from batchctl import Job

eod = Job("{JOB_NAMES[0]}", params={{"run": int}})


@eod.tasklet
def only(ctx):
    pass
'''


@bench("prune", help=f"prune {PRUNED:,} of {EXECUTIONS:,} executions; start and history around it")
def prune(ctx: Context) -> Iterator[Row]:
    runs = QUICK_TIMING_RUNS if ctx.quick else TIMING_RUNS
    for database in ctx.databases:
        url = ctx.repository_url(database, "prune")
        jobs = ctx.path(f"prune-{database}-jobs")
        jobs.mkdir(exist_ok=True)
        (jobs / "bench_jobs.py").write_text(JOBS)
        env = clean_env(BATCHCTL_DATABASE_URL=url, BATCHCTL_JOBS_DIR=str(jobs),
                        BATCHCTL_LOG_DIR=str(ctx.path(f"prune-{database}-logs")))
        with stopwatch() as elapsed:
            populate(url, EXECUTIONS)
        filled = elapsed()
        counter = iter(range(1_000_000))

        def start() -> float:
            argv = [*batchctl_command(), "start", JOB_NAMES[0], "--params",
                    json.dumps({"run": next(counter)})]
            return run_once(argv, env=env, cwd=ctx.workdir)

        def history() -> float:
            return run_once([*batchctl_command(), "history"], env=env, cwd=ctx.workdir)

        start(), history()  # warm-up: file cache, schema check
        before = {"start": [start() for _ in range(runs)], "history": [history() for _ in range(runs)]}

        baseline = _bare_prune(url)
        with stopwatch() as elapsed:
            done = subprocess.run(
                [*batchctl_command(), "prune", "--older-than", "1d", "--keep-last", str(KEEP_LAST),
                 "--json"],
                env=env, cwd=ctx.workdir, capture_output=True, text=True, timeout=1800,
            )
        wall = elapsed()
        if done.returncode != 0:
            raise RuntimeError(f"batchctl prune exited {done.returncode}: {done.stderr[-2000:]}")
        report = json.loads(done.stdout)

        after = {"start": [start() for _ in range(runs)], "history": [history() for _ in range(runs)]}

        removed = (f"{report['executions']:,} executions, {report['step_executions']:,} steps, "
                   f"{report['instances']:,} instances")
        yield Row(f"prune {PRUNED:,} of {EXECUTIONS:,}: wall time", database, wall,
                  baseline["seconds"], at_most(PRUNE_SECONDS),
                  note=(f"{removed} in {report['batches']} transactions; baseline: the same "
                        f"deletes by hand, one transaction ({baseline['executions']:,} "
                        f"executions), rolled back; filled in {filled:.0f}s"))
        yield Row("prune: longest write transaction", database, report["longest_transaction"],
                  baseline["seconds"], at_most(LONGEST_TRANSACTION),
                  note="batchctl: its longest batch of 500; baseline: the one transaction")
        for name in ("start", "history"):
            yield Row(f"{name}: after prune vs before", database,
                      statistics.median(after[name]), statistics.median(before[name]),
                      note=(f"median of {runs}; before on {EXECUTIONS:,} executions, after on "
                            f"{EXECUTIONS - report['executions']:,}"))


def _bare_prune(url: str) -> dict[str, Any]:
    """The same prune by hand with the bare driver, in one transaction, rolled back: the keep
    rule as a window function, then each table's DELETE."""
    doomed = (
        "SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY job_name ORDER BY id DESC) AS rn"
        " FROM job_execution) ranked WHERE rn > %d" % KEEP_LAST
    )
    statements = [
        f"CREATE TEMPORARY TABLE doomed AS {doomed}",
        "DELETE FROM skipped_item WHERE step_execution_id IN (SELECT id FROM step_execution"
        " WHERE job_execution_id IN (SELECT id FROM doomed))",
        "DELETE FROM step_execution WHERE job_execution_id IN (SELECT id FROM doomed)",
        "UPDATE job_execution SET resumed_from = NULL WHERE resumed_from IN (SELECT id FROM doomed)"
        " AND id NOT IN (SELECT id FROM doomed)",
        "DELETE FROM job_execution WHERE id IN (SELECT id FROM doomed)",
        "DELETE FROM job_instance WHERE NOT EXISTS (SELECT 1 FROM job_execution"
        " WHERE job_execution.instance_id = job_instance.id)",
    ]
    if url.startswith("sqlite:///"):
        import sqlite3

        connection: Any = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
        connection.execute("PRAGMA foreign_keys = ON")
        begin = "BEGIN IMMEDIATE"
    else:
        import psycopg

        from common import _libpq_url

        connection = psycopg.connect(_libpq_url(url.replace("+psycopg", "")), autocommit=True)
        begin = "BEGIN"
    try:
        with stopwatch() as elapsed:
            connection.execute(begin)
            for statement in statements:
                connection.execute(statement)
            executions = connection.execute("SELECT count(*) FROM doomed").fetchone()[0]
            seconds = elapsed()
        connection.execute("ROLLBACK")
    finally:
        connection.close()
    return {"seconds": seconds, "executions": executions}

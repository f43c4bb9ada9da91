"""Riding out a repository outage (issue 14): how soon a run makes progress again once the
database is back.

    python bench/run.py --only outage [--quick]

A chunk job (range -> a table of the repository, through `ctx.connection`, 100 items a chunk)
runs in this process against Postgres through a TCP proxy (tests/faults.py). Once it is
committing chunks, the proxy cuts every connection and refuses new ones for D seconds, then
lets them through again; the figure is the time from that moment to the next chunk the job
commits (its `after_chunk`). Target: at most 2 s (the backoff is capped at 2 s). The cost of
the retry layer on the chunk loop when nothing fails is what `--only chunk` measures.
Postgres only: SQLite has no network outage.
"""

from __future__ import annotations

import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from common import REPO_ROOT, Context, Row, at_most, bench, until

sys.path.insert(0, str(REPO_ROOT))

OUTAGES = (1.0, 5.0, 15.0)  # seconds the database is gone
QUICK_OUTAGES = (1.0, 5.0)
TARGET = 2.0  # seconds from the database's return to the next committed chunk
DEADLINE = 120.0
PROGRESS: list[float] = []  # monotonic times of the job's committed chunks (its after_chunk)

JOB = '''
import time

from sqlalchemy import text

import bench_outage
from batchctl import Job

job = Job("outage")


@job.tasklet
def create(ctx):
    ctx.connection.execute(text("CREATE TABLE IF NOT EXISTS ledger (id BIGINT PRIMARY KEY)"))


@job.after_chunk
def progress(ctx, step):
    bench_outage.PROGRESS.append(time.monotonic())


def write(items, ctx):
    ctx.connection.execute(text("INSERT INTO ledger (id) VALUES (:id)"), [{"id": i} for i in items])


job.chunk_step("load", reader=lambda ctx: range(10**9), writer=write, size=100)
'''


def _recovery(ctx: Context, outage: float) -> float:
    from batchctl.config import Config
    from batchctl.operator import Batch
    from tests.faults import OutageProxy

    url = ctx.repository_url("postgres", f"outage{int(outage)}")
    jobs = ctx.path(f"outage-jobs-{int(outage)}")
    jobs.mkdir(parents=True, exist_ok=True)
    (jobs / "outage.py").write_text(textwrap.dedent(JOB))
    with OutageProxy.for_url(url) as proxy:
        config = Config(database_url=proxy.url(url), jobs_dir=jobs, log_dir=ctx.path("logs"),
                        heartbeat_interval=1.0, heartbeat_timeout=120.0, db_outage_timeout=60.0)
        with Batch(config) as batch:
            PROGRESS.clear()
            done: list[Any] = []
            thread = threading.Thread(target=lambda: done.append(batch.start("outage", {})),
                                      daemon=True)
            thread.start()
            until(lambda: len(PROGRESS) >= 20 or done, interval=0.01, deadline=DEADLINE)
            if done:
                raise RuntimeError(f"the job ended early: {done[0]}")
            proxy.cut()
            time.sleep(outage)  # the outage itself: a duration is what this benchmark varies
            back = time.monotonic()
            proxy.restore()
            resumed = until(lambda: next((t for t in PROGRESS if t > back), None),
                            interval=0.005, deadline=DEADLINE)
            [execution] = batch.history("outage")
            batch.stop(execution.id)
            thread.join(DEADLINE)
    return float(resumed - back)


@bench("outage", help="time from the database's return to a chunk job's next commit (Postgres)")
def outage_recovery(ctx: Context) -> Iterator[Row]:
    if "postgres" not in ctx.databases:
        return
    logging_quiet()
    for outage in QUICK_OUTAGES if ctx.quick else OUTAGES:
        seconds = _recovery(ctx, outage)
        yield Row(f"progress again after a {outage:g} s outage", "postgres", seconds, None,
                  at_most(TARGET), note="from the database's return to the next committed chunk")


def logging_quiet() -> None:
    """The outage's two log lines per run are expected: keep them off the table."""
    import logging

    logging.getLogger("batchctl").setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.modules.setdefault("bench_outage", sys.modules[__name__])  # the job appends to PROGRESS here
    import run

    sys.exit(run.main(["--only", "outage", *sys.argv[1:]]))

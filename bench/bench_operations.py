"""Operations across processes (issue 3): stop latency, concurrent launches, the cost of a start.

    python bench/run.py --only stop-latency --only launches --only start-cost
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import time
from typing import Any, Iterator

from common import (
    BENCH_DIR,
    JOB_NAMES,
    PYTHON,
    Context,
    Row,
    at_most,
    batchctl_command,
    bench,
    clean_env,
    populate,
    run_once,
    stopwatch,
    until,
    within,
)

UNIT_SECONDS = 0.1  # one unit of work of the stopped job
STOP_TARGET = 1.0  # seconds from `batchctl stop` returning to the execution being STOPPED
STOP_RUNS, STOP_QUICK_RUNS = 9, 4
LAUNCHES = 50  # instances started at once
START_COST_EXECUTIONS = 100_000
START_COST_RATIO = 1.2  # a start on 100k past executions within this factor of one on 1
STOP_WATCH_INTERVAL = 0.005  # seconds between two looks at the stopped row
DEADLINE = 120.0  # seconds any awaited state may take before the benchmark gives up

# The jobs the benchmarks run. `eod` shares its name with the jobs `populate` fills the
# repository with, so that a start's per-job queries meet the 100,000 past executions.
JOBS = f'''
import time
from batchctl import Job

units = Job("units")


@units.tasklet
def work(ctx):
    """A chunk-like loop: units of {UNIT_SECONDS:g}s, a checkpoint after each."""
    for i in range(ctx.state.get("done", 0), 1_000_000):
        time.sleep({UNIT_SECONDS!r})
        ctx.state["done"] = i + 1
        yield


eod = Job("{JOB_NAMES[0]}", extra_params=True)  # each start brings a param of its own


@eod.tasklet
def only(ctx):
    pass
'''


class _Setup:
    """A jobs folder, a log folder and the environment of the commands run against `url`."""

    def __init__(self, ctx: Context, database: str, name: str) -> None:
        self.url = ctx.repository_url(database, name)
        jobs = ctx.path(f"{name}-{database}-jobs")
        jobs.mkdir(exist_ok=True)
        (jobs / "bench_jobs.py").write_text(JOBS)
        self.cwd = ctx.workdir
        self.env = clean_env(
            BATCHCTL_DATABASE_URL=self.url,
            BATCHCTL_JOBS_DIR=str(jobs),
            BATCHCTL_LOG_DIR=str(ctx.path(f"{name}-{database}-logs")),
            BATCHCTL_HEARTBEAT_INTERVAL="5",
            BATCHCTL_HEARTBEAT_TIMEOUT="120",
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*batchctl_command(), *args], env=self.env, cwd=self.cwd,
                              capture_output=True, text=True, timeout=DEADLINE)
        if done.returncode != 0:
            raise RuntimeError(f"batchctl {' '.join(args)} exited {done.returncode}: "
                               f"{done.stderr.strip()[-2000:]}")
        return done

    def repository(self) -> Any:
        from batchctl.repository import Repository

        return Repository.open(self.url)


def _until(condition: Any, interval: float) -> Any:
    return until(condition, interval=interval, deadline=DEADLINE)


# -- stop latency ---------------------------------------------------------------------------------


@bench("stop-latency",
       help=f"from `batchctl stop` to STOPPED, for a loop of {UNIT_SECONDS * 1000:g} ms units")
def stop_latency(ctx: Context) -> Iterator[Row]:
    from batchctl.defaults import STOP_POLL_INTERVAL

    runs = STOP_QUICK_RUNS if ctx.quick else STOP_RUNS
    # An ideal poller with free database access: on average half a poll interval until it sees
    # the stop, then half a unit until the next checkpoint.
    floor = STOP_POLL_INTERVAL / 2 + UNIT_SECONDS / 2
    for database in ctx.databases:
        setup = _Setup(ctx, database, "stop")
        repository = setup.repository()
        samples: list[_StopSample] = []
        try:
            for _ in range(runs):
                # The first start runs the instance; each later one resumes the stopped one.
                launched = json.loads(setup.run("start", "units", "--detach", "--json").stdout)
                execution_id = launched["id"]
                _until(lambda: _committed(repository, execution_id) >= 2, 0.02)
                samples.append(_stop_once(setup, repository, execution_id))
        finally:
            repository.close()
        returned = [max(0.0, s.stopped - s.returned) for s in samples]  # 0: already STOPPED
        requested = [s.stopped - s.requested for s in samples]
        invoked = [s.stopped - s.invoked for s in samples]
        already = sum(r == 0 for r in returned)
        yield Row(
            "stop latency: `stop` returns -> STOPPED",
            database,
            statistics.median(returned),
            None,
            at_most(STOP_TARGET),
            note=(f"median of {runs}, max {max(returned):.3f}; {already} of {runs} were STOPPED "
                  f"before `stop` returned; from `stop` invoked: median {statistics.median(invoked):.3f}"),
        )
        yield Row(
            "stop latency: STOPPING committed -> STOPPED",
            database,
            statistics.median(requested),
            floor,
            at_most(STOP_TARGET),
            note=(f"median of {runs}, max {max(requested):.3f}; baseline: an ideal poller, poll "
                  f"interval {STOP_POLL_INTERVAL:g}s / 2 + unit {UNIT_SECONDS:g}s / 2"),
        )


class _StopSample:
    def __init__(self, invoked: float, requested: float, returned: float, stopped: float) -> None:
        self.invoked, self.requested, self.returned, self.stopped = invoked, requested, returned, stopped


def _stop_once(setup: _Setup, repository: Any, execution_id: int) -> _StopSample:
    """Run `batchctl stop ID`, watching the row every few ms: when it turned STOPPING, when the
    command returned, when the row turned STOPPED (and the command has returned)."""
    from batchctl.model import Status

    invoked = time.perf_counter()
    process = subprocess.Popen([*batchctl_command(), "stop", str(execution_id)], env=setup.env,
                               cwd=setup.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    requested = returned = stopped = None
    deadline = invoked + DEADLINE
    while returned is None or stopped is None:
        status = repository.execution(execution_id).status
        now = time.perf_counter()
        if requested is None and status in (Status.STOPPING, Status.STOPPED):
            requested = now
        if stopped is None and not status.is_live:
            if status != Status.STOPPED:
                raise RuntimeError(f"execution {execution_id} ended {status.value}, not STOPPED")
            stopped = now
        if returned is None and process.poll() is not None:
            returned = now
            if process.returncode != 0:
                raise RuntimeError(f"batchctl stop exited {process.returncode}: "
                                   f"{process.communicate()[1].strip()[-2000:]}")
        if now > deadline:
            process.kill()
            raise RuntimeError(f"execution {execution_id} did not stop within {DEADLINE:g}s")
        time.sleep(STOP_WATCH_INTERVAL)
    process.communicate()
    assert requested is not None
    return _StopSample(invoked, requested, returned, stopped)


def _committed(repository: Any, execution_id: int) -> int:
    """Checkpoints of the execution's step so far; an error if the execution has ended."""
    steps = repository.step_executions(execution_id)
    if not steps:
        execution = repository.execution(execution_id)
        if not execution.status.is_live:
            raise RuntimeError(f"execution {execution_id} ended {execution.status.value}: "
                               f"{execution.exit_message}")
    return steps[0].commit_count if steps else 0



# -- concurrent launches ---------------------------------------------------------------------------


@bench("launches", help=f"{LAUNCHES} `batchctl start` of distinct instances at once")
def launches(ctx: Context) -> Iterator[Row]:
    for database in ctx.databases:
        setup = _Setup(ctx, database, "launches")
        setup.repository().close()  # the schema exists, as it would in use
        argvs = [[*batchctl_command(), "start", JOB_NAMES[0], "--params", json.dumps({"i": i})]
                 for i in range(LAUNCHES)]
        wall, cpu, results = _all_at_once(argvs, setup)
        failures = [r for r in results if r.returncode != 0 or _unwanted(r.stderr)]

        baseline_url = setup.url.replace("postgresql+psycopg://", "postgresql://")
        _baseline_table(baseline_url)
        bare = [[PYTHON, str(BENCH_DIR / "baseline_launch.py"), baseline_url, str(i)]
                for i in range(LAUNCHES)]
        bare_wall, bare_cpu, bare_results = _all_at_once(bare, setup)
        bare_failures = sum(r.returncode != 0 for r in bare_results)

        first = failures[0].stderr.strip().splitlines()[-1:] if failures else []
        yield Row(f"{LAUNCHES} concurrent starts: failures", database, float(len(failures)),
                  float(bare_failures), at_most(0, "failed"), unit="failed",
                  note=("; ".join(first) or "no 'database is locked', no serialization error")
                  + "; baseline: the bare-driver script")
        yield Row(f"{LAUNCHES} concurrent starts: wall time", database, wall, bare_wall,
                  note=(f"all {LAUNCHES} launched at once; CPU time of all {cpu:.1f}s vs "
                        f"{bare_cpu:.1f}s on {os.cpu_count()} CPUs; baseline: {LAUNCHES} "
                        "bare-driver scripts recording a run (2 transactions) at once"))


def _all_at_once(
    argvs: list[list[str]], setup: _Setup
) -> tuple[float, float, list[subprocess.CompletedProcess[str]]]:
    """Start every command at once and wait for all: wall time, CPU time of them all, results."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with stopwatch() as elapsed:
        processes = [
            subprocess.Popen(argv, env=setup.env, cwd=setup.cwd, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
            for argv in argvs
        ]
        results = []
        for argv, process in zip(argvs, processes):
            _, err = process.communicate(timeout=DEADLINE)
            results.append(subprocess.CompletedProcess(argv, process.returncode, "", err))
        wall = elapsed()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, results


def _unwanted(stderr: str) -> bool:
    text = stderr.lower()
    return "database is locked" in text or "serializ" in text or "deadlock" in text


def _baseline_table(url: str) -> None:
    subprocess.run([PYTHON, str(BENCH_DIR / "baseline_launch.py"), url, "--create"], check=True)


# -- the cost of a start -----------------------------------------------------------------------------


@bench("start-cost",
       help=f"`batchctl start` of a trivial job with 1 and {START_COST_EXECUTIONS:,} past executions")
def start_cost(ctx: Context) -> Iterator[Row]:
    for database in ctx.databases:
        small = _Setup(ctx, database, "start1")
        populate(small.url, 1)
        big = _Setup(ctx, database, "start100k")
        with stopwatch() as elapsed:
            counts = populate(big.url, START_COST_EXECUTIONS)
        filled = elapsed()
        # Interleaved (1, 100k, 1, 100k, ...), so that load from elsewhere falls on both alike;
        # every start is of a new instance, one warm-up each.
        times: dict[str, list[float]] = {"start1": [], "start100k": []}
        for run in range(ctx.runs + 1):
            for name, setup in (("start1", small), ("start100k", big)):
                argv = [*batchctl_command(), "start", JOB_NAMES[0], "--params",
                        json.dumps({"bench_run": run})]
                seconds = run_once(argv, env=setup.env, cwd=setup.cwd)
                if run:
                    times[name].append(seconds)
        one, many = statistics.median(times["start1"]), statistics.median(times["start100k"])
        yield Row("start, 1 past execution", database, one, None,
                  note=f"median of {ctx.runs}; best {min(times['start1']):.3f}")
        yield Row(f"start, {counts['executions']:,} past executions", database, many, one,
                  within(START_COST_RATIO),
                  note=(f"median of {ctx.runs}; best {min(times['start100k']):.3f}; baseline: the "
                        f"same start with 1 past execution; filled in {filled:.1f}s"))

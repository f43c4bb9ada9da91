"""The scheduler (issue 11): fire -> STARTED latency, idle CPU, no double fire.

    python bench/run.py --only fire-latency --only scheduler-idle-cpu --only double-fire

`double-fire` is shortened by default (20 schedules every 5 s for 30 s, two schedulers, one of
them SIGKILLed and restarted halfway); BATCHCTL_BENCH_LONG=1 runs the issue's version: 100
per-minute schedules for 5 minutes.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
from datetime import datetime
from typing import Any, Iterator

from common import Context, Row, at_most, batchctl_command, bench, clean_env, holds, until

DEADLINE = 120.0
LATENCY_FIRES, LATENCY_QUICK_FIRES = 60, 10
IDLE_SCHEDULES = 100
IDLE_SECONDS, IDLE_QUICK_SECONDS = 30.0, 10.0
LONG = os.environ.get("BATCHCTL_BENCH_LONG", "") not in ("", "0")

JOBS = '''
from batchctl import Job

tick = Job("tick", params={"at": str})


@tick.tasklet
def only(ctx):
    pass
'''


class _Setup:
    def __init__(self, ctx: Context, database: str, name: str, schedules: str) -> None:
        self.url = ctx.repository_url(database, name)
        folder = ctx.path(f"{name}-{database}")
        (folder / "jobs").mkdir(parents=True, exist_ok=True)
        (folder / "jobs" / "tick.py").write_text(JOBS)
        (folder / "config.toml").write_text("[batchctl]\n\n" + schedules)
        self.folder = folder
        self.env = clean_env(
            BATCHCTL_CONFIG=str(folder / "config.toml"), BATCHCTL_DATABASE_URL=self.url,
            BATCHCTL_JOBS_DIR=str(folder / "jobs"), BATCHCTL_LOG_DIR=str(folder / "logs"),
            BATCHCTL_HEARTBEAT_INTERVAL="5", BATCHCTL_HEARTBEAT_TIMEOUT="120",
        )
        self.processes: list[subprocess.Popen[bytes]] = []

    def scheduler(self, tag: str = "a") -> subprocess.Popen[bytes]:
        log = (self.folder / f"scheduler-{tag}.log").open("ab")
        process = subprocess.Popen([*batchctl_command(), "scheduler"], env=self.env,
                                   cwd=self.folder, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        self.processes.append(process)
        _until(lambda: b"started with" in (self.folder / f"scheduler-{tag}.log").read_bytes()
               or process.poll() is not None)
        if process.poll() is not None:
            raise RuntimeError((self.folder / f"scheduler-{tag}.log").read_text()[-2000:])
        return process

    def repository(self) -> Any:
        from batchctl.repository import Repository

        return Repository.open(self.url)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _schedule(name: str, cron: str, **options: Any) -> str:
    extra = "".join(f"{key} = {value}\n" for key, value in options.items())
    return (f'[batchctl.schedules.{name}]\njob = "tick"\ncron = "{cron}"\n'
            f'params = {{at = "{{fire}} {name}"}}\n{extra}\n')


def _until(condition: Any, interval: float = 0.1, deadline: float = DEADLINE) -> Any:
    return until(condition, interval=interval, deadline=deadline)


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


@bench("fire-latency", help="from a fire instant to its execution STARTED (cold launcher)")
def fire_latency(ctx: Context) -> Iterator[Row]:
    fires = LATENCY_QUICK_FIRES if ctx.quick else LATENCY_FIRES
    for database in ctx.databases:
        setup = _Setup(ctx, database, "latency", _schedule("s", "* * * * * *", grace=1))
        repository = setup.repository()
        try:
            setup.scheduler()
            _until(lambda: len([f for f in repository.fires("s") if f.outcome == "launched"])
                   >= fires + 1, interval=0.5)
            setup.close()
            recorded = [f for f in repository.fires("s") if f.outcome == "launched"][1:fires + 1]

            def started(fire: Any) -> datetime:
                return _until(lambda: repository.execution(fire.execution_id).started_at)

            latencies = [(started(f) - f.fire_at).total_seconds() for f in recorded]
        finally:
            setup.close()
            repository.close()
        note = f"{len(latencies)} fires, every second; cold `python -m batchctl run-execution`"
        yield Row("fire -> STARTED p50", database, statistics.median(latencies), note=note)
        yield Row("fire -> STARTED p99", database, _percentile(latencies, 0.99),
                  target=at_most(1.0), note=f"max {max(latencies):.3f}s")


@bench("scheduler-idle-cpu", help=f"CPU of a scheduler with {IDLE_SCHEDULES} schedules, idle")
def scheduler_idle_cpu(ctx: Context) -> Iterator[Row]:
    seconds = IDLE_QUICK_SECONDS if ctx.quick else IDLE_SECONDS
    schedules = "".join(_schedule(f"s{i:03d}", f"{i % 60} {i % 24} * * *") for i in range(IDLE_SCHEDULES))
    for database in ctx.databases:
        setup = _Setup(ctx, database, "idle", schedules)
        try:
            process = setup.scheduler()
            time.sleep(2.0)  # past its start-up
            before, began = _cpu_seconds(process.pid), time.monotonic()
            time.sleep(seconds)
            used = _cpu_seconds(process.pid) - before
            share = 100.0 * used / (time.monotonic() - began)
        finally:
            setup.close()
        yield Row(f"scheduler idle CPU, {IDLE_SCHEDULES} schedules", database, share, unit="%",
                  target=at_most(1.0, "%"), note=f"over {seconds:g}s, % of one core")


@bench("double-fire", help="two schedulers, one SIGKILLed and restarted: every fire once")
def double_fire(ctx: Context) -> Iterator[Row]:
    count, cron, seconds = (100, "0 * * * * *", 300.0) if LONG else (20, "*/5 * * * * *", 30.0)
    schedules = "".join(_schedule(f"d{i:03d}", cron, grace=30) for i in range(count))
    for database in ctx.databases:
        setup = _Setup(ctx, database, "double", schedules)
        repository = setup.repository()
        try:
            first = setup.scheduler("a")
            setup.scheduler("b")
            began = time.monotonic()
            time.sleep(seconds / 2)
            first.kill()
            first.wait()
            setup.scheduler("a")
            time.sleep(max(0.0, seconds - (time.monotonic() - began)))
            setup.close()
            fires = repository.fires()
            keys = [(f.schedule, f.fire_at) for f in fires]
            executions = [f.execution_id for f in fires if f.execution_id is not None]
            total = repository.count_executions()
        finally:
            setup.close()
            repository.close()
        ok = (len(keys) == len(set(keys)) and len(executions) == len(set(executions))
              and total == len(executions))
        yield Row("no double fire", database, f"{len(fires)} fires, {total} executions",
                  target=holds("each fire once"), passed=ok,
                  note=f"{count} schedules `{cron}`, {seconds:g}s, a SIGKILL halfway")

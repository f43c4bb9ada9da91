"""What every benchmark shares: the registry, result rows, timing, and repositories to measure.

A benchmark is a function decorated with `@bench("name")` in a `bench_*.py` module of this
folder. It receives a `Context` and yields `Row`s; `run.py` finds the modules, runs the chosen
benchmarks and prints one table. Benchmarks never run in the test suite.

```
@bench("stop", help="stop latency of a chunk-like loop")
def stop_latency(ctx: Context) -> Iterator[Row]:
    for database, url in ctx.repositories():
        ...
        yield Row("stop latency", database, batchctl=0.6, baseline=None, target=at_most(1.0))
```
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import quote

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
PYTHON = sys.executable  # every subprocess runs on the interpreter that runs the benchmarks

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
POSTGRES_URL = os.environ.get(
    "BATCHCTL_BENCH_POSTGRES_URL",
    os.environ.get("BATCHCTL_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
)
DATABASES = ("sqlite", "postgres")

RUNS = 15  # subprocess timings per figure (the median is reported)
QUICK_RUNS = 5  # with --quick


# -- targets and rows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A goal a figure is judged against: a ratio to the baseline, or an absolute bound."""

    text: str
    check: Callable[[Row], bool | None]


def within(ratio: float) -> Target:
    """batchctl at most `ratio` times the baseline."""
    return Target(f"<= {ratio:g}x", lambda row: None if row.ratio is None else row.ratio <= ratio)


def at_most(limit: float, unit: str = "s") -> Target:
    """batchctl's figure at most `limit` (seconds unless said otherwise)."""

    def check(row: Row) -> bool | None:
        return row.batchctl <= limit if isinstance(row.batchctl, (int, float)) else None

    return Target(f"<= {limit:g} {unit}", check)


def holds(text: str) -> Target:
    """A yes/no property: the row's `passed` says whether it holds."""
    return Target(text, lambda row: row.passed)


INFO = Target("-", lambda row: None)


@dataclass(frozen=True)
class Row:
    """One line of the results table.

    `batchctl` and `baseline` are numbers in `unit` (seconds by default) or short texts.
    """

    name: str
    database: str
    batchctl: float | str | None
    baseline: float | str | None = None
    target: Target = INFO
    unit: str = "s"
    note: str = ""
    passed: bool | None = None  # for `holds` targets
    compare: bool = True  # False: the baseline is context, a ratio would mean nothing

    @property
    def ratio(self) -> float | None:
        if not self.compare:
            return None
        if isinstance(self.batchctl, (int, float)) and isinstance(self.baseline, (int, float)):
            return self.batchctl / self.baseline if self.baseline else None
        return None

    @property
    def verdict(self) -> str:
        result = self.target.check(self)
        return "info" if result is None else ("ok" if result else "MISS")


# -- the registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    name: str
    function: Callable[[Context], Iterable[Row]]
    help: str


BENCHES: dict[str, Bench] = {}


def bench(name: str, *, help: str = "") -> Callable[..., Any]:
    """Register a benchmark function: `fn(ctx) -> Iterable[Row]`."""

    def register(function: Callable[[Context], Iterable[Row]]) -> Callable[[Context], Iterable[Row]]:
        if name in BENCHES:
            raise ValueError(f"benchmark {name!r} is registered twice")
        BENCHES[name] = Bench(name, function, help or (function.__doc__ or "").strip())
        return function

    return register


# -- the context a benchmark runs in ------------------------------------------------------------


@dataclass
class Context:
    """Options of this run and the resources a benchmark may ask for (cleaned up at the end)."""

    quick: bool = False
    databases: Sequence[str] = DATABASES
    long: bool = False  # --long: the full sizes of the long benchmarks
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="batchctl-bench-")))
    _cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return QUICK_RUNS if self.quick else RUNS

    def path(self, name: str) -> Path:
        """A path inside this run's scratch folder."""
        return self.workdir / name

    def repository_url(self, database: str, name: str) -> str:
        """A new, empty repository URL on `database`: a SQLite file, or a Postgres schema of this
        run's own (`bench_<pid>_<name>`), dropped when the run ends."""
        if database == "sqlite":
            return f"sqlite:///{self.path(name + '.db')}"
        if database == "postgres":
            schema = f"bench_{os.getpid()}_{name}_{uuid.uuid4().hex[:6]}"
            create_postgres_schema(schema)
            self._cleanups.append(lambda: drop_postgres_schema(schema))
            return postgres_schema_url(schema)
        raise ValueError(f"unknown database {database!r}")

    def close(self) -> None:
        while self._cleanups:
            try:
                self._cleanups.pop()()
            except Exception as exc:  # keep cleaning up; say what was left behind
                print(f"bench: cleanup failed: {exc}", file=sys.stderr)
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- Postgres schemas ---------------------------------------------------------------------------


def postgres_schema_url(schema: str, base: str = POSTGRES_URL) -> str:
    """The server's URL with `schema` as the default search path."""
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options={quote(f'-csearch_path={schema}')}"


def _admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(_libpq_url(POSTGRES_URL), autocommit=True) as connection:
        connection.execute(statement)


def _libpq_url(url: str) -> str:
    """A SQLAlchemy Postgres URL as libpq takes it (no `+driver`)."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql://{rest}" if sep and scheme.startswith("postgres") else url


def create_postgres_schema(schema: str) -> None:
    _admin(f'CREATE SCHEMA "{schema}"')


def drop_postgres_schema(schema: str) -> None:
    _admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- timing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Wall and CPU (user + system) seconds of repeated runs of one command."""

    times: tuple[float, ...]
    cpu_times: tuple[float, ...] = ()

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def cpu(self) -> float:
        """Median CPU time: less disturbed than wall time by other load on the machine."""
        return statistics.median(self.cpu_times) if self.cpu_times else float("nan")


def until(condition: Callable[[], Any], *, interval: float, deadline: float) -> Any:
    """Poll `condition` every `interval` seconds until it returns something truthy, and return
    that; RuntimeError after `deadline` seconds (a benchmark waits on state, never a fixed time)."""
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise RuntimeError(f"no result within {deadline:g}s")
        time.sleep(interval)


def run_once(argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    """Wall seconds of one subprocess run; raises if it fails (a failing command is no figure)."""
    return run_measured(argv, env=env, cwd=cwd)[0]


def run_measured(
    argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one subprocess run; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        list(argv), env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def compare_commands(
    commands: Sequence[Sequence[str]],
    runs: int,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    warmup: int = 1,
) -> list[Timing]:
    """Time several commands interleaved (A B A B ...), so that load from other processes on
    the machine falls on all of them alike; one warm-up run each first (file cache)."""
    for argv in commands:
        for _ in range(warmup):
            run_once(argv, env=env, cwd=cwd)
    walls: list[list[float]] = [[] for _ in commands]
    cpus: list[list[float]] = [[] for _ in commands]
    for _ in range(runs):
        for index, argv in enumerate(commands):
            wall, cpu = run_measured(argv, env=env, cwd=cwd)
            walls[index].append(wall)
            cpus[index].append(cpu)
    return [Timing(tuple(w), tuple(c)) for w, c in zip(walls, cpus)]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a measured command: no batchctl settings but the ones given, no
    colour, a fixed width (so that rich does the same work every run). Bytecode is cached as an
    installed package's is: with PYTHONDONTWRITEBYTECODE (set on some machines) every run would
    recompile batchctl's source but not the site-packages it is compared with."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BATCHCTL_") and k != "PYTHONDONTWRITEBYTECODE"}
    env.update({"NO_COLOR": "1", "COLUMNS": "160", "TERM": "dumb"})
    env.update(extra)
    return env


def batchctl_command() -> list[str]:
    """The installed console script of this interpreter's environment (what users run)."""
    script = Path(PYTHON).parent / "batchctl"
    if script.is_file():
        return [str(script)]
    return [PYTHON, "-m", "batchctl"]


# -- where start-up time goes ----------------------------------------------------------------------

_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_group(name: str) -> str:
    """The group an imported module's time is charged to (see `import_profile`)."""
    root = name.split(".")[0]
    if name.startswith("sqlalchemy.dialects."):
        return "sqlalchemy " + name.split(".")[2] + " dialect"
    if name.startswith("typer._adapters"):
        return "pydantic"
    if root in ("pydantic_core", "annotated_types", "typing_inspection"):
        return "pydantic"
    if root.startswith("__editable__"):
        return "editable-install hook (pip install -e)"
    if root.startswith("psycopg"):
        return "psycopg"
    return root


def import_profile(argv: Sequence[str], runs: int, **kwargs: Any) -> dict[str, float]:
    """Median seconds of import time per group, from `python -X importtime` runs of `argv`
    (a Python command line without the interpreter).

    Each module's own time is charged to its nearest importer that is not in the standard
    library (`asyncio` imported by SQLAlchemy counts as SQLAlchemy's); standard-library modules
    imported at the top level count as "python start-up".
    """
    samples: list[dict[str, float]] = []
    for _ in range(runs):
        done = subprocess.run([PYTHON, "-X", "importtime", *argv], capture_output=True, text=True,
                              **kwargs)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
        samples.append(_charge(done.stderr))
    groups = sorted({group for sample in samples for group in sample})
    return {group: statistics.median(s.get(group, 0.0) for s in samples) for group in groups}


def _charge(report: str) -> dict[str, float]:
    rows = []
    for line in report.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            rows.append((int(match[1]) / 1e6, (len(match[3]) - 1) // 2, match[4]))
    # importtime lists a module after the modules it imported, one level deeper: a module's
    # importer is the next line at a smaller depth.
    importer: dict[int, str] = {}
    for index in range(len(rows) - 1, -1, -1):
        _, depth, _ = rows[index]
        for later in range(index + 1, len(rows)):
            if rows[later][1] < depth:
                importer[index] = rows[later][2]
                break
    by_name = {name: index for index, (_, _, name) in enumerate(rows)}
    charged: dict[str, float] = {}
    for index, (seconds, _, name) in enumerate(rows):
        owner, at = name, index
        while _is_stdlib(owner) and at in importer:
            owner = importer[at]
            at = by_name.get(owner, -1)
        group = "python start-up" if _is_stdlib(owner) else import_group(owner)
        charged[group] = charged.get(group, 0.0) + seconds
    return charged


def _is_stdlib(name: str) -> bool:
    root = name.split(".")[0]
    return root in sys.stdlib_module_names or (root.startswith("_") and not root.startswith("__editable__"))


# -- a repository holding many executions --------------------------------------------------------

JOB_NAMES = ("eod", "payroll", "reconcile", "billing", "archive")
STEPS = ("extract", "transform", "load")
BULK = 5_000  # rows per executemany


def populate(url: str, executions: int, *, steps_per_execution: int = len(STEPS)) -> dict[str, int]:
    """Fill the repository at `url` with `executions` finished executions, fast.

    Creates the schema through batchctl (`Repository.open`), then bulk-inserts rows with
    SQLAlchemy Core into batchctl's own tables: one instance per job and business day, most run
    once and COMPLETED, every tenth FAILED (every 37th STOPPED) first and restarted. Returns the
    row counts. Job names are `JOB_NAMES`.
    """
    from batchctl.model import instance_key
    from batchctl.repository import Repository
    from batchctl.repository.tables import job_execution, job_instance, step_execution

    repository = Repository.open(url)
    base = datetime(2020, 1, 1, tzinfo=timezone.utc)
    instances: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    instance_id = 0
    while len(runs) < executions:
        instance_id += 1
        job = JOB_NAMES[instance_id % len(JOB_NAMES)]
        day = (base + timedelta(days=instance_id // len(JOB_NAMES))).date().isoformat()
        params = {"date": day}
        created = base + timedelta(minutes=instance_id * 10)
        instances.append(
            {"id": instance_id, "job_name": job, "job_key": instance_key(params),
             "params": params, "created_at": created}
        )
        outcomes = ["COMPLETED"]
        if instance_id % 10 == 0:
            outcomes.insert(0, "STOPPED" if instance_id % 37 == 0 else "FAILED")
        previous = None
        for attempt, outcome in enumerate(outcomes[: executions - len(runs)]):
            execution_id = len(runs) + 1
            started = created + timedelta(minutes=attempt * 5, seconds=1)
            ended = started + timedelta(seconds=42)
            message = None
            if outcome == "FAILED":
                message = "step load failed: OperationalError: connection reset\nTraceback ..."
            elif outcome == "STOPPED":
                message = "step load stopped: stopped at a checkpoint"
            runs.append(
                {"id": execution_id, "instance_id": instance_id, "job_name": job,
                 "status": outcome, "version": 4, "exit_code": outcome, "exit_message": message,
                 "created_at": started, "started_at": started, "ended_at": ended,
                 "heartbeat_at": ended, "host": "bench-host", "pid": 4242,
                 "context": {"accounts": 7}, "resumed_from": previous, "log_path": None}
            )
            for index, name in enumerate(STEPS[:steps_per_execution]):
                status = outcome if index == steps_per_execution - 1 else "COMPLETED"
                steps.append(
                    {"job_execution_id": execution_id, "name": name, "status": status,
                     "version": 3, "exit_code": status, "exit_message": None,
                     "started_at": started, "ended_at": ended, "context": {"posted": 5000},
                     "commit_count": 10}
                )
            previous = execution_id
    try:
        with repository.engine.begin() as connection:
            for table, rows in ((job_instance, instances), (job_execution, runs), (step_execution, steps)):
                for start in range(0, len(rows), BULK):
                    connection.execute(table.insert(), rows[start : start + BULK])
            if connection.dialect.name == "postgresql":
                # Explicit ids leave the sequences behind; later inserts must not collide.
                for table in ("job_instance", "job_execution"):
                    connection.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
        if repository.dialect == "postgresql":
            # What autovacuum does soon after a bulk load anyway. SQLite gets no ANALYZE:
            # batchctl never runs it, so a real repository has no statistics.
            with repository.engine.connect() as connection:
                connection.execution_options(isolation_level="AUTOCOMMIT")
                connection.exec_driver_sql("VACUUM ANALYZE")
    finally:
        repository.close()
    return {"instances": len(instances), "executions": len(runs), "step_executions": len(steps)}


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """`with stopwatch() as elapsed: ...; elapsed()` - seconds since the block began."""
    started = time.perf_counter()
    yield lambda: time.perf_counter() - started


def child_result(script: str, *argv: str) -> dict[str, Any]:
    """Run `script --child argv...` on this interpreter and return the JSON object of its last
    line: a benchmark times each contender in a process of its own."""
    import json

    done = subprocess.run(
        [PYTHON, script, "--child", *argv], capture_output=True, text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} run failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def load_average() -> str:
    """The machine's load, for a note beside a figure that a busy machine skews."""
    return "load " + ", ".join(f"{x:.1f}" for x in os.getloadavg())

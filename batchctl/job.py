"""Authoring: `Job`, its steps, its listeners and the `StepContext` steps receive.

No SQL and no I/O here: a job module imports this, declares, and the engine runs what was
declared.
"""

from __future__ import annotations

import enum
import inspect
import logging
import os
import warnings
from difflib import get_close_matches
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Protocol

from batchctl.defaults import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_PARTITION_WORKERS,
    DEFAULT_RETRY_LIMIT,
    DEFAULT_SKIP_LIMIT,
)
from batchctl.errors import JobDefinitionError
from batchctl.model import Param, convert_params
from batchctl.schedules import schedule as _schedule

JOB_LISTENER_METHODS = ("before_job", "after_job")
STEP_LISTENER_METHODS = ("before_step", "after_step")
CHUNK_LISTENER_METHODS = ("before_chunk", "after_chunk", "on_chunk_error", "on_skip")
PARTITION_LISTENER_METHODS = ("before_partition", "after_partition")
LISTENER_METHODS = (
    JOB_LISTENER_METHODS + STEP_LISTENER_METHODS + CHUNK_LISTENER_METHODS
    + PARTITION_LISTENER_METHODS
)


class StepKind(str, enum.Enum):
    """What a step is; each kind has its runner (batchctl.runners)."""

    TASKLET = "tasklet"
    CHUNK = "chunk"


class PartitionMode(str, enum.Enum):
    """Where the partitions of a partitioned step run; each mode has its executor
    (batchctl.executors)."""

    PROCESS = "process"  # local worker processes: CPU-bound work uses every core
    THREAD = "thread"  # threads of the job's process: I/O-bound work
    REMOTE = "remote"  # `batchctl worker` processes on any machine sharing a Postgres repository
    DASK = "dask"  # one Dask task per partition, on a Dask cluster (or a local one)


PARTITION_MODES = tuple(mode.value for mode in PartitionMode)


# Used with fullmatch: `^...$` with match() lets a name end in a newline.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")

class JobListener(Protocol):
    """Listener methods, each optional: an object implements those it needs (a method named
    like one but spelled otherwise is refused when the listener is registered)."""

    def before_job(self, execution: Any) -> None: ...
    def after_job(self, execution: Any) -> None: ...
    def before_step(self, ctx: StepContext) -> None: ...
    def after_step(self, ctx: StepContext, step_execution: Any) -> None: ...
    def before_chunk(self, ctx: StepContext) -> None: ...
    def after_chunk(self, ctx: StepContext, step_execution: Any) -> None: ...
    def on_chunk_error(self, ctx: StepContext, error: BaseException) -> None: ...
    def on_skip(self, ctx: StepContext, skipped: Any) -> None: ...
    def before_partition(self, ctx: StepContext) -> None: ...
    def after_partition(self, ctx: StepContext, step_execution: Any) -> None: ...


StepFunction = Callable[["StepContext"], Any]
Processor = Callable[[Any, "StepContext"], Any]
ExceptionTypes = tuple[type[BaseException], ...]


@dataclass(frozen=True)
class ChunkSettings:
    """How a chunk step reads, processes, writes and tolerates faults.

    `reader` is a function `read(ctx) -> Iterable[item]` or an object with `open(ctx, state)`,
    `read()` (None at the end), `state()`, `close()`; `writer` a function `write(items, ctx)`
    or an object with `open(ctx, state)`, `write(items)`, `state()`, `close()`. `processor`
    is `fn(item, ctx) -> item | None` (None filters the item out) or None (items pass as read).
    A failing item is retried `retry_limit` times when its exception is one of `retry`,
    waiting `backoff` seconds before the first retry and twice as long before each next; then
    skipped when it is one of `skip`, at most `skip_limit` times over the step (None: no limit).
    """

    reader: Any
    writer: Any
    size: int
    processor: Processor | None = None
    retry: ExceptionTypes = ()
    retry_limit: int = 0
    backoff: float | Callable[[int], float] = 0.0
    skip: ExceptionTypes = ()
    skip_limit: int | None = 0


@dataclass(frozen=True)
class PartitionSettings:
    """How a partitioned step splits and where its partitions run.

    `partitioner(ctx)` returns one JSON-able dict per partition (a key range, a file name...),
    which the partition's reader and writer see as `ctx.partition`. `mode` "process" runs them
    in `workers` local processes (CPU-bound work uses every core), "thread" in `workers` threads
    of the job's process (I/O-bound work), "remote" in `batchctl worker` processes on any
    machine sharing the Postgres repository, "dask" as one Dask task each on the configured
    Dask scheduler (or on a local cluster of `workers` processes). `after_partitions(ctx, partitions)` combines the
    results once all completed, given every partition's step execution in partition order.
    """

    partitioner: Callable[[Any], Iterable[dict[str, Any]]]
    workers: int = 2
    mode: PartitionMode = PartitionMode.PROCESS
    after_partitions: Callable[[Any, list[Any]], None] | None = None


@dataclass(frozen=True)
class Step:
    """One declared step: a tasklet (`tasklet` is its function; a generator checkpoints at every
    `yield`) or a chunk step (`chunk` says how it reads, processes and writes)."""

    name: str
    kind: StepKind
    tasklet: StepFunction | None = None
    chunk: ChunkSettings | None = None
    partitions: PartitionSettings | None = None

    @property
    def is_generator(self) -> bool:
        return self.tasklet is not None and inspect.isgeneratorfunction(self.tasklet)

    @property
    def description(self) -> str:
        """The first line of the docstring of its tasklet, else of its processor."""
        described = self.tasklet or (self.chunk.processor if self.chunk is not None else None)
        doc = inspect.getdoc(described) if described is not None else None
        return doc.splitlines()[0] if doc else ""


class StepContext:
    """What a step sees: typed params, its own saved state, the job's shared context, a logger.

    `state` is the step execution's context: saved at every checkpoint (a generator tasklet's
    `yield`, a chunk's commit) and handed back on restart. `job_context` is shared by all steps
    of the job execution and saved after each step.

    `connection` is the repository database's SQLAlchemy connection while a tasklet runs and
    inside a chunk's write (None elsewhere): what a tasklet runs through it commits with its
    next checkpoint (a generator's `yield`) or with the step's completion (a plain tasklet),
    what a writer writes with the chunk's checkpoint; a failure rolls it back.
    `project_dir` is the folder relative paths are relative to (the config file's folder):
    the built-in items resolve theirs against it, and a step's own files may too.
    `database` is the repository database's SQLAlchemy engine, for readers of that database
    (named so that it is not read as batchctl's engine; `engine` is its deprecated alias).
    """

    def __init__(
        self,
        *,
        job_name: str,
        step_name: str,
        params: Mapping[str, Any],
        state: dict[str, Any],
        job_context: dict[str, Any],
        execution_id: int,
        step_execution_id: int,
        stop_event: threading.Event,
        database: Any = None,
        project_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.job_name = job_name
        self.step_name = step_name
        self.params: Mapping[str, Any] = MappingProxyType(dict(params))
        self.state = state
        self.job_context = job_context
        self.execution_id = execution_id
        self.step_execution_id = step_execution_id
        self.log = logging.getLogger(f"batchctl.job.{job_name}.{step_name}")
        self._stop_event = stop_event
        self.database = database
        self.connection: Any = None
        self.partition: dict[str, Any] | None = None  # a partition's context, from the partitioner
        self.project_dir = Path(project_dir) if project_dir is not None else Path.cwd()

    @property
    def engine(self) -> Any:
        """Deprecated: `database`."""
        warnings.warn("ctx.engine is deprecated: use ctx.database", DeprecationWarning, stacklevel=2)
        return self.database

    @property
    def stop_requested(self) -> bool:
        """True once someone asked this execution to stop; a long step may check it."""
        return self._stop_event.is_set()


class _FunctionListener:
    """Adapts one decorated function to the listener-object protocol."""

    def __init__(self, method: str, function: Callable[..., Any]) -> None:
        setattr(self, method, function)
        self.function = function


@dataclass
class Job:
    """A named, parameterised list of steps.

    ```
    job = Job("eod", description="End-of-day accounting", params={"date": date})

    @job.tasklet
    def open_day(ctx: StepContext) -> None: ...
    ```

    `extra_params=True` accepts params the job does not declare (kept as given); without it a
    name that is not declared is refused, so that a typo never makes a new instance.
    """

    name: str
    description: str = ""
    params: Mapping[str, type | Param] = field(default_factory=dict)
    listeners: list[Any] = field(default_factory=list)
    extra_params: bool = False
    steps: list[Step] = field(default_factory=list, init=False)
    defined_in: str = field(default="", init=False, compare=False)
    schedules: list[_schedule.Schedule] = field(default_factory=list, init=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise JobDefinitionError(
                f"invalid job name {self.name!r}: use letters, digits, '_', '.', ':' or '-'"
            )
        if self.name.isdigit():
            raise JobDefinitionError(
                f"invalid job name {self.name!r}: a name made only of digits would read as an "
                "execution id"
            )
        self.params = {name: _as_param(name, kind) for name, kind in dict(self.params).items()}
        given, self.listeners = list(self.listeners), []
        for listener in given:
            self.listener(listener)
        caller = sys._getframe(2)
        self.defined_in = f"{caller.f_code.co_filename}:{caller.f_lineno}"

    @property
    def declared_params(self) -> Mapping[str, Param]:
        return self.params  # type: ignore[return-value]

    def convert_params(self, given: Mapping[str, Any], *, stored: bool = False) -> dict[str, Any]:
        """Validate and type the params given as JSON; raise InvalidParams naming the bad one.

        A name the job does not declare is refused unless the job was declared with
        `extra_params=True`. `stored`: the params an instance was created with, typed again to
        run it; an undeclared name there is kept, so that removing a declaration from the job
        never strands an instance that can then neither restart nor finish.
        """
        return convert_params(
            self.declared_params, given, extra=self.extra_params or stored, job_name=self.name
        )

    # -- steps ----------------------------------------------------------------------------------

    def tasklet(
        self,
        function: StepFunction | None = None,
        *,
        name: str | None = None,
        partitioner: Callable[[Any], Iterable[dict[str, Any]]] | None = None,
        workers: int = DEFAULT_PARTITION_WORKERS,
        mode: str = "process",
        after_partitions: Callable[[Any, list[Any]], None] | None = None,
    ) -> Any:
        """Declare a tasklet step: `fn(ctx)`, or a generator whose every `yield` is a checkpoint.

        Usable bare (`@job.tasklet`) or with options (`@job.tasklet(name="load")`). With a
        `partitioner` the step runs once per partition (see `PartitionSettings`).
        """

        def declare(fn: StepFunction) -> StepFunction:
            step_name = name or fn.__name__
            partitions = _partition_settings(
                f"job {self.name!r}, step {step_name!r}", partitioner, workers, mode,
                after_partitions,
            )
            self._add_step(
                Step(name=step_name, kind=StepKind.TASKLET, tasklet=fn, partitions=partitions)
            )
            return fn

        return declare(function) if function is not None else declare

    def chunk(
        self,
        *,
        reader: Any,
        writer: Any,
        size: int = DEFAULT_CHUNK_SIZE,
        name: str | None = None,
        retry: type[BaseException] | Iterable[type[BaseException]] = (),
        retry_limit: int | None = None,
        backoff: float | Callable[[int], float] = 0.0,
        skip: type[BaseException] | Iterable[type[BaseException]] = (),
        skip_limit: int | None = DEFAULT_SKIP_LIMIT,
        partitioner: Callable[[Any], Iterable[dict[str, Any]]] | None = None,
        workers: int = DEFAULT_PARTITION_WORKERS,
        mode: str = "process",
        after_partitions: Callable[[Any, list[Any]], None] | None = None,
    ) -> Callable[[Processor], Processor]:
        """Declare a chunk step whose processor is the decorated `fn(item, ctx)`.

        ```
        @job.chunk(reader=CsvReader("in.csv"), writer=SqlWriter("ledger"), size=1000)
        def post(entry: dict, ctx: StepContext) -> dict | None:   # None filters the item out
            ...
        ```

        Each chunk reads up to `size` items, processes each, writes the list, and commits the
        step's counters and state. See `ChunkSettings` for `retry` and `skip`; `backoff` is
        seconds before the first retry (doubled each time) or `fn(retry_number) -> seconds`.
        """

        def declare(fn: Processor) -> Processor:
            self.chunk_step(
                name or fn.__name__, reader=reader, writer=writer, size=size, processor=fn,
                retry=retry, retry_limit=retry_limit, backoff=backoff, skip=skip,
                skip_limit=skip_limit, partitioner=partitioner, workers=workers, mode=mode,
                after_partitions=after_partitions,
            )
            return fn

        return declare

    def chunk_step(
        self,
        name: str,
        *,
        reader: Any,
        writer: Any,
        size: int = DEFAULT_CHUNK_SIZE,
        processor: Processor | None = None,
        retry: type[BaseException] | Iterable[type[BaseException]] = (),
        retry_limit: int | None = None,
        backoff: float | Callable[[int], float] = 0.0,
        skip: type[BaseException] | Iterable[type[BaseException]] = (),
        skip_limit: int | None = DEFAULT_SKIP_LIMIT,
        partitioner: Callable[[Any], Iterable[dict[str, Any]]] | None = None,
        workers: int = DEFAULT_PARTITION_WORKERS,
        mode: str = "process",
        after_partitions: Callable[[Any, list[Any]], None] | None = None,
    ) -> Step:
        """Declare a chunk step by name, with or without a processor (items pass as read):

        ```
        job.chunk_step("load", reader=CsvReader("in.csv"), writer=SqlWriter("ledger"), size=1000)
        ```
        """
        where = f"job {self.name!r}, step {name!r}"
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise JobDefinitionError(f"{where}: size must be a positive integer, not {size!r}")
        if not callable(getattr(reader, "read", None)) and not callable(reader):
            raise JobDefinitionError(
                f"{where}: reader must be a function read(ctx) -> iterable or an object with read()"
            )
        if not callable(writer) and not callable(getattr(writer, "write", None)):
            raise JobDefinitionError(
                f"{where}: writer must be a function write(items, ctx) or an object with write()"
            )
        if processor is not None and not callable(processor):
            raise JobDefinitionError(f"{where}: processor must be callable")
        retry_types = _exception_types(where, "retry", retry)
        skip_types = _exception_types(where, "skip", skip)
        if retry_limit is None:
            retry_limit = DEFAULT_RETRY_LIMIT if retry_types else 0
        if isinstance(retry_limit, bool) or not isinstance(retry_limit, int) or retry_limit < 0:
            raise JobDefinitionError(f"{where}: retry_limit must be an integer >= 0")
        if skip_limit is not None and (
            isinstance(skip_limit, bool) or not isinstance(skip_limit, int) or skip_limit < 0
        ):
            raise JobDefinitionError(f"{where}: skip_limit must be an integer >= 0 or None")
        if not callable(backoff) and (not isinstance(backoff, (int, float)) or backoff < 0):
            raise JobDefinitionError(f"{where}: backoff must be seconds >= 0 or a function")
        settings = ChunkSettings(
            reader=reader,
            writer=writer,
            size=size,
            processor=processor,
            retry=retry_types,
            retry_limit=retry_limit,
            backoff=backoff,
            skip=skip_types,
            skip_limit=skip_limit if skip_types else 0,
        )
        partitions = _partition_settings(where, partitioner, workers, mode, after_partitions)
        step = Step(name=name, kind=StepKind.CHUNK, chunk=settings, partitions=partitions)
        self._add_step(step)
        return step

    def _add_step(self, step: Step) -> None:
        if not _NAME.fullmatch(step.name):
            raise JobDefinitionError(f"job {self.name!r}: invalid step name {step.name!r}")
        if any(existing.name == step.name for existing in self.steps):
            raise JobDefinitionError(f"job {self.name!r}: duplicate step name {step.name!r}")
        self.steps.append(step)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise JobDefinitionError(f"job {self.name!r} has no step {name!r}")

    # -- schedules ------------------------------------------------------------------------------

    def schedule(
        self,
        cron: str,
        *,
        name: str | None = None,
        timezone: str = _schedule.DEFAULT_TIMEZONE,
        params: _schedule.ScheduleParams | None = None,
        catchup: str = _schedule.DEFAULT_CATCHUP,
        max_catchup: int = _schedule.DEFAULT_MAX_CATCHUP,
        enabled: bool = True,
        grace: float = _schedule.DEFAULT_GRACE,
    ) -> _schedule.Schedule:
        """Fire this job on `cron` read in `timezone` (see `batchctl.schedules.Schedule`); the
        name defaults to the job's. Checked when schedules are loaded, not here."""
        caller = sys._getframe(1)
        schedule = _schedule.Schedule(
            name=self.name if name is None else name, job=self.name, cron=cron,
            timezone=timezone, params={} if params is None else params, catchup=catchup,
            max_catchup=max_catchup, enabled=enabled, grace=grace, source="code",
            defined_in=f"{caller.f_code.co_filename}:{caller.f_lineno}",
        )
        self.schedules.append(schedule)
        return schedule

    # -- listeners ------------------------------------------------------------------------------

    def listener(self, listener: Any) -> Any:
        """Register an object with any of before_job/after_job/before_step/after_step, or for
        chunk steps before_chunk/after_chunk/on_chunk_error/on_skip."""
        if not any(callable(getattr(listener, m, None)) for m in LISTENER_METHODS):
            raise JobDefinitionError(
                f"job {self.name!r}: a listener needs one of {', '.join(LISTENER_METHODS)}"
            )
        for method in _listener_like_methods(listener):
            close = get_close_matches(method, LISTENER_METHODS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise JobDefinitionError(
                f"job {self.name!r}: {type(listener).__name__}.{method} is not a listener "
                f"method{hint}; listener methods: {', '.join(LISTENER_METHODS)}"
            )
        self.listeners.append(listener)
        return listener

    def before_job(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """`fn(execution)` before the first step; raising fails the job with no step run."""
        return self._listen("before_job", function)

    def after_job(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """`fn(execution)` after the last step, with the outcome in `execution.status`."""
        return self._listen("after_job", function)

    def before_step(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """`fn(ctx)` before each step; raising fails the step."""
        return self._listen("before_step", function)

    def after_step(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """`fn(ctx, step_execution)` after each step; raising fails the step."""
        return self._listen("after_step", function)

    def before_partition(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """`fn(ctx)` in the worker before each partition (`ctx.partition`); raising fails it."""
        return self._listen("before_partition", function)

    def after_partition(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """`fn(ctx, step_execution)` in the worker after each partition."""
        return self._listen("after_partition", function)

    def before_chunk(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """`fn(ctx)` before each chunk of a chunk step; raising fails the step."""
        return self._listen("before_chunk", function)

    def after_chunk(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """`fn(ctx, step_execution)` after each chunk committed; raising fails the step (the
        chunk stays committed)."""
        return self._listen("after_chunk", function)

    def on_chunk_error(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """`fn(ctx, error)` after a chunk failed and was rolled back (before any retry)."""
        return self._listen("on_chunk_error", function)

    def on_skip(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """`fn(ctx, skipped)` for each skipped item (a `SkippedItem`: phase, position, item,
        error) once the chunk that skipped it committed; raising fails the step."""
        return self._listen("on_skip", function)

    def _listen(self, method: str, function: Callable[..., Any]) -> Callable[..., Any]:
        self.listeners.append(_FunctionListener(method, function))
        return function


def _listener_like_methods(listener: Any) -> list[str]:
    """Public methods named like listener methods that are none: a typo would be ignored."""
    names = [name for name in dir(listener) if name.startswith(("before_", "after_", "on_"))]
    return [
        name for name in names
        if name not in LISTENER_METHODS and callable(getattr(listener, name, None))
    ]


def listener_calls(listeners: Iterable[Any], method: str) -> list[Callable[..., Any]]:
    """The callables to invoke for `method`: declaration order before, reverse order after."""
    calls = [getattr(lst, method) for lst in listeners if callable(getattr(lst, method, None))]
    return calls[::-1] if method.startswith("after_") else calls


def _exception_types(
    where: str, option: str, given: type[BaseException] | Iterable[type[BaseException]]
) -> ExceptionTypes:
    types = (given,) if isinstance(given, type) else tuple(given)
    for kind in types:
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            raise JobDefinitionError(f"{where}: {option} must name exception types, not {kind!r}")
    return types


def _partition_settings(
    where: str,
    partitioner: Callable[[Any], Iterable[dict[str, Any]]] | None,
    workers: int,
    mode: str,
    after_partitions: Callable[[Any, list[Any]], None] | None,
) -> PartitionSettings | None:
    if partitioner is None:
        if after_partitions is not None:
            raise JobDefinitionError(f"{where}: after_partitions needs a partitioner")
        return None
    if not callable(partitioner):
        raise JobDefinitionError(f"{where}: partitioner must be a function partitioner(ctx)")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise JobDefinitionError(f"{where}: workers must be a positive integer, not {workers!r}")
    if mode not in PARTITION_MODES:
        raise JobDefinitionError(f"{where}: mode must be one of {', '.join(PARTITION_MODES)}")
    if after_partitions is not None and not callable(after_partitions):
        raise JobDefinitionError(f"{where}: after_partitions must be callable")
    return PartitionSettings(partitioner, workers, PartitionMode(mode), after_partitions)


def _as_param(name: str, kind: type | Param) -> Param:
    if isinstance(kind, Param):
        return kind
    try:
        return Param(kind)
    except TypeError as exc:
        raise JobDefinitionError(f"param {name!r}: {exc}") from None

"""The chunk loop: read up to `size` items, process each, write the list, commit a checkpoint.

`ChunkRun` has the interface of the engine's tasklet runner: built from the step, its context,
its step execution, the repository and the observers; `run(listeners) -> (status, message)`;
`step_execution` is kept current.

Delivery. Every chunk ends with one repository transaction that holds the step's counters,
its execution context (the reader's and the writer's state, the position, the skips) and the
chunk's skipped items. A writer that writes through `ctx.connection` (its `transactional`
attribute is true, as for a function writer and the SQL writer on the repository's database)
writes inside that transaction: exactly once. Any other writer writes first and the checkpoint
commits second: at least once; the built-in file writers truncate back to their committed byte
offset on restart (exactly once in the file), and the SQL writer's upsert mode is idempotent.

Faults. A processor error is retried (`retry`, `retry_limit`, `backoff`) and then skipped
(`skip`, `skip_limit`) item by item. A write error rolls the chunk back; the write is retried,
and if it still fails with a skippable error the chunk is replayed item by item (each item in a
savepoint of one transaction) so that only the bad items are skipped. Read errors of a reader
that can go on (an object reader, the built-in ones) are skipped likewise. Every skip is
recorded in the repository with the chunk that skipped it. The skip limit counts over the
restarts of the step, since the count is kept in the checkpoint.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from typing import Any, Callable

from batchctl.engine import Observers, describe_exception, run_with_step_listeners
from batchctl.errors import FENCED, BatchctlError, CommitUnknown, SkipLimitExceeded
from batchctl.host import describe_exit
from batchctl.job import Step, StepContext, listener_calls
from batchctl.model import STEP_COUNTERS, SkippedItem, Status, StepExecution
from batchctl.repository import Repository

log = logging.getLogger("batchctl.chunk")

BACKOFF_MAX = 60.0  # seconds: the longest wait between two attempts, however many retries

OnReadError = Callable[[BaseException, Any, "int | None"], None]


class _Skipped:
    """The outcome of an item that was skipped (distinct from None, which filters)."""


_SKIPPED = _Skipped()


class _ChunkFailed(Exception):
    """A chunk failed for good and was rolled back; the cause is the error to report."""


# -- readers and writers, in either form ---------------------------------------------------------


class _FunctionReader:
    """A function `read(ctx) -> Iterable`: a restart skips the items already committed.

    An error raised by the iterable ends it (a generator cannot go on), so it fails the step.
    """

    def __init__(self, function: Callable[[StepContext], Any], ctx: StepContext, state: Any) -> None:
        self.position = int((state or {}).get("position", 0))
        iterable = function(ctx)
        try:
            self.total: int | None = len(iterable)
        except TypeError:
            self.total = None
        self._items = iter(iterable)
        if self.position:
            next(itertools.islice(self._items, self.position, self.position), None)

    def read_chunk(self, size: int, on_error: OnReadError) -> list[Any] | None:
        items = list(itertools.islice(self._items, size))
        if not items:
            return None
        self.position += len(items)
        return items

    def state(self) -> dict[str, Any]:
        return {"position": self.position}

    def close(self) -> None:
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


class _ObjectReader:
    """An object with `open(ctx, state)`, `read()` (None at the end), `state()`, `close()`;
    `read_chunk(size, on_error)` when it has one (the built-in readers do: it is faster).

    A reader without `state()` cannot seek: on restart it is read past the records already
    committed, as a function reader is, never silently from its first item again.
    """

    def __init__(self, reader: Any, ctx: StepContext, state: Any, position: int) -> None:
        self.reader = reader
        self.position = position
        opener = getattr(reader, "open", None)
        if opener is not None:
            opener(ctx, dict(state or {}))
        total = getattr(reader, "total", None)
        self.total = total() if callable(total) else None
        self._ended = False
        if not callable(getattr(reader, "state", None)) and position:
            self._read_past(position)
        fast = getattr(reader, "read_chunk", None)
        if fast is not None:
            self.read_chunk = fast  # type: ignore[method-assign]

    def _read_past(self, committed: int) -> None:
        """Consume the `committed` records (failed reads included) a stateless reader gave
        before the restart."""
        for _ in range(committed):
            try:
                if self.reader.read() is None:
                    self._ended = True
                    return
            except Exception:
                continue

    def read_chunk(self, size: int, on_error: OnReadError) -> list[Any] | None:
        if self._ended:
            return None
        read = self.reader.read
        items: list[Any] = []
        consumed = 0
        while consumed < size:
            try:
                item = read()
            except Exception as exc:
                consumed += 1
                on_error(exc, None, self.position + consumed)
                continue
            if item is None:
                self._ended = True
                break
            consumed += 1
            items.append(item)
        self.position += consumed
        return items if consumed else None

    def state(self) -> Any:
        state = getattr(self.reader, "state", None)
        return state() if state is not None else None

    def close(self) -> None:
        close = getattr(self.reader, "close", None)
        if close is not None:
            close()


class _FunctionWriter:
    """A function `write(items, ctx)`: it may write through `ctx.connection`, so it writes
    inside the chunk's transaction."""

    transactional = True

    def __init__(self, function: Callable[[list[Any], StepContext], Any], ctx: StepContext) -> None:
        self._function = function
        self._ctx = ctx

    def write(self, items: list[Any]) -> None:
        self._function(items, self._ctx)

    def state(self) -> None:
        return None

    def reset(self, state: Any) -> None:
        pass

    def complete(self) -> None:
        pass

    def close(self) -> None:
        pass


class _ObjectWriter:
    """An object with `open(ctx, state)`, `write(items)`, `state()`, `close()`, and optionally
    `complete()` (called once the last chunk committed) and `transactional` (whether it writes
    through `ctx.connection`; true unless it says otherwise)."""

    def __init__(self, writer: Any, ctx: StepContext, state: Any) -> None:
        self.writer = writer
        self._ctx = ctx
        self.transactional = bool(getattr(writer, "transactional", True))
        self.write = writer.write
        self._open(state)

    def _open(self, state: Any) -> None:
        opener = getattr(self.writer, "open", None)
        if opener is not None:
            opener(self._ctx, dict(state or {}))

    def state(self) -> Any:
        state = getattr(self.writer, "state", None)
        return state() if state is not None else None

    def reset(self, state: Any) -> None:
        """Back to the last committed state after a rolled-back chunk (a file is truncated)."""
        if getattr(self.writer, "open", None) is not None:
            self.close()
            self._open(state)

    def complete(self) -> None:
        complete = getattr(self.writer, "complete", None)
        if complete is not None:
            complete()

    def close(self) -> None:
        close = getattr(self.writer, "close", None)
        if close is not None:
            close()


def open_reader(reader: Any, ctx: StepContext, state: Any, position: int) -> Any:
    if callable(getattr(reader, "read", None)):
        return _ObjectReader(reader, ctx, state, position)
    return _FunctionReader(reader, ctx, state)


def open_writer(writer: Any, ctx: StepContext, state: Any) -> Any:
    if callable(getattr(writer, "write", None)):
        return _ObjectWriter(writer, ctx, state)
    return _FunctionWriter(writer, ctx)


def agree_on_records(reader: Any, writer: Any) -> list[str] | None:
    """When no processor sees the items, a reader whose dicts could as well be tuples
    (`record_names()`, `use_records()`) and a writer that takes such tuples (`take_records`)
    pass tuples: the same rows, without building a dict per item. The column names, or None."""
    source = getattr(reader, "reader", None)
    sink = getattr(writer, "writer", None)
    offer = getattr(source, "record_names", None)
    take = getattr(sink, "take_records", None)
    if offer is None or take is None:
        return None
    names = offer()
    if not names or not take(names):
        return None
    source.use_records()
    return list(names)


# -- the loop ------------------------------------------------------------------------------------


class ChunkRun:
    """Runs one chunk step: chunks until the reader ends, a stop is asked, or a chunk fails."""

    def __init__(
        self,
        step: Step,
        ctx: StepContext,
        step_execution: StepExecution,
        repository: Repository,
        observers: Observers,
    ) -> None:
        assert step.chunk is not None, "a chunk step needs chunk settings"
        self.step = step
        self.settings = step.chunk
        self.ctx = ctx
        self.step_execution = step_execution
        self.repository = repository
        self.observers = observers
        state = ctx.state
        self.position = int(state.get("position", 0))  # records consumed, over all executions
        self.skips = int(state.get("skips", 0))  # items skipped, over all executions
        self.counters = {name: getattr(step_execution, name) for name in STEP_COUNTERS}
        self.rollbacks = self.counters["rollback_count"]
        self.pending: list[SkippedItem] = []  # this chunk's read and process skips
        self.total: int | None = None
        self.listeners: list[Any] = []
        self.records: list[str] | None = None  # column names when items travel as tuples
        self.connection: Any = None  # held for the step's commits (see chunk_connection)
        self._retry = self.settings.retry
        self._skip = self.settings.skip

    # -- the runner interface ----------------------------------------------------------------

    def run(self, listeners: list[Any]) -> tuple[Status, str]:
        self.listeners = listeners
        return run_with_step_listeners(listeners, self.ctx, self._outcome, lambda: self.step_execution)

    def _outcome(self) -> tuple[Status, str]:
        try:
            status = self._execute()
        except _ChunkFailed as failed:
            cause = failed.__cause__ or failed
            if isinstance(cause, FENCED):
                raise cause from None
            return self._failed(cause)
        except FENCED:
            raise
        except SystemExit as exc:
            return self._failed(exc, describe_exit(exc))
        except Exception as exc:
            return self._failed(exc)
        return status, "stopped after a chunk" if status == Status.STOPPED else ""

    def _failed(self, exc: BaseException, message: str | None = None) -> tuple[Status, str]:
        """The step failed: back to the last committed state (what a processor changed in the
        chunk that rolled back is gone), and the rollbacks recorded."""
        self.ctx.state = copy.deepcopy(self.step_execution.context)
        status = Status.UNKNOWN if isinstance(exc, CommitUnknown) else Status.FAILED
        try:
            if status == Status.UNKNOWN:  # the checkpoint may have committed: learn its version
                self.step_execution = self.repository.step_execution(self.step_execution.id)
            if self.step_execution.rollback_count != self.rollbacks:
                self.step_execution = self.repository.update_step_execution(
                    self.step_execution, rollback_count=self.rollbacks
                )
        except Exception:
            log.warning("could not record the rollbacks of step %s", self.step.name, exc_info=True)
        return status, message or describe_exception(exc)

    # -- chunks ------------------------------------------------------------------------------

    def _execute(self) -> Status:
        self.connection = self.repository.chunk_connection()
        try:
            return self._open_and_run()
        finally:
            self._drop_connection()

    def _drop_connection(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            except Exception:
                log.warning("closing a connection of step %s failed", self.step.name, exc_info=True)
            self.connection = None

    def _open_and_run(self) -> Status:
        ctx = self.ctx
        reader = open_reader(self.settings.reader, ctx, ctx.state.get("reader"), self.position)
        failed = True
        try:
            writer = open_writer(self.settings.writer, ctx, ctx.state.get("writer"))
            try:
                if self.settings.processor is None:
                    self.records = agree_on_records(reader, writer)
                self.total = reader.total
                self.observers.step_progress(self.step_execution, self.position, self.total)
                status = self._chunks(reader, writer)
                if status == Status.COMPLETED:
                    self._check_fence(writer)
                    writer.complete()
                failed = False
            finally:
                _close(writer, self.step.name, "writer", failed)
        finally:
            _close(reader, self.step.name, "reader", failed)
        return status

    def _chunks(self, reader: Any, writer: Any) -> Status:
        ctx = self.ctx
        size = self.settings.size
        processor = self.settings.processor
        before = listener_calls(self.listeners, "before_chunk")
        after = listener_calls(self.listeners, "after_chunk")
        on_skip = listener_calls(self.listeners, "on_skip")
        on_read_error = self._on_read_error
        while True:
            for call in before:
                call(ctx)
            try:
                items = reader.read_chunk(size, on_read_error)
                if items is None and not self.pending:
                    return Status.COMPLETED
                items = items or []
                if processor is not None:
                    outputs, filtered = self._process(processor, items)
                else:
                    outputs, filtered = items, 0
            except Exception as exc:
                self._rolled_back(exc, writer)
                raise _ChunkFailed() from exc
            skipped = self._write(reader, writer, items, outputs, filtered)
            for call in after:
                call(ctx, self.step_execution)
            for call in on_skip:
                for skip in skipped:
                    call(ctx, skip)
            self.observers.step_progress(self.step_execution, self.position, self.total)
            if ctx.stop_requested:
                return Status.STOPPED

    def _on_read_error(self, error: BaseException, raw: Any, position: int | None) -> None:
        self._skip_item(self.pending, "read", raw, error, position)

    def _process(self, processor: Callable[..., Any], items: list[Any]) -> tuple[list[Any], int]:
        ctx = self.ctx
        outputs: list[Any] = []
        append = outputs.append
        filtered = 0
        for item in items:
            try:
                result = processor(item, ctx)
            except Exception as exc:
                result = self._process_failed(processor, items, item, exc)
                if result is _SKIPPED:
                    continue
            if result is None:
                filtered += 1
            else:
                append(result)
        return outputs, filtered

    def _process_failed(
        self, processor: Callable[..., Any], items: list[Any], item: Any, exc: Exception
    ) -> Any:
        attempt = 0
        while self._retryable(exc) and attempt < self.settings.retry_limit:
            self._wait(attempt)
            attempt += 1
            try:
                return processor(item, self.ctx)
            except Exception as again:
                exc = again
        index = next(i for i, candidate in enumerate(items) if candidate is item)
        self._skip_item(self.pending, "process", item, exc, self.position + index + 1)
        return _SKIPPED

    def _write(
        self, reader: Any, writer: Any, items: list[Any], outputs: list[Any], filtered: int
    ) -> list[SkippedItem]:
        """Write the chunk and commit its checkpoint: retried, then replayed item by item."""
        reader_state = reader.state()
        consumed = len(items) + sum(1 for skip in self.pending if skip.phase == "read")
        attempt = 0
        scan = False
        while True:
            try:
                return self._commit(
                    writer, reader_state, consumed, len(items), outputs, filtered, scan=scan
                )
            except (CommitUnknown, *FENCED):
                raise  # a fenced-off process leaves the writer's output alone: not even a reset
            except Exception as exc:
                self._rolled_back(exc, writer)
                if scan or _fatal(exc):
                    raise _ChunkFailed() from exc
                if self._retryable(exc) and attempt < self.settings.retry_limit:
                    self._wait(attempt)
                    attempt += 1
                    continue
                if isinstance(exc, self._skip) and outputs:
                    log.info("step %s: a chunk write failed (%s); writing it item by item",
                             self.step.name, exc)
                    scan = True
                    continue
                raise _ChunkFailed() from exc

    def _commit(
        self,
        writer: Any,
        reader_state: Any,
        consumed: int,
        read: int,
        outputs: list[Any],
        filtered: int,
        *,
        scan: bool,
    ) -> list[SkippedItem]:
        ctx = self.ctx
        counters = self.counters
        skipped = list(self.pending)
        changes: dict[str, Any] = {
            **counters,
            "read_count": counters["read_count"] + read,
            "filter_count": counters["filter_count"] + filtered,
            "commit_count": counters["commit_count"] + 1,
            "rollback_count": self.rollbacks,
        }

        def write(connection: Any) -> None:
            ctx.connection = connection
            try:
                if scan:
                    written = self._write_each(writer, connection, outputs, skipped)
                else:
                    if outputs:
                        writer.write(outputs)
                    written = len(outputs)
            finally:
                ctx.connection = None
            changes["write_count"] = counters["write_count"] + written
            for phase in ("read", "process", "write"):
                count = sum(1 for skip in skipped if skip.phase == phase)
                changes[f"{phase}_skip_count"] = counters[f"{phase}_skip_count"] + count
            changes["context"] = {
                **ctx.state,
                "reader": reader_state,
                "writer": writer.state(),
                "position": self.position + consumed,
                "skips": self.skips + len(skipped),
            }

        if self.connection is None:
            self.connection = self.repository.chunk_connection()
        if writer.transactional:
            self.step_execution = self.repository.commit_chunk(
                self.step_execution, changes, write, skipped, connection=self.connection
            )
        else:
            self._check_fence(writer)
            write(None)
            self.step_execution = self.repository.commit_chunk(
                self.step_execution, changes, None, skipped, connection=self.connection
            )
        self.counters = {name: changes[name] for name in STEP_COUNTERS}
        self.position += consumed
        self.skips += len(skipped)
        self.pending = []
        # The step execution keeps what was committed; the step goes on with a copy of its own,
        # so that a chunk that rolls back cannot change the committed context.
        ctx.state = copy.deepcopy(changes["context"])
        return skipped

    def _check_fence(self, writer: Any) -> None:
        """Before output no transaction can take back (a file writer's chunk, its final
        rename): make sure this process still owns the step, or write nothing."""
        if not writer.transactional and self.repository.fence is not None:
            self.repository.check_fence(self.step_execution)

    def _write_each(
        self, writer: Any, connection: Any, outputs: list[Any], skipped: list[SkippedItem]
    ) -> int:
        """The replay of a failed chunk: each item alone (in a savepoint when the writer is in
        the chunk's transaction), the failing ones skipped."""
        written = 0
        for index, item in enumerate(outputs):
            attempt = 0
            while True:
                savepoint = connection.begin_nested() if connection is not None else None
                try:
                    writer.write([item])
                except Exception as exc:
                    if savepoint is not None:
                        savepoint.rollback()
                    if _fatal(exc):
                        raise
                    if self._retryable(exc) and attempt < self.settings.retry_limit:
                        self._wait(attempt)
                        attempt += 1
                        continue
                    shown = dict(zip(self.records, item)) if self.records else item
                    self._skip_item(skipped, "write", shown, exc, None)
                    break
                if savepoint is not None:
                    savepoint.commit()
                written += 1
                break
        return written

    # -- faults ------------------------------------------------------------------------------

    def _retryable(self, exc: BaseException) -> bool:
        return bool(self._retry) and isinstance(exc, self._retry) and not _fatal(exc)

    def _wait(self, attempt: int) -> None:
        backoff = self.settings.backoff
        delay = backoff(attempt + 1) if callable(backoff) else backoff * (2**attempt)
        if delay > 0:
            time.sleep(min(delay, BACKOFF_MAX))

    def _skip_item(
        self,
        skipped: list[SkippedItem],
        phase: str,
        item: Any,
        error: BaseException,
        position: int | None,
    ) -> None:
        """Record a skip of `item`, or raise `error` when it may not be skipped."""
        if not (self._skip and isinstance(error, self._skip)) or _fatal(error):
            raise error
        limit = self.settings.skip_limit
        count = self.skips + len(skipped)  # `skipped` is this chunk's pending skips and more
        if limit is not None and count >= limit:
            raise SkipLimitExceeded(
                f"step {self.step.name}: skip limit {limit} exceeded by a {phase} error"
                f"{f' at item {position}' if position else ''}: {type(error).__name__}: {error}"
            ) from error
        skip = SkippedItem(
            step_execution_id=self.step_execution.id,
            phase=phase,
            position=position,
            item=item,
            error=error,
            step_name=self.step.name,
        )
        skipped.append(skip)
        log.warning("step %s skipped an item in %s: %s", self.step.name, phase, skip.error_text)

    def _rolled_back(self, exc: BaseException, writer: Any) -> None:
        """Account for a chunk that failed: a rollback, the listeners, the writer reset, and a
        new connection for the next commit (the failure may have broken this one)."""
        self.rollbacks += 1
        self._drop_connection()
        for call in listener_calls(self.listeners, "on_chunk_error"):
            try:
                call(self.ctx, exc)
            except Exception:
                log.exception("on_chunk_error of step %s failed", self.step.name)
        writer.reset(self.ctx.state.get("writer"))


def _fatal(exc: BaseException) -> bool:
    """batchctl's own errors (a lost update, a skip limit) are never retried nor skipped."""
    return isinstance(exc, BatchctlError)


def _close(resource: Any, step: str, what: str, failed: bool) -> None:
    """Close a reader or writer; when the step already failed, a close error is only logged."""
    try:
        resource.close()
    except Exception:
        if not failed:
            raise
        log.warning("closing the %s of step %s failed", what, step, exc_info=True)

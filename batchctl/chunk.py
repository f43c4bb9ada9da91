"""The chunk loop: read up to `size` items, process each, write the list, commit a checkpoint.

`ChunkRunner` is a StepRunner (batchctl.steps): the frame is shared, `execute()` is the loop.
Readers and writers arrive in either form through batchctl.adapters; the retry and skip rules
are batchctl.faults' FaultPolicy. batchctl's own part of the step's state (the reader's and the
writer's state, the position, the skips) is kept under one reserved key of `ctx.state`.

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
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from batchctl.adapters import agree_on_records, open_reader, open_writer
from batchctl.defaults import OUTAGE_BACKOFF, OUTAGE_BACKOFF_MAX
from batchctl.errors import FENCED, CommitUnknown, DatabaseUnavailable, RepositoryOutage
from batchctl.faults import FaultPolicy, is_fatal
from batchctl.job import ChunkSettings, listener_calls
from batchctl.model import STEP_COUNTERS, SkipPhase, SkippedItem, Status
from batchctl.steps import BOOKKEEPING_KEY, StepRunner, bookkeeping, describe_exception

log = logging.getLogger(__name__)

CHUNK_BOOKKEEPING = ("position", "skips", "reader", "writer")  # kept at the top level before 0.2


class _Skipped:
    """The outcome of an item that was skipped (distinct from None, which filters)."""


_SKIPPED = _Skipped()


class _ChunkFailed(Exception):
    """A chunk failed for good and was rolled back; the cause is the error to report."""


class _Interrupted(Exception):
    """A chunk lost its connection to the repository (the cause); nothing of it committed."""


@dataclass
class ChunkCommit:
    """What one chunk commits: the step's new counters and context, and the items it skipped."""

    changes: dict[str, Any]
    skipped: list[SkippedItem] = field(default_factory=list)


class ChunkRunner(StepRunner):
    """Runs one chunk step: chunks until the reader ends, a stop is asked, or a chunk fails."""

    stopped_message = "stopped after a chunk"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.step.chunk is not None, "a chunk step needs chunk settings"
        self.settings: ChunkSettings = self.step.chunk
        book = bookkeeping(self.ctx.state, CHUNK_BOOKKEEPING)
        self.position = int(book.get("position", 0))  # records consumed, over all executions
        self.faults = FaultPolicy(self.settings, self.step.name, int(book.get("skips", 0)))
        self.counters = {name: getattr(self.step_execution, name) for name in STEP_COUNTERS}
        self.rollbacks = self.counters["rollback_count"]
        self.pending: list[SkippedItem] = []  # this chunk's read and process skips
        self.total: int | None = None
        self.records: list[str] | None = None  # column names when items travel as tuples
        self.connection: Any = None  # held for the step's commits (see step_connection)
        self.reader: Any = None  # the open reader (reopened when a chunk is redone)
        self.riding_since: float | None = None  # first interruption since the last commit

    # -- the runner interface ----------------------------------------------------------------

    def execute(self) -> Status:
        self.connection = self.repository.step_connection()
        try:
            return self._open_and_run()
        except _ChunkFailed as failed:
            cause = failed.__cause__ or failed
            if isinstance(cause, (*FENCED, RepositoryOutage)):
                raise cause from None
            raise _StepFailed(cause) from cause
        finally:
            self._drop_connection()

    def failed(self, exc: BaseException, message: str | None = None) -> tuple[Status, str]:
        """The step failed: back to the last committed state (what a processor changed in the
        chunk that rolled back is gone), and the rollbacks recorded."""
        if isinstance(exc, _StepFailed):
            exc = exc.cause
        self.ctx.state = copy.deepcopy(self.step_execution.context)
        status = Status.UNKNOWN if isinstance(exc, CommitUnknown) else Status.FAILED
        if isinstance(exc, DatabaseUnavailable):  # recording the rollbacks would fail (or wait) too
            return status, message or describe_exception(exc)
        try:
            if status == Status.UNKNOWN:  # the checkpoint may have committed: learn its version
                self.step_execution = self.repository.step_execution(self.step_execution.id)
            if self.step_execution.rollback_count != self.rollbacks:
                self.step_execution = self.repository.update_step_execution(
                    self.step_execution, rollback_count=self.rollbacks
                )
        except FENCED:
            raise
        except Exception:
            log.warning("could not record the rollbacks of step %s", self.step.name, exc_info=True)
        return status, message or describe_exception(exc)

    # -- chunks ------------------------------------------------------------------------------

    def _drop_connection(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            except Exception:
                log.warning("closing a connection of step %s failed", self.step.name, exc_info=True)
            self.connection = None

    def _open_and_run(self) -> Status:
        ctx = self.ctx
        book = ctx.state[BOOKKEEPING_KEY]
        reader = self.reader = open_reader(self.settings.reader, ctx, book.get("reader"), self.position)
        failed = True
        try:
            writer = open_writer(self.settings.writer, ctx, book.get("writer"))
            try:
                if self.settings.processor is None:
                    self.records = agree_on_records(reader, writer)
                self.total = reader.total
                self.observers.step_progress(self.step_execution, self.position, self.total)
                status = self._chunks(writer)
                if status == Status.COMPLETED:
                    self._check_fence(writer)
                    writer.complete()
                failed = False
            finally:
                _close(writer, self.step.name, "writer", failed)
        finally:
            _close(self.reader, self.step.name, "reader", failed)
        return status

    def _chunks(self, writer: Any) -> Status:
        """Chunks until the reader ends or a stop is asked. A chunk that lost the repository's
        connection (`_ride_out`) is redone from the last checkpoint once the repository
        answers again."""
        ctx = self.ctx
        reader = self.reader
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
                if self.repository.outage.interrupted(exc):
                    reader = self._ride_out(exc, writer)
                    continue
                self._rolled_back(exc, writer)
                raise _ChunkFailed() from exc
            try:
                skipped = self._write(reader, writer, items, outputs, filtered)
            except _Interrupted as interrupted:
                reader = self._ride_out(interrupted.__cause__ or interrupted, writer)
                continue
            for call in after:
                call(ctx, self.step_execution)
            for call in on_skip:
                for skip in skipped:
                    call(ctx, skip)
            self.observers.step_progress(self.step_execution, self.position, self.total)
            if ctx.stop_requested:
                return Status.STOPPED

    def _on_read_error(self, error: BaseException, raw: Any, position: int | None) -> None:
        self._skip(self.pending, SkipPhase.READ, raw, error, position)

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
        while self.faults.may_retry(exc, attempt):
            self.faults.wait(attempt)
            attempt += 1
            try:
                return processor(item, self.ctx)
            except Exception as again:
                exc = again
        index = next(i for i, candidate in enumerate(items) if candidate is item)
        self._skip(self.pending, SkipPhase.PROCESS, item, exc, self.position + index + 1)
        return _SKIPPED

    def _write(
        self, reader: Any, writer: Any, items: list[Any], outputs: list[Any], filtered: int
    ) -> list[SkippedItem]:
        """Write the chunk and commit its checkpoint: retried, then replayed item by item."""
        reader_state = reader.state()
        consumed = len(items) + sum(1 for skip in self.pending if skip.phase == SkipPhase.READ)
        attempt = 0
        scan = False
        while True:
            try:
                return self._commit(
                    writer, reader_state, consumed, len(items), outputs, filtered, scan=scan
                )
            except (CommitUnknown, _Interrupted, *FENCED):
                raise  # a fenced-off process leaves the writer's output alone: not even a reset
            except Exception as exc:
                if self.repository.outage.interrupted(exc):
                    raise _Interrupted() from exc  # rolled back; redone by _chunks
                self._rolled_back(exc, writer)
                if scan or is_fatal(exc):
                    raise _ChunkFailed() from exc
                if self.faults.may_retry(exc, attempt):
                    self.faults.wait(attempt)
                    attempt += 1
                    continue
                if self.faults.skippable(exc) and outputs:
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

        def write(connection: Any) -> ChunkCommit:
            """Write the chunk (through `connection` when the writer is transactional) and say
            what the checkpoint commits with it."""
            skipped = list(self.pending)
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
            changes: dict[str, Any] = {
                **counters,
                "read_count": counters["read_count"] + read,
                "write_count": counters["write_count"] + written,
                "filter_count": counters["filter_count"] + filtered,
                "commit_count": counters["commit_count"] + 1,
                "rollback_count": self.rollbacks,
            }
            for phase in SkipPhase:
                count = sum(1 for skip in skipped if skip.phase == phase)
                changes[f"{phase.value}_skip_count"] = counters[f"{phase.value}_skip_count"] + count
            changes["context"] = {
                **ctx.state,
                BOOKKEEPING_KEY: {
                    "reader": reader_state,
                    "writer": writer.state(),
                    "position": self.position + consumed,
                    "skips": self.faults.committed_skips + len(skipped),
                },
            }
            return ChunkCommit(changes, skipped)

        if self.connection is None:
            self.connection = self.repository.step_connection()
        if writer.transactional:
            commit: ChunkCommit | None = None

            def in_transaction(connection: Any) -> tuple[dict[str, Any], list[SkippedItem]]:
                nonlocal commit
                commit = write(connection)
                return commit.changes, commit.skipped

            try:
                self.step_execution = self.repository.commit_chunk(
                    self.step_execution, in_transaction, connection=self.connection,
                    repeatable=False,
                )
            except CommitUnknown as unknown:
                assert commit is not None
                self._settle_commit(unknown, commit)
        else:
            self._check_fence(writer)
            commit = write(None)
            done = (commit.changes, commit.skipped)
            self.step_execution = self.repository.commit_chunk(
                self.step_execution, lambda connection: done, connection=self.connection,
                repeatable=True,
            )
        assert commit is not None
        self._committed(commit, consumed)
        return commit.skipped

    def _settle_commit(self, unknown: CommitUnknown, commit: ChunkCommit) -> None:
        """The COMMIT of a chunk written in the repository's transaction failed: the step row
        says whether it went through, once the repository answers (riding out the outage).
        Committed: the chunk is done. Not committed: everything rolled back, so a lost
        connection redoes the chunk (`_Interrupted`) and any other failure is the write's."""
        self._drop_connection()
        cause = unknown.__cause__
        if self.repository.step_committed(self.step_execution):
            log.info("step %s: the commit of a chunk failed, but the chunk is committed",
                     self.step.name)
            self.step_execution = replace(
                self.step_execution, **commit.changes, version=self.step_execution.version + 1
            )
            return
        if self.repository.outage.interrupted(cause):
            raise _Interrupted() from cause
        raise (cause or unknown) from None

    def _ride_out(self, exc: BaseException, writer: Any) -> Any:
        """A chunk lost the repository's connection, so nothing of it committed: wait for the
        repository (RepositoryOutage after db_outage_timeout fails the step), make sure this
        process still owns the step (a process that was judged lost meanwhile stops here,
        touching nothing), then go back to the last checkpoint: the writer reset, the reader
        reopened at its committed state. Returns the new reader."""
        self.rollbacks += 1
        self._drop_connection()
        if self.riding_since is None:
            self.riding_since = time.monotonic()
        log.info("step %s: a chunk lost the repository's connection (%s); redoing it from the "
                 "last checkpoint", self.step.name, exc)
        for call in listener_calls(self.listeners, "on_chunk_error"):
            try:
                call(self.ctx, exc)
            except Exception:
                log.exception("on_chunk_error of step %s failed", self.step.name)
        _close(self.reader, self.step.name, "reader", True)
        self.reader = None
        tries = 0
        while True:
            self._await_repository(exc, tries)
            self.ctx.state = copy.deepcopy(self.step_execution.context)
            book = bookkeeping(self.ctx.state, CHUNK_BOOKKEEPING)
            self.pending = []
            writer.reset(book.get("writer"))
            try:
                self.reader = open_reader(
                    self.settings.reader, self.ctx, book.get("reader"), self.position
                )
                return self.reader
            except Exception as again:
                if not self.repository.outage.interrupted(again):
                    raise _ChunkFailed() from again
                exc = again
                tries += 1

    def _await_repository(self, exc: BaseException, tries: int) -> None:
        """Wait for the repository to answer and check that this process still owns the step;
        RepositoryOutage (the step fails) once the outage has lasted db_outage_timeout."""
        try:
            waited = self.repository.await_reachable()
            if not waited:
                # The repository answered at once: a blip, or another database failing. Back
                # off, and give up after the outage timeout as an outage would.
                assert self.riding_since is not None
                if time.monotonic() - self.riding_since > self.repository.outage.timeout:
                    raise exc
                time.sleep(min(OUTAGE_BACKOFF * 2**tries, OUTAGE_BACKOFF_MAX))
            self.repository.check_fence(self.step_execution)
        except FENCED:
            raise
        except Exception as failure:
            raise _ChunkFailed() from failure

    def _committed(self, commit: ChunkCommit, consumed: int) -> None:
        """The chunk is in the repository: go on from what it committed."""
        self.riding_since = None
        self.counters = {name: commit.changes[name] for name in STEP_COUNTERS}
        self.position += consumed
        self.faults.committed_skips += len(commit.skipped)
        self.pending = []
        # The step execution keeps what was committed; the step goes on with a copy of its own,
        # so that a chunk that rolls back cannot change the committed context.
        self.ctx.state = copy.deepcopy(commit.changes["context"])

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
        for item in outputs:
            attempt = 0
            while True:
                savepoint = connection.begin_nested() if connection is not None else None
                try:
                    writer.write([item])
                except Exception as exc:
                    if savepoint is not None:
                        savepoint.rollback()
                    if is_fatal(exc):
                        raise
                    if self.faults.may_retry(exc, attempt):
                        self.faults.wait(attempt)
                        attempt += 1
                        continue
                    shown = dict(zip(self.records, item)) if self.records else item
                    self._skip(skipped, SkipPhase.WRITE, shown, exc, None)
                    break
                if savepoint is not None:
                    savepoint.commit()
                written += 1
                break
        return written

    # -- faults ------------------------------------------------------------------------------

    def _skip(
        self,
        skipped: list[SkippedItem],
        phase: SkipPhase,
        item: Any,
        error: BaseException,
        position: int | None,
    ) -> None:
        self.faults.skip(skipped, phase, item, error, position, self.step_execution.id)

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
        writer.reset(self.ctx.state[BOOKKEEPING_KEY].get("writer"))


class _StepFailed(Exception):
    """Carries a chunk's failure from `execute` to `failed` through the runner's frame."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _close(resource: Any, step: str, what: str, failed: bool) -> None:
    """Close a reader or writer; when the step already failed, a close error is only logged."""
    if resource is None:
        return
    try:
        resource.close()
    except Exception:
        if not failed:
            raise
        log.warning("closing the %s of step %s failed", what, step, exc_info=True)

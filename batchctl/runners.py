"""The runner of each kind of step: the tasklet runner here, the chunk loop in batchctl.chunk,
and the table from a step's kind to its runner.

A new kind of step is a StepKind, a StepRunner subclass and one entry in RUNNERS.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import replace
from typing import Any, Callable

from batchctl.chunk import ChunkRunner
from batchctl.defaults import OUTAGE_BACKOFF, OUTAGE_BACKOFF_MAX
from batchctl.errors import FENCED, CommitUnknown
from batchctl.job import Step, StepContext, StepKind
from batchctl.model import Status
from batchctl.steps import StepRunner, close_quietly, describe_exception

log = logging.getLogger(__name__)


class TaskletRunner(StepRunner):
    """Runs one tasklet step; a generator tasklet checkpoints `ctx.state` at every yield.

    The tasklet's own SQL goes through `ctx.connection`, a connection to the repository's
    database held for the step. Its transaction begins at the tasklet's first statement (on
    SQLite a BEGIN IMMEDIATE, so the write lock is held from there) and commits with the
    step's record: a generator tasklet's at each checkpoint, in the checkpoint's transaction;
    a plain tasklet's with the step's COMPLETED end (StepRunner.finish). Both are fenced like
    every write of the engine, so the rows and the record of the work that made them commit
    together: exactly once across a crash and a restart. A tasklet that fails, or a step that
    does not complete, rolls its uncommitted SQL back.
    """

    def execute(self) -> Status:
        tasklet = self.step.tasklet
        assert tasklet is not None, "a tasklet step needs its function"
        riding_since: float | None = None  # the first lost connection of this step
        tries = 0
        while True:
            connection = self.repository.step_connection()
            self.ctx.connection = connection
            try:
                status = self._run_tasklet(tasklet, connection)
            except Exception as exc:
                close_quietly(connection, self.step.name)  # rolls the uncommitted SQL back
                if not self.repository.outage.interrupted(exc):
                    raise
                riding_since = riding_since if riding_since is not None else time.monotonic()
                self._ride_out(exc, riding_since, tries)
                tries += 1
                continue
            except BaseException:
                close_quietly(connection, self.step.name)
                raise
            finally:
                self.ctx.connection = None
            break
        if status == Status.COMPLETED and connection.in_transaction():
            self.uncommitted = connection  # finish() commits it with the step's end
        else:
            close_quietly(connection, self.step.name)
        return status

    def _ride_out(self, exc: Exception, riding_since: float, tries: int) -> None:
        """The tasklet (or its checkpoint) lost the repository's connection, so its SQL since
        the last checkpoint rolled back: wait for the repository (RepositoryOutage after
        db_outage_timeout fails the step), make sure this process still owns the step, then
        run the tasklet again from its last checkpoint, as a restart would. When the
        repository answers at once (a blip, or another database failing), back off, and give
        up as an outage would after db_outage_timeout."""
        log.info("step %s: the tasklet lost the repository's connection (%s); running it again "
                 "from its last checkpoint", self.step.name, exc)
        if not self.repository.await_reachable():
            if time.monotonic() - riding_since > self.repository.outage.timeout:
                raise exc
            time.sleep(min(OUTAGE_BACKOFF * 2**tries, OUTAGE_BACKOFF_MAX))
        self.repository.check_fence(self.step_execution)
        self.ctx.state = copy.deepcopy(self.step_execution.context)

    def _run_tasklet(self, tasklet: Callable[[StepContext], Any], connection: Any) -> Status:
        if not self.step.is_generator:
            tasklet(self.ctx)
            return Status.COMPLETED
        generator = tasklet(self.ctx)
        try:
            for _ in generator:
                self._checkpoint(connection)
                if self.ctx.stop_requested:
                    return Status.STOPPED
        finally:
            generator.close()
        return Status.COMPLETED

    def _checkpoint(self, connection: Any) -> None:
        """Save `ctx.state` and commit the tasklet's SQL since the last checkpoint with it. A
        COMMIT that failed is settled by the step row's version once the repository answers:
        committed, the tasklet goes on; not, its SQL is redone from the last checkpoint."""
        changes: dict[str, Any] = {
            "context": copy.deepcopy(self.ctx.state),
            "commit_count": self.step_execution.commit_count + 1,
        }
        try:
            self.step_execution = self.repository.commit_step(
                self.step_execution, changes, connection=connection
            )
        except CommitUnknown as unknown:
            if not self.repository.outage.interrupted(unknown.__cause__):
                raise
            connection.rollback()  # ends the failed transaction: the connection reconnects
            if not self.repository.step_committed(self.step_execution):
                raise
            self.step_execution = replace(
                self.step_execution, **changes, version=self.step_execution.version + 1
            )
        self.observers.step_checkpoint(self.step_execution)

    def failed(self, exc: BaseException, message: str | None = None) -> tuple[Status, str]:
        """A checkpoint whose COMMIT failed may or may not be in the repository: UNKNOWN (the
        step row is re-read for its version); any other failure is FAILED."""
        if not isinstance(exc, CommitUnknown):
            return super().failed(exc, message)
        try:
            self.step_execution = self.repository.step_execution(self.step_execution.id)
        except FENCED:
            raise
        except Exception:
            log.warning("could not re-read step execution %s", self.step_execution.id, exc_info=True)
        return Status.UNKNOWN, message or describe_exception(exc)


RUNNERS: dict[StepKind, type[StepRunner]] = {
    StepKind.TASKLET: TaskletRunner,
    StepKind.CHUNK: ChunkRunner,
}


def runner_for(step: Step) -> type[StepRunner]:
    """The runner of one step execution of `step` (a whole step, or one of its partitions)."""
    return RUNNERS[step.kind]

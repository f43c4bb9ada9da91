"""What every step runner shares: the lifecycle frame, listeners, observers, finishing a step.

A runner runs one step execution (a whole step, or one partition of a partitioned step) and
knows nothing of the job around it: the engine creates the step execution and the context,
calls `run(listeners)`, then `finish(...)`. A new kind of step is a subclass of `StepRunner`
and an entry in batchctl.runners' table (Spring Batch's AbstractStep and its subclasses).
"""

from __future__ import annotations

import logging
import traceback
from contextvars import ContextVar
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

from batchctl.defaults import EXIT_MESSAGE_LIMIT
from batchctl.errors import FENCED, CommitUnknown, EnvironmentProblem, RepositoryOutage
from batchctl.host import describe_exit
from batchctl.job import Step, StepContext, listener_calls
from batchctl.model import Status, StepExecution, storable_json, unstorable_reason, utcnow

current_step: ContextVar[str | None] = ContextVar("batchctl_current_step", default=None)
"""The step running in this thread (or task), while its frame runs: the terminal's log lines
name it, since a job's own module logger (or a library's) cannot."""

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from batchctl.repository import Repository

log = logging.getLogger(__name__)


class Observer(Protocol):
    """What the engine reports as a run goes on (the CLI's live display is one). Every method
    is optional: an observer implements those it needs."""

    def execution_created(self, execution: Any) -> None: ...
    def job_started(self, execution: Any) -> None: ...
    def job_ended(self, execution: Any) -> None: ...
    def step_started(self, step: StepExecution) -> None: ...
    def step_skipped(self, name: str, earlier: StepExecution) -> None: ...
    def step_progress(self, step: StepExecution, position: int, total: int | None) -> None: ...
    def step_checkpoint(self, step: StepExecution) -> None: ...
    def step_ended(self, step: StepExecution) -> None: ...


OBSERVER_METHODS = tuple(name for name in vars(Observer) if not name.startswith("_"))


class Observers:
    """Fans engine events out to observers; each may implement any of the Observer methods."""

    def __init__(self, observers: Iterable[Any] = ()) -> None:
        self._observers = list(observers)

    def __getattr__(self, method: str) -> Callable[..., None]:
        if method not in OBSERVER_METHODS:
            raise AttributeError(method)

        def notify(*args: Any) -> None:
            for observer in self._observers:
                callback = getattr(observer, method, None)
                if callback is not None:
                    callback(*args)

        return notify


BOOKKEEPING_KEY = "batchctl"
"""The one key of `ctx.state` that batchctl keeps for itself: a chunk step's reader and writer
state, position and skips; a partitioned step's partitions. A job's own keys never collide."""


def bookkeeping(state: dict[str, Any], legacy_keys: Iterable[str]) -> dict[str, Any]:
    """batchctl's part of a step's state, created if new. A context saved by batchctl 0.1 kept
    these keys at the top level of the state: they are moved under the reserved key, so that a
    run of the older version restarts."""
    book = state.get(BOOKKEEPING_KEY)
    if not isinstance(book, dict):
        book = {key: state.pop(key) for key in legacy_keys if key in state}
        state[BOOKKEEPING_KEY] = book
    return book


class StepRunner:
    """Runs one step execution: `before_step`, the step's own work (`execute`), `after_step`.

    Subclasses implement `execute() -> Status` (COMPLETED, or STOPPED at a checkpoint) and may
    override `failed` (what a failure records) and `stopped_message`. A process that no longer
    owns the execution (FENCED) lets the error through: it must record nothing more.
    """

    stopped_message = "stopped at a checkpoint"

    def __init__(
        self,
        step: Step,
        ctx: StepContext,
        step_execution: StepExecution,
        repository: Repository,
        observers: Observers,
    ) -> None:
        self.step = step
        self.ctx = ctx
        self.step_execution = step_execution
        self.repository = repository
        self.observers = observers
        self.listeners: list[Any] = []
        # A connection whose open transaction holds the step's own SQL, for `finish` to commit
        # with the step's COMPLETED record (or roll back): a plain tasklet's `ctx.connection`.
        self.uncommitted: Connection | None = None

    def execute(self) -> Status:
        raise NotImplementedError

    def run(self, listeners: list[Any]) -> tuple[Status, str]:
        """The frame: `before_step`, the outcome, then `after_step` with the step execution as
        it ends. A failing listener fails the step; a second Ctrl-C stops it. A completed step
        whose state or job context cannot be saved fails, so that no value is silently lost."""
        self.listeners = listeners
        token = current_step.set(self.ctx.step_name)
        try:
            return self._run(listeners)
        finally:
            current_step.reset(token)

    def _run(self, listeners: list[Any]) -> tuple[Status, str]:
        failure = call_listeners(listeners, "before_step", self.ctx)
        if failure is not None:
            return Status.FAILED, f"before_step failed: {failure}"
        try:
            status, message = self.outcome()
        except KeyboardInterrupt:
            status, message = Status.STOPPED, "interrupted"
        if status == Status.COMPLETED:
            problem = unsaveable(self.ctx)
            if problem is not None:
                status, message = Status.FAILED, problem
        snapshot = replace(
            self.step_execution, status=status, exit_code=status.value, exit_message=message or None
        )
        failure = call_listeners(listeners, "after_step", self.ctx, snapshot)
        if failure is not None and status == Status.COMPLETED:
            return Status.FAILED, f"after_step failed: {failure}"
        return status, message

    def outcome(self) -> tuple[Status, str]:
        try:
            status = self.execute()
        except (*FENCED, RepositoryOutage):
            raise  # fenced off: record nothing; an outage: the engine ends the execution
        except SystemExit as exc:
            return self.failed(exc, describe_exit(exc))
        except Exception as exc:
            return self.failed(exc)
        return status, self.stopped_message if status == Status.STOPPED else ""

    def failed(self, exc: BaseException, message: str | None = None) -> tuple[Status, str]:
        """What a failure of the step's own work records."""
        return Status.FAILED, message or describe_exception(exc)

    def finish(self, status: Status, message: str) -> StepExecution:
        """Record the step's (or partition's) end. One that did not complete keeps its last
        checkpoint, so that a restart resumes there.

        When the step left SQL uncommitted on its connection (`self.uncommitted`: a plain
        tasklet's work through `ctx.connection`), a COMPLETED end commits it in the same
        transaction as the step's record, fenced like every step write; any other end rolls
        it back first. A commit that fails ends the step FAILED, or UNKNOWN when the COMMIT
        itself failed and nobody can tell whether the work was committed.
        """
        held, self.uncommitted = self.uncommitted, None
        if held is not None:
            try:
                if status == Status.COMPLETED:
                    try:
                        self.step_execution = self.repository.commit_step(
                            self.step_execution, self._ending(status, message), connection=held
                        )
                        return self.step_execution
                    except FENCED:
                        raise
                    except CommitUnknown as exc:
                        status, message = Status.UNKNOWN, describe_exception(exc)
                        if self.repository.outage.interrupted(exc.__cause__):
                            # The step row says whether it went through, once the repository
                            # answers again: not UNKNOWN, since the SQL committed with it.
                            ending = self._ending(Status.COMPLETED, message="")
                            if self.repository.step_committed(self.step_execution):
                                self.step_execution = replace(
                                    self.step_execution, **ending,
                                    version=self.step_execution.version + 1,
                                )
                                return self.step_execution
                            status = Status.FAILED
                            message = ("the step's SQL was not committed: the connection to the "
                                       "job repository was lost at its commit")
                    except Exception as exc:
                        status = Status.FAILED
                        message = f"the step's SQL could not be committed: {describe_exception(exc)}"
            finally:
                # Rolled back (if not committed) and closed before the end is recorded on
                # another connection: on SQLite that one would wait for the lock this one holds.
                close_quietly(held, self.step.name)
            if status == Status.UNKNOWN:  # the commit may have gone through: learn the version
                self.step_execution = self.repository.step_execution(self.step_execution.id)
        self.step_execution = self.repository.update_step_execution(
            self.step_execution, **self._ending(status, message)
        )
        return self.step_execution

    def _ending(self, status: Status, message: str) -> dict[str, Any]:
        """What a step's end records."""
        context = dict(self.ctx.state) if status == Status.COMPLETED else self.step_execution.context
        return {
            "status": status,
            "exit_code": status.value,
            "exit_message": message or None,
            "ended_at": utcnow(),
            "context": context,
        }


def unsaveable(ctx: StepContext) -> str | None:
    """Why a completed step's state or the job context cannot be saved, or None."""
    for value, name in ((ctx.state, "ctx.state"), (ctx.job_context, "ctx.job_context")):
        try:
            storable_json(value, name)
        except Exception:
            return unstorable_reason(value, name)
    return None


def call_listeners(listeners: list[Any], method: str, *args: Any) -> str | None:
    """Call every listener's `method`; return the first failure described, or None."""
    for call in listener_calls(listeners, method):
        try:
            call(*args)
        except FENCED:
            raise
        except SystemExit as exc:
            return describe_exit(exc).replace("the step", method)
        except Exception as exc:
            return describe_exception(exc)
    return None


def close_quietly(connection: Any, step: str) -> None:
    """Close a step's connection (rolling back what it did not commit); a failure to close is
    only logged: the connection is discarded either way."""
    try:
        connection.close()
    except Exception:
        log.warning("closing the connection of step %s failed", step, exc_info=True)


def describe_exception(exc: BaseException) -> str:
    """The exception's one-line summary, then its traceback. A problem of the environment (a
    full disk, an unwritable file, a repository that cannot be written) is summed up by its
    own message, which names the path and the cause: "disk full writing out.csv: No space
    left on device"."""
    summary = exc.message if isinstance(exc, EnvironmentProblem) else f"{type(exc).__name__}: {exc}"
    trace = "".join(traceback.format_exception(exc))
    return f"{summary}\n{trace}"[:EXIT_MESSAGE_LIMIT]

"""Every error batchctl raises on purpose.

One root, `BatchctlError`, whose subclasses carry the process exit code the CLI uses, so the
mapping from a failure to an exit code lives with the failure and the CLI maps them in one place.
A subclass's docstring is its default message.
"""

from __future__ import annotations

from batchctl.defaults import (  # noqa: F401 - the exit codes are also read from here
    EXIT_COMPLETED,
    EXIT_ENVIRONMENT,
    EXIT_FAILED,
    EXIT_REFUSED,
    EXIT_STOPPED,
    EXIT_USAGE,
)


class BatchctlError(Exception):
    """batchctl failed."""

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


# -- bad usage or input: exit 2 ----------------------------------------------------------------


class UsageError(BatchctlError):
    """Bad usage or input."""

    exit_code = EXIT_USAGE


class InvalidParams(UsageError):
    """The job parameters are invalid."""


class UnknownJob(UsageError):
    """No job by that name is registered."""


class UnknownExecution(UsageError):
    """No execution has that id."""


class JobDefinitionError(UsageError):
    """A job is defined incorrectly."""


class ScheduleError(UsageError):
    """A schedule is defined incorrectly."""


class UnknownSchedule(UsageError):
    """No schedule by that name is defined."""


# -- refused by the state of an execution: exit 4 ----------------------------------------------


class Refused(BatchctlError):
    """Refused by the state of the job."""

    exit_code = EXIT_REFUSED


class AlreadyRunning(Refused):
    """This job instance already has a live execution."""


class AlreadyComplete(Refused):
    """This job instance has already completed."""


class NotRestartable(Refused):
    """Only a STOPPED or FAILED execution can be restarted."""


class NotRerunnable(Refused):
    """Only a COMPLETED or ABANDONED instance can be run again with --rerun."""


class NotLive(Refused):
    """The execution is not live."""


class NotAbandonable(Refused):
    """Only a STOPPED, FAILED or UNKNOWN execution can be abandoned."""


class StopTimeout(BatchctlError):
    """The execution did not stop in time."""


class StaleExecution(Refused):
    """The execution was changed by another process (lost update)."""


class ExecutionTakenOver(BatchctlError):
    """This process no longer owns the execution: it was judged lost (or taken over) by
    another process, so this one stops at once without committing anything more."""


# What a process that ran an execution or a partition learns when it no longer owns it: it must
# write nothing more (no rollback work, no file reset, no status) and stop.
FENCED = (StaleExecution, ExecutionTakenOver)


class SkipLimitExceeded(BatchctlError):
    """The chunk step skipped more items than its skip limit allows."""


class UnstorableValue(BatchctlError):
    """A value cannot be saved in the job repository as JSON."""


class CommitUnknown(BatchctlError):
    """The commit of a chunk failed: whether it was committed is unknown."""


# -- the environment: exit 5 --------------------------------------------------------------------


class EnvironmentProblem(BatchctlError):
    """The environment is not usable."""

    exit_code = EXIT_ENVIRONMENT


class ConfigError(EnvironmentProblem):
    """The configuration is invalid."""


class DatabaseUnavailable(EnvironmentProblem):
    """The job repository's database cannot be reached."""


class RepositoryLocked(DatabaseUnavailable):
    """The SQLite job repository stayed locked by another process for longer than its busy
    timeout."""


class OutputUnwritable(EnvironmentProblem):
    """A file of a step cannot be written."""

    # Its file system is full or read-only, or its path is not a writable file. Raised inside a
    # step, it ends the step FAILED (the run exits 1, like every failed run) with this one-line
    # message; it is never retried nor skipped, and a restart resumes from the last checkpoint.

    def __init__(self, message: str | None = None, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class RepositoryOutage(DatabaseUnavailable):
    """The job repository was unreachable for longer than db_outage_timeout."""


class RepositoryInterrupted(DatabaseUnavailable):
    """The connection to the job repository was lost in the middle of a transaction that cannot
    be run again as it is (a chunk's, a tasklet's): it was rolled back; the step redoes the
    work from its last checkpoint once the repository answers again."""

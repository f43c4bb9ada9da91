"""Start, stop, restart, abandon: the one place that decides what may happen to a job.

`Batch` is the API for Python callers (a scheduler, an RPC handler, a message consumer) and the
CLI is a thin layer over it. The rules are small pure functions (`start_rule`, `restart_rule`)
that the repository runs inside the transaction that creates the execution, so the decision and
the write are atomic.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Iterable, Mapping, Sequence

from batchctl.config import Config
from batchctl.errors import (
    AlreadyComplete,
    AlreadyRunning,
    InvalidParams,
    NotRestartable,
    Refused,
    UsageError,
)
from batchctl.job import Job
from batchctl.model import JobExecution, Status, StepExecution, instance_key, params_to_json

# -- the rules ------------------------------------------------------------------------------------


def start_rule(last: JobExecution | None) -> JobExecution | None:
    """What `start` does given the instance's last execution: the execution to resume, or None
    to run afresh; a Refused error when it may not run."""
    if last is None or last.status == Status.ABANDONED:
        return None
    if last.status.is_live:
        raise AlreadyRunning(
            f"job {last.job_name} with these params is already running (execution {last.id}, "
            f"{last.status.value})"
        )
    if last.status == Status.COMPLETED:
        raise AlreadyComplete(
            f"job {last.job_name} already completed with these params (execution {last.id}); "
            "a different param value makes a new instance"
        )
    if last.status.is_restartable:
        return last
    raise Refused(
        f"the last execution of this instance ({last.id}) is {last.status.value}: it may have "
        f"committed work; check it, then 'batchctl abandon {last.id}' to run the instance afresh"
    )


def restart_rule(last: JobExecution | None) -> JobExecution | None:
    """What `restart` does: resume a STOPPED or FAILED last execution, refuse anything else."""
    if last is None:
        raise NotRestartable("this instance has no execution to restart")
    if last.status.is_live:
        raise AlreadyRunning(
            f"execution {last.id} of job {last.job_name} is still {last.status.value}"
        )
    if not last.status.is_restartable:
        hint = " (a different param value makes a new instance)" if last.status == Status.COMPLETED else ""
        raise NotRestartable(
            f"execution {last.id} of job {last.job_name} is {last.status.value}; only STOPPED or "
            f"FAILED executions restart{hint}"
        )
    return last


def parse_target(target: str | int) -> int | str:
    """An argument made only of digits is an execution id; anything else a job name."""
    if isinstance(target, int):
        return target
    return int(target) if target.isdigit() else target


def parse_params(text: str | None) -> dict[str, Any]:
    """The --params JSON object; InvalidParams for anything else."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParams(f"--params is not valid JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(value, dict):
        raise InvalidParams("--params must be a JSON object, like '{\"date\": \"2024-01-31\"}'")
    return value


def parse_statuses(names: Sequence[str]) -> list[Status]:
    """Status names as given on the command line, in any case; UsageError for unknown ones."""
    statuses = []
    for name in names:
        try:
            statuses.append(Status(name.upper()))
        except ValueError:
            known = ", ".join(status.value for status in Status)
            raise UsageError(f"unknown status {name!r} (one of {known})") from None
    return statuses


# -- the API --------------------------------------------------------------------------------------


class Batch:
    """Run and inspect jobs: the operations of the CLI, for Python callers.

    ```
    batch = Batch.from_config()
    execution = batch.start("eod", {"date": "2024-01-31"})
    ```
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._repository: Any = None
        self._registry: Any = None

    @classmethod
    def from_config(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        database_url: str | None = None,
        jobs_dir: str | os.PathLike[str] | None = None,
    ) -> Batch:
        """A Batch over the configuration found as the CLI finds it (see `Config.load`)."""
        return cls(Config.load(path, database_url=database_url, jobs_dir=jobs_dir))

    @property
    def repository(self) -> Any:
        if self._repository is None:
            from batchctl.repository import Repository

            self._repository = Repository.open(self.config.database_url)
        return self._repository

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from batchctl.registry import Registry

            self._registry = Registry.discover(self.config.jobs_dir)
        return self._registry

    def close(self) -> None:
        if self._repository is not None:
            self._repository.close()
            self._repository = None

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- jobs -----------------------------------------------------------------------------------

    def job(self, name: str) -> Job:
        return self.registry.get(name)

    def jobs(self) -> list[Job]:
        return [self.registry.jobs[name] for name in sorted(self.registry.jobs)]

    # -- running --------------------------------------------------------------------------------

    def start(
        self,
        job: str | Job,
        params: Mapping[str, Any] | None = None,
        *,
        observers: Iterable[Any] = (),
        on_tracker: Any = None,
    ) -> JobExecution:
        """Run `job` with `params` in this process and return the finished execution.

        A new instance runs afresh; a FAILED or STOPPED one resumes (`execution.resumed_from`);
        a live or COMPLETED one is refused.
        """
        execution, found = self.create_start(job, params)
        return self.run(found, execution, observers=observers, on_tracker=on_tracker)

    def create_start(
        self, job: str | Job, params: Mapping[str, Any] | None = None
    ) -> tuple[JobExecution, Job]:
        """Record a STARTING execution for `start` without running it."""
        found = job if isinstance(job, Job) else self.job(job)
        converted = found.convert_params(params or {})
        stored = params_to_json(converted)
        execution = self.repository.create_execution(
            found.name,
            instance_key(converted),
            stored,
            start_rule,
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        return execution, found

    def restart(
        self, target: str | int, *, observers: Iterable[Any] = (), on_tracker: Any = None
    ) -> JobExecution:
        """Resume the STOPPED or FAILED instance named by `target` in this process."""
        execution, found = self.create_restart(target)
        return self.run(found, execution, observers=observers, on_tracker=on_tracker)

    def create_restart(self, target: str | int) -> tuple[JobExecution, Job]:
        """Record the STARTING execution of a restart without running it."""
        previous = self.resolve(target)
        found = self.job(previous.job_name)
        execution = self.repository.create_execution_of_instance(
            previous.instance_id, restart_rule, host=socket.gethostname(), pid=os.getpid()
        )
        return execution, found

    def run(
        self,
        job: Job,
        execution: JobExecution,
        *,
        observers: Iterable[Any] = (),
        on_tracker: Any = None,
    ) -> JobExecution:
        """Run an execution created by `create_start` or `create_restart` to its end."""
        from batchctl.engine import HeartbeatSettings, run_execution

        heartbeat = HeartbeatSettings(interval=self.config.heartbeat_interval)
        return run_execution(
            job,
            execution,
            self.repository,
            heartbeat=heartbeat,
            observers=observers,
            on_tracker=on_tracker,
        )

    # -- reading --------------------------------------------------------------------------------

    def resolve(self, target: str | int) -> JobExecution:
        """The execution named by an id, or the job's most recently created execution."""
        parsed = parse_target(target)
        if isinstance(parsed, int):
            return self.repository.execution(parsed)
        latest = self.repository.latest_execution(parsed)
        if latest is None:
            if parsed not in self.registry.jobs:
                self.registry.get(parsed)  # raises UnknownJob, naming any load problems
            raise UsageError(f"job {parsed} has no executions")
        return latest

    def execution(self, execution_id: int) -> JobExecution:
        return self.repository.execution(execution_id)

    def step_executions(self, execution_id: int) -> list[StepExecution]:
        return self.repository.step_executions(execution_id)

    def history(
        self,
        job: str | None = None,
        *,
        statuses: Sequence[Status | str] = (),
        limit: int | None = 20,
    ) -> list[JobExecution]:
        """Executions, newest first; `limit=None` for all."""
        wanted = parse_statuses([s.value if isinstance(s, Status) else s for s in statuses])
        return self.repository.history(job, wanted, limit)

"""Authoring: `Job`, its steps, its listeners and the `StepContext` steps receive.

No SQL and no I/O here: a job module imports this, declares, and the engine runs what was
declared.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
import threading
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from batchctl.errors import JobDefinitionError
from batchctl.model import Param, convert_params

JOB_LISTENER_METHODS = ("before_job", "after_job")
STEP_LISTENER_METHODS = ("before_step", "after_step")
LISTENER_METHODS = JOB_LISTENER_METHODS + STEP_LISTENER_METHODS

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")

StepFunction = Callable[["StepContext"], Any]


@dataclass(frozen=True)
class Step:
    """One declared step. A tasklet that is a generator checkpoints at every `yield`."""

    name: str
    function: StepFunction
    kind: str = "tasklet"

    @property
    def is_generator(self) -> bool:
        return inspect.isgeneratorfunction(self.function)

    @property
    def description(self) -> str:
        doc = inspect.getdoc(self.function) or ""
        return doc.splitlines()[0] if doc else ""


class StepContext:
    """What a step sees: typed params, its own saved state, the job's shared context, a logger.

    `state` is the step execution's context: saved at every checkpoint (a generator tasklet's
    `yield`) and handed back on restart. `job_context` is shared by all steps of the job
    execution and saved after each step.
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
    """

    name: str
    description: str = ""
    params: Mapping[str, type | Param] = field(default_factory=dict)
    listeners: list[Any] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list, init=False)
    defined_in: str = field(default="", init=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise JobDefinitionError(
                f"invalid job name {self.name!r}: use letters, digits, '_', '.', ':' or '-'"
            )
        if self.name.isdigit():
            raise JobDefinitionError(
                f"invalid job name {self.name!r}: a name made only of digits would read as an "
                "execution id"
            )
        self.params = {name: _as_param(name, kind) for name, kind in dict(self.params).items()}
        self.listeners = list(self.listeners)
        caller = sys._getframe(2)
        self.defined_in = f"{caller.f_code.co_filename}:{caller.f_lineno}"

    @property
    def declared_params(self) -> Mapping[str, Param]:
        return self.params  # type: ignore[return-value]

    def convert_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and type the params given as JSON; raise InvalidParams naming the bad one."""
        return convert_params(self.declared_params, given)

    # -- steps ----------------------------------------------------------------------------------

    def tasklet(
        self, function: StepFunction | None = None, *, name: str | None = None
    ) -> Any:
        """Declare a tasklet step: `fn(ctx)`, or a generator whose every `yield` is a checkpoint.

        Usable bare (`@job.tasklet`) or with a name (`@job.tasklet(name="load")`).
        """

        def declare(fn: StepFunction) -> StepFunction:
            self._add_step(Step(name=name or fn.__name__, function=fn, kind="tasklet"))
            return fn

        return declare(function) if function is not None else declare

    def _add_step(self, step: Step) -> None:
        if not _NAME.match(step.name):
            raise JobDefinitionError(f"job {self.name!r}: invalid step name {step.name!r}")
        if any(existing.name == step.name for existing in self.steps):
            raise JobDefinitionError(f"job {self.name!r}: duplicate step name {step.name!r}")
        self.steps.append(step)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise JobDefinitionError(f"job {self.name!r} has no step {name!r}")

    # -- listeners ------------------------------------------------------------------------------

    def listener(self, listener: Any) -> Any:
        """Register an object with any of before_job/after_job/before_step/after_step."""
        if not any(callable(getattr(listener, m, None)) for m in LISTENER_METHODS):
            raise JobDefinitionError(
                f"job {self.name!r}: a listener needs one of {', '.join(LISTENER_METHODS)}"
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

    def _listen(self, method: str, function: Callable[..., Any]) -> Callable[..., Any]:
        self.listeners.append(_FunctionListener(method, function))
        return function


def listener_calls(listeners: Iterable[Any], method: str) -> list[Callable[..., Any]]:
    """The callables to invoke for `method`: declaration order before, reverse order after."""
    calls = [getattr(lst, method) for lst in listeners if callable(getattr(lst, method, None))]
    return calls[::-1] if method.startswith("after_") else calls


def _as_param(name: str, kind: type | Param) -> Param:
    if isinstance(kind, Param):
        return kind
    try:
        return Param(kind)
    except TypeError as exc:
        raise JobDefinitionError(f"param {name!r}: {exc}") from None

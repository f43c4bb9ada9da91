"""Command messages, whatever the broker: decode, carry out through `Batch`, say what the
broker should do with the message (ack, dead-letter, retry later, or stop consuming).

A command is a JSON object `{"command": "start"|"stop"|"restart"|"abandon", "job": ...,
"params": {...}, "target": "JOB|ID"}`. Its message id (the broker's, else the body's `id`) is
recorded in the transaction of the change it makes (`MessageLedger.recorder` as `also`), so a
redelivery finds it and is acknowledged as a duplicate. Nothing here decides what may start:
`Batch` does, and its refusals become dead letters or retries.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable

from batchctl.errors import (
    AlreadyRunning,
    BatchctlError,
    EnvironmentProblem,
    StaleExecution,
    UsageError,
)
from batchctl.model import JobExecution, Trigger, parse_execution_id

log = logging.getLogger("batchctl.listen")

COMMANDS = ("start", "restart", "stop", "abandon")
LAUNCHING = ("start", "restart")  # the commands that start an execution (count for --max-running)
FAULT_ENV = "BATCHCTL_LISTEN_FAULT"  # tests only: "before-commit" or "after-commit" kills the listener there


class Verdict(enum.Enum):
    """What the broker adapter does with a message."""

    DONE = "done"  # carried out: reply, acknowledge
    DUPLICATE = "duplicate"  # carried out before (its id is in the ledger): reply, acknowledge
    DEAD = "dead"  # no retry can change it: to `<queue>.dead` with the reason, acknowledge
    RETRY = "retry"  # transient (already running, a lost update): again later, with backoff
    PAUSE = "pause"  # the repository is unreachable: give the message back, stop consuming


@dataclass(frozen=True)
class Incoming:
    """A message as the broker adapter hands it over."""

    body: bytes
    message_id: str | None = None  # the broker's message id (AMQP message_id, Redis field id)
    deliveries: int = 1  # how many times it has been delivered, this time included
    reply_to: str | None = None
    correlation_id: str | None = None


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    reason: str = ""
    message_id: str | None = None
    command: str | None = None
    execution: JobExecution | None = None
    reply: dict[str, Any] | None = None  # what a reply address receives

    def describe(self) -> str:
        """The log line's text."""
        what = f"{self.command or '?'} message {self.message_id or '(no id)'}"
        if self.verdict == Verdict.DONE and self.execution is not None:
            return f"{what}: execution {self.execution.id} of {self.execution.job_name} {self.execution.status.value}"
        if self.verdict == Verdict.DUPLICATE:
            return f"{what}: duplicate, already carried out ({self.reason})"
        return f"{what}: {self.verdict.value}: {self.reason}"


class Slots:
    """The executions this listener started that may still be live, for `--max-running`."""

    def __init__(self, batch: Any, limit: int | None) -> None:
        self.batch = batch
        self.limit = limit
        self.running: set[int] = set()
        self.lock = threading.Lock()

    def add(self, execution_id: int) -> None:
        with self.lock:
            self.running.add(execution_id)

    def full(self) -> bool:
        """True while `limit` of them are live (their statuses are read only when it may be)."""
        if self.limit is None:
            return False
        with self.lock:
            if len(self.running) < self.limit:
                return False
            for execution_id in list(self.running):
                if not self.batch.execution(execution_id).status.is_live:
                    self.running.discard(execution_id)
            return len(self.running) >= self.limit


class CommandHandler:
    """Carries out command messages through `Batch`; `handle` never raises for a bad message."""

    def __init__(self, batch: Any, *, max_deliveries: int, slots: Slots) -> None:
        from batchctl.repository.messages import MessageLedger

        self.batch = batch
        self.ledger = MessageLedger(batch.repository)
        self.max_deliveries = max_deliveries
        self.slots = slots
        self.fault = os.environ.pop(FAULT_ENV, None)

    def handle(self, incoming: Incoming) -> Outcome:
        outcome = self._handle(incoming)
        if outcome.verdict == Verdict.RETRY and incoming.deliveries >= self.max_deliveries:
            reason = f"failed {incoming.deliveries} deliveries, the last: {outcome.reason}"
            return Outcome(Verdict.DEAD, reason, outcome.message_id, outcome.command,
                           reply=_refusal(reason, 4))
        return outcome

    def repository_reachable(self) -> bool:
        """Whether the repository answers again after an outage."""
        try:
            self.ledger.cursor("-")
        except EnvironmentProblem:
            return False
        return True

    def _handle(self, incoming: Incoming) -> Outcome:
        try:
            body = json.loads(incoming.body)
        except (ValueError, UnicodeDecodeError) as exc:
            return Outcome(Verdict.DEAD, f"not JSON: {exc}", incoming.message_id,
                           reply=_refusal(f"not JSON: {exc}", 2))
        if not isinstance(body, dict):
            return _dead("the body is not a JSON object", incoming.message_id)
        given_id = incoming.message_id or body.get("id")
        message_id = str(given_id) if given_id not in (None, "") else None
        command = body.get("command")
        if command not in COMMANDS:
            return _dead(f"unknown command {command!r} (one of {', '.join(COMMANDS)})", message_id)
        try:
            if message_id is not None:
                record = self.ledger.find(message_id)
                if record is not None:
                    return self._duplicate(message_id, command, record.execution_id)
            execution = self._carry_out(command, body, message_id)
        except EnvironmentProblem as exc:
            return Outcome(Verdict.PAUSE, exc.message, message_id, command)
        except (AlreadyRunning, StaleExecution) as exc:
            return self._unless_recorded(Outcome(Verdict.RETRY, exc.message, message_id, command))
        except (UsageError, BatchctlError) as exc:  # unknown job, bad params, a refusal
            dead = _dead(exc.message, message_id, command, exc.exit_code)
            return self._unless_recorded(dead)
        except Exception as exc:  # a driver error: a race on the message id, or transient
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return self._unless_recorded(Outcome(Verdict.RETRY, reason, message_id, command))
        if self.fault == "after-commit":
            os.kill(os.getpid(), signal.SIGKILL)
        from batchctl import render

        if command in LAUNCHING:
            self.slots.add(execution.id)
        return Outcome(Verdict.DONE, "", message_id, command, execution,
                       reply={"ok": True, "execution": render.execution_dict(execution)})

    def _carry_out(self, command: str, body: dict[str, Any], message_id: str | None) -> JobExecution:
        also = self._recorder(message_id, command)
        trigger = Trigger("mq", message_id)
        if command == "start":
            job = body.get("job")
            if not isinstance(job, str) or not job:
                raise UsageError("a start command needs a job name in 'job'")
            params = body.get("params") or {}
            if not isinstance(params, dict):
                raise UsageError("'params' must be a JSON object")
            return self.batch.start(job, params, detach=True, trigger=trigger, also=also)  # type: ignore[no-any-return]
        target = _target(body)
        if command == "restart":
            return self.batch.restart(target, detach=True, trigger=trigger, also=also)  # type: ignore[no-any-return]
        if command == "stop":
            return self.batch.stop(target, also=also)  # type: ignore[no-any-return]
        if not target.isascii() or not target.isdigit():
            raise UsageError(f"abandon takes an execution id, not {target!r}")
        return self.batch.abandon(parse_execution_id(target), also=also)  # type: ignore[no-any-return]

    def _recorder(self, message_id: str | None, command: str) -> Callable[[Any, JobExecution], None] | None:
        if message_id is None:
            return None
        record = self.ledger.recorder(message_id, command)
        if self.fault != "before-commit":
            return record

        def record_then_die(connection: Any, execution: JobExecution) -> None:
            record(connection, execution)
            os.kill(os.getpid(), signal.SIGKILL)  # inside the transaction: nothing committed

        return record_then_die

    def _duplicate(self, message_id: str, command: str, execution_id: int | None) -> Outcome:
        from batchctl import render

        execution = self.batch.execution(execution_id) if execution_id is not None else None
        reply = {"ok": True, "duplicate": True,
                 "execution": render.execution_dict(execution) if execution else None}
        reason = f"execution {execution_id}" if execution_id is not None else "no execution"
        return Outcome(Verdict.DUPLICATE, reason, message_id, command, execution, reply)

    def _unless_recorded(self, outcome: Outcome) -> Outcome:
        """A failure of a message whose id is in the ledger after all (another listener carried
        it out meanwhile, or this one before a crash) is a duplicate."""
        if outcome.message_id is None or outcome.command is None:
            return outcome
        try:
            record = self.ledger.find(outcome.message_id)
        except EnvironmentProblem as exc:
            return Outcome(Verdict.PAUSE, exc.message, outcome.message_id, outcome.command)
        if record is None:
            return outcome
        return self._duplicate(outcome.message_id, outcome.command, record.execution_id)


def _target(body: dict[str, Any]) -> str:
    target = body.get("target", body.get("job"))
    if isinstance(target, int) and not isinstance(target, bool):
        target = str(target)
    if not isinstance(target, str) or not target:
        raise UsageError("this command needs a 'target': a job name or an execution id")
    if target.isascii() and target.isdigit():
        parse_execution_id(target)
    return target


def _refusal(reason: str, exit_code: int) -> dict[str, Any]:
    return {"ok": False, "error": reason, "exit_code": exit_code}


def _dead(reason: str, message_id: str | None, command: str | None = None, exit_code: int = 2) -> Outcome:
    return Outcome(Verdict.DEAD, reason, message_id, command, reply=_refusal(reason, exit_code))


def backoff(deliveries: int, *, base: float = 0.5, most: float = 30.0) -> float:
    """Seconds to wait before a transient failure's next attempt."""
    return float(min(most, base * 2 ** max(0, deliveries - 1)))


__all__ = ["CommandHandler", "Incoming", "Outcome", "Slots", "Verdict", "backoff"]

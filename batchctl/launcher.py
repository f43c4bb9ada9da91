"""Where an execution runs: in this process (foreground), with signals routed to a stop.

Ctrl-C or SIGTERM asks the engine for a graceful stop (it finishes the current checkpoint and
ends STOPPED); a second Ctrl-C interrupts the step at once.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from batchctl.job import Job
from batchctl.model import JobExecution


class _StopOnSignals:
    def __init__(self) -> None:
        self.tracker: Any = None
        self.interrupts = 0

    def attach(self, tracker: Any) -> None:
        self.tracker = tracker

    def on_interrupt(self, signum: int, _frame: Any) -> None:
        self.interrupts += 1
        if self.interrupts > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.tracker is not None:
            self.tracker.request_stop()


@contextmanager
def stop_on_signals() -> Iterator[_StopOnSignals]:
    """Route SIGINT and SIGTERM to a graceful stop while the block runs."""
    hook = _StopOnSignals()
    previous = {sig: signal.signal(sig, hook.on_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield hook
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_foreground(
    batch: Any, job: Job, execution: JobExecution, *, observers: Iterable[Any] = ()
) -> JobExecution:
    """Run an already created execution in this process, stoppable by Ctrl-C and SIGTERM."""
    with stop_on_signals() as hook:
        return batch.run(job, execution, observers=observers, on_tracker=hook.attach)

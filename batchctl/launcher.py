"""Where an execution runs: in this process (foreground), or in a new one (detached).

A detached execution is the same engine in another process: `python -m batchctl
run-execution ID`, in its own session, its output going to a log file. In either, Ctrl-C or
SIGTERM (or SIGHUP, the terminal closing) asks the engine for a graceful stop (it finishes the
current checkpoint and ends STOPPED); a second Ctrl-C interrupts the step at once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from batchctl.config import Config
from batchctl.defaults import (
    HIDDEN_COMMAND,
    LOG_FILE_MODE,
    LOG_FINAL_WAIT,
    LOG_FOLLOW_POLL,
    SERVICE_SECRET_ENV,
)
from batchctl.errors import EnvironmentProblem, UsageError
from batchctl.host import process_alive  # noqa: F401 - re-exported: tests and callers use it here
from batchctl.model import JobExecution



def log_path_for(config: Config, execution: JobExecution) -> Path:
    return config.log_dir / f"{execution.job_name}-{execution.id}.log"


def prepare_log_dir(config: Config) -> None:
    """Create the log folder, or say why it cannot be one (exit 5), before a detached
    execution is recorded: a `log_dir` that is a file, or one that cannot be written (a
    read-only file system, a full disk, a folder its user may not write), must not leave a
    FAILED execution behind. Whether a log can be written is tried, not guessed from the
    folder's mode (root writes through any mode): a byte is written, synced and removed."""
    folder = config.log_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise EnvironmentProblem(f"log_dir {folder} is not a folder") from None
    except OSError as exc:
        raise EnvironmentProblem(f"log_dir {folder} cannot be created: {exc.strerror}") from None
    probe = folder / f".batchctl-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, LOG_FILE_MODE)
        try:
            os.write(descriptor, b"\n")
            os.fsync(descriptor)  # a full disk may only say so here
        finally:
            os.close(descriptor)
    except OSError as exc:
        raise EnvironmentProblem(f"log_dir {folder} cannot be written: {exc.strerror}") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def spawn(config: Config, execution: JobExecution, log_path: Path) -> int:
    """Start the process that runs `execution`; return its pid without waiting for it.

    The child gets the fully resolved configuration through its environment (never on its
    command line, where a database password would show in `ps`). The log is created 0600
    whatever the umask: it holds the job's params and whatever the job logs.
    """
    command = [sys.executable, "-m", "batchctl", HIDDEN_COMMAND, str(execution.id)]
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, LOG_FILE_MODE)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot create the log file {log_path}: {exc.strerror}") from None
    with open(descriptor, "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(config),
            cwd=Path.cwd(),
            start_new_session=True,
            close_fds=True,
        )
    # Reap the child when it ends, so a long-lived caller collects no zombies.
    threading.Thread(target=process.wait, name=f"batchctl-reap-{process.pid}", daemon=True).start()
    return process.pid


def read_log(batch: Any, execution_id: int, *, follow: bool = False) -> Iterator[str]:
    """The text of a detached execution's log; with `follow`, more as it is written, until the
    execution is no longer live."""
    execution = batch.execution(execution_id)
    if not execution.log_path:
        raise UsageError(
            f"execution {execution_id} has no log file: it ran in the foreground"
        )
    path = Path(execution.log_path)
    if not path.exists():
        raise UsageError(f"the log of execution {execution_id} is gone: {path}")
    with path.open("r", encoding="utf-8", errors="replace") as log:
        while True:
            text = log.read()
            if text:
                yield text
            if not follow:
                return
            ended = batch.execution(execution_id)
            if not ended.status.is_live:
                _wait_for_exit(ended, deadline=time.monotonic() + LOG_FINAL_WAIT)
                rest = log.read()
                if rest:
                    yield rest
                return
            time.sleep(LOG_FOLLOW_POLL)


def _wait_for_exit(execution: JobExecution, *, deadline: float) -> None:
    """Give an ended execution's process a moment to write its last lines and exit."""
    from batchctl.host import same_pid_scope

    if not execution.pid or not same_pid_scope(execution.host, execution.pid_scope):
        return
    while process_alive(execution.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def child_env(config: Config) -> dict[str, str]:
    """The environment of a batchctl process started on our behalf: this configuration,
    fully resolved, so that the child needs no config file and no password on its command line."""
    env = scrub_secrets(os.environ)
    env.pop("BATCHCTL_CONFIG", None)
    env.update(
        BATCHCTL_DATABASE_URL=config.database_url,
        BATCHCTL_JOBS_DIR=str(config.jobs_dir),
        BATCHCTL_LOG_DIR=str(config.log_dir),
        BATCHCTL_HEARTBEAT_INTERVAL=str(config.heartbeat_interval),
        BATCHCTL_HEARTBEAT_TIMEOUT=str(config.heartbeat_timeout),
        BATCHCTL_DB_OUTAGE_TIMEOUT=str(config.db_outage_timeout),
        BATCHCTL_PROJECT_DIR=str(config.project_dir),
    )
    if config.dask_scheduler:
        env["BATCHCTL_DASK_SCHEDULER"] = config.dask_scheduler
    return env


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""What asks a running execution for a graceful stop: Ctrl-C, a `kill`, and the terminal
closing (SIGHUP), which would otherwise end the process at once and leave a lost execution."""

FIRST_INTERRUPT = "stopping at the next checkpoint; Ctrl-C again to interrupt"


def scrub_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without the secrets of batchctl's services (`BATCHCTL_API_TOKEN` and any other
    `BATCHCTL_*` variable naming a token, secret, password or key): a job launched by a service
    never sees what the service authenticates with. The job's own variables are kept."""
    return {
        name: value for name, value in environ.items()
        if not re.match(SERVICE_SECRET_ENV, name)
    }


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
        if signum == signal.SIGHUP:
            _detach_from_terminal()
        if self.interrupts == 1:
            _say(FIRST_INTERRUPT if signum == signal.SIGINT else
                 f"{signal.Signals(signum).name}: stopping at the next checkpoint")
        if self.tracker is not None:
            self.tracker.request_stop()


def _say(line: str) -> None:
    """One line on stderr at once (through the live display's redirection when it is on). A
    terminal that is gone must not turn a graceful stop into a crash."""
    try:
        sys.stderr.write(f"batchctl: {line}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _detach_from_terminal() -> None:
    """After SIGHUP the terminal is gone: writing to it fails (EIO), which would end the run
    with an error instead of STOPPED. Output meant for it goes to /dev/null from now on; pipes
    and files are left alone."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        for fd in (1, 2):
            try:
                if os.isatty(fd):
                    os.dup2(devnull, fd)
            except OSError:
                pass
    finally:
        os.close(devnull)


@contextmanager
def stop_on_signals() -> Iterator[_StopOnSignals]:
    """Route SIGINT, SIGTERM and SIGHUP to a graceful stop while the block runs: attach the
    running execution's tracker to what this yields (`Batch.start(..., handle_signals=True)`
    does). The first Ctrl-C says so at once; a second one interrupts the step."""
    hook = _StopOnSignals()
    previous = {sig: signal.signal(sig, hook.on_interrupt) for sig in STOP_SIGNALS}
    try:
        yield hook
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_worker(worker: Any) -> int:
    """Run a worker's claim loop; SIGTERM or Ctrl-C makes it finish its chunk and exit (at
    once, exit 5, if the repository is unreachable meanwhile: it does not wait for it)."""

    def stop(_signum: int, _frame: Any) -> None:
        worker.request_shutdown()
        worker.repository.outage.cancel()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return int(worker.run())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""The `batchctl` command: parses, calls the operator, hands results to render.

Errors are mapped to exit codes in one place (`main`). SQLAlchemy, Alembic, rich tables and job
modules are imported inside the commands that need them, so `batchctl --help` starts fast.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from batchctl.errors import EXIT_FAILED, EXIT_USAGE, BatchctlError

if TYPE_CHECKING:
    from batchctl.operator import Batch

HIDDEN_COMMAND = "run-execution"  # the same name as batchctl.launcher.HIDDEN_COMMAND
MAX_LIMIT = 2**63 - 1  # the largest --limit a database takes (batchctl.model.MAX_ID)

app = typer.Typer(
    name="batchctl",
    help="Run, watch, stop and restart batch jobs recorded in a job repository.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(help="Manage the job repository's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@dataclass
class _Options:
    config: str | None = None
    database_url: str | None = None
    jobs_dir: str | None = None
    debug: bool = False
    batch: Batch | None = None

    def close(self) -> None:
        """Forget what an earlier run in this process chose (tests run the CLI many times)."""
        if self.batch is not None:
            self.batch.close()
        self.__init__()  # type: ignore[misc]

    def open(self) -> Batch:
        if self.batch is None:
            from batchctl.operator import Batch

            self.batch = Batch.from_config(
                self.config, database_url=self.database_url, jobs_dir=self.jobs_dir
            )
        return self.batch


_options = _Options()

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")]


@app.callback()
def _global(
    config: Annotated[
        Optional[str],
        typer.Option("--config", envvar="BATCHCTL_CONFIG", help="Configuration file (TOML)."),
    ] = None,
    db: Annotated[
        Optional[str],
        typer.Option("--db", help="Job repository URL; overrides BATCHCTL_DATABASE_URL."),
    ] = None,
    jobs_dir: Annotated[
        Optional[str],
        typer.Option("--jobs-dir", help="Folder of job modules; overrides BATCHCTL_JOBS_DIR."),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks (also BATCHCTL_DEBUG=1).")
    ] = False,
) -> None:
    _options.config = config
    _options.database_url = db
    _options.jobs_dir = jobs_dir
    _options.debug = debug or _options.debug


@app.command()
def start(
    job: Annotated[str, typer.Argument(help="The job's name.")],
    params: Annotated[
        Optional[str], typer.Option("--params", "-p", help="Params as a JSON object.")
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Run in a new process; print its id and return.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Run a job. Exit code: 0 completed, 1 failed, 3 stopped (--detach: 0 once launched)."""
    from batchctl.model import parse_params

    given = parse_params(params)
    batch = _options.open()
    _prepare_detach(batch, detach)
    execution, found = batch.create_start(job, given, detach=detach)
    _run_or_launch(batch, found, execution, detach=detach, as_json=as_json)


@app.command()
def restart(
    target: Annotated[str, typer.Argument(metavar="JOB|ID", help="A job name or an execution id.")],
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Run in a new process; print its id and return.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Resume a STOPPED or FAILED instance where it stopped: completed steps are skipped."""
    batch = _options.open()
    _prepare_detach(batch, detach)
    execution, found = batch.create_restart(_target(target), detach=detach)
    _run_or_launch(batch, found, execution, detach=detach, as_json=as_json)


def _target(target: str) -> str:
    """A JOB|ID argument, refused early when it is an id no repository can hold (beyond 64
    bits), which would otherwise reach the driver as an overflow."""
    from batchctl.model import parse_execution_id

    if target.isascii() and target.isdigit():
        parse_execution_id(target)
    return target


def _execution_id(execution_id: int) -> int:
    """An ID argument (click has made it an int): beyond 64 bits it names no execution."""
    from batchctl.model import parse_execution_id

    return parse_execution_id(execution_id)


def _prepare_detach(batch: Batch, detach: bool) -> None:
    """A detached run needs its log folder: say so (exit 5) before an execution is recorded."""
    if detach:
        from batchctl.launcher import prepare_log_dir

        prepare_log_dir(batch.config)


def _run_or_launch(batch: Batch, job: Any, execution: Any, *, detach: bool, as_json: bool) -> None:
    from batchctl import render

    if execution.resumed_from and not as_json:
        render.warn(
            f"resuming job {job.name} from execution {execution.resumed_from} "
            f"(new execution {execution.id})"
        )
    if detach:
        launched = batch.launch(execution)
        if as_json:
            render.print_json(render.execution_dict(launched))
        else:
            render.print_launched(launched)
        return
    _run(batch, job, execution, as_json=as_json)


def _run(batch: Batch, job: Any, execution: Any, *, as_json: bool) -> None:
    from batchctl import render
    from batchctl.launcher import run_foreground

    terminal = render.stderr.is_terminal and not as_json
    render.setup_logging(rich_output=terminal)
    observers = render.displays(job, terminal=terminal)
    if observers:
        with observers[0]:
            finished = run_foreground(batch, job, execution, observers=observers)
    else:
        finished = run_foreground(batch, job, execution)
    if as_json:
        render.print_json(render.execution_dict(finished, batch.step_executions(finished.id)))
    else:
        render.print_outcome(finished)
    raise typer.Exit(finished.process_exit_code)


@app.command()
def stop(
    target: Annotated[str, typer.Argument(metavar="JOB|ID", help="A job name or an execution id.")],
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Wait until it has ended.")] = False,
    timeout: Annotated[
        Optional[float],
        typer.Option("--timeout", "-t", min=0, help="With --wait: give up after S seconds."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Ask a live execution to stop at its next checkpoint."""
    from batchctl import render

    execution = _options.open().stop(_target(target), wait=wait, timeout=timeout)
    if as_json:
        render.print_json(render.execution_dict(execution))
    else:
        render.print_stop(execution, waited=wait)


@app.command()
def abandon(
    execution_id: Annotated[int, typer.Argument(metavar="ID", help="An execution id.")],
    as_json: JsonOption = False,
) -> None:
    """Mark a STOPPED, FAILED or UNKNOWN execution ABANDONED: it will never be restarted."""
    from batchctl import render

    execution = _options.open().abandon(_execution_id(execution_id))
    if as_json:
        render.print_json(render.execution_dict(execution))
    else:
        render.stdout.print(f"execution {execution.id} of {execution.job_name} abandoned")


@app.command()
def logs(
    execution_id: Annotated[int, typer.Argument(metavar="ID", help="An execution id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the execution ends.")
    ] = False,
) -> None:
    """Print a detached execution's log."""
    from batchctl.launcher import read_log

    for chunk in read_log(_options.open(), _execution_id(execution_id), follow=follow):
        sys.stdout.write(chunk)
        sys.stdout.flush()


@app.command()
def worker(
    poll: Annotated[
        float,
        typer.Option("--poll", min=0.05, help="Seconds between looks for work when idle."),
    ] = 2.0,
    execution: Annotated[Optional[int], typer.Option("--execution", hidden=True)] = None,
    step: Annotated[Optional[str], typer.Option("--step", hidden=True)] = None,
    exit_when_idle: Annotated[bool, typer.Option("--exit-when-idle", hidden=True)] = False,
) -> None:
    """Run partitions of remote partitioned steps (Postgres) until SIGTERM or Ctrl-C."""
    from batchctl import render

    render.setup_logging(rich_output=False)
    _options.open().run_worker(
        poll_interval=poll, execution_id=execution, step_name=step, exit_when_idle=exit_when_idle
    )


@app.command()
def workers(as_json: JsonOption = False) -> None:
    """Live workers and the partition each is running."""
    from batchctl import render

    found = _options.open().workers()
    if as_json:
        render.print_json([render.worker_dict(info) for info in found])
    else:
        render.print_workers(found)


@app.command(HIDDEN_COMMAND, hidden=True)
def run_execution(
    execution_id: Annotated[int, typer.Argument(metavar="ID")],
) -> None:
    """Run a launched execution (the process a detached start creates)."""
    from batchctl import render

    render.setup_logging(rich_output=False)
    finished = _options.open().run_launched(execution_id)
    raise typer.Exit(finished.process_exit_code)


@app.command()
def history(
    job: Annotated[Optional[str], typer.Argument(help="Only this job's executions.")] = None,
    status: Annotated[
        Optional[list[str]],
        typer.Option("--status", "-s", help="Only executions with this status (repeatable)."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=MAX_LIMIT, help="At most N executions.")
    ] = 20,
    as_json: JsonOption = False,
) -> None:
    """Executions, newest first."""
    from batchctl import render
    from batchctl.operator import parse_statuses

    wanted = parse_statuses(status or [])
    executions = _options.open().history(job, statuses=wanted, limit=limit)
    if as_json:
        render.print_json([render.execution_dict(execution) for execution in executions])
    else:
        render.print_history(executions)


@app.command()
def show(
    execution_id: Annotated[int, typer.Argument(metavar="ID", help="An execution id.")],
    as_json: JsonOption = False,
) -> None:
    """One execution with its step executions and the items its chunk steps skipped."""
    from batchctl import render

    batch = _options.open()
    execution_id = _execution_id(execution_id)
    execution = batch.execution(execution_id)
    steps = batch.step_executions(execution_id)
    skipped = batch.skipped_items(execution_id)
    if as_json:
        render.print_json(render.execution_dict(execution, steps, skipped))
    else:
        render.print_execution(execution, steps, skipped)


@app.command()
def jobs(as_json: JsonOption = False) -> None:
    """Registered jobs: description, params and steps."""
    from batchctl import render

    batch = _options.open()
    found = batch.jobs()
    for problem in batch.registry.problems:
        render.warn(f"warning: {problem}")
    if as_json:
        render.print_json([render.job_dict(job) for job in found])
    else:
        render.print_jobs(found)


@app.command("schedules")
def schedules_(
    name: Annotated[Optional[str], typer.Argument(help="One schedule: list its next fires.")] = None,
    count: Annotated[
        Optional[int], typer.Option("--next", "-n", min=1, help="With NAME: how many fires (5).")
    ] = None,
    after: Annotated[
        Optional[str],
        typer.Option(help="With NAME: fires after this ISO 8601 instant (default now; without "
                     "an offset, in the schedule's time zone)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Schedules and their next fire; with NAME, its next fires and their params (writes nothing)."""
    from batchctl import render
    from batchctl.errors import UsageError
    from batchctl.model import utcnow
    from batchctl.schedules import find_schedule, load_schedules, next_fires, parse_instant
    from batchctl.schedules import output, time_zone

    if name is None and (count is not None or after is not None):
        raise UsageError("--next and --after need a schedule NAME")
    batch, now = _options.open(), utcnow()
    valid, problems = load_schedules(batch.config, batch.registry, now=now)
    if name is not None:
        schedule = find_schedule(name, valid, problems)
        start = parse_instant(after, time_zone(schedule.timezone)) if after else now
        output.print_fires(schedule, next_fires(schedule, start, count or 5), as_json=as_json)
        return
    output.print_schedules(valid, now, as_json=as_json)
    for problem in problems:
        render.error(str(problem))
    if problems:
        raise typer.Exit(EXIT_USAGE)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the repository schema."""
    from batchctl import render
    from batchctl.repository.connect import create_repository_engine
    from batchctl.repository.migrate import HEAD_REVISION, upgrade

    config = _options.open().config
    engine = create_repository_engine(config.database_url)
    try:
        _guarded(config.database_url, lambda: upgrade(engine))
    finally:
        engine.dispose()
    render.stderr.print(f"job repository {config.display_database_url} is at revision {HEAD_REVISION}")


def _guarded(url: str, work: Any) -> Any:
    from sqlalchemy.exc import DBAPIError

    from batchctl.repository.connect import is_unreachable, unavailable

    try:
        return work()
    except DBAPIError as exc:
        if is_unreachable(exc):
            raise unavailable(url, exc) from exc
        raise


# -- error handling: the one place errors become exit codes -----------------------------------------


def main(argv: list[str] | None = None) -> None:
    """The console script: run the app, map every error to one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    _options.close()
    _options.debug = os.environ.get("BATCHCTL_DEBUG", "") not in ("", "0") or "--debug" in args
    try:
        code = app(args=args, prog_name="batchctl", standalone_mode=False)
    except BatchctlError as exc:
        _report(exc.message, exc)
        code = exc.exit_code
    except KeyboardInterrupt:
        _report("interrupted", None)
        code = 130
    except Exception as exc:  # click's usage errors and anything unexpected
        code = _unexpected(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _unexpected(exc: Exception) -> int:
    try:  # typer >= 0.2x vendors click as typer._click; older typer depends on click itself
        from typer._click import exceptions as click_exceptions
    except ImportError:  # pragma: no cover - depends on the installed typer
        from click import exceptions as click_exceptions  # type: ignore[no-redef]

    if isinstance(exc, click_exceptions.UsageError):
        command = exc.ctx.command_path if exc.ctx is not None else "batchctl"
        _report(f"{exc.format_message()} (see '{command} --help')", None)
        return EXIT_USAGE
    if isinstance(exc, click_exceptions.ClickException):
        _report(exc.format_message(), None)
        return exc.exit_code
    if isinstance(exc, typer.Abort):
        _report("aborted", None)
        return 130
    _report(f"unexpected {type(exc).__name__}: {exc}", exc)
    return EXIT_FAILED


def _report(message: str, exc: BaseException | None) -> None:
    from batchctl.config import mask_url
    from batchctl.render import printable

    text = message.strip().splitlines()[0] if message.strip() else "failed"
    text = printable(text)  # a job's exception text must not drive the terminal either
    if _options.debug and exc is not None:
        sys.stderr.write(_mask(printable("".join(traceback.format_exception(exc)), newlines=True)))
    sys.stderr.write(_mask(mask_url(f"batchctl: error: {text}")) + "\n")
    sys.stderr.flush()


def _mask(text: str) -> str:
    """Hide the repository password wherever it appears."""
    from batchctl.config import mask_url, url_password

    text = mask_url(text)
    batch = _options.batch
    urls = [batch.config.database_url] if batch is not None else []
    urls += [u for u in (_options.database_url, os.environ.get("BATCHCTL_DATABASE_URL")) if u]
    for url in urls:
        password = url_password(url)
        if password:
            text = text.replace(password, "***")
    return text


__all__ = ["app", "main"]

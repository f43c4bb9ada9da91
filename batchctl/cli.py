"""The `batchctl` command: parses, calls `Batch`, hands results to render.

The global options and the `Batch` they open live in Typer's context (`ctx.obj`, a `CliState`),
one per invocation, closed when it ends. Errors are mapped to exit codes in one place (`main`).
SQLAlchemy, Alembic, rich tables and job modules are imported inside the commands that need
them, so `batchctl --help` starts fast.
"""

from __future__ import annotations

import enum
import os
import sys
import traceback
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Annotated, Callable, Optional

import typer

from batchctl.defaults import HIDDEN_COMMAND, SERVE_HOST, SERVE_PORT
from batchctl.errors import EXIT_FAILED, EXIT_USAGE, BatchctlError

if TYPE_CHECKING:
    from batchctl.model import JobExecution
    from batchctl.operator import Batch

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
class CliState:
    """What the global options chose for one invocation, and the `Batch` opened from them."""

    config: str | None = None
    database_url: str | None = None
    jobs_dir: str | None = None
    debug: bool = False
    batch: Batch | None = None

    def open(self) -> Batch:
        """The invocation's Batch, opened on first use."""
        if self.batch is None:
            from batchctl.operator import Batch

            self.batch = Batch.from_config(
                self.config, database_url=self.database_url, jobs_dir=self.jobs_dir
            )
        return self.batch

    def close(self) -> None:
        """Close the Batch's connections (kept, for its configuration, by the error handler)."""
        if self.batch is not None:
            self.batch.close()


def _batch(ctx: typer.Context) -> Batch:
    return ctx.ensure_object(CliState).open()


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")]


def _print_version(value: bool) -> None:
    """`--version`: the installed distribution's version, read only when asked (importlib.metadata
    costs milliseconds that every other command would pay)."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("batchctl")
    except PackageNotFoundError:  # run from a source tree that was never installed
        found = "unknown (not installed)"
    sys.stdout.write(f"batchctl {found}\n")
    raise typer.Exit(0)


@app.callback()
def _global(
    ctx: typer.Context,
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
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version,
                     help="Print batchctl's version and exit."),
    ] = False,
) -> None:
    state = ctx.ensure_object(CliState)
    state.config = config
    state.database_url = db
    state.jobs_dir = jobs_dir
    state.debug = debug or state.debug
    ctx.call_on_close(state.close)


@app.command()
def start(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(help="The job's name.")],
    params: Annotated[
        Optional[str], typer.Option("--params", "-p", help="Params as a JSON object.")
    ] = None,
    param: Annotated[
        Optional[list[str]],
        typer.Option(
            "--param", "-P", metavar="KEY=VALUE",
            help="One param, its value a string the declared type converts (repeatable).",
        ),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Run in a new process; print its id and return.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Check the params and say what a start would do; write nothing."),
    ] = False,
    rerun: Annotated[
        bool,
        typer.Option("--rerun", help="Run params whose instance completed again, as a new instance."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Run a job. Exit code: 0 completed, 1 failed, 3 stopped (--detach: 0 once launched)."""
    from batchctl.model import parse_params

    given = parse_params(params, param or ())
    batch = _batch(ctx)
    if dry_run:
        from batchctl import render

        plan = batch.plan_start(job, given, rerun=rerun)
        render.output(render.plan_dict(plan), lambda: render.print_plan(plan), as_json=as_json)
        raise typer.Exit(plan.exit_code)
    _run_or_launch(
        batch, partial(batch.start, job, given, rerun=rerun), detach=detach, as_json=as_json
    )


@app.command()
def restart(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="JOB|ID", help="A job name or an execution id.")],
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Run in a new process; print its id and return.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Resume a STOPPED or FAILED instance where it stopped: completed steps are skipped."""
    batch = _batch(ctx)
    _run_or_launch(batch, partial(batch.restart, _target(target)), detach=detach, as_json=as_json)


def _run_or_launch(
    batch: Batch, operation: Callable[..., JobExecution], *, detach: bool, as_json: bool
) -> None:
    """`batch.start` or `batch.restart`, in the foreground (stoppable by Ctrl-C and SIGTERM,
    exiting with the execution's exit code) or detached; then the outcome."""
    from batchctl import render
    from batchctl.model import Trigger

    operation = partial(operation, trigger=Trigger("cli"))
    if detach:
        with render.run_observers(batch.job, notices=not as_json, live=False) as observers:
            launched = operation(detach=True, observers=observers)
        render.output(render.execution_dict(launched), lambda: render.print_launched(launched),
                      as_json=as_json)
        return
    terminal = render.stderr.is_terminal and not as_json
    render.setup_logging(rich_output=terminal)
    with render.run_observers(batch.job, notices=not as_json, live=terminal) as observers:
        finished = operation(observers=observers, handle_signals=True)
    render.output(lambda: render.execution_dict(finished, batch.step_executions(finished.id)),
                  lambda: render.print_outcome(finished), as_json=as_json)
    raise typer.Exit(finished.process_exit_code)


def _target(target: str) -> str:
    """A JOB|ID argument, refused early when it is an id no repository can hold (beyond 64
    bits), which would otherwise reach the driver as an overflow."""
    from batchctl.model import parse_execution_id

    if target.isascii() and target.isdigit():
        parse_execution_id(target)
    return target


@app.command()
def stop(
    ctx: typer.Context,
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

    execution = _batch(ctx).stop(_target(target), wait=wait, timeout=timeout)
    render.output(render.execution_dict(execution),
                  lambda: render.print_stop(execution, waited=wait), as_json=as_json)


@app.command()
def abandon(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="JOB|ID", help="A job name or an execution id.")],
    as_json: JsonOption = False,
) -> None:
    """Mark a STOPPED, FAILED or UNKNOWN execution ABANDONED: it will never be restarted."""
    from batchctl import render

    execution = _batch(ctx).abandon(_target(target))
    render.output(render.execution_dict(execution), lambda: render.print_abandoned(execution),
                  as_json=as_json)


@app.command()
def logs(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="JOB|ID", help="A job name or an execution id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the execution ends.")
    ] = False,
) -> None:
    """Print a detached execution's log."""
    from batchctl.launcher import read_log

    batch = _batch(ctx)
    execution = batch.execution(_target(target))
    for chunk in read_log(batch, execution.id, follow=follow):
        sys.stdout.write(chunk)
        sys.stdout.flush()


@app.command()
def worker(
    ctx: typer.Context,
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
    _batch(ctx).run_worker(
        poll_interval=poll, execution_id=execution, step_name=step, exit_when_idle=exit_when_idle
    )


@app.command()
def workers(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Live workers and the partition each is running."""
    from batchctl import render

    found = _batch(ctx).workers()
    render.output([render.worker_dict(info) for info in found],
                  lambda: render.print_workers(found), as_json=as_json)


@app.command()
def listen(
    ctx: typer.Context,
    url: Annotated[
        str,
        typer.Argument(
            envvar="BATCHCTL_LISTEN_URL",
            help="Broker URL: amqp://user:pass@host:5672/vhost (RabbitMQ) or redis://host:6379/0.",
        ),
    ],
    queue: Annotated[
        str, typer.Option("--queue", "-q", help="Queue (RabbitMQ) or stream (Redis) of commands.")
    ] = "batchctl.commands",
    group: Annotated[str, typer.Option("--group", help="Redis consumer group.")] = "batchctl",
    max_running: Annotated[
        Optional[int],
        typer.Option("--max-running", min=1, help="At most N live executions started by this listener."),
    ] = None,
    commands_only: Annotated[
        bool, typer.Option("--commands-only", help="Consume commands; publish no events.")
    ] = False,
    events_only: Annotated[
        bool, typer.Option("--events-only", help="Publish events; consume no commands.")
    ] = False,
    events_to: Annotated[
        str, typer.Option("--events-to", help="Topic exchange (RabbitMQ) or stream (Redis) of events.")
    ] = "batchctl.events",
    events_maxlen: Annotated[
        int, typer.Option("--events-maxlen", min=1, help="Redis: trim the event stream to about N entries.")
    ] = 100_000,
    claim_after: Annotated[
        float,
        typer.Option("--claim-after", min=0.1, help="Redis: claim another consumer's entries pending this many seconds."),
    ] = 60.0,
    max_deliveries: Annotated[
        int, typer.Option("--max-deliveries", min=1, help="Dead-letter a message that failed N deliveries.")
    ] = 5,
) -> None:
    """The message trigger: commands from RabbitMQ or Redis, events out, until SIGTERM."""
    from batchctl import render
    from batchctl.errors import UsageError
    from batchctl.listener import ListenOptions, listen as serve

    if commands_only and events_only:
        raise UsageError("--commands-only and --events-only exclude each other")
    os.environ.pop("BATCHCTL_LISTEN_URL", None)  # never inherited by a launched job
    render.setup_logging(rich_output=False)
    options = ListenOptions(
        url=url, queue=queue, group=group, max_running=max_running, commands=not events_only,
        events=not commands_only, events_to=events_to, events_maxlen=events_maxlen,
        claim_after=claim_after, max_deliveries=max_deliveries,
    )
    serve(_batch(ctx), options)


@app.command(HIDDEN_COMMAND, hidden=True)
def run_execution(
    ctx: typer.Context,
    execution_id: Annotated[int, typer.Argument(metavar="ID")],
) -> None:
    """Run a launched execution (the process a detached start creates)."""
    from batchctl import render

    render.setup_logging(rich_output=False)
    finished = _batch(ctx)._run_launched(execution_id)  # internal: this command is its only caller
    raise typer.Exit(finished.process_exit_code)


STATUS_HELP = (
    "Only executions with this status (repeatable, any case): STARTING, STARTED, STOPPING, "
    "STOPPED, COMPLETED, FAILED, ABANDONED or UNKNOWN."
)


@app.command()
def history(
    ctx: typer.Context,
    job: Annotated[Optional[str], typer.Argument(help="Only this job's executions.")] = None,
    status: Annotated[Optional[list[str]], typer.Option("--status", "-s", help=STATUS_HELP)] = None,
    since: Annotated[
        Optional[str],
        typer.Option(help="Only executions created at or after this: an ISO date or date-time "
                     "(local time unless it has an offset), or an age like 2d, 12h, 30m."),
    ] = None,
    until: Annotated[
        Optional[str],
        typer.Option(help="Only executions created before this (same forms as --since; a bare "
                     "date means the end of that day)."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=MAX_LIMIT, help="At most N executions.")
    ] = 20,
    as_json: JsonOption = False,
) -> None:
    """Executions, newest first."""
    from batchctl import render
    from batchctl.model import parse_moment, utcnow

    now = utcnow()
    batch = _batch(ctx)
    page = batch.history_page(
        job,
        statuses=status or [],
        since=parse_moment(since, now=now, option="--since") if since else None,
        until=parse_moment(until, now=now, option="--until", end_of_day=True) if until else None,
        limit=limit,
    )
    executions = page.executions
    if not as_json and not executions:
        render.stderr.print("no executions" + _where(batch), soft_wrap=True)
    render.output([render.execution_dict(execution) for execution in executions],
                  lambda: render.print_history(executions, resumed_by=page.resumed_by),
                  as_json=as_json)
    if page.more and not as_json:
        render.stderr.print(f"showing the {len(executions)} most recent; --limit N shows more")


@app.command()
def show(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="JOB|ID", help="A job name or an execution id.")],
    traceback_: Annotated[
        bool, typer.Option("--traceback", help="Show failures with their full traceback.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """One execution with its step executions and the items its chunk steps skipped."""
    from batchctl import render

    batch = _batch(ctx)
    execution = batch.execution(_target(target))
    steps = batch.step_executions(execution.id)
    skipped = batch.skipped_items(execution.id)
    if as_json:
        render.print_json(render.execution_dict(execution, steps, skipped))
        return
    earlier = batch.earlier_steps(execution)
    render.print_execution(execution, steps, skipped, earlier=earlier, traceback=traceback_)


@app.command()
def jobs(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Registered jobs: description, params and steps."""
    from batchctl import render

    batch = _batch(ctx)
    found = batch.jobs()
    for problem in batch.registry.problems:
        render.warn(f"warning: {problem}")
    if not as_json and not found:
        render.stderr.print(
            render.printable(f"no jobs found in {batch.config.jobs_dir}") + _where(batch),
            soft_wrap=True,
        )
    render.output([render.job_dict(job) for job in found], lambda: render.print_jobs(found),
                  as_json=as_json)


def _where(batch: Batch) -> str:
    """When no config file was found: where this command looked, for a newcomer who ran it from
    the wrong folder and silently got a new empty repository ('' when a config file was used)."""
    from batchctl.render import printable

    config = batch.config
    if config.source is not None:
        return ""
    return printable(
        f" (no config.toml found from {os.getcwd()}: database {config.display_database_url}, "
        f"jobs directory {config.jobs_dir})"
    )


@app.command("schedules")
def schedules_(
    ctx: typer.Context,
    name: Annotated[
        Optional[str],
        typer.Argument(metavar="[NAME | pause NAME | resume NAME | trigger NAME]",
                       help="One schedule: list its next fires; or pause, resume or trigger "
                       "(fire now) the schedule NAME."),
    ] = None,
    target: Annotated[
        Optional[str],
        typer.Argument(hidden=True, help="The schedule of pause, resume or trigger."),
    ] = None,
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
    """Schedules, their next and last fire; NAME: its next fires and params (writes nothing);
    pause NAME, resume NAME, trigger NAME."""
    from batchctl import render
    from batchctl.errors import UsageError
    from batchctl.model import utcnow
    from batchctl.schedules import find_schedule, load_schedules, next_fires, parse_instant
    from batchctl.schedules import output, time_zone
    from batchctl.schedules.loading import RESERVED_NAMES as SCHEDULE_ACTIONS

    if name in SCHEDULE_ACTIONS:
        if target is None:
            raise UsageError(f"schedules {name} needs a schedule NAME")
        if count is not None or after is not None:
            raise UsageError(f"--next and --after do not go with schedules {name}")
        _schedule_action(_batch(ctx), name, target, as_json=as_json)
        return
    if target is not None:
        raise UsageError(f"unexpected argument {target!r} (one of {', '.join(SCHEDULE_ACTIONS)} "
                         "takes a NAME)")
    if name is None and (count is not None or after is not None):
        raise UsageError("--next and --after need a schedule NAME")
    batch, now = _batch(ctx), utcnow()
    valid, problems = load_schedules(batch.config, batch.registry, now=now)
    if name is not None:
        schedule = find_schedule(name, valid, problems)
        start = parse_instant(after, time_zone(schedule.timezone)) if after else now
        output.print_fires(schedule, next_fires(schedule, start, count or 5), as_json=as_json)
        return
    states = batch.schedule_states([schedule.name for schedule in valid])
    output.print_schedules(valid, now, as_json=as_json, states=states)
    for problem in problems:
        render.error(str(problem))
    if problems:
        raise typer.Exit(EXIT_USAGE)


def _schedule_action(batch: Batch, action: str, name: str, *, as_json: bool) -> None:
    from batchctl.schedules import output

    if action == "trigger":
        outcome = batch.trigger_schedule(name)
        if outcome.error is not None:
            raise outcome.error
        output.print_fire(outcome, as_json=as_json)
        return
    state = batch.pause_schedule(name) if action == "pause" else batch.resume_schedule(name)
    output.print_state(name, state, as_json=as_json)


@app.command()
def scheduler(ctx: typer.Context) -> None:
    """Fire the schedules: a service launching their executions detached, until SIGTERM or
    Ctrl-C; SIGHUP reloads the schedules."""
    from batchctl import render
    from batchctl.scheduler import run_scheduler

    render.setup_logging(rich_output=False)
    batch = _batch(ctx)
    valid, problems = batch.schedules()
    for problem in problems:
        render.error(str(problem))
    if problems:
        render.error(f"scheduler not started: {len(problems)} invalid schedule(s)")
        raise typer.Exit(EXIT_USAGE)
    run_scheduler(batch, valid)


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (another than 127.0.0.1 needs a token).")
    ] = SERVE_HOST,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = SERVE_PORT,
) -> None:
    """Serve the HTTP API and the dashboard until SIGTERM or Ctrl-C (needs the web extra)."""
    try:
        from batchctl.web.server import serve as run_server
    except ImportError as exc:
        from batchctl.errors import EnvironmentProblem

        raise EnvironmentProblem(
            f"serve needs the web extra: pip install 'batchctl[web]' ({exc.name} is missing)"
        ) from None
    run_server(_batch(ctx), host, port)


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Create or migrate the repository schema."""
    from batchctl import render

    batch = _batch(ctx)
    revision = batch.upgrade_schema()
    render.stderr.print(
        f"job repository {batch.config.display_database_url} is at revision {revision}"
    )


@app.command()
def prune(
    ctx: typer.Context,
    older_than: Annotated[
        str,
        typer.Option("--older-than", metavar="AGE",
                     help="Prune executions that ended more than AGE ago: 90d, 12h, 30m, 2w."),
    ],
    keep_last: Annotated[
        Optional[int],
        typer.Option("--keep-last", min=0, metavar="N",
                     help="Keep the N newest executions of each job, whatever their age."),
    ] = None,
    job: Annotated[
        Optional[str], typer.Option("--job", help="Only this job's executions.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be pruned; write nothing.")
    ] = False,
    include_restartable: Annotated[
        bool,
        typer.Option("--include-restartable",
                     help="Also prune the last execution of FAILED, STOPPED and UNKNOWN instances."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete old ended executions with their step executions, skipped items and log files."""
    from batchctl import render
    from batchctl.model import parse_age

    age = parse_age(older_than)
    report = _batch(ctx).prune(age, keep_last=keep_last, job=job, dry_run=dry_run,
                               include_restartable=include_restartable)
    render.output(render.prune_dict(report), lambda: render.print_prune(report), as_json=as_json)


class Shell(str, enum.Enum):
    """The shells `batchctl completion` writes a script for."""

    bash = "bash"
    zsh = "zsh"
    fish = "fish"


COMPLETE_VAR = "_BATCHCTL_COMPLETE"  # set by the completion script when the shell asks


@app.command()
def completion(
    shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish.")],
) -> None:
    """Print the shell completion script: eval "$(batchctl completion bash)" in ~/.bashrc."""
    from typer._completion_shared import get_completion_script

    script = get_completion_script(prog_name="batchctl", complete_var=COMPLETE_VAR,
                                   shell=shell.value)
    sys.stdout.write(script + "\n")


# -- error handling: the one place errors become exit codes -----------------------------------------


def main(argv: list[str] | None = None) -> None:
    """The console script: run the app, map every error to one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = os.environ.get("BATCHCTL_DEBUG", "") not in ("", "0") or "--debug" in args
    state = CliState(debug=debug)
    if os.environ.get(COMPLETE_VAR):
        # The shell asks for completions: register Typer's completion classes, which speak the
        # scripts `batchctl completion` prints. Only then: `--help` must not pay for them.
        from typer._completion_classes import completion_init

        completion_init()
    try:
        from batchctl.cligroup import lazy_group

        command = lazy_group(app)
        code = command.main(args=args, prog_name="batchctl", standalone_mode=False, obj=state)
    except BatchctlError as exc:
        _report(state, exc.message + _unknown_job_note(state, exc), exc)
        code = exc.exit_code
    except KeyboardInterrupt:
        _report(state, "interrupted", None)
        code = 130
    except Exception as exc:  # click's usage errors and anything unexpected
        code = _unexpected(state, exc)
    finally:
        state.close()  # also when the app never got as far as its callback
    sys.exit(code if isinstance(code, int) else 0)


def _unexpected(state: CliState, exc: Exception) -> int:
    try:  # typer >= 0.2x vendors click as typer._click; older typer depends on click itself
        from typer._click import exceptions as click_exceptions
    except ImportError:  # pragma: no cover - depends on the installed typer
        from click import exceptions as click_exceptions  # type: ignore[no-redef,import-not-found,unused-ignore]

    if type(exc).__name__ == "NoArgsIsHelpError":  # `batchctl` alone: the help was printed
        return 0
    if isinstance(exc, click_exceptions.UsageError):
        command = exc.ctx.command_path if exc.ctx is not None else "batchctl"
        message = exc.format_message()
        if isinstance(exc, click_exceptions.NoSuchOption):
            # click appends "(Possible options: ...)", a list of every near name; one
            # suggestion helps, a list is noise on the one error line.
            from difflib import get_close_matches

            close = get_close_matches(exc.option_name, list(exc.possibilities or ()), n=1)
            message = f"no such option: {exc.option_name}"
            if close:
                message += f" (did you mean {close[0]}?)"
        _report(state, f"{message} (see '{command} --help')", None)
        return EXIT_USAGE
    if isinstance(exc, click_exceptions.ClickException):
        _report(state, exc.format_message(), None)
        return exc.exit_code
    if isinstance(exc, typer.Abort):
        _report(state, "aborted", None)
        return 130
    _report(state, f"unexpected {type(exc).__name__}: {exc}", exc)
    return EXIT_FAILED


def _unknown_job_note(state: CliState, exc: BatchctlError) -> str:
    """An unknown job when no config file was found: say where the jobs were looked for."""
    from batchctl.errors import UnknownJob

    if not isinstance(exc, UnknownJob) or state.batch is None:
        return ""
    return _where(state.batch)


def _report(state: CliState, message: str, exc: BaseException | None) -> None:
    from batchctl.config import mask_url
    from batchctl.render import printable

    text = message.strip().splitlines()[0] if message.strip() else "failed"
    text = printable(text)  # a job's exception text must not drive the terminal either
    if state.debug and exc is not None:
        trace = printable("".join(traceback.format_exception(exc)), newlines=True)
        sys.stderr.write(_mask(state, trace))
    sys.stderr.write(_mask(state, mask_url(f"batchctl: error: {text}")) + "\n")
    sys.stderr.flush()


def _mask(state: CliState, text: str) -> str:
    """Hide the repository password wherever it appears."""
    from batchctl.config import mask_url, url_password

    text = mask_url(text)
    urls = [state.batch.config.database_url] if state.batch is not None else []
    urls += [u for u in (state.database_url, os.environ.get("BATCHCTL_DATABASE_URL")) if u]
    for url in urls:
        password = url_password(url)
        if password:
            text = text.replace(password, "***")
    return text


__all__ = ["CliState", "app", "main"]

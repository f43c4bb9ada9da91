"""Everything batchctl shows: rich tables for people, JSON for scripts, the live run display.

Results go to stdout, progress and errors to stderr. Colour only on a terminal, never with
NO_COLOR (rich honours both).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import sys
from datetime import date, datetime
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from batchctl.job import Job
from batchctl.model import JobExecution, PruneReport, SkippedItem, Status, StepExecution

if TYPE_CHECKING:
    from batchctl.operator import StartPlan

STATUS_STYLES = {
    Status.COMPLETED: "green",
    Status.STARTING: "cyan",
    Status.STARTED: "cyan",
    Status.STOPPING: "yellow",
    Status.STOPPED: "yellow",
    Status.FAILED: "bold red",
    Status.ABANDONED: "dim",
    Status.UNKNOWN: "magenta",
}

# Off a terminal there is no width to fit: keep rows whole for pipes and files.
_PIPE_WIDTH = 250
# Job names, params and messages are user text: never read as rich markup or emoji codes.
stdout = Console(
    highlight=False, markup=False, emoji=False,
    width=None if sys.stdout.isatty() else _PIPE_WIDTH,
)
stderr = Console(
    stderr=True, highlight=False, markup=False, emoji=False,
    width=None if sys.stderr.isatty() else _PIPE_WIDTH,
)


# User text (messages, names, items, params) may hold terminal control sequences: `\x1b[2J`
# clears the screen, `\x1b]0;...\x07` sets the window title. Shown escaped, never sent raw:
# C0 and C1 controls and DEL, bidirectional overrides (which reorder what is shown), and lone
# surrogates (which cannot be encoded for the terminal at all). Rich itself strips only a few.
_UNPRINTABLE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNPRINTABLE_OR_NEWLINE = re.compile(f"[\n{_UNPRINTABLE.pattern[1:-1]}]")


def printable(text: str, *, newlines: bool = False) -> str:
    """`text` safe to show on a terminal: control characters as `\\x1b`, `\\u202e`...
    (newlines too, unless `newlines`)."""
    pattern = _UNPRINTABLE if newlines else _UNPRINTABLE_OR_NEWLINE
    return pattern.sub(_escape, text)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    if match[0] in _ESCAPES:
        return _ESCAPES[match[0]]
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# -- JSON -----------------------------------------------------------------------------------------


def execution_dict(
    execution: JobExecution,
    steps: Sequence[StepExecution] | None = None,
    skipped: Sequence[SkippedItem] | None = None,
) -> dict[str, Any]:
    """The JSON object of an execution (with its `steps` and `skipped` items when given)."""
    data: dict[str, Any] = {
        "id": execution.id,
        "job": execution.job_name,
        "instance_id": execution.instance_id,
        "params": execution.params,
        "status": execution.status.value,
        "exit_code": execution.exit_code,
        "exit_message": execution.exit_message,
        "created_at": _iso(execution.created_at),
        "started_at": _iso(execution.started_at),
        "ended_at": _iso(execution.ended_at),
        "heartbeat_at": _iso(execution.heartbeat_at),
        "duration": execution.duration if execution.ended_at else None,
        "host": execution.host,
        "pid": execution.pid,
        "resumed_from": execution.resumed_from,
        "trigger": {"kind": execution.trigger, "detail": execution.trigger_detail},
        "rerun_of": execution.rerun_of,
        "rerun": execution.rerun,
        "log_path": execution.log_path,
        "context": execution.context,
    }
    if steps is not None:
        data["steps"] = [step_dict(step) for step in steps]
    if skipped is not None:
        data["skipped"] = [skipped_dict(item) for item in skipped]
    return data


def trigger_text(execution: JobExecution) -> str:
    """What started an execution, for people: `schedule eod-nightly @ 2024-02-01 00:30 CET`."""
    kind = execution.trigger or "-"
    if not execution.trigger_detail:
        return kind
    return printable(f"{kind} {execution.trigger_detail}")


def skipped_dict(skipped: SkippedItem) -> dict[str, Any]:
    return {
        "id": skipped.id,
        "step_execution_id": skipped.step_execution_id,
        "step": skipped.step_name,
        "phase": skipped.phase,
        "position": skipped.position,
        "item": skipped.item,
        "error": skipped.error_text,
        "created_at": _iso(skipped.created_at),
    }


def step_dict(step: StepExecution) -> dict[str, Any]:
    return {
        "id": step.id,
        "name": step.name,
        "status": step.status.value,
        "exit_code": step.exit_code,
        "exit_message": step.exit_message,
        "started_at": _iso(step.started_at),
        "ended_at": _iso(step.ended_at),
        "duration": step.duration if step.ended_at else None,
        **step.counters,
        "context": step.context,
        **(
            {
                "partition_of": step.partition_of,
                "partition_index": step.partition_index,
                "partition": step.partition,
                "mode": step.mode,
                "worker_id": step.worker_id,
                "host": step.host,
                "pid": step.pid,
            }
            if step.is_partition
            else {}
        ),
    }


def job_dict(job: Job) -> dict[str, Any]:
    return {
        "name": job.name,
        "description": job.description,
        "params": {
            name: {
                "type": param.type.__name__,
                "required": param.required,
                **({} if param.required else {"default": param.default}),
                **({"help": param.help} if param.help else {}),
            }
            for name, param in job.declared_params.items()
        },
        "steps": [
            {"name": step.name, "kind": step.kind, "description": step.description}
            for step in job.steps
        ],
        "defined_in": job.defined_in,
    }


def output(data: Any, table: Callable[[], None], *, as_json: bool) -> None:
    """The one place that decides between JSON and a table: `--json` prints `data` (called
    first when it is a function, so that JSON-only work is done only for JSON), else `table()`
    prints for people."""
    if as_json:
        print_json(data() if callable(data) else data)
    else:
        table()


def print_json(value: Any) -> None:
    """Standard JSON only: a NaN or Infinity (in a context a job saved) is printed as null,
    since `json` would write `NaN`, which other JSON parsers refuse."""
    try:
        text = json.dumps(value, indent=2, default=_json_default, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(value), indent=2, default=_json_default, allow_nan=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return str(value)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# -- tables ---------------------------------------------------------------------------------------


def status_text(status: Status) -> Text:
    return Text(status.value, style=STATUS_STYLES[status])


def print_history(
    executions: Sequence[JobExecution], *, resumed_by: Mapping[int, int] | None = None
) -> None:
    """The history table: params as `key=value`, those that tell the rows apart first; the
    message's first line, on one row; "resumed by N" beside an execution a later one resumed."""
    if not executions:
        return
    resumed_by = resumed_by or {}
    order = params_order([execution.params for execution in executions])
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("id", "job", "params", "status", "started", "ended", "duration", "trigger",
                   "message"):
        if column == "message":  # the first line only, cut to the width: `show` has it all
            table.add_column(column, no_wrap=True, overflow="ellipsis", ratio=1)
        elif column == "params":
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, justify="right" if column in ("id", "duration") else "left",
                             no_wrap=True)
    for execution in executions:
        status = status_text(execution.status)
        if execution.id in resumed_by:
            status.append(f", resumed by {resumed_by[execution.id]}", style="dim")
        table.add_row(
            str(execution.id),
            printable(execution.job_name),
            _params_text(execution.params, order),
            status,
            _local(execution.started_at),
            _local(execution.ended_at),
            _duration(execution.duration),
            trigger_text(execution),
            _first_line(execution.exit_message),
        )
    stdout.print(table)


def params_order(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The param names of `rows`: first those whose values differ between the rows (what tells
    them apart), then the rest, each group by name."""
    names = sorted({name for params in rows for name in params})
    varying = [
        name for name in names
        if len({json.dumps(params.get(name), sort_keys=True, default=str) for params in rows}) > 1
    ]
    return varying + [name for name in names if name not in varying]


def _params_text(params: Mapping[str, Any], order: Sequence[str] | None = None) -> str:
    """`date=2024-01-31 region=eu`: strings bare unless they hold a space, a quote or an `=`
    (then JSON-quoted), anything else as JSON."""
    names = [name for name in (order or sorted(params)) if name in params]
    return printable(" ".join(f"{name}={_param_value(params[name])}" for name in names))


def _param_value(value: Any) -> str:
    if isinstance(value, str) and value and not re.search(r"[\s\"'=\\]", value):
        return value
    return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)


def print_execution(
    execution: JobExecution,
    steps: Sequence[StepExecution],
    skipped: Sequence[SkippedItem] = (),
    *,
    earlier: Sequence[StepExecution] = (),
    traceback: bool = False,
) -> None:
    """`show`: the execution's fields (a failure led by its exception's last line and the job's
    own frame; the whole traceback with `traceback`), its steps (with those that earlier
    executions of its instance completed, marked so), and the items its chunk steps skipped."""
    header = Table.grid(padding=(0, 2))
    header.add_column(style="bold")
    header.add_column()
    header.add_row("execution", str(execution.id))
    header.add_row("job", printable(execution.job_name))
    header.add_row("instance", _instance_text(execution))
    header.add_row("params", _params_text(execution.params))
    header.add_row("status", status_text(execution.status))
    if execution.exit_message and execution.status.is_unsuccessful:
        for label, line in failure_summary(execution.exit_message):
            header.add_row(label, Text(printable(line), style="bold red" if label == "error" else ""))
    header.add_row("created", _local(execution.created_at))
    header.add_row("started", _local(execution.started_at))
    header.add_row("ended", _local(execution.ended_at))
    header.add_row("duration", _duration(execution.duration))
    header.add_row("host / pid", printable(f"{execution.host or '-'} / {execution.pid or '-'}"))
    header.add_row("trigger", trigger_text(execution))
    if execution.resumed_from:
        header.add_row("resumes", f"execution {execution.resumed_from}")
    if execution.log_path:
        header.add_row("log", printable(execution.log_path))
    if execution.exit_message:
        header.add_row("message", _message_text(execution.exit_message, traceback=traceback))
    stdout.print(header)
    if not steps and not earlier:
        return
    table = Table(box=None, pad_edge=False, header_style="bold", title_justify="left")
    partitioned = any(step.is_partition for step in steps)
    columns = ("id", "step", "status", *(("worker",) if partitioned else ()), "started",
               "duration", "read", "written", "filtered", "skipped", "commits", "rollbacks",
               "message")
    for column in columns:
        table.add_column(column)
    for step in earlier:  # skipped by this execution: completed by an earlier one
        table.add_row(
            str(step.id), printable(step.name),
            Text(f"COMPLETED in execution {step.job_execution_id}", style="dim green"),
            *(("-",) if partitioned else ()), _local(step.started_at), _duration(step.duration),
            str(step.read_count), str(step.write_count), str(step.filter_count),
            _skips_text(step), str(step.commit_count), str(step.rollback_count), "",
            style="dim",
        )
    for step in steps:
        worker = (printable(f"{step.host}/{step.pid}") if step.pid else "-",) if partitioned else ()
        table.add_row(
            str(step.id),
            printable(step.name),
            status_text(step.status),
            *worker,
            _local(step.started_at),
            _duration(step.duration),
            str(step.read_count),
            str(step.write_count),
            str(step.filter_count),
            _skips_text(step),
            str(step.commit_count),
            str(step.rollback_count),
            _first_line(step.exit_message),
        )
    stdout.print()
    stdout.print(table)
    if skipped:
        print_skipped(skipped)


_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>.+)$')


def failure_summary(message: str) -> list[tuple[str, str]]:
    """What `show` leads a failure with: the exception's last line (the one that ended it,
    after any chained ones) and the job's own frame, the innermost that is neither batchctl's
    nor the standard library's nor an installed package's (else the innermost outside
    batchctl), as `file:line in function`. Messages that hold no traceback give no summary."""
    lines = [line for line in message.splitlines() if line.strip()]
    if not any(line.startswith("Traceback (most recent call last)") for line in lines):
        return []
    frames = [match for line in lines if (match := _FRAME.match(line))]
    # The exception that ended it: the first unindented line after the last frame (its own
    # message may go on over more lines; a chained exception's come before that frame).
    last_frame = max((i for i, line in enumerate(lines) if _FRAME.match(line)), default=-1)
    after = [line for line in lines[last_frame + 1:] if not line[:1].isspace()]
    summary = [("error", (after or lines[-1:])[0].strip())]
    frame = _job_frame([match["file"] for match in frames])
    if frame is not None:
        found = next(match for match in reversed(frames) if match["file"] == frame)
        summary.append(("at", f"{_shorter(found['file'])}:{found['line']} in {found['function']}"))
    return summary


def _job_frame(files: Sequence[str]) -> str | None:
    import os
    import sysconfig

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    library = {sysconfig.get_paths()[key] + os.sep for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    outside = [f for f in files if not f.startswith(package) and not f.startswith("<")]
    own = [f for f in outside if not any(f.startswith(prefix) for prefix in library)]
    candidates = own or outside
    return candidates[-1] if candidates else None


def _shorter(path: str) -> str:
    """A path relative to the current folder when it is inside it."""
    import os

    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative


def _message_text(message: str, *, traceback: bool) -> str:
    """An exit message as `show` prints it: without `traceback`, a traceback is cut to the
    line that says how to see it (the summary above already led with its essentials)."""
    text = message.rstrip()
    marker = "\nTraceback (most recent call last)"
    if not traceback and marker in text:
        head = text[: text.index(marker)].rstrip()
        return printable(head, newlines=True) + "\n(--traceback shows the traceback; --json has it)"
    return printable(text, newlines=True)


def _instance_text(execution: JobExecution) -> str:
    """The instance id, and for a deliberate rerun which instance it repeats."""
    if execution.rerun_of is None:
        return str(execution.instance_id)
    return f"{execution.instance_id} (rerun {execution.rerun} of instance {execution.rerun_of})"


def plan_dict(plan: StartPlan) -> dict[str, Any]:
    """The JSON object of `start --dry-run`: the plan's fields and its `description`."""
    data = dataclasses.asdict(plan)
    data["last_status"] = plan.last_status.value if plan.last_status is not None else None
    data["description"] = plan.description
    return data


def print_plan(plan: StartPlan) -> None:
    """What `start --dry-run` prints: the converted params, the instance key, what would happen."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("job", printable(plan.job))
    grid.add_row("params", _params_text(plan.params))
    grid.add_row("instance key", plan.instance_key)
    if plan.instance_id is not None:
        grid.add_row("instance", str(plan.instance_id))
    if plan.last_execution_id is not None and plan.last_status is not None:
        grid.add_row("last execution", f"{plan.last_execution_id} ({plan.last_status.value})")
    if plan.lost:
        grid.add_row("lost", printable(f"it would first be marked lost: {plan.lost}"))
    grid.add_row("dry run", printable(plan.description))
    stdout.print(grid)


def _skips_text(step: StepExecution) -> str:
    counts = (step.read_skip_count, step.process_skip_count, step.write_skip_count)
    if not any(counts):
        return "0"
    parts = [f"{phase} {n}" for phase, n in zip(("read", "process", "write"), counts) if n]
    return f"{sum(counts)} ({', '.join(parts)})"


def print_skipped(skipped: Sequence[SkippedItem]) -> None:
    """The items the steps skipped, with where and why; each item whole, wrapped to the width."""
    table = Table(box=None, pad_edge=False, header_style="bold", title="skipped items",
                  title_justify="left", title_style="bold")
    for column in ("step", "phase", "item #", "error", "item"):
        table.add_column(
            column, justify="right" if column == "item #" else "left",
            overflow="fold", ratio=2 if column == "item" else (1 if column == "error" else None),
        )
    for item in skipped:
        text = printable(str(item.item)) if item.item is not None else "-"
        table.add_row(
            printable(item.step_name or str(item.step_execution_id)),
            printable(item.phase),
            str(item.position) if item.position is not None else "-",
            _first_line(item.error_text),
            Text(text),
        )
    stdout.print()
    stdout.print(table)


def print_jobs(jobs: Sequence[Job]) -> None:
    if not jobs:
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("job", "description", "params", "steps"):
        table.add_column(column)
    for job in jobs:
        params = ", ".join(
            f"{name}: {param.type.__name__}" + ("" if param.required else f" = {param.default!r}")
            for name, param in job.declared_params.items()
        )
        steps = ", ".join(step.name for step in job.steps)
        table.add_row(*map(printable, (job.name, job.description, params, steps)))
    stdout.print(table)


def print_outcome(execution: JobExecution) -> None:
    """The one-line result of a foreground run."""
    line = Text.assemble(
        f"execution {execution.id} of {printable(execution.job_name)} ",
        status_text(execution.status),
        f" in {_duration(execution.duration)}",
    )
    if execution.exit_message and execution.status != Status.COMPLETED:
        line.append(f": {_first_line(execution.exit_message)}")
    stdout.print(line)


def print_launched(execution: JobExecution) -> None:
    """What a detached start prints: the id to stop or restart it by, its pid and log."""
    stdout.print(
        printable(
            f"execution {execution.id} of {execution.job_name} launched: pid {execution.pid}, "
            f"log {execution.log_path}"
        )
    )


def print_stop(execution: JobExecution, *, waited: bool) -> None:
    name = printable(execution.job_name)
    if not waited:
        stdout.print(f"execution {execution.id} of {name} is stopping")
        return
    line = Text.assemble(f"execution {execution.id} of {name} ended ", status_text(execution.status))
    if execution.status == Status.COMPLETED:
        line.append(" (it completed before it could stop)")
    stdout.print(line)


def print_abandoned(execution: JobExecution) -> None:
    stdout.print(printable(f"execution {execution.id} of {execution.job_name} abandoned"))


def worker_dict(info: Any) -> dict[str, Any]:
    return {
        "id": info.id,
        "host": info.host,
        "pid": info.pid,
        "kind": info.kind,
        "started_at": _iso(info.started_at),
        "heartbeat_at": _iso(info.heartbeat_at),
        "step_execution_id": info.step_execution_id,
        "partition": info.partition_name,
        "execution_id": info.execution_id,
        "job": info.job_name,
    }


def print_workers(workers: Sequence[Any]) -> None:
    if not workers:
        stderr.print("no live workers")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("id", "host", "pid", "kind", "started", "heartbeat", "running"):
        table.add_column(column)
    for info in workers:
        running = (
            f"{info.job_name} execution {info.execution_id} partition {info.partition_name}"
            if info.partition_name
            else "idle"
        )
        table.add_row(
            str(info.id), printable(info.host), str(info.pid), info.kind, _local(info.started_at),
            _local(info.heartbeat_at), printable(running),
        )
    stdout.print(table)


def prune_dict(report: PruneReport) -> dict[str, Any]:
    """`prune --json`: the counts, the cutoff in UTC, and whether it was a dry run."""
    return {
        "dry_run": report.dry_run,
        "cutoff": _iso(report.cutoff),
        "executions": report.executions,
        "step_executions": report.step_executions,
        "skipped_items": report.skipped_items,
        "instances": report.instances,
        "log_files": report.log_files,
        "kept_restartable": report.kept,
        "batches": report.batches,
        "longest_transaction": round(report.longest_transaction, 6),
        "problems": list(report.problems),
    }


def print_prune(report: PruneReport) -> None:
    """What prune removed (or would remove), its cutoff in local time, as the tables show."""
    removed = (
        f"{report.executions:,} execution{'' if report.executions == 1 else 's'} ended before "
        f"{_local(report.cutoff)} ({report.step_executions:,} step executions, "
        f"{report.skipped_items:,} skipped items, {report.instances:,} instances, "
        f"{report.log_files:,} log files)"
    )
    if report.dry_run:
        stdout.print(f"would prune {removed}; nothing was written (--dry-run)")
    else:
        stdout.print(f"pruned {removed} in {report.batches:,} transactions")
    if report.kept:
        stderr.print(
            f"kept {report.kept:,} old execution{'' if report.kept == 1 else 's'} that a restart "
            "needs or that await abandon (--include-restartable prunes them too)"
        )
    for problem in report.problems:
        warn(f"warning: {problem}")


def warn(message: str) -> None:
    stderr.print(Text(printable(message), style="yellow"))


def error(message: str) -> None:
    """One line on stderr: `batchctl: error: ...`."""
    sys.stderr.write(f"batchctl: error: {printable(message)}\n")
    sys.stderr.flush()


def _local(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:  # a quick step is not "0.0s"
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _first_line(message: str | None) -> str:
    return printable(message.strip().splitlines()[0]) if message and message.strip() else ""


# -- the run display ------------------------------------------------------------------------------


LOG_TIME_FORMAT = "[%Y-%m-%d %H:%M:%S]"  # ISO dates: `[12/01/26 ...]` reads differently by locale


def setup_logging(*, rich_output: bool, level: int = logging.INFO) -> None:
    """Log lines to stderr: through rich on a terminal (ISO time, the step's name), plain
    otherwise."""
    root = logging.getLogger("batchctl")
    root.setLevel(level)
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if rich_output:
        from rich.logging import RichHandler

        handler = RichHandler(
            console=stderr, show_path=False, markup=False, log_time_format=LOG_TIME_FORMAT
        )
        handler.setFormatter(StepFormatter("%(message)s"))
    else:
        handler = LossyStreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root.addHandler(handler)
    root.propagate = False
    # On a terminal the live display already shows what the engine logs about steps.
    logging.getLogger("batchctl.engine").setLevel(logging.WARNING if rich_output else logging.NOTSET)


class LossyStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines to a stream that may fail: a detached run's log on a disk that fills up. A
    line that cannot be written is counted, not raised nor retried (the run goes on, and
    never waits for space); the next line that can be written is preceded by how many could
    not and why."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.unwritten = 0
        self.reason = ""

    def emit(self, record: logging.LogRecord) -> None:
        if self.unwritten:
            try:
                self.stream.write(
                    f"batchctl: {self.unwritten} log line(s) could not be written "
                    f"({self.reason}); some may be missing above\n"
                )
                self.flush()
            except OSError as exc:
                self._count(exc)
                return
            self.unwritten = 0
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            self._count(error)
            return
        super().handleError(record)

    def _count(self, error: OSError) -> None:
        self.unwritten += 1
        self.reason = error.strerror or str(error)


class StepFormatter(logging.Formatter):
    """Prefixes a log line with the name of the step running in the thread that logged it (a
    job's own module logger says nothing of its step), and escapes what the job wrote."""

    def format(self, record: logging.LogRecord) -> str:
        from batchctl.steps import current_step

        text = printable(super().format(record), newlines=True)
        step = current_step.get()
        return f"{printable(step)}: {text}" if step else text


def _progress_columns() -> list[Any]:
    """The live display's columns. Rich's own spin, pulse and count time for every unfinished
    task, pending ones included, and stop a task with an unknown total at its first chunk
    (completed >= the placeholder total); these follow the row's own `state` field instead:
    pending rows are still, running rows move, ended rows are still."""
    from rich.progress import BarColumn, ProgressColumn, SpinnerColumn, TextColumn
    from rich.progress_bar import ProgressBar

    class StepSpinner(SpinnerColumn):
        def render(self, task: Any) -> Any:
            if task.fields.get("state") != "running":
                return self.finished_text
            return self.spinner.render(task.get_time())

    class StepBar(BarColumn):
        def render(self, task: Any) -> Any:
            state = task.fields.get("state")
            if state == "pending" or (state == "ended" and task.total is None):
                return ProgressBar(total=1, completed=0, width=self.bar_width,
                                   style=self.style, complete_style=self.complete_style,
                                   finished_style=self.finished_style,
                                   pulse_style=self.pulse_style)
            return ProgressBar(
                total=task.total if state == "running" else max(task.total or 0, 1),
                completed=task.completed, width=self.bar_width, pulse=False,
                animation_time=task.get_time(), style=self.style,
                complete_style=self.complete_style, finished_style=self.finished_style,
                pulse_style=self.pulse_style,
            )

    class StepElapsed(ProgressColumn):
        def render(self, task: Any) -> Text:
            elapsed = task.elapsed  # start_task to stop_task, or to now while it runs
            if elapsed is None:
                return Text("", style="progress.elapsed")
            minutes, seconds = divmod(max(0, int(elapsed)), 60)
            hours, minutes = divmod(minutes, 60)
            return Text(f"{hours}:{minutes:02d}:{seconds:02d}", style="progress.elapsed")

    return [
        StepSpinner(finished_text=" "),
        TextColumn("{task.description}", markup=False),
        TextColumn("{task.fields[status]}"),
        StepBar(bar_width=24),
        TextColumn("{task.fields[detail]}", style="dim", markup=False),
        StepElapsed(),
    ]


class LiveDisplay:
    """An engine observer that shows each step's status on a terminal while the job runs; a
    chunk step gets a progress bar: items, rate, elapsed, and the total when the reader knows.

    It appears once the execution is recorded (`execution_created`), listing the steps of its
    job as `find_job` gives it. Only the running step moves (its spinner, its bar when the
    total is unknown, its elapsed time); nothing moves once the run has ended. `console` and
    `get_time` are the terminal and the clock (tests give a recording console and a fake clock).
    """

    def __init__(
        self,
        find_job: Callable[[str], Job],
        *,
        console: Console | None = None,
        get_time: Callable[[], float] | None = None,
        auto_refresh: bool = True,
    ) -> None:
        self.find_job = find_job
        self.console = console or stderr
        self.get_time = get_time
        self.auto_refresh = auto_refresh
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}
        self._chunk_started: dict[str, tuple[float, int]] = {}  # when, and from which item

    def __enter__(self) -> LiveDisplay:
        return self

    def __exit__(self, *_: object) -> None:
        if self.progress is not None:
            self._end_running("")  # an interrupted run: its rows must not spin on
            self.progress.stop()

    def execution_created(self, execution: JobExecution) -> None:
        from rich.progress import Progress

        self.progress = Progress(
            *_progress_columns(),
            console=self.console,
            transient=False,
            auto_refresh=self.auto_refresh,
            get_time=self.get_time,
        )
        self.tasks = {
            step.name: self.progress.add_task(
                step.name, start=False, total=None, status="pending", detail="", state="pending"
            )
            for step in self.find_job(execution.job_name).steps
        }
        self.progress.start()

    def step_started(self, step: StepExecution) -> None:
        task = self.tasks.get(step.name)
        if task is not None:
            self.progress.start_task(task)
            self.progress.update(task, status=status_text(step.status).markup, state="running")

    def step_checkpoint(self, step: StepExecution) -> None:
        task = self.tasks.get(step.name)
        if task is not None:
            self.progress.update(task, detail=f"{step.commit_count} checkpoints")

    def step_progress(self, step: StepExecution, done: int, total: int | None) -> None:
        """A chunk step committed a chunk: `done` items of `total` (None: unknown)."""
        task = self.tasks.get(step.name)
        if task is None:
            return
        now = self.progress.get_time()
        since, first = self._chunk_started.setdefault(step.name, (now, done))
        rate = (done - first) / (now - since) if now > since else 0.0
        detail = f"{done:,}" + (f" / {total:,}" if total is not None else "") + " items"
        if done > first:
            detail += f"  {rate:,.0f}/s"
        self.progress.update(task, completed=done, total=total, detail=detail)

    def step_skipped(self, name: str, earlier: StepExecution) -> None:
        task = self.tasks.get(name)
        if task is not None:
            self.progress.update(
                task, total=1, completed=1, status="[dim]skipped[/]", state="ended",
                detail=f"completed in execution {earlier.job_execution_id}",
            )

    def step_ended(self, step: StepExecution) -> None:
        task = self.tasks.get(step.name)
        if task is None:
            return
        if step.name in self._chunk_started:  # a chunk step: its bar counts items
            done = self._task(task).completed
            if step.status == Status.COMPLETED:
                self.progress.update(task, total=max(done, 1), completed=max(done, 1))
        else:
            self.progress.update(task, total=1, completed=1)
        self.progress.update(task, status=status_text(step.status).markup, state="ended")
        self.progress.stop_task(task)

    def job_ended(self, execution: JobExecution) -> None:
        self._end_running(status_text(execution.status).markup)

    def _end_running(self, status: str) -> None:
        """Still every row that runs (a step the run left behind): the run is over."""
        for task in self.progress.tasks:
            if task.fields.get("state") == "running":
                changes = {"status": status} if status else {}
                self.progress.update(task.id, state="ended", **changes)
                self.progress.stop_task(task.id)

    def _task(self, task_id: Any) -> Any:
        return next(task for task in self.progress.tasks if task.id == task_id)


class ResumeNotice:
    """An observer that says on stderr, before the run, which execution a start or restart
    resumes."""

    def execution_created(self, execution: JobExecution) -> None:
        if execution.rerun_of is not None and execution.resumed_from is None:
            warn(
                f"running job {execution.job_name} again: rerun {execution.rerun} of instance "
                f"{execution.rerun_of} (new instance {execution.instance_id}, execution "
                f"{execution.id})"
            )
        if execution.resumed_from:
            warn(
                f"resuming job {execution.job_name} from execution {execution.resumed_from} "
                f"(new execution {execution.id})"
            )


@contextmanager
def run_observers(
    find_job: Callable[[str], Job], *, notices: bool, live: bool
) -> Iterator[list[Any]]:
    """The observers of a start or restart from the command line: the resume notice (unless the
    output is JSON), and on a terminal the live display (off one, the engine's log lines say the
    same), which ends with the block."""
    observers: list[Any] = [ResumeNotice()] if notices else []
    if not live:
        yield observers
        return
    with LiveDisplay(find_job) as display:
        yield [*observers, display]

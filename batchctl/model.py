"""The domain: statuses, instances, executions, step executions and job parameters.

Plain values built from repository rows; they never save themselves. Nothing here imports
SQLAlchemy, so the CLI can use the model without paying for the database layer.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Mapping, Sequence

from batchctl.errors import InvalidParams, UnknownExecution, UnstorableValue, UsageError


class Status(str, enum.Enum):
    """The status of a job or step execution, ordered by severity (Spring Batch's order).

    The combined status of several step executions (partitions) is their `max()`.
    """

    COMPLETED = "COMPLETED"
    STARTING = "STARTING"
    STARTED = "STARTED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    ABANDONED = "ABANDONED"
    UNKNOWN = "UNKNOWN"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    # str's comparisons would order by name; severity is the order that means something.
    def __lt__(self, other: object) -> bool:
        return self.severity < _status(other).severity

    def __le__(self, other: object) -> bool:
        return self.severity <= _status(other).severity

    def __gt__(self, other: object) -> bool:
        return self.severity > _status(other).severity

    def __ge__(self, other: object) -> bool:
        return self.severity >= _status(other).severity

    @property
    def is_live(self) -> bool:
        """True while some process is (or should be) running the execution."""
        return self in LIVE_STATUSES

    @property
    def is_unsuccessful(self) -> bool:
        return self in UNSUCCESSFUL_STATUSES

    @property
    def is_restartable(self) -> bool:
        return self in RESTARTABLE_STATUSES

    @property
    def is_abandonable(self) -> bool:
        return self in ABANDONABLE_STATUSES


_SEVERITY = {status: rank for rank, status in enumerate(Status)}


def _status(value: object) -> Status:
    if isinstance(value, Status):
        return value
    raise TypeError(f"cannot compare a Status with {type(value).__name__}")


# The status sets, here and nowhere else: the repository's queries and the partial unique index
# on live executions are generated from them. Tuples in the enum's order, so that the SQL made
# from them is always the same text (the live index's WHERE must match its queries' literally).
LIVE_STATUSES = (Status.STARTING, Status.STARTED, Status.STOPPING)
"""Some process is (or should be) running it; at most one execution per instance is live."""
STOPPABLE_STATUSES = (Status.STARTING, Status.STARTED)
"""A stop request moves these to STOPPING."""
RESTARTABLE_STATUSES = (Status.STOPPED, Status.FAILED)
"""A restart (or a start of the same instance) resumes from these."""
ABANDONABLE_STATUSES = (Status.STOPPED, Status.FAILED, Status.UNKNOWN)
"""`abandon` moves these to ABANDONED: the dead ends that a person decides never to restart."""
UNSUCCESSFUL_STATUSES = (Status.STOPPED, Status.FAILED, Status.ABANDONED, Status.UNKNOWN)
"""Ended without completing."""

EXIT_CODE_FOR_STATUS = {
    Status.COMPLETED: 0,
    Status.FAILED: 1,
    Status.UNKNOWN: 1,
    Status.ABANDONED: 1,
    Status.STOPPED: 3,
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


MAX_ID = 2**63 - 1  # ids are 64-bit signed integers (BIGINT) in both databases


def parse_execution_id(value: str | int) -> int:
    """An execution id as given on the command line or by a caller.

    An id beyond the 64-bit range names no execution: it is refused here as any missing id is
    (UnknownExecution, exit 2), instead of reaching the driver as an overflow. Digits are ASCII
    digits only (`str.isdigit` also accepts '²' and '١', which `int` then refuses or reads).
    """
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise UsageError(f"not an execution id: {value!r}")
        if len(value.lstrip("0")) > len(str(MAX_ID)):  # never convert thousands of digits
            shown = value if len(value) <= 30 else f"{value[:20]}… ({len(value)} digits)"
            raise UnknownExecution(f"no execution with id {shown}")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"not an execution id: {value!r}")
    if not 0 <= value <= MAX_ID:
        raise UnknownExecution(f"no execution with id {value}")
    return value


@dataclass
class JobInstance:
    id: int
    job_name: str
    job_key: str
    params: dict[str, Any]
    created_at: datetime
    rerun_of: int | None = None  # a deliberate rerun: the first instance of the same params
    rerun: int = 0  # its rerun number (0: the first instance of these params)


@dataclass
class JobExecution:
    """One attempt to run a job instance."""

    id: int
    instance_id: int
    job_name: str
    params: dict[str, Any]
    status: Status
    version: int = 0
    exit_code: str | None = None
    exit_message: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    heartbeat_at: datetime | None = None
    host: str | None = None
    pid: int | None = None
    pid_scope: str | None = None  # the boot and pid namespace where `pid` means something
    owner: str | None = None  # the token of the process that took the execution over
    trigger: str | None = None  # what started it: cli, api, schedule, http or mq
    trigger_detail: str | None = None  # the schedule and fire time, the token's name, the message id
    context: dict[str, Any] = field(default_factory=dict)
    resumed_from: int | None = None
    log_path: str | None = None
    rerun_of: int | None = None  # the instance's: see JobInstance
    rerun: int = 0

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at or utcnow()
        return (end - self.started_at).total_seconds()

    @property
    def process_exit_code(self) -> int:
        """The exit code a command that ran this execution returns."""
        return EXIT_CODE_FOR_STATUS.get(self.status, 1)


TRIGGER_KINDS = ("cli", "api", "schedule", "http", "mq")


@dataclass(frozen=True)
class Trigger:
    """What started an execution: the command line, a Python caller (`api`), a schedule, an
    HTTP request or a message, with a detail (the schedule and its fire time, the token's
    name, the message id)."""

    kind: str = "api"
    detail: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in TRIGGER_KINDS:
            raise ValueError(f"trigger must be one of {', '.join(TRIGGER_KINDS)}, not {self.kind!r}")


@dataclass(frozen=True)
class Event:
    """One status change of an execution (`step_name` None) or of one of its steps, as the
    outbox recorded it in the transaction of the change. Ids grow: a consumer resumes after the
    last id it saw, and recognises a duplicate by its id."""

    id: int
    execution_id: int
    job_name: str
    status: Status
    at: datetime
    step_execution_id: int | None = None
    step_name: str | None = None


STEP_COUNTERS = (
    "read_count",
    "write_count",
    "filter_count",
    "commit_count",
    "rollback_count",
    "read_skip_count",
    "process_skip_count",
    "write_skip_count",
)


@dataclass
class StepExecution:
    """One attempt to run one step inside one job execution."""

    id: int
    job_execution_id: int
    name: str
    status: Status
    version: int = 0
    exit_code: str | None = None
    exit_message: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    context: dict[str, Any] = field(default_factory=dict)
    read_count: int = 0
    write_count: int = 0
    filter_count: int = 0
    commit_count: int = 0
    rollback_count: int = 0
    read_skip_count: int = 0
    process_skip_count: int = 0
    write_skip_count: int = 0
    partition_of: str | None = None  # for a partition: the partitioned step's name
    partition_index: int | None = None
    partition: dict[str, Any] | None = None  # the partition's context, from the partitioner
    mode: str | None = None  # how partitions run: "process", "thread", "remote" or "dask"
    worker_id: int | None = None
    host: str | None = None  # the worker's host (for mode "dask": the Dask worker's address)
    pid: int | None = None

    @property
    def is_partition(self) -> bool:
        return self.partition_of is not None

    @property
    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in STEP_COUNTERS}

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at or utcnow()
        return (end - self.started_at).total_seconds()


class SkipPhase(str, enum.Enum):
    """Where a chunk step skipped an item."""

    READ = "read"
    PROCESS = "process"
    WRITE = "write"


SKIP_PHASES = tuple(phase.value for phase in SkipPhase)


@dataclass
class SkippedItem:
    """An item a chunk step skipped: where (`phase`, `position`), what, and why.

    `item` is the item itself while the step runs (the `on_skip` listener sees it) and its
    JSON text (or repr) once read back from the repository; `error` likewise is the exception,
    then its one-line description.
    """

    step_execution_id: int
    phase: str
    position: int | None
    item: Any
    error: Any
    id: int | None = None
    step_name: str | None = None
    created_at: datetime | None = None

    @property
    def error_text(self) -> str:
        if isinstance(self.error, BaseException):
            return f"{type(self.error).__name__}: {self.error}"
        return str(self.error)


_AGE_SHAPE = re.compile(r"(?:\d+[smhdw])+")  # an age rather than a date: `2d`, `1d12h`


def parse_moment(
    text: str, *, now: datetime, option: str = "the time", end_of_day: bool = False
) -> datetime:
    """An instant given on the command line (`history --since/--until`), as an aware datetime:
    an ISO date or date-time (local time unless it has an offset) or an age before `now` such
    as `2d`, `12h`, `30m`, `1w`. With `end_of_day` a bare date means the end of that day (the
    next midnight), so `--until 2024-01-31` includes the 31st. UsageError otherwise."""
    given = text.strip()
    if _AGE_SHAPE.fullmatch(given.lower()):
        return now - parse_age(given)
    try:
        if len(given) == 10:
            day = date.fromisoformat(given)
            moment = datetime(day.year, day.month, day.day)
            if end_of_day:
                moment += timedelta(days=1)
        else:
            moment = datetime.fromisoformat(given.replace(" ", "T", 1))
    except ValueError:
        raise UsageError(
            f"{option}: {given!r} is neither an ISO date or date-time (2024-01-31, "
            "2024-01-31T18:00) nor an age (2d, 12h, 30m, 1w)"
        ) from None
    return moment.astimezone() if moment.tzinfo is None else moment


# -- parameters ---------------------------------------------------------------------------------

PARAM_TYPES: tuple[type, ...] = (str, int, float, bool, date, datetime)
_REQUIRED = object()
MAX_PARAM_DEPTH = 100  # nesting levels of a param value: far beyond real params, far below the
# depth at which Python's json (and the instance key's canonical JSON) give up with RecursionError
MAX_INT_DIGITS = 4_000  # digits of an integer in params: Python refuses to print beyond 4,300
_INT_LIMIT = 10**MAX_INT_DIGITS
SHOWN_VALUE_WIDTH = 60  # characters of a refused value quoted in an error
CLOSE_NAME_CUTOFF = 0.5  # difflib similarity for "did you mean": low enough that `day` finds
# `date`; a job declares few params, and the hint lists them all anyway


class _Refused(str):
    """A literal of params JSON that Python's json would read but a param must not hold (NaN,
    Infinity, an integer too long to print), kept as the reason so that `check_param_value`
    refuses it naming the param."""


def _not_a_number(literal: str) -> _Refused:
    return _Refused(f"{literal}: NaN and Infinity are not JSON numbers")


def _parse_int(text: str) -> int | _Refused:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        return _Refused(f"an integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


PARAMS_EXAMPLE = """--params '{"date": "2024-01-31"}' or -P date=2024-01-31"""
"""Valid input, quoted by the errors of `--params` and `--param`."""


def parse_params(text: str | None, pairs: Sequence[str] = ()) -> dict[str, Any]:
    """The params of `start`: the `--params` JSON object merged with the `--param key=value`
    pairs; InvalidParams for anything else.

    A pair's value is a string, as it would be in JSON (`-P n=5` is `{"n": "5"}`): the declared
    type converts it, so a shell or a crontab never needs JSON quoting. A name given twice (in
    both, or in two pairs) is refused rather than one silently winning. A JSON value is refused
    naming the param when it nests past MAX_PARAM_DEPTH, holds NaN or Infinity, or an integer of
    more than MAX_INT_DIGITS digits.
    """
    given = _parse_params_json(text)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise InvalidParams(f"--param expects key=value, got {_shown(pair)} (example: {PARAMS_EXAMPLE})")
        if name in given:
            raise InvalidParams(f"param {name!r} is given twice (in --params or --param)")
        given[name] = value
    return given


def _parse_params_json(text: str | None) -> dict[str, Any]:
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text, parse_constant=_not_a_number, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise InvalidParams(
            f"--params is not valid JSON: {exc.msg} at character {exc.pos} "
            f"(example: {PARAMS_EXAMPLE})"
        ) from None
    except RecursionError:
        raise InvalidParams(
            f"--params is nested too deeply (at most {MAX_PARAM_DEPTH} levels)"
        ) from None
    if not isinstance(value, dict):
        raise InvalidParams(f"--params must be a JSON object (example: {PARAMS_EXAMPLE})")
    for name, item in value.items():
        check_param_value(name, item)
    return value


def check_param_value(name: str, value: Any) -> None:
    """Refuse a param value that has no JSON form or would break the instance key: NaN or
    Infinity anywhere in it, nesting past MAX_PARAM_DEPTH, an integer too long to print.
    Iterative, so that the check itself cannot overflow the stack."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list, tuple)):
            if depth > MAX_PARAM_DEPTH:
                raise InvalidParams(
                    f"param {name!r} is nested more than {MAX_PARAM_DEPTH} levels deep"
                )
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
        elif isinstance(item, _Refused):
            raise InvalidParams(f"param {name!r} holds {item}")
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidParams(f"param {name!r} holds {_not_a_number(json.dumps(item))}")
        elif isinstance(item, int) and not -_INT_LIMIT < item < _INT_LIMIT:
            raise InvalidParams(
                f"param {name!r} holds an integer of more than {MAX_INT_DIGITS} digits"
            )


@dataclass(frozen=True)
class Param:
    """A declared job parameter: its type, and a default that makes it optional."""

    type: type
    default: Any = _REQUIRED
    help: str = ""

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            names = ", ".join(t.__name__ for t in PARAM_TYPES)
            raise TypeError(f"param type must be one of {names}, not {self.type!r}")

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


def convert_params(
    declared: Mapping[str, Param],
    given: Mapping[str, Any],
    *,
    extra: bool = False,
    job_name: str | None = None,
) -> dict[str, Any]:
    """Validate `given` (a JSON object) against the declared params and return typed values.

    Declared params are converted from their JSON form. A name that is not declared is refused
    (InvalidParams, naming it and the closest declared name), because a typo would otherwise make
    a new instance and run again a day that already completed; with `extra` (a job declared with
    `extra_params=True`) undeclared params are kept as given.
    """
    if not isinstance(given, Mapping):
        raise InvalidParams("params must be a JSON object")
    for name, value in given.items():
        check_param_value(str(name), value)
    unknown = [name for name in given if name not in declared]
    if unknown and not extra:
        raise InvalidParams(unknown_params_message(unknown, declared, job_name))
    converted: dict[str, Any] = {}
    for name, param in declared.items():
        if name not in given or given[name] is None:
            if param.required:
                raise InvalidParams(f"missing param {name!r} ({param.type.__name__})")
            converted[name] = param.default
            continue
        converted[name] = _convert(name, param.type, given[name])
    for name in unknown:
        converted[name] = given[name]
    return converted


def unknown_params_message(
    unknown: Sequence[Any], declared: Mapping[str, Any], job_name: str | None = None
) -> str:
    """`unknown param 'out_dri' for job eod (did you mean 'out_dir'? declared: date, out_dir)`:
    the first unknown name with its closest declared one (a name differing only in case counts
    as closest), then any other unknown names."""
    first = str(unknown[0])
    where = f" for job {job_name}" if job_name else ""
    names = list(declared)
    if not names:
        hint = "it declares no params"
    else:
        close = closest_name(first, names)
        hint = f"did you mean {close!r}? " if close else ""
        hint += f"declared: {', '.join(names)}"
    message = f"unknown param {first!r}{where} ({hint})"
    if len(unknown) > 1:
        message += "; also unknown: " + ", ".join(repr(str(name)) for name in unknown[1:])
    return message


def closest_name(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate `name` most likely meant: the same name in another case, else difflib's
    closest (compared in lower case, so `Out_Dri` finds `out_dir`), else None."""
    from difflib import get_close_matches

    lowered = {candidate.lower(): candidate for candidate in reversed(candidates)}
    if name.lower() in lowered:
        return lowered[name.lower()]
    found = get_close_matches(name.lower(), list(lowered), n=1, cutoff=CLOSE_NAME_CUTOFF)
    return lowered[found[0]] if found else None


def _convert(name: str, kind: type, value: Any) -> Any:
    try:
        return _CONVERTERS[kind](value)
    except (ValueError, TypeError, OverflowError):
        raise InvalidParams(f"param {name!r} must be {_ARTICLE[kind]}, got {_shown(value)}") from None


def _shown(value: Any) -> str:
    """A refused value as JSON, cut to SHOWN_VALUE_WIDTH characters: an error stays one short line."""
    text = json.dumps(value, default=str)
    return text if len(text) <= SHOWN_VALUE_WIDTH else text[: SHOWN_VALUE_WIDTH - 1] + "…"


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip() == value:
        return int(value, 10)
    raise TypeError


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str) and value.strip() == value:
        result = float(value)
    else:
        raise TypeError
    if not math.isfinite(result):
        raise ValueError
    return result


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise ValueError


def _to_date(value: Any) -> date:
    if isinstance(value, datetime):
        raise TypeError
    if isinstance(value, date):
        return value
    if isinstance(value, str) and len(value) == 10:
        return date.fromisoformat(value)
    raise ValueError


def _to_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and len(value) > 10:
        return datetime.fromisoformat(value)
    raise ValueError


_CONVERTERS = {
    str: _to_str,
    int: _to_int,
    float: _to_float,
    bool: _to_bool,
    date: _to_date,
    datetime: _to_datetime,
}
_ARTICLE = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    date: "a date (YYYY-MM-DD)",
    datetime: "a datetime (ISO 8601)",
}


def params_to_json(params: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON form of typed params: dates and datetimes as ISO strings."""
    return json.loads(canonical_json(params))


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, dates in ISO form: the same params give the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def storable_json(value: Any, name: str) -> str:
    """`value` as the strict JSON the repository stores (contexts, partition contexts); an
    UnstorableValue naming the key and the type when it is not JSON (a set, a Decimal, a date
    in a context, NaN). Refused rather than converted: a restart must get back exactly what
    was saved, and a date saved as a string would come back as one."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise UnstorableValue(unstorable_reason(value, name)) from None


def unstorable_reason(value: Any, name: str) -> str:
    """Which part of `value` strict JSON cannot hold, and why, e.g. `ctx.state['total'] holds a
    Decimal, which cannot be saved as JSON`."""
    found = _first_unstorable(value, name, set())
    where, what = found if found is not None else (name, "a value")
    return f"{where} holds {what}, which cannot be saved as JSON (use str, int, float, bool, None, lists and dicts)"


def _first_unstorable(value: Any, path: str, seen: set[int]) -> tuple[str, str] | None:
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"the number {value}")
    if isinstance(value, (dict, list, tuple)):
        if id(value) in seen:
            return path, "a reference to itself"
        seen = seen | {id(value)}
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    return f"{path}[{key!r}]", f"a key of type {type(key).__name__}"
                found = _first_unstorable(item, f"{path}[{key!r}]", seen)
                if found is not None:
                    return found
            return None
        for index, item in enumerate(value):
            found = _first_unstorable(item, f"{path}[{index}]", seen)
            if found is not None:
                return found
        return None
    return path, _with_article(type(value).__name__)


def _with_article(name: str) -> str:
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def instance_key(params: Mapping[str, Any], rerun: int = 0) -> str:
    """The job instance key: sha256 of the canonical JSON of the converted params; for the
    n-th deliberate rerun of those params (`start --rerun`), of that JSON followed by
    `#rerun=n`, so that each rerun is an instance of its own under the unique (job, key)."""
    text = canonical_json(params)
    if rerun:
        text += f"#rerun={rerun}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- pruning ------------------------------------------------------------------------------------

_AGE = re.compile(r"(\d{1,9})([smhdw])")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """An age as operators write it: a whole number and a unit, `90d`, `12h`, `30m`, `45s`,
    `2w`, or several (`1d12h`). UsageError for anything else, or for an age of zero, which
    would prune what just ended."""
    stripped = text.strip().lower()
    parts = _AGE.findall(stripped)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != stripped:
        raise UsageError(f"invalid age {text!r}: write a number and a unit, e.g. 90d, 12h, 30m")
    try:
        age = sum((timedelta(**{_AGE_UNITS[unit]: int(number)}) for number, unit in parts), timedelta())
    except OverflowError:
        raise UsageError(f"invalid age {text!r}: too large") from None
    if age <= timedelta(0):
        raise UsageError(f"invalid age {text!r}: it must be more than zero")
    return age


@dataclass
class PruneReport:
    """What `Batch.prune` removed, or with `dry_run` would remove (then nothing was written).

    `kept` counts the executions old enough to prune that were kept because a restart needs
    them (or, UNKNOWN, a person must look at them first); `longest_transaction` is the longest
    one batch held the repository's write lock, in seconds.
    """

    cutoff: datetime
    dry_run: bool = False
    executions: int = 0
    step_executions: int = 0
    skipped_items: int = 0
    instances: int = 0
    log_files: int = 0
    kept: int = 0
    batches: int = 0
    longest_transaction: float = 0.0
    problems: list[str] = field(default_factory=list)  # log files that could not be removed

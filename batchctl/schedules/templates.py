"""Params templates: the params of a fire, rendered from the fire time in the schedule's zone.

A template is a string in which `{fire}` and `{fire:FORMAT}` are replaced by the fire time in
the schedule's time zone: ISO 8601 with its offset, or formatted by `strftime` (`{fire:%Y-%m-%d}`).
Offsets follow `fire`, before the format, and add up left to right:

    {fire-1d:%Y-%m-%d}      the day before the fire (a 01:30 run processing yesterday)
    {fire-1bd:%Y-%m-%d}     the previous business day (Monday to Friday; no holidays)
    {fire+2h:%H:%M}         two hours later
    {fire-1w-1d:%Y-%m-%d}   eight days earlier

Units: `w` weeks, `d` days, `bd` business days (weekends skipped), `h` hours, `m` minutes.
Days, weeks and business days move the calendar date and keep the wall-clock time; hours and
minutes are elapsed time. `{{` and `}}` are literal braces. Anything else in braces is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Mapping, Union

from batchctl.errors import ScheduleError

if TYPE_CHECKING:
    from batchctl.schedules.schedule import Schedule

UNITS = ("w", "d", "bd", "h", "m")
_FIELD = re.compile(
    r"\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<offsets>(?:\s*[+-]\s*\d+\s*(?:bd|[wdhm]))*)\s*"
    r"(?::(?P<format>.*))?\Z",
    re.DOTALL,
)
_OFFSET = re.compile(r"([+-])\s*(\d+)\s*(bd|[wdhm])")
_MAX_OFFSET = 100_000  # of any unit: far beyond any sensible offset, well inside datetime's range


@dataclass(frozen=True)
class _Field:
    offsets: tuple[tuple[int, str], ...]
    format: str | None


_Part = Union[str, _Field]


def parse_template(template: str) -> tuple[_Part, ...]:
    """The literal text and `{fire...}` fields of a template; ScheduleError if it is malformed."""
    parts: list[_Part] = []
    text: list[str] = []
    i = 0
    while i < len(template):
        char = template[i]
        if template.startswith("{{", i) or template.startswith("}}", i):
            text.append(char)
            i += 2
        elif char == "}":
            raise ScheduleError(f"template {template!r}: a single '}}' (write '}}}}' for a brace)")
        elif char == "{":
            end = template.find("}", i)
            if end < 0:
                raise ScheduleError(f"template {template!r}: '{{' is never closed")
            if text:
                parts.append("".join(text))
                text = []
            parts.append(_parse_field(template, template[i + 1 : end]))
            i = end + 1
        else:
            text.append(char)
            i += 1
    if text:
        parts.append("".join(text))
    return tuple(parts)


def _parse_field(template: str, body: str) -> _Field:
    match = _FIELD.match(body)
    if match is None:
        raise ScheduleError(
            f"template {template!r}: cannot read {{{body}}} (write {{fire}}, {{fire:%Y-%m-%d}} "
            f"or with an offset {{fire-1d:%Y-%m-%d}}; units {', '.join(UNITS)})"
        )
    if match["name"] != "fire":
        raise ScheduleError(f"template {template!r}: unknown field {match['name']!r} (only 'fire')")
    offsets = tuple(
        (int(amount) * (-1 if sign == "-" else 1), unit)
        for sign, amount, unit in _OFFSET.findall(match["offsets"])
    )
    for amount, unit in offsets:
        if abs(amount) > _MAX_OFFSET:
            raise ScheduleError(f"template {template!r}: offset {amount}{unit} is too large")
    format_ = match["format"]
    if format_ is not None and "%" not in format_:
        raise ScheduleError(
            f"template {template!r}: format {format_!r} has no strftime directive (such as %Y)"
        )
    return _Field(offsets, format_)


def render_template(template: str, fire: datetime) -> str:
    """The template rendered at `fire`, an aware datetime in the schedule's time zone."""
    out: list[str] = []
    for part in parse_template(template):
        if isinstance(part, str):
            out.append(part)
            continue
        moment = fire
        for amount, unit in part.offsets:
            moment = shift(moment, amount, unit)
        out.append(moment.isoformat() if part.format is None else moment.strftime(part.format))
    return "".join(out)


def shift(moment: datetime, amount: int, unit: str) -> datetime:
    """`moment` (aware) moved by `amount` units, in its own time zone."""
    zone = moment.tzinfo
    if unit in ("h", "m"):
        delta = timedelta(hours=amount) if unit == "h" else timedelta(minutes=amount)
        return (moment.astimezone(timezone.utc) + delta).astimezone(zone)
    wall = moment.replace(tzinfo=None)
    if unit == "bd":
        step = timedelta(days=1 if amount > 0 else -1)
        for _ in range(abs(amount)):
            wall += step
            while wall.weekday() >= 5:  # Saturday, Sunday
                wall += step
    else:
        wall += timedelta(days=amount * (7 if unit == "w" else 1))
    # The same wall-clock time on the new date; one that does not exist that day is normalised.
    return wall.replace(tzinfo=zone).astimezone(timezone.utc).astimezone(zone)


def render_params(schedule: Schedule, fire_at: datetime) -> dict[str, Any]:
    """The params of the fire at `fire_at` (an instant): templates rendered, or the function's
    result, at the fire time in the schedule's time zone. ScheduleError if they cannot be made."""
    from batchctl.schedules.cron import as_utc, time_zone

    local = as_utc(fire_at, "fire_at").astimezone(time_zone(schedule.timezone))
    if callable(schedule.params):
        try:
            result = schedule.params(local)
        except Exception as exc:
            raise ScheduleError(
                f"params function failed at {local.isoformat()}: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(result, Mapping):
            raise ScheduleError(
                f"params function must return a dict, returned {type(result).__name__}"
            )
        return dict(result)
    if not isinstance(schedule.params, Mapping):
        raise ScheduleError(
            f"params must be a table (dict) or a function, not {type(schedule.params).__name__}"
        )
    rendered: dict[str, Any] = {}
    for name, value in schedule.params.items():
        if isinstance(value, str):
            try:
                value = render_template(value, local)
            except ScheduleError as exc:
                raise ScheduleError(f"param {name!r}: {exc.message}") from None
        rendered[name] = value
    return rendered


def check_templates(params: Mapping[str, Any]) -> list[str]:
    """The problems of every template in `params`, without rendering them."""
    problems = []
    for name, value in params.items():
        if isinstance(value, str):
            try:
                parse_template(value)
            except ScheduleError as exc:
                problems.append(f"param {name!r}: {exc.message}")
    return problems

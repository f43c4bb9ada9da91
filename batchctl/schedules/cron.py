"""Cron expressions and the instants they fire at, in UTC, daylight saving included.

A cron is read in its schedule's time zone (DESIGN.md, "Time"): the cron library (cronsim,
Debian cron syntax) only matches wall-clock times, and this module turns each matching
wall-clock time into instants:

- a wall-clock time that happens once fires at that instant;
- one that does not exist (spring forward) fires at the first instant after the gap: a daily
  02:30 in New York fires at 03:00 EDT on the day the clocks skip 02:00-03:00; fires that fall
  on one instant fire once;
- one that happens twice (fall back) fires once, at its first occurrence, unless the hour field
  is `*` (or `*/N`): then both occurrences fire, and a wall-clock time in a spring-forward gap
  does not fire at all, since every real hour still gets its fires.

cronsim's own time-zone handling follows Debian cron, which treats a cron with `*` in the minute
field, or a 6-field cron, by the new clock (fires twice at fall back, never in the gap), so it is
not used: cronsim iterates naive wall-clock times and the rules above are applied here.

cronsim and zoneinfo are imported inside the functions that use them, so importing this module
costs nothing at start-up.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from itertools import islice
from typing import TYPE_CHECKING, Iterator

from batchctl.errors import ScheduleError

if TYPE_CHECKING:
    from batchctl.schedules.schedule import Schedule

UTC = timezone.utc

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_SECOND = timedelta(seconds=1)
_DAY = timedelta(days=1)


@dataclass(frozen=True)
class Cron:
    """A valid cron expression: `fields` are always six, seconds first ("0" when not given)."""

    expr: str
    fields: tuple[str, str, str, str, str, str]

    @property
    def has_seconds(self) -> bool:
        return len(ALIASES.get(self.expr, self.expr).split()) == 6

    @property
    def hour_is_wildcard(self) -> bool:
        """`*` or `*/N` in the hour field: both hours fire at fall back, none in a gap."""
        return self.fields[2].startswith("*")

    def wall_times(self, after: datetime) -> Iterator[datetime]:
        """The naive wall-clock times that match, from `after` (a naive time) on, inclusive."""
        from cronsim import CronSim

        return CronSim(" ".join(self.fields), after.replace(microsecond=0) - _SECOND)


@lru_cache(maxsize=512)
def parse_cron(expr: str) -> Cron:
    """Check a cron expression: 5 fields, or 6 with a leading seconds field, or an @alias."""
    from cronsim import CronSim, CronSimError

    if not isinstance(expr, str) or not expr.strip():
        raise ScheduleError(f"cron must be a non-empty string, got {expr!r}")
    text = " ".join(expr.split())
    parts = ALIASES.get(text.lower(), text).split()
    if text.startswith("@") and text.lower() not in ALIASES:
        raise ScheduleError(f"unknown cron alias {text!r} (known: {', '.join(ALIASES)})")
    if len(parts) not in (5, 6):
        raise ScheduleError(
            f"cron {text!r} has {len(parts)} fields; it needs 5 (minute hour day month weekday) "
            "or 6 (a leading seconds field, then those 5)"
        )
    fields = tuple(parts) if len(parts) == 6 else ("0", *parts)
    try:
        matches = CronSim(" ".join(fields), datetime(2000, 1, 1))
    except CronSimError as exc:
        reason = str(exc)
        reason = (reason[:1].lower() + reason[1:] + " field") if reason.startswith("Bad") else reason
        raise ScheduleError(f"invalid cron {text!r}: {reason}") from None
    except (ValueError, IndexError):
        raise ScheduleError(f"invalid cron {text!r}") from None
    try:
        next(matches)
    except StopIteration:
        raise ScheduleError(f"cron {text!r} never fires") from None
    return Cron(text.lower() if text.lower() in ALIASES else text, fields)  # type: ignore[arg-type]


@lru_cache(maxsize=512)
def time_zone(name: str) -> tzinfo:
    """The IANA time zone `name` ("Europe/Paris", "UTC")."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(name, str) or not name:
        raise ScheduleError(f"time zone must be an IANA name such as 'Europe/Paris', got {name!r}")
    if name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(f"unknown time zone {name!r} (an IANA name such as 'Europe/Paris')") from None


def as_utc(instant: datetime, what: str = "instant") -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime (with a time zone), got {instant!r}")
    return instant.astimezone(UTC)


# -- fire instants -----------------------------------------------------------------------------


def next_fires(schedule: Schedule, after: datetime, n: int) -> list[datetime]:
    """The next `n` fire instants strictly after `after`, in UTC, oldest first."""
    return list(islice(iter_fires(schedule, after), n))


def iter_fires(schedule: Schedule, after: datetime) -> Iterator[datetime]:
    """Every fire instant strictly after `after`, in UTC, in order (ends only if the cron does)."""
    return fires_after(parse_cron(schedule.cron), time_zone(schedule.timezone), after)


def fires_between(
    schedule: Schedule, start: datetime, end: datetime, *, limit: int | None = None
) -> list[datetime]:
    """The fire instants in (start, end], oldest first; at most `limit` of them."""
    end = as_utc(end, "end")
    found: list[datetime] = []
    for fire in iter_fires(schedule, start):
        if fire > end or (limit is not None and len(found) >= limit):
            break
        found.append(fire)
    return found


def last_fires(schedule: Schedule, start: datetime, end: datetime, n: int) -> list[datetime]:
    """The last `n` fire instants in (start, end], oldest first, without walking from `start`:
    a suspension of a week of a per-second schedule costs no more than a few windows."""
    start, end = as_utc(start, "start"), as_utc(end, "end")
    if n <= 0 or end <= start:
        return []
    window = timedelta(minutes=1)
    while True:
        low = max(start, end - window)
        found = fires_between(schedule, low, end)
        if len(found) >= n or low == start:
            return found[-n:]
        window *= 8


def fires_after(cron: Cron, zone: tzinfo, after: datetime) -> Iterator[datetime]:
    """The instants, strictly after `after`, at which `cron` read in `zone` fires, in order."""
    after = as_utc(after, "after")
    local = after.astimezone(zone).replace(tzinfo=None)
    wall_times = cron.wall_times(local - _fold_lookback(zone, after))
    wildcard = cron.hour_is_wildcard
    # Second occurrences (fall back, hour `*`) come later than the first occurrences of the
    # wall-clock times that follow them: hold them until a later first occurrence passes them.
    held: deque[datetime] = deque()
    last: datetime | None = None
    while True:
        try:
            wall = next(wall_times)
        except StopIteration:
            break
        first, second = _instants(wall, zone, wildcard)
        if first is not None:
            while held and held[0] < first:
                fire = held.popleft()
                if fire > after and (last is None or fire > last):
                    last = fire
                    yield fire
            if first > after and (last is None or first > last):
                last = first
                yield first
        if second is not None:
            held.append(second)
    for fire in held:
        if fire > after and (last is None or fire > last):
            last = fire
            yield fire


def _instants(wall: datetime, zone: tzinfo, wildcard: bool) -> tuple[datetime | None, datetime | None]:
    """The instant(s) a matching wall-clock time fires at: (first, second occurrence)."""
    if zone is UTC:
        return wall.replace(tzinfo=UTC), None
    fold0 = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    fold1 = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if fold0 == fold1:
        return fold0, None
    if fold0.astimezone(zone).replace(tzinfo=None) == wall:  # happens twice: fold=0 is first
        return fold0, (fold1 if wildcard else None)
    if wildcard:  # in a gap, and every real hour fires anyway
        return None, None
    # In a gap: fold=1 reads it with the offset after the change, so it is the earlier instant.
    return _gap_end(fold1, fold0, zone), None


def _gap_end(before: datetime, after: datetime, zone: tzinfo) -> datetime:
    """The first instant of the new offset, between two instants on either side of the change."""
    low, high = int(before.timestamp()), int(after.timestamp())
    target = after.astimezone(zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == target:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _fold_lookback(zone: tzinfo, after: datetime) -> timedelta:
    """How far before `after`'s wall-clock time a second occurrence may still lie after it:
    the size of a nearby fall back (zero away from one)."""
    if zone is UTC:
        return timedelta(0)
    offsets = [(after + delta).astimezone(zone).utcoffset() for delta in (-_DAY, _DAY)]
    now = after.astimezone(zone).utcoffset()
    assert now is not None
    return max([timedelta(0)] + [now - offset for offset in offsets if offset is not None])


def parse_instant(text: str, zone: tzinfo) -> datetime:
    """An ISO 8601 date or date-time; without an offset it is read in `zone`. Returns UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ScheduleError(
            f"not an ISO 8601 instant: {text!r} (for example 2025-11-02T00:00:00+00:00)"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(UTC)

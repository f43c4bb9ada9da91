"""Which fires of a schedule to run now: the on-time ones, and the missed ones its policy keeps.

A fire is due once its instant has passed. Seen at most `grace` seconds late it is on time and
runs. Seen later (the scheduler was down, the machine suspended, the clock jumped) it is missed,
and the schedule's `catchup` decides: "skip" runs none, "latest" the most recent once, "all" the
most recent `max_catchup`, oldest first. Older missed fires are skipped: never a burst beyond the
cap, and a long suspension is never replayed tick by tick (nor even walked: see `last_fires`).

A pure function of the schedule, the last fire the repository recorded and the current instant,
so a scheduler (or two) can call it on every wake-up and a test can call it with any instants.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from batchctl.schedules.cron import as_utc, fires_between, last_fires

if TYPE_CHECKING:
    from batchctl.schedules.schedule import Schedule

_TICK = timedelta(microseconds=1)
SKIPPED_COUNT_LIMIT = 10_000  # missed fires counted for a log line; beyond, "at least" this many


@dataclass(frozen=True)
class Due:
    """What to fire now.

    `run`: the fire instants (UTC) to fire now, oldest first: the missed ones the policy keeps,
    then the on-time ones. `caught_up`: those of `run` that were missed. `skipped`: how many
    missed fires the policy does not run (at most SKIPPED_COUNT_LIMIT: then at least that
    many), the first of them being `first_skipped`.
    """

    run: tuple[datetime, ...] = ()
    caught_up: tuple[datetime, ...] = ()
    skipped: int = 0
    first_skipped: datetime | None = None


def due_fires(schedule: Schedule, last_fire: datetime | None, now: datetime) -> Due:
    """The fires of `schedule` to run at `now`, given the last fire already recorded.

    Fires at or before `last_fire` were decided before and are never returned again, so a clock
    that goes back fires nothing twice. With no `last_fire` (a schedule that never fired) nothing
    was missed: only the on-time fires run. A disabled schedule runs nothing.
    """
    now = as_utc(now, "now")
    if not schedule.enabled:
        return Due()
    # The newest instant a missed fire can have: a fire exactly `grace` late is still on time.
    cutoff = now - timedelta(seconds=schedule.grace) - _TICK
    last = as_utc(last_fire, "last_fire") if last_fire is not None else None
    on_time = fires_between(schedule, cutoff if last is None else max(last, cutoff), now)
    if last is None or last >= cutoff:
        return Due(run=tuple(on_time))
    keep = {"skip": 0, "latest": 1, "all": schedule.max_catchup}.get(schedule.catchup, 0)
    caught_up = last_fires(schedule, last, cutoff, keep)
    missed = fires_between(
        schedule, last, cutoff, limit=SKIPPED_COUNT_LIMIT + len(caught_up)
    )
    skipped = max(0, len(missed) - len(caught_up))
    return Due(
        run=tuple(caught_up + on_time),
        caught_up=tuple(caught_up),
        skipped=min(skipped, SKIPPED_COUNT_LIMIT),
        first_skipped=missed[0] if skipped else None,
    )

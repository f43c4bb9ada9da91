"""`Schedule`: when a job fires, in which time zone, with which params, and what happens to the
fires that were missed. A plain value: checking it against the registry is `loading`'s work,
computing its fires `cron`'s and `catchup`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping, Union

CATCHUP_POLICIES = ("skip", "latest", "all")
SOURCES = ("config", "code")

DEFAULT_TIMEZONE = "UTC"
DEFAULT_CATCHUP = "latest"  # after downtime, run the most recent missed fire once
DEFAULT_MAX_CATCHUP = 5  # catchup="all" runs at most this many missed fires, the most recent
DEFAULT_GRACE = 60.0  # seconds a fire may be seen late and still run as on time

ParamsFunction = Callable[[datetime], Mapping[str, Any]]
ScheduleParams = Union[Mapping[str, Any], ParamsFunction]


@dataclass(frozen=True)
class Schedule:
    """A job fired on a cron read in a time zone.

    `cron` has 5 fields (minute hour day month weekday) or 6 with a leading seconds field.
    `params` is a dict whose string values are templates over the fire time in the schedule's
    zone (`"{fire-1d:%Y-%m-%d}"`, see `templates`), or a function `fn(fire_time)` of the fire
    time in that zone returning the params. `catchup` decides what happens to fires seen more
    than `grace` seconds late: "skip" runs none, "latest" the most recent once, "all" the most
    recent `max_catchup`, oldest first. `source` is "config" (config.toml) or "code"
    (`job.schedule(...)`); `defined_in` the config file or the file:line of the call.
    """

    name: str
    job: str
    cron: str
    timezone: str = DEFAULT_TIMEZONE
    params: ScheduleParams = field(default_factory=dict, hash=False)
    catchup: str = DEFAULT_CATCHUP
    max_catchup: int = DEFAULT_MAX_CATCHUP
    enabled: bool = True
    grace: float = DEFAULT_GRACE
    source: str = "code"
    defined_in: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.params, Mapping):
            object.__setattr__(self, "params", dict(self.params))

    @property
    def where(self) -> str:
        """Where it is defined, for messages: the config file or the job module's file:line."""
        return self.defined_in or self.source

"""Events out: every row of the repository's event outbox, published in id order to the broker.

The cursor (the last event id the broker confirmed) is kept in the repository, keyed by the
destination, and advances only after the broker confirmed the batch: a listener that dies
between the two publishes that batch again after its restart, a duplicate recognisable by
`event_id`. Nothing is lost.

Ids are allocated before their transaction commits, so on Postgres an event with a lower id can
become visible after one with a higher id. The publisher stops at such a gap for up to
`GAP_GRACE` seconds (the gap's transaction commits, or rolled back and never will); events of
one execution are written one transaction after another, so they stay in order.
"""

from __future__ import annotations

import logging
import threading
from datetime import timezone
from typing import Any, Protocol, Sequence

from batchctl.errors import EnvironmentProblem
from batchctl.model import Event, utcnow

log = logging.getLogger("batchctl.listen")

GAP_GRACE = 5.0  # seconds an id gap is waited for before it is taken as a rolled-back transaction
POLL = 0.2  # seconds between two looks at the outbox when nothing is new
BATCH = 200  # events read and published at a time
RETRY_MAX = 5.0  # seconds: the longest wait after a failed publish


class Sink(Protocol):
    def publish(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None: ...

    def close(self) -> None: ...


def event_body(event: Event) -> dict[str, Any]:
    """The JSON of an event, as published."""
    return {
        "event_id": event.id,
        "execution_id": event.execution_id,
        "job": event.job_name,
        "step": event.step_name,
        "status": event.status.value,
        "at": event.at.astimezone(timezone.utc).isoformat(),
    }


def routing_key(event: Event) -> str:
    """`<job>.<status>` for an execution's event, `<job>.step.<status>` for a step's."""
    status = event.status.value.lower()
    return f"{event.job_name}.step.{status}" if event.step_name else f"{event.job_name}.{status}"


def contiguous(events: Sequence[Event], after: int, *, grace: float = GAP_GRACE) -> list[Event]:
    """The events up to the first gap in ids that may still fill (its next event is younger
    than `grace` seconds)."""
    now = utcnow()
    taken: list[Event] = []
    previous = after
    for event in events:
        if event.id != previous + 1 and (now - event.at).total_seconds() < grace:
            break
        taken.append(event)
        previous = event.id
    return taken


class EventPublisher:
    def __init__(self, batch: Any, sink: Sink, name: str, stopping: threading.Event) -> None:
        from batchctl.repository.messages import MessageLedger

        self.batch = batch
        self.ledger = MessageLedger(batch.repository)
        self.sink = sink
        self.name = name
        self.stopping = stopping

    def serve(self) -> None:
        delay = 0.5
        cursor: int | None = None
        while not self.stopping.is_set():
            try:
                if cursor is None:
                    cursor = self.ledger.cursor(self.name)
                    log.info("publishing events after id %d to %s", cursor, self.name)
                published = self.publish_once(cursor)
                delay = 0.5
            except EnvironmentProblem as exc:
                log.warning("events: %s; retrying in %.1fs", exc.message, delay)
            except Exception as exc:
                log.warning("events: publishing to %s failed (%s: %s); retrying in %.1fs",
                            self.name, type(exc).__name__, exc, delay)
                self.sink.close()
            else:
                if published:
                    cursor = published
                    continue
                self.stopping.wait(POLL)
                continue
            self.stopping.wait(delay)
            delay = min(delay * 2, RETRY_MAX)
            cursor = None  # read it again: the repository has the truth
        self.sink.close()

    def publish_once(self, cursor: int) -> int | None:
        """Publish the next batch after `cursor`; return the new cursor, or None if nothing."""
        events = contiguous(self.batch.events(cursor, limit=BATCH), cursor)
        if not events:
            return None
        self.sink.publish([(routing_key(event), event_body(event)) for event in events])
        last = events[-1].id
        self.ledger.advance(self.name, last)
        log.info("published events %d..%d (%d) to %s", events[0].id, last, len(events), self.name)
        return last


__all__ = ["EventPublisher", "contiguous", "event_body", "routing_key"]

"""Server-sent event streams: the outbox of status changes, and a followed log.

Both poll (the outbox through `Batch.events`, the log file by its size) in the server's thread
pool, and end when the client goes away or serve is stopping.

Event ids come from the database in insertion order, but on Postgres two transactions may
commit in the other order: an event with a lower id can become visible after a higher one was
sent. A stream therefore keeps looking below its newest id for `EVENT_SETTLE` seconds and sends
such a late event too (out of order; consumers de-duplicate by id, and `Last-Event-ID` resumes
after the last id received).
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterable

from starlette.concurrency import run_in_threadpool

from batchctl.defaults import EVENT_POLL_INTERVAL, EVENT_SETTLE
from batchctl.model import Event

KEEPALIVE = 15.0  # seconds between two comment lines on a quiet stream (proxies close idle ones)
EVENT_BATCH = 500  # events read per poll


def event_dict(event: Event) -> dict[str, Any]:
    """The JSON of one event, as the stream sends it (the listener publishes the same)."""
    return {
        "id": event.id,
        "execution_id": event.execution_id,
        "job": event.job_name,
        "step_execution_id": event.step_execution_id,
        "step": event.step_name,
        "status": event.status.value,
        "at": event.at.isoformat(),
    }


def sse(data: str, *, event: str | None = None, id: int | None = None) -> str:
    """One server-sent event; every line of `data` becomes a `data:` line."""
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return "\n".join(lines) + "\n\n"


@dataclass
class EventCursor:
    """Which events a stream still has to send: those above `floor` it has not sent. The floor
    rises to an id only once that id has been seen for `settle` seconds."""

    floor: int
    settle: float = EVENT_SETTLE
    _sent: dict[int, float] = field(default_factory=dict)  # id -> when it was first sent

    def take(self, events: Iterable[Event], now: float) -> list[Event]:
        """The events of a read above `floor` not sent yet; raise the floor where it is safe."""
        fresh = [event for event in events if event.id not in self._sent]
        for event in fresh:
            self._sent[event.id] = now
        settled = [id for id, seen in self._sent.items() if now - seen >= self.settle]
        if settled:
            self.floor = max(self.floor, max(settled))
            self._sent = {id: seen for id, seen in self._sent.items() if id > self.floor}
        return fresh


async def event_stream(
    read: Callable[[int], list[Event]],
    after: int,
    stopping: Callable[[], bool],
    *,
    poll: float = EVENT_POLL_INTERVAL,
    noted: Callable[[int], None] = lambda event_id: None,
) -> AsyncIterator[str]:
    """The outbox as server-sent events, after event id `after`, until `stopping()`;
    `noted(id)` hears of the newest event read before any of them is sent."""
    cursor = EventCursor(after)
    yield "retry: 2000\n\n"
    quiet_since = time.monotonic()
    while not stopping():
        events = await run_in_threadpool(read, cursor.floor)
        if events:
            noted(max(event.id for event in events))
        for event in cursor.take(events, time.monotonic()):
            yield sse(json.dumps(event_dict(event)), event="status", id=event.id)
            quiet_since = time.monotonic()
        if len(events) >= EVENT_BATCH:
            continue  # catching up: read on at once
        if time.monotonic() - quiet_since > KEEPALIVE:
            yield ": keepalive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(poll)


def log_tail(path: str, limit: int) -> tuple[str, int]:
    """The last `limit` bytes of a log, from a line start, and the file's size."""
    with open(path, "rb") as log:
        size = log.seek(0, os.SEEK_END)
        start = max(0, size - limit)
        log.seek(start)
        data = log.read(size - start)
    if start > 0:
        newline = data.find(b"\n")
        data = data[newline + 1:] if newline >= 0 else b""
    return data.decode("utf-8", errors="replace"), size


async def log_stream(
    path: str,
    limit: int,
    live: Callable[[], bool],
    stopping: Callable[[], bool],
    *,
    poll: float = EVENT_POLL_INTERVAL,
) -> AsyncIterator[str]:
    """A log's tail, then its new lines as they are written, one `line` event per line, until
    the execution is no longer live (an `end` event) or `stopping()`."""
    text, offset = await run_in_threadpool(log_tail, path, limit)
    pending = ""
    ended = False
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        pending += text
        *lines, pending = pending.split("\n")
        for line in lines:
            yield sse(json.dumps(line), event="line")
        if ended or stopping():
            if pending and ended:
                yield sse(json.dumps(pending), event="line")
            if ended:
                yield sse("{}", event="end")
            return
        await asyncio.sleep(poll)
        ended = not await run_in_threadpool(live)
        data, offset = await run_in_threadpool(_read_from, path, offset)
        text = decoder.decode(data, final=ended)


def _read_from(path: str, offset: int) -> tuple[bytes, int]:
    with open(path, "rb") as log:
        log.seek(offset)
        data = log.read()
    return data, offset + len(data)

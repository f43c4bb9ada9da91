"""A short-lived cache of `GET /api/executions` answers, shared by everyone watching.

A night's dashboards all ask for the same first page, over and over; building it (a query, fifty
rows to objects, JSON) costs several times what serving it does. An answer is kept until the
first of: a new status change in the event outbox (serve watches its newest id every
EVENT_POLL_INTERVAL), a write through this server (any request that is not a read), or
LISTING_TTL seconds (what the outbox does not record: heartbeat times, contexts, pruned rows, an
event committed late on Postgres). While the outbox cannot be read, nothing is cached.

Everything here runs on the server's event loop thread: no locks. Concurrent requests for an
answer being built wait for that one build instead of each starting their own.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Awaitable, Callable

from batchctl.defaults import LISTING_CACHE_SIZE, LISTING_TTL


class Listings:
    """Answers by request (path and query), valid for one outbox marker and at most `ttl`."""

    def __init__(self, ttl: float = LISTING_TTL, size: int = LISTING_CACHE_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._marker: int | None = None  # the outbox's newest id; None: unknown, cache nothing
        self._generation = 0  # bumped by every clear: a build that straddles one is not kept
        self._answers: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._building: dict[str, asyncio.Future[bytes]] = {}

    def see(self, marker: int | None) -> None:
        """The outbox's newest event id as last read (None: it could not be read)."""
        if marker != self._marker or marker is None:
            self.clear()
        self._marker = marker

    def note(self, event_id: int) -> None:
        """An event stream of this server read event `event_id`: answers older than it go
        before the stream sends it, so a client that lists on an event sees the change."""
        if self._marker is not None and event_id > self._marker:
            self._marker = event_id
            self.clear()

    def clear(self) -> None:
        self._generation += 1
        self._answers.clear()

    async def get(self, key: str, build: Callable[[], Awaitable[bytes]]) -> bytes:
        """The answer for `key`: kept, being built for another request, or built now. The build
        is a task of its own, so a client that goes away does not cancel it for the others."""
        kept = self._answers.get(key)
        if kept is not None and self._clock() - kept[1] < self.ttl:
            self._answers.move_to_end(key)
            return kept[0]
        task = self._building.get(key)
        if task is None:
            task = asyncio.ensure_future(self._build(key, build))
            self._building[key] = task
            task.add_done_callback(lambda done: self._built(key, done))
        return await asyncio.shield(task)

    def _built(self, key: str, task: asyncio.Future[bytes]) -> None:
        del self._building[key]
        if not task.cancelled():
            task.exception()  # retrieved: each waiting request raised it already

    async def _build(self, key: str, build: Callable[[], Awaitable[bytes]]) -> bytes:
        generation, started = self._generation, self._clock()
        answer = await build()
        if self._marker is not None and generation == self._generation:
            self._answers[key] = (answer, started)
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)
        return answer

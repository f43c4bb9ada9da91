"""Redis Streams through redis-py: the command consumer (a consumer group) and the event sink.

Commands are entries of a stream (field `body`: the JSON; optional `id`, `reply_to`,
`correlation_id`) read by the consumer group `batchctl`, created at the stream's start (id 0,
MKSTREAM) so that entries added before the first listener ran are still carried out. Each
listener is a consumer of its own name; it reads one entry at a time (`COUNT 1`), first its own
pending entries (after a repository outage), then those another consumer left pending longer
than `--claim-after` (XAUTOCLAIM: a listener that died), then new ones. An entry is
acknowledged (XACK) after the repository's commit; a dead letter or a retry's copy is added in
the same MULTI/EXEC as the XACK of the original.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Sequence

import redis

from batchctl.config import mask_url
from batchctl.listener.commands import CommandHandler, Incoming, Outcome, Slots, Verdict, backoff

log = logging.getLogger("batchctl.listen")

BLOCK_MS = 250  # how long one XREADGROUP waits for a new entry (and so for a stop request)
CLAIM_EVERY = 1.0  # seconds between two XAUTOCLAIM passes
RECONNECT_MAX = 5.0  # seconds: the longest wait between two connection attempts
PAUSE_POLL = 0.25  # seconds between two looks at a paused listener's condition


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=10,
        socket_keepalive=True,
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RedisCommands:
    def __init__(
        self,
        url: str,
        stream: str,
        group: str,
        consumer: str,
        handler: CommandHandler,
        slots: Slots,
        stopping: threading.Event,
        *,
        claim_after: float,
    ) -> None:
        self.client: Any = connect(url)  # redis-py's stubs type replies too loosely to index
        self.url = mask_url(url)
        self.stream = stream
        self.dead = f"{stream}.dead"
        self.group = group
        self.consumer = consumer
        self.handler = handler
        self.slots = slots
        self.stopping = stopping
        self.claim_after_ms = int(claim_after * 1000)
        self.own_pending = True  # read this consumer's pending entries before new ones
        self.next_claim = 0.0
        self.claim_cursor = "0-0"
        self.paused: str | None = None

    def serve(self) -> None:
        delay = 0.5
        connected = False
        while not self.stopping.is_set():
            try:
                self._create_group()
                if not connected:
                    log.info("connected to %s, consuming stream %s as %s/%s", self.url,
                             self.stream, self.group, self.consumer)
                connected, delay = True, 0.5
                self._consume()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                connected = False
                log.warning("broker %s unreachable (%s); retrying in %.1fs", self.url, exc, delay)
                self.own_pending = True
                if self.stopping.wait(delay):
                    break
                delay = min(delay * 2, RECONNECT_MAX)
        self._leave()

    def _create_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.client.xgroup_createconsumer(self.stream, self.group, self.consumer)

    def _leave(self) -> None:
        """A consumer with nothing pending leaves the group (one that dies leaves its entries
        for XAUTOCLAIM by another)."""
        try:
            pending = self.client.xpending_range(self.stream, self.group, "-", "+", 1,
                                                 consumername=self.consumer)
            if not pending:
                self.client.xgroup_delconsumer(self.stream, self.group, self.consumer)
        except redis.RedisError:
            pass

    def _consume(self) -> None:
        while not self.stopping.is_set():
            if self._paused():
                self.stopping.wait(PAUSE_POLL)
                continue
            entry, deliveries = self._next()
            if entry is None:
                continue
            self._process(entry, deliveries)

    def _paused(self) -> bool:
        if self.paused == "repository" and not self.handler.repository_reachable():
            return True
        full = self.slots.full()
        if full and self.paused is None:
            log.info("pausing consumption: --max-running reached")
        if not full and self.paused is not None:
            log.info("resuming: %s", "the repository is back" if self.paused == "repository"
                     else "below --max-running")
        self.paused = "full" if full else None
        return full

    def _next(self) -> tuple[tuple[str, dict[bytes, bytes]] | None, int]:
        """The next entry to carry out and how many times it was delivered."""
        if self.own_pending:
            found = self.client.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=1)
            entries = found[0][1] if found else []
            if entries:
                entry_id = _text(entries[0][0])
                assert entry_id is not None
                return (entry_id, entries[0][1]), self._deliveries(entry_id)
            self.own_pending = False
        if time.monotonic() >= self.next_claim:
            claimed = self.client.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_after_ms,
                start_id=self.claim_cursor, count=1,
            )
            self.claim_cursor = _text(claimed[0]) or "0-0"
            if claimed[1] and claimed[1][0][1] is not None:
                entry_id = _text(claimed[1][0][0])
                assert entry_id is not None
                log.info("claimed entry %s left pending by another consumer", entry_id)
                return (entry_id, claimed[1][0][1]), self._deliveries(entry_id)
            if self.claim_cursor in ("0-0", "0"):
                self.next_claim = time.monotonic() + CLAIM_EVERY
        found = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=1,
                                       block=BLOCK_MS)
        entries = found[0][1] if found else []
        if not entries:
            return None, 0
        entry_id = _text(entries[0][0])
        assert entry_id is not None
        fields = entries[0][1]
        return (entry_id, fields), int(fields.get(b"attempts", 0) or 0) + 1

    def _deliveries(self, entry_id: str) -> int:
        pending = self.client.xpending_range(self.stream, self.group, entry_id, entry_id, 1)
        return int(pending[0]["times_delivered"]) if pending else 1

    def _process(self, entry: tuple[str, dict[bytes, bytes]], deliveries: int) -> None:
        entry_id, fields = entry
        deliveries = max(deliveries, int(fields.get(b"attempts", 0) or 0) + 1)
        incoming = Incoming(
            body=fields.get(b"body", b""),
            message_id=_text(fields.get(b"id")) or None,
            deliveries=deliveries,
            reply_to=_text(fields.get(b"reply_to")),
            correlation_id=_text(fields.get(b"correlation_id")),
        )
        outcome = self.handler.handle(incoming)
        verdict = outcome.verdict
        if verdict == Verdict.PAUSE:
            log.warning("%s; pausing until the repository is back", outcome.describe())
            self.paused, self.own_pending = "repository", True  # the entry stays pending
            return
        pipe = self.client.pipeline(transaction=True)
        if verdict == Verdict.RETRY:
            wait = backoff(deliveries)
            log.info("%s; again in %.1fs (delivery %d)", outcome.describe(), wait, deliveries)
            if self.stopping.wait(wait):
                return  # left pending: another listener claims it
            copy = {k: v for k, v in fields.items() if k != b"attempts"}
            pipe.xadd(self.stream, {**copy, b"attempts": str(deliveries).encode()})
        elif verdict == Verdict.DEAD:
            dead = {k: v for k, v in fields.items() if k != b"attempts"}
            pipe.xadd(self.dead, {**dead, b"reason": outcome.reason.encode(), b"entry": entry_id.encode()})
            self._reply(pipe, incoming, outcome)
        else:
            self._reply(pipe, incoming, outcome)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.execute()
        if verdict != Verdict.RETRY:
            log.info("%s", outcome.describe())

    @staticmethod
    def _reply(pipe: Any, incoming: Incoming, outcome: Outcome) -> None:
        if not incoming.reply_to or outcome.reply is None:
            return
        fields = {"body": json.dumps(outcome.reply)}
        if incoming.correlation_id:
            fields["correlation_id"] = incoming.correlation_id
        pipe.xadd(incoming.reply_to, fields)  # type: ignore[arg-type]


class RedisEvents:
    """Adds events to a stream trimmed to about `maxlen` entries; XADD's reply is the broker's
    confirmation."""

    def __init__(self, url: str, stream: str, maxlen: int) -> None:
        self.client: Any = connect(url)
        self.stream = stream
        self.maxlen = maxlen

    def publish(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for _routing_key, body in items:
            pipe.xadd(self.stream, {"body": json.dumps(body)}, maxlen=self.maxlen, approximate=True)
        pipe.execute()

    def close(self) -> None:
        self.client.close()


__all__ = ["RedisCommands", "RedisEvents"]

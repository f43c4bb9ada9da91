"""RabbitMQ (AMQP 0-9-1) through kombu: the command consumer and the event sink.

The consumer is a kombu `ConsumerMixin`: connecting, reconnecting with backoff and setting up
the consumer are kombu's; `on_message` decodes nothing itself, hands the message to the
`CommandHandler`, then acknowledges. One message at a time (prefetch 1, acknowledged after the
repository's commit); while `--max-running` is reached or the repository is unreachable the
consumer is cancelled, so messages wait in the broker. Publishing (dead letters, replies,
events) uses publisher confirms: a publish returns once the broker has the message.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Sequence

from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.mixins import ConsumerMixin

from batchctl.config import mask_url
from batchctl.listener.commands import CommandHandler, Incoming, Outcome, Slots, Verdict, backoff

log = logging.getLogger("batchctl.listen")

ATTEMPTS_HEADER = "x-batchctl-attempts"  # deliveries so far of a message put back for a retry
REASON_HEADER = "x-batchctl-reason"  # why a dead letter is dead
POLL = 0.25  # seconds between two looks at the socket (and at a paused consumer's condition)
RECONNECT_MAX = 5.0  # seconds: the longest wait between two connection attempts


class Stopping(Exception):
    """The listener was asked to stop while it waited for the broker."""


def connect(url: str) -> Connection:
    return Connection(url, heartbeat=10, transport_options={"confirm_publish": True})


class AmqpCommands(ConsumerMixin):  # type: ignore[misc]
    def __init__(
        self, url: str, queue: str, handler: CommandHandler, slots: Slots, stopping: threading.Event
    ) -> None:
        self.connection = connect(url)
        self.url = mask_url(url)
        self.queue = Queue(queue, durable=True, routing_key=queue)
        self.dead = Queue(f"{queue}.dead", durable=True, routing_key=f"{queue}.dead")
        self.handler = handler
        self.slots = slots
        self.stopping = stopping
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.paused: str | None = None  # why the consumer is cancelled ("full", "repository")
        self.next_look = 0.0

    @property  # type: ignore[override]
    def should_stop(self) -> bool:
        return self.stopping.is_set()

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        if value:
            self.stopping.set()

    def serve(self) -> None:
        try:
            self.run(safety_interval=POLL)
        except Stopping:
            pass

    # -- kombu's hooks --------------------------------------------------------------------------

    def establish_connection(self) -> Any:
        """kombu's, with a stop check every second of the wait between attempts."""
        from contextlib import contextmanager

        @contextmanager
        def established() -> Any:
            with self.create_connection() as conn:
                conn.ensure_connection(
                    self.on_connection_error, None, interval_start=0.5, interval_step=1,
                    interval_max=RECONNECT_MAX, callback=self._check_stop,
                )
                yield conn

        return established()

    def _check_stop(self) -> None:
        if self.stopping.is_set():
            raise Stopping()

    def on_connection_error(self, exc: BaseException, interval: float) -> None:
        self._check_stop()
        log.warning("broker %s unreachable (%s); retrying in %.1fs", self.url, exc, interval)

    def on_connection_revived(self) -> None:
        log.info("connected to %s, consuming %s", self.url, self.queue.name)

    def get_consumers(self, _consumer_class: Any, channel: Any) -> list[Consumer]:
        self.dead.bind(channel).declare()
        self.producer = Producer(channel)
        self.consumer = Consumer(
            channel, queues=[self.queue], on_message=self.on_message, prefetch_count=1,
            auto_declare=True,
        )
        return [self.consumer]

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **kwargs: Any) -> None:
        if self.paused:
            self._cancel(self.paused)

    def on_iteration(self) -> None:
        """While paused, look every POLL seconds whether the consumer may resume."""
        if not self.paused or time.monotonic() < self.next_look:
            return
        self.next_look = time.monotonic() + POLL
        if self.paused == "repository" and not self.handler.repository_reachable():
            return
        if self.slots.full():
            self.paused = "full"
            return
        log.info("resuming: %s", "the repository is back" if self.paused == "repository"
                 else "below --max-running")
        self.paused = None
        assert self.consumer is not None
        self.consumer.consume()

    # -- messages -------------------------------------------------------------------------------

    def on_message(self, message: Any) -> None:
        if self.paused or self.slots.full():
            message.requeue()  # delivered as the consumer was being cancelled: back to the queue
            self._cancel(self.paused or "full")
            return
        properties = message.properties
        headers = message.headers or {}
        deliveries = int(headers.get(ATTEMPTS_HEADER, 0) or 0) + 1
        if "x-delivery-count" in headers:  # a quorum queue counts redeliveries itself
            deliveries = max(deliveries, int(headers["x-delivery-count"]) + 1)
        incoming = Incoming(
            body=message.body if isinstance(message.body, bytes) else str(message.body).encode(),
            message_id=properties.get("message_id"),
            deliveries=deliveries,
            reply_to=properties.get("reply_to"),
            correlation_id=properties.get("correlation_id"),
        )
        outcome = self.handler.handle(incoming)
        verdict = outcome.verdict
        if verdict == Verdict.PAUSE:
            log.warning("%s; pausing until the repository is back", outcome.describe())
            self._cancel("repository")
            message.requeue()
            return
        if verdict == Verdict.RETRY:
            wait = backoff(deliveries)
            log.info("%s; again in %.1fs (delivery %d)", outcome.describe(), wait, deliveries)
            if self.stopping.wait(wait):
                message.requeue()
                return
            self._publish(message.body, self.queue.name, message, {ATTEMPTS_HEADER: deliveries})
            message.ack()
            return
        if verdict == Verdict.DEAD:
            self._publish(message.body, self.dead.name, message, {REASON_HEADER: outcome.reason})
        self._reply(incoming, outcome)
        log.info("%s", outcome.describe())
        if outcome.execution is not None and verdict == Verdict.DONE and self.slots.full():
            self._cancel("full")  # before the ack: no next message is sent meanwhile
        message.ack()

    def _publish(self, body: bytes, queue: str, original: Any, headers: dict[str, Any]) -> None:
        """A copy of `original` (its properties kept) to `queue`, confirmed by the broker."""
        assert self.producer is not None
        properties = original.properties
        self.producer.publish(
            body,
            exchange="",
            routing_key=queue,
            headers={**(original.headers or {}), **headers},
            content_type=original.content_type or "application/json",
            content_encoding=original.content_encoding or "utf-8",
            delivery_mode=2,
            **{k: properties[k] for k in ("message_id", "reply_to", "correlation_id") if properties.get(k)},
        )

    def _reply(self, incoming: Incoming, outcome: Outcome) -> None:
        if not incoming.reply_to or outcome.reply is None:
            return
        assert self.producer is not None
        self.producer.publish(
            json.dumps(outcome.reply).encode(),
            exchange="",
            routing_key=incoming.reply_to,
            correlation_id=incoming.correlation_id,
            content_type="application/json",
            content_encoding="utf-8",
        )

    def _cancel(self, why: str) -> None:
        if self.paused is None:
            log.info("pausing consumption: %s", "--max-running reached" if why == "full" else
                     "the repository is unreachable")
        self.paused = why
        self.next_look = time.monotonic() + POLL
        if self.consumer is not None:
            self.consumer.cancel()


class AmqpEvents:
    """Publishes events to a durable topic exchange, each confirmed by the broker."""

    def __init__(self, url: str, exchange: str) -> None:
        self.url = url
        self.exchange = Exchange(exchange, type="topic", durable=True)
        self.connection: Connection | None = None
        self.producer: Producer | None = None

    def publish(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        if self.producer is None:
            self.connection = connect(self.url)
            self.connection.connect()
            channel = self.connection.channel()
            self.exchange.bind(channel).declare()
            self.producer = Producer(channel, exchange=self.exchange)
        try:
            for routing_key, body in items:
                self.producer.publish(
                    json.dumps(body).encode(), routing_key=routing_key, delivery_mode=2,
                    message_id=str(body["event_id"]), content_type="application/json",
                    content_encoding="utf-8",
                )
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.release()
            except Exception:  # pragma: no cover - a connection already gone
                pass
        self.connection = None
        self.producer = None


__all__ = ["AmqpCommands", "AmqpEvents", "Stopping"]

"""`batchctl listen`: the service that runs the command consumer and the event publisher.

It registers as a worker of kind "listen" with a heartbeat (so `batchctl workers` lists it),
runs the commands in the main thread and the events in another, and ends within seconds of
SIGTERM or Ctrl-C. It never runs job code: executions are launched detached.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from batchctl.config import mask_url
from batchctl.errors import EnvironmentProblem, UsageError

log = logging.getLogger("batchctl.listen")

AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
REDIS_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class ListenOptions:
    url: str
    queue: str = "batchctl.commands"
    group: str = "batchctl"
    max_running: int | None = None
    commands: bool = True
    events: bool = True
    events_to: str = "batchctl.events"
    events_maxlen: int = 100_000
    claim_after: float = 60.0
    max_deliveries: int = 5


def broker_kind(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme in AMQP_SCHEMES:
        return "amqp"
    if scheme in REDIS_SCHEMES:
        return "redis"
    raise UsageError(f"unknown broker URL {mask_url(url)!r}: amqp://... (RabbitMQ) or redis://...")


def destination(url: str, name: str) -> str:
    """The publishing cursor's key: the broker's address without credentials, and the name."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path or '/'}#{name}"[:255]


def listen(batch: Any, options: ListenOptions) -> None:
    """Serve until SIGTERM or Ctrl-C."""
    kind = broker_kind(options.url)
    try:
        if kind == "amqp":
            import kombu  # noqa: F401
        else:
            import redis  # noqa: F401
    except ImportError as exc:
        raise EnvironmentProblem(
            f"batchctl listen needs the mq extra: pip install 'batchctl[mq]' ({exc})"
        ) from None
    batch.repository  # connect (and migrate) before anything else
    stopping = threading.Event()
    with _service(batch), _signals(stopping, batch):
        threads = []
        if options.events:
            threads.append(threading.Thread(
                target=_events(batch, options, kind, stopping).serve, name="batchctl-events",
                daemon=True,
            ))
        for thread in threads:
            thread.start()
        if options.commands:
            _commands(batch, options, kind, stopping).serve()
        else:
            stopping.wait()
        stopping.set()
        for thread in threads:
            thread.join(timeout=5)
    log.info("listener stopped")


def _commands(batch: Any, options: ListenOptions, kind: str, stopping: threading.Event) -> Any:
    from batchctl.host import host_name
    from batchctl.listener.commands import CommandHandler, Slots

    slots = Slots(batch, options.max_running)
    handler = CommandHandler(batch, max_deliveries=options.max_deliveries, slots=slots)
    if kind == "amqp":
        from batchctl.listener.amqp import AmqpCommands

        return AmqpCommands(options.url, options.queue, handler, slots, stopping)
    from batchctl.listener.streams import RedisCommands

    consumer = f"{host_name()}-{os.getpid()}"
    return RedisCommands(
        options.url, options.queue, options.group, consumer, handler, slots, stopping,
        claim_after=options.claim_after,
    )


def _events(batch: Any, options: ListenOptions, kind: str, stopping: threading.Event) -> Any:
    from batchctl.listener.events import EventPublisher

    sink: Any
    if kind == "amqp":
        from batchctl.listener.amqp import AmqpEvents

        sink = AmqpEvents(options.url, options.events_to)
    else:
        from batchctl.listener.streams import RedisEvents

        sink = RedisEvents(options.url, options.events_to, options.events_maxlen)
    return EventPublisher(batch, sink, destination(options.url, options.events_to), stopping)


class _service:
    """Registered as a worker of kind "listen" with a heartbeat while the block runs."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch
        self.done = threading.Event()

    def __enter__(self) -> None:
        from batchctl.host import host_name

        repository = self.batch.repository
        self.worker_id = repository.register_worker(host_name(), os.getpid(), "listen")
        self.thread = threading.Thread(target=self._beat, name="batchctl-heartbeat", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        interval = self.batch.config.heartbeat_interval
        while not self.done.wait(interval):
            try:
                self.batch.repository.worker_heartbeat(self.worker_id, None)
            except Exception as exc:  # an outage: the listener pauses itself, the beat goes on
                log.warning("heartbeat failed: %s", exc)

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join(timeout=2)
        try:
            self.batch.repository.retire_worker(self.worker_id)
        except Exception as exc:
            log.warning("could not retire the listener's worker row: %s", exc)


class _signals:
    """SIGTERM and Ctrl-C set `stopping` (the one place the listener handles signals)."""

    def __init__(self, stopping: threading.Event, batch: Any = None) -> None:
        self.stopping = stopping
        self.batch = batch  # told to stop waiting for an unreachable repository
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            log.info("%s: stopping", signal.Signals(signum).name)
            self.stopping.set()
            if self.batch is not None:
                self.batch.stop_waiting_for_repository()

        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, handler)

    def __exit__(self, *_: object) -> None:
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)


__all__ = ["ListenOptions", "broker_kind", "destination", "listen"]

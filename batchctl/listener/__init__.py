"""The message trigger (`batchctl listen`): commands from RabbitMQ or Redis Streams, events out.

Modules: `commands` (decode a command message, carry it out through `Batch`, say what the broker
should do with it), `amqp` (kombu: consumer and event sink), `streams` (redis-py: consumer group
and event sink), `events` (the outbox publisher), `service` (the process: heartbeat, signals,
threads). kombu and redis are imported only here, by `listen` (the `mq` extra).
"""

from batchctl.listener.service import ListenOptions, listen

__all__ = ["ListenOptions", "listen"]

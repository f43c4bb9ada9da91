"""The message listener's pure parts, and that only `listen` imports the broker libraries."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from batchctl.listener.commands import backoff
from batchctl.listener.events import contiguous, event_body, routing_key
from batchctl.listener.service import broker_kind, destination
from batchctl.model import Event, Status, utcnow


def test_other_commands_do_not_import_kombu_or_redis(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from batchctl import cli\n"
        "for args in (['--help'], ['--db', sys.argv[1], 'jobs', '--json'], ['--db', sys.argv[1], 'history']):\n"
        "    try:\n        cli.main(args)\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kombu', 'redis', 'amqp')"
        " or m.startswith('batchctl.listener')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, f"sqlite:///{tmp_path / 'r.db'}"], capture_output=True,
        text=True, check=True, timeout=60, cwd=tmp_path,
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"


def event(event_id: int, *, age: float = 0.0, step: str | None = None) -> Event:
    return Event(id=event_id, execution_id=1, job_name="eod", status=Status.COMPLETED,
                 at=utcnow() - timedelta(seconds=age), step_name=step,
                 step_execution_id=3 if step else None)


def test_events_stop_at_a_fresh_gap_and_pass_an_old_one() -> None:
    assert [e.id for e in contiguous([event(1), event(2), event(4)], 0)] == [1, 2]
    assert [e.id for e in contiguous([event(1), event(4, age=10)], 0)] == [1, 4]
    assert contiguous([event(7)], 5) == []


def test_routing_keys_and_bodies() -> None:
    assert routing_key(event(1)) == "eod.completed"
    assert routing_key(event(1, step="load")) == "eod.step.completed"
    body = event_body(event(1, step="load"))
    assert body["event_id"] == 1 and body["step"] == "load" and body["status"] == "COMPLETED"
    assert body["at"].endswith("+00:00")


def test_broker_urls_and_destinations() -> None:
    assert broker_kind("amqp://u:p@h//") == "amqp" and broker_kind("redis://h:6379/0") == "redis"
    assert destination("amqp://u:secret@h:5672//", "batchctl.events") == "amqp://h:5672//#batchctl.events"
    assert backoff(1) == 0.5 and backoff(100) == 30.0

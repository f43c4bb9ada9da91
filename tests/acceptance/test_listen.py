"""`batchctl listen` (issue 13) against the machine's real RabbitMQ and Redis, as a real process.

Each test uses queues, streams and an event exchange of its own (a uuid in the name) and a
repository of its own. Tests wait for states (of the repository, a queue, a stream) with a
deadline, never for a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from batchctl.config import Config
from batchctl.model import Status
from batchctl.operator import Batch
from tests.conftest import wait_for

kombu = pytest.importorskip("kombu")
redis = pytest.importorskip("redis")

BATCHCTL = str(Path(sys.executable).parent / "batchctl")
AMQP_URL = os.environ.get("BATCHCTL_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("BATCHCTL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEADLINE = 60.0

JOBS = '''
import os
import time
from pathlib import Path

from batchctl import Job

WORK = Path(os.environ["LISTEN_WORK"])

quick = Job("quick", params={"n": int})


@quick.tasklet
def run(ctx):
    with (WORK / "runs.txt").open("a") as out:
        out.write(f"{ctx.params['n']}\\n")
    (WORK / f"env-{ctx.params['n']}.json").write_text(__import__("json").dumps(dict(os.environ)))


slow = Job("slow", params={"n": int})


@slow.tasklet
def hold(ctx):
    """Runs until the file release-N exists (or a stop): a test decides when it ends."""
    deadline = time.monotonic() + 120
    while not (WORK / f"release-{ctx.params['n']}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
        yield


failing = Job("failing")


@failing.tasklet
def boom(ctx):
    raise RuntimeError("boom")
'''


# -- brokers ------------------------------------------------------------------------------------


class Amqp:
    kind = "amqp"

    def __init__(self, url: str = AMQP_URL) -> None:
        self.url = url
        self.connection = kombu.Connection(AMQP_URL)
        self.channel = self.connection.channel()
        self.names: list[str] = []

    def send(self, body: Any, message_id: str | None = None, queue: str = "", **properties: Any) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.declare(queue)
        producer = kombu.Producer(self.channel)
        if message_id:
            properties["message_id"] = message_id
        producer.publish(raw, exchange="", routing_key=queue, delivery_mode=2,
                         content_type="application/json", content_encoding="utf-8", **properties)

    def declare(self, queue: str) -> None:
        if queue not in self.names:
            kombu.Queue(queue, durable=True, routing_key=queue).bind(self.channel).declare()
            self.names.append(queue)

    def take(self, queue: str) -> list[tuple[bytes, dict[str, Any], dict[str, Any]]]:
        """Every message now in `queue` (acknowledged): body, headers, properties."""
        self.declare(queue)
        simple = kombu.Queue(queue, durable=True, routing_key=queue).bind(self.channel)
        found = []
        while True:
            message = simple.get(no_ack=True, accept=["json", "text/plain", "application/data"])
            if message is None:
                return found
            found.append((message.body, message.headers or {}, message.properties))

    def bind_events(self, exchange: str, key: str) -> str:
        queue = f"events-{uuid.uuid4().hex[:8]}"
        ex = kombu.Exchange(exchange, type="topic", durable=True)
        ex.bind(self.channel).declare()
        kombu.Queue(queue, ex, routing_key=key, durable=True).bind(self.channel).declare()
        self.names.append(queue)
        return queue

    def close(self) -> None:
        for name in self.names:
            try:
                self.channel.queue_delete(name)
            except Exception:
                pass
        self.connection.release()


class Redis:
    kind = "redis"

    def __init__(self, url: str = REDIS_URL) -> None:
        self.url = url
        self.client = redis.Redis.from_url(REDIS_URL)
        self.names: list[str] = []

    def send(self, body: Any, message_id: str | None = None, queue: str = "", **fields: Any) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        entry: dict[str, Any] = {"body": raw, **fields}
        if message_id:
            entry["id"] = message_id
        self.names.append(queue)
        self.client.xadd(queue, entry)

    def take(self, stream: str) -> list[tuple[bytes, dict[str, Any], dict[str, Any]]]:
        self.names.append(stream)
        entries = self.client.xrange(stream)
        if entries:
            self.client.xdel(stream, *[entry_id for entry_id, _ in entries])
        return [(f[b"body"], {k.decode(): v.decode() for k, v in f.items()}, {}) for _, f in entries]

    def close(self) -> None:
        for name in set(self.names):
            self.client.delete(name, f"{name}.dead")
        self.client.close()


@pytest.fixture(params=["amqp", "redis"])
def broker(request: pytest.FixtureRequest) -> Iterator[Any]:
    found = Amqp() if request.param == "amqp" else Redis()
    yield found
    found.close()


# -- the project and the listener ---------------------------------------------------------------


@pytest.fixture(params=["sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite unless a test asks for both (the ones where the repository's transaction matters)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'repository.db'}"
    return str(request.getfixturevalue("postgres_url"))


BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.fixture
def project(tmp_path: Path, jobs_dir: Path, work: Path, database_url: str) -> Config:
    (jobs_dir / "listenjobs.py").write_text(JOBS)
    return Config(database_url=database_url, jobs_dir=jobs_dir, log_dir=tmp_path / "logs",
                  heartbeat_interval=0.5, heartbeat_timeout=10.0)


@pytest.fixture
def batch(project: Config, work: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Batch]:
    """The test's own view of the repository; it may load the job modules (they read the
    work folder from the environment, as the listener's processes do)."""
    monkeypatch.setenv("LISTEN_WORK", str(work))
    with Batch(project) as opened:
        opened.upgrade_schema()
        yield opened


@pytest.fixture
def names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {"queue": f"test.{tag}.commands", "events": f"test.{tag}.events"}


class Listeners:
    def __init__(self, project: Config, work: Path, names: dict[str, str], tmp_path: Path) -> None:
        self.project, self.work, self.names, self.tmp_path = project, work, names, tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, broker_url: str, *args: str, env: dict[str, str] | None = None,
              events: bool = False, url_from_env: bool = False) -> subprocess.Popen[bytes]:
        environment = {
            **os.environ,
            "BATCHCTL_DATABASE_URL": self.project.database_url,
            "BATCHCTL_JOBS_DIR": str(self.project.jobs_dir),
            "BATCHCTL_LOG_DIR": str(self.project.log_dir),
            "BATCHCTL_HEARTBEAT_INTERVAL": "0.5",
            "BATCHCTL_HEARTBEAT_TIMEOUT": "10",
            "LISTEN_WORK": str(self.work),
            **(env or {}),
        }
        environment.pop("BATCHCTL_CONFIG", None)
        command = [BATCHCTL, "listen", *([] if url_from_env else [broker_url]), "--queue", self.names["queue"],
                   "--events-to", self.names["events"], *args]
        if not events and "--events-only" not in args:
            command.append("--commands-only")
        with (self.tmp_path / f"listen-{len(self.processes)}.log").open("wb") as log:
            process = subprocess.Popen(command, env=environment, stdout=log,
                                       stderr=subprocess.STDOUT, cwd=self.tmp_path)
        self.processes.append(process)
        return process

    def log(self, index: int = -1) -> str:
        return (self.tmp_path / f"listen-{index % len(self.processes)}.log").read_text()

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def listeners(project: Config, work: Path, names: dict[str, str], tmp_path: Path, batch: Batch) -> Iterator[Listeners]:
    found = Listeners(project, work, names, tmp_path)
    yield found
    found.stop_all()


def runs(work: Path) -> list[str]:
    path = work / "runs.txt"
    return path.read_text().split() if path.exists() else []


def ended(batch: Batch, count: int, status: Status = Status.COMPLETED) -> Callable[[], bool]:
    return lambda: len(batch.history(statuses=[status], limit=None)) >= count


def start(n: int, job: str = "quick") -> dict[str, Any]:
    return {"command": "start", "job": job, "params": {"n": n}}


# -- commands in: exactly once ----------------------------------------------------------------------


@BOTH_DATABASES
def test_a_message_delivered_twice_starts_one_execution(broker: Any, listeners: Listeners, batch: Batch,
                                                        names: dict[str, str], work: Path) -> None:
    queue = names["queue"]
    broker.send(start(1), "msg-1", queue=queue)
    broker.send(start(1), "msg-1", queue=queue)  # the same message again
    broker.send({**start(2), "id": "msg-2"}, queue=queue)  # the id in the body
    listeners.start(broker.url)
    wait_for(ended(batch, 2), DEADLINE)
    wait_for(lambda: "duplicate" in listeners.log(), DEADLINE)
    executions = batch.history(limit=None)
    assert sorted(e.trigger_detail for e in executions) == ["msg-1", "msg-2"]
    assert {e.trigger for e in executions} == {"mq"}
    assert sorted(runs(work)) == ["1", "2"]
    assert "guest:guest" not in listeners.log()


def test_a_message_without_id_runs_and_is_logged_as_such(broker: Any, listeners: Listeners, batch: Batch,
                                                         names: dict[str, str], work: Path) -> None:
    broker.send(start(7), queue=names["queue"])
    listeners.start(broker.url)
    wait_for(ended(batch, 1), DEADLINE)
    assert "(no id)" in listeners.log()


@BOTH_DATABASES
@pytest.mark.parametrize("fault", ["after-commit", "before-commit"])
def test_a_listener_killed_around_the_commit_runs_the_job_exactly_once(
    broker: Any, listeners: Listeners, batch: Batch, names: dict[str, str], work: Path, fault: str
) -> None:
    broker.send(start(3), "crash-1", queue=names["queue"])
    first = listeners.start(broker.url, "--claim-after", "0.5",
                            env={"BATCHCTL_LISTEN_FAULT": fault})
    first.wait(timeout=DEADLINE)
    assert first.returncode == -signal.SIGKILL
    expected = 1 if fault == "after-commit" else 0
    assert len(batch.history(limit=None)) == expected
    listeners.start(broker.url, "--claim-after", "0.5")
    wait_for(ended(batch, 1), DEADLINE)
    if fault == "after-commit":
        wait_for(lambda: "duplicate" in listeners.log(), DEADLINE)
    else:
        wait_for(lambda: "crash-1: execution" in listeners.log(), DEADLINE)
    assert len(batch.history(limit=None)) == 1
    assert runs(work) == ["3"]


def test_bad_messages_are_dead_lettered_while_good_ones_run(
    broker: Any, listeners: Listeners, batch: Batch, names: dict[str, str], work: Path
) -> None:
    queue = names["queue"]
    broker.send(b"{not json", "bad-1", queue=queue)
    broker.send({"command": "explode"}, "bad-2", queue=queue)
    broker.send(start(1, job="nosuchjob"), "bad-3", queue=queue)
    broker.send({"command": "start", "job": "quick", "params": {"n": "many"}}, "bad-4", queue=queue)
    broker.send(start(5), "good-1", queue=queue)
    listeners.start(broker.url)
    wait_for(ended(batch, 1), DEADLINE)
    dead: list[Any] = []
    wait_for(lambda: dead.extend(broker.take(f"{queue}.dead")) or len(dead) >= 4, DEADLINE)
    reasons = [headers.get("x-batchctl-reason") or headers.get("reason") for _, headers, _ in dead]
    assert len(dead) == 4
    assert "not JSON" in reasons[0]
    assert "unknown command" in reasons[1]
    assert "nosuchjob" in reasons[2]
    assert "n" in reasons[3]
    assert dead[0][0] in (b"{not json", "{not json")
    assert runs(work) == ["5"]


def test_stop_restart_abandon_and_their_refusals_with_replies(
    broker: Any, listeners: Listeners, batch: Batch, names: dict[str, str], work: Path
) -> None:
    queue, replies = names["queue"], f"{names['queue']}.replies"
    reply: dict[str, Any] = (
        {"reply_to": replies, "correlation_id": "c-1"} if broker.kind == "amqp"
        else {"reply_to": replies, "correlation_id": "c-1"}
    )
    if broker.kind == "amqp":
        broker.declare(replies)
    listeners.start(broker.url)
    broker.send(start(1, job="slow"), "s-1", queue=queue, **reply)
    execution = wait_for(lambda: next(iter(batch.history("slow", limit=1)), None), DEADLINE)
    broker.send({"command": "stop", "target": str(execution.id)}, "s-2", queue=queue, **reply)
    wait_for(lambda: batch.execution(execution.id).status == Status.STOPPED, DEADLINE)
    broker.send({"command": "restart", "target": "slow"}, "s-3", queue=queue, **reply)
    restarted = wait_for(
        lambda: next((e for e in batch.history("slow", limit=None) if e.id != execution.id), None), DEADLINE
    )
    assert restarted.resumed_from == execution.id and restarted.trigger_detail == "s-3"
    (work / "release-1").touch()
    wait_for(lambda: batch.execution(restarted.id).status == Status.COMPLETED, DEADLINE)
    broker.send({"command": "abandon", "target": str(execution.id)}, "s-4", queue=queue, **reply)  # resumed: refused
    broker.send({"command": "stop", "target": str(restarted.id)}, "s-5", queue=queue, **reply)  # not live
    broker.send({"command": "restart", "target": str(restarted.id)}, "s-6", queue=queue, **reply)  # completed
    got: list[Any] = []
    wait_for(lambda: got.extend(broker.take(replies)) or len(got) >= 6, DEADLINE)
    bodies = [json.loads(body) for body, _, _ in got]
    assert [b["ok"] for b in bodies] == [True, True, True, False, False, False]
    assert bodies[1]["execution"]["status"] == "STOPPING"
    assert bodies[2]["execution"]["id"] == restarted.id
    assert [b.get("exit_code") for b in bodies[3:]] == [4, 4, 4]
    if broker.kind == "amqp":
        assert all(props.get("correlation_id") == "c-1" for _, _, props in got)
    else:
        assert all(headers.get("correlation_id") == "c-1" for _, headers, _ in got)
    dead = broker.take(f"{queue}.dead")
    assert len(dead) == 3
    # an abandon that is allowed
    failed_start = start(9)
    failed_start["job"] = "failing"
    failed_start["params"] = {}
    broker.send(failed_start, "s-7", queue=queue)
    failed = wait_for(lambda: next(iter(batch.history("failing", statuses=["FAILED"], limit=1)), None), DEADLINE)
    broker.send({"command": "abandon", "target": failed.id}, "s-8", queue=queue)
    wait_for(lambda: batch.execution(failed.id).status == Status.ABANDONED, DEADLINE)


def test_max_running_keeps_messages_in_the_broker(
    broker: Any, listeners: Listeners, batch: Batch, names: dict[str, str], work: Path
) -> None:
    queue = names["queue"]
    for n in range(4):
        broker.send(start(n, job="slow"), f"m-{n}", queue=queue)
    listeners.start(broker.url, "--max-running", "2")
    wait_for(lambda: len(batch.history(limit=None)) == 2, DEADLINE)
    wait_for(lambda: "pausing consumption" in listeners.log(), DEADLINE)
    assert len(batch.history(limit=None)) == 2
    if broker.kind == "amqp":  # the other two wait in the queue, none held unacknowledged
        declared = broker.channel.queue_declare(queue, passive=True)
        assert declared.message_count == 2
    else:
        info = broker.client.xinfo_groups(queue)[0]
        assert info["pending"] == 0 and info["lag"] == 2
    for n in range(4):
        (work / f"release-{n}").touch()
    wait_for(ended(batch, 4), DEADLINE)
    assert len(batch.history(limit=None)) == 4


def test_sigterm_ends_listen_within_ten_seconds_and_it_is_a_listed_service(
    broker: Any, listeners: Listeners, batch: Batch
) -> None:
    process = listeners.start(broker.url, events=True)
    wait_for(lambda: any(w.kind == "listen" for w in batch.workers()), DEADLINE)
    wait_for(lambda: "connected to" in listeners.log(), DEADLINE)
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=10)
    assert time.monotonic() - began < 10
    assert process.returncode == 0
    assert not any(w.kind == "listen" for w in batch.workers())
    assert "guest:guest" not in listeners.log()


def test_no_secret_of_the_listener_reaches_the_job(
    broker: Any, listeners: Listeners, batch: Batch, names: dict[str, str], work: Path, tmp_path: Path
) -> None:
    broker.send(start(11), "env-1", queue=names["queue"])
    # The URL given through the environment, as a secret would be, not on the command line.
    proc = listeners.start(broker.url, env={"BATCHCTL_LISTEN_URL": broker.url}, url_from_env=True)
    wait_for(ended(batch, 1), DEADLINE)
    env = json.loads((work / "env-11.json").read_text())
    assert "BATCHCTL_LISTEN_URL" not in env
    assert not any(broker.url in value for value in env.values())
    assert proc.poll() is None


# -- events out ---------------------------------------------------------------------------------


def test_a_completed_event_is_published(
    broker: Any, listeners: Listeners, batch: Batch, names: dict[str, str], work: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LISTEN_WORK", str(work))
    if broker.kind == "amqp":
        queue = broker.bind_events(names["events"], "quick.completed")
    listeners.start(broker.url, events=True)
    execution = batch.start("quick", {"n": 4})
    assert execution.status == Status.COMPLETED

    def completed() -> dict[str, Any] | None:
        if broker.kind == "amqp":
            bodies = [json.loads(body) for body, _, _ in broker.take(queue)]
        else:
            bodies = [json.loads(f[b"body"]) for _, f in broker.client.xrange(names["events"])]
            broker.names.append(names["events"])
        return next((b for b in bodies if b["status"] == "COMPLETED" and b["step"] is None), None)

    body = wait_for(completed, DEADLINE)
    assert body["execution_id"] == execution.id and body["job"] == "quick"
    assert body["at"].endswith("+00:00") and isinstance(body["event_id"], int)
    from batchctl.repository.messages import MessageLedger

    wait_for(lambda: MessageLedger(batch.repository).cursor(_destination(broker.url, names["events"]))
             >= body["event_id"], DEADLINE)


def _destination(url: str, name: str) -> str:
    from batchctl.listener.service import destination

    return destination(url, name)


# -- the broker's connection lost -----------------------------------------------------------------


class Proxy:
    """A TCP proxy between the listener and the broker that can cut every connection and refuse
    new ones for a while."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.refuse_until = 0.0
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.accepted = 0
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if time.monotonic() < self.refuse_until or self.closed:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, upstream]
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self, refuse_for: float) -> None:
        self.refuse_until = time.monotonic() + refuse_for
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self.sockets.clear()

    def close(self) -> None:
        self.closed = True
        self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join(timeout=5)
        self.cut(0)


def test_connection_loss_and_recovery_through_a_proxy(
    broker: Any, listeners: Listeners, batch: Batch, names: dict[str, str], work: Path
) -> None:
    proxy = Proxy(5672 if broker.kind == "amqp" else 6379)
    try:
        url = (f"amqp://guest:guest@127.0.0.1:{proxy.port}//" if broker.kind == "amqp"
               else f"redis://127.0.0.1:{proxy.port}/0")
        listeners.start(url, events=True)
        broker.send(start(1), "p-1", queue=names["queue"])
        wait_for(ended(batch, 1), DEADLINE)
        proxy.cut(refuse_for=3)
        broker.send(start(2), "p-2", queue=names["queue"])  # sent while the listener is cut off
        broker.send(start(2), "p-2", queue=names["queue"])
        wait_for(lambda: "unreachable" in listeners.log(), DEADLINE)
        wait_for(ended(batch, 2), DEADLINE)
        assert sorted(runs(work)) == ["1", "2"]
        assert proxy.accepted >= 2
        assert "guest:guest" not in listeners.log()
        assert len(batch.history(limit=None)) == 2
    finally:
        proxy.close()


# -- Redis: a dead consumer's entries ------------------------------------------------------------------


def test_redis_pending_entries_of_a_dead_consumer_are_claimed_once(
    listeners: Listeners, batch: Batch, names: dict[str, str], work: Path
) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    stream = names["queue"]
    try:
        client.xgroup_create(stream, "batchctl", id="0", mkstream=True)
        client.xadd(stream, {"body": json.dumps(start(21)), "id": "claim-1"})
        client.xadd(stream, {"body": json.dumps(start(22)), "id": "claim-2"})
        # A consumer that read both and died before acknowledging them.
        client.xreadgroup("batchctl", "dead-consumer", {stream: ">"}, count=2)
        listeners.start(REDIS_URL, "--claim-after", "0.5")
        wait_for(ended(batch, 2), DEADLINE)
        wait_for(lambda: client.xpending(stream, "batchctl")["pending"] == 0, DEADLINE)
        assert sorted(runs(work)) == ["21", "22"]
        assert "claimed entry" in listeners.log()
    finally:
        client.delete(stream, f"{stream}.dead")
        client.close()

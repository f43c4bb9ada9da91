"""`batchctl listen` (issue 13): message -> execution row latency, and a burst of start messages.

For each broker (RabbitMQ through kombu, Redis Streams through redis-py) and repository:

- latency: one start message at a time, from the publish to the execution row's `created_at`
  (the same host's clock), p50 and p95 over the runs; target p95 <= 200 ms.
- burst: N start messages (100; 500 with `--long`) of a trivial job through a listener with
  `--max-running 4`, until every execution COMPLETED, each exactly once; beside the same N
  `batchctl start --detach` run one after another from a loop (the shell's way), also waiting
  until all completed.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
import uuid
from typing import Any, Iterator

from common import Context, Row, at_most, batchctl_command, bench, clean_env, holds, until

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
REDIS_URL = "redis://127.0.0.1:6379/0"
LATENCY_RUNS = 30
QUICK_LATENCY_RUNS = 10
DEADLINE = 900.0

JOBS = '''
from batchctl import Job

trivial = Job("trivial", params={"i": int})


@trivial.tasklet
def run(ctx):
    pass
'''


class _Broker:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.url = AMQP_URL if kind == "amqp" else REDIS_URL
        self.queue = f"bench.{uuid.uuid4().hex[:8]}.commands"
        if kind == "amqp":
            import kombu

            self.connection = kombu.Connection(AMQP_URL)
            self.producer = kombu.Producer(self.connection.channel())
            kombu.Queue(self.queue, durable=True, routing_key=self.queue).bind(
                self.producer.channel).declare()
        else:
            import redis

            self.client = redis.Redis.from_url(REDIS_URL)

    def send(self, body: dict[str, Any], message_id: str) -> None:
        raw = json.dumps(body).encode()
        if self.kind == "amqp":
            self.producer.publish(raw, exchange="", routing_key=self.queue, message_id=message_id,
                                  delivery_mode=2, content_type="application/json",
                                  content_encoding="utf-8")
        else:
            self.client.xadd(self.queue, {"body": raw, "id": message_id})

    def close(self) -> None:
        if self.kind == "amqp":
            for name in (self.queue, f"{self.queue}.dead"):
                self.producer.channel.queue_delete(name)
            self.connection.release()
        else:
            self.client.delete(self.queue, f"{self.queue}.dead")
            self.client.close()


def _env(ctx: Context, database: str, name: str) -> tuple[dict[str, str], str]:
    url = ctx.repository_url(database, name)
    jobs = ctx.path(f"{name}-{database}-jobs")
    jobs.mkdir(exist_ok=True)
    (jobs / "mq_jobs.py").write_text(JOBS)
    env = clean_env(BATCHCTL_DATABASE_URL=url, BATCHCTL_JOBS_DIR=str(jobs),
                    BATCHCTL_LOG_DIR=str(ctx.path(f"{name}-{database}-logs")),
                    BATCHCTL_HEARTBEAT_INTERVAL="2", BATCHCTL_HEARTBEAT_TIMEOUT="120")
    return env, url


def _until(condition: Any, interval: float = 0.005) -> Any:
    return until(condition, interval=interval, deadline=DEADLINE)


def _listener(ctx: Context, env: dict[str, str], broker: _Broker, *args: str) -> subprocess.Popen[bytes]:
    log = ctx.path(f"listen-{broker.queue}.log").open("wb")
    return subprocess.Popen([*batchctl_command(), "listen", broker.url, "--queue", broker.queue,
                             "--commands-only", *args], env=env, cwd=ctx.workdir, stdout=log,
                            stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _latest_with(batch: Any, detail: str) -> Any:
    latest = batch.repository.latest_execution("trivial")
    return latest if latest is not None and latest.trigger_detail == detail else None


@bench("mq", help="batchctl listen: message -> execution latency; a burst of start messages")
def mq(ctx: Context) -> Iterator[Row]:
    from batchctl.config import Config
    from batchctl.operator import Batch

    runs = QUICK_LATENCY_RUNS if ctx.quick else LATENCY_RUNS
    burst = 500 if ctx.long else 100
    for kind in ("amqp", "redis"):
        for database in ctx.databases:
            env, url = _env(ctx, database, f"mq-{kind}")
            batch = Batch(Config(database_url=url, jobs_dir=ctx.workdir, log_dir=ctx.workdir))
            batch.upgrade_schema()
            broker = _Broker(kind)
            listener = _listener(ctx, env, broker, "--max-running", "4")
            try:
                _until(lambda: any(w.kind == "listen" for w in batch.workers()), 0.05)
                samples = []
                for i in range(runs):
                    sent = time.time()
                    broker.send({"command": "start", "job": "trivial", "params": {"i": -1 - i}}, f"lat-{i}")
                    row = _until(lambda: _latest_with(batch, f"lat-{i}"))
                    samples.append(row.created_at.timestamp() - sent)
                    _until(lambda: not batch.repository.live_executions("trivial"), 0.02)
                samples.sort()
                p50 = statistics.median(samples)
                p95 = samples[min(len(samples) - 1, int(round(0.95 * (len(samples) - 1))))]
                yield Row(f"mq {kind}: message -> execution row p50", database, p50, None,
                          note=f"{runs} messages one at a time")
                yield Row(f"mq {kind}: message -> execution row p95", database, p95, None,
                          at_most(0.2))

                done_before = len(batch.history("trivial", limit=None))
                began = time.monotonic()
                for i in range(burst):
                    broker.send({"command": "start", "job": "trivial", "params": {"i": i}}, f"b-{i}")
                _until(lambda: len(batch.history("trivial", statuses=["COMPLETED"], limit=None))
                       >= done_before + burst, 0.1)
                wall = time.monotonic() - began
                executions = batch.history("trivial", limit=None)
                once = len(executions) == done_before + burst and len(
                    {e.trigger_detail for e in executions}) == len(executions)
            finally:
                _stop(listener)
                broker.close()
            loop_env, loop_url = _env(ctx, database, f"mq-loop-{kind}")
            loop_batch = Batch(Config(database_url=loop_url, jobs_dir=ctx.workdir, log_dir=ctx.workdir))
            loop_batch.upgrade_schema()
            began = time.monotonic()
            for i in range(burst):
                subprocess.run([*batchctl_command(), "start", "trivial", "--params",
                                json.dumps({"i": i}), "--detach"], env=loop_env, cwd=ctx.workdir,
                               capture_output=True, check=True)
            _until(lambda: len(loop_batch.history("trivial", statuses=["COMPLETED"], limit=None))
                   >= burst, 0.1)
            loop_wall = time.monotonic() - began
            yield Row(f"mq {kind}: {burst} start messages, --max-running 4", database, wall,
                      loop_wall, note=f"until all COMPLETED; baseline: {burst} `start --detach` "
                      "from a loop", compare=True)
            yield Row(f"mq {kind}: {burst} messages each ran once", database,
                      "yes" if once else "no", None, holds("exactly once"), unit="", passed=once)
            batch.close()
            loop_batch.close()

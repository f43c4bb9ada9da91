"""`batchctl serve` (issue 12): API latency under 20 concurrent clients on 100,000 executions,
start request -> STARTED, event delivery, and the dashboard's first paint in Chromium.

    python bench/run.py --only web [--quick] [--database sqlite]
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import statistics
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from common import PYTHON, Context, Row, at_most, bench, clean_env, populate

EXECUTIONS = 100_000
CLIENTS = 20
TOKEN = "bench-token-0123456789abcdef"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
JOB = '''
from batchctl import Job

job = Job("tick", params={"n": int})

@job.tasklet
def tick(ctx):
    pass
'''


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


class Served:
    """A `batchctl serve` process on a repository, and HTTP calls to it."""

    def __init__(self, ctx: Context, url: str, name: str) -> None:
        jobs = ctx.path(f"{name}-jobs")
        jobs.mkdir(exist_ok=True)
        (jobs / "tick.py").write_text(JOB)
        env = clean_env(BATCHCTL_DATABASE_URL=url, BATCHCTL_JOBS_DIR=str(jobs),
                        BATCHCTL_LOG_DIR=str(ctx.path(f"{name}-logs")), BATCHCTL_API_TOKEN=TOKEN,
                        BATCHCTL_HEARTBEAT_INTERVAL="1")
        self.process = subprocess.Popen([PYTHON, "-m", "batchctl", "serve", "--port", "0"], env=env,
                                        text=True, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert self.process.stderr is not None
        while True:
            line = self.process.stderr.readline()
            if not line:
                raise RuntimeError("serve ended early")
            match = re.search(r"on http://127\.0\.0\.1:(\d+)/", line)
            if match:
                self.port = int(match.group(1))
                break
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for _line in self.process.stderr:
            pass

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def call(self, connection: http.client.HTTPConnection, method: str, path: str,
             body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:200]!r}")
        return json.loads(payload)

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _list_latencies(served: Served, per_client: int) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        connection = served.connection()
        mine = []
        for _ in range(per_client):
            started = time.perf_counter()
            served.call(connection, "GET", "/api/executions?limit=50")
            mine.append(time.perf_counter() - started)
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def _start_latencies(served: Served, runs: int, base: int) -> tuple[list[float], list[float]]:
    """Start request -> STARTED (polled), and event delivery (event `at` -> received)."""
    connection = served.connection()
    starts: list[float] = []
    deliveries: list[float] = []
    stream = served.connection()
    stream.request("GET", "/api/events?job=tick", headers={"Authorization": f"Bearer {TOKEN}"})
    events = stream.getresponse()

    def listen() -> None:
        try:
            read_events()
        except Exception:  # the stream was closed at the end
            pass

    def read_events() -> None:
        for raw in events:
            line = raw.decode().strip()
            if line.startswith("data: "):
                event = json.loads(line[6:])
                at = datetime.fromisoformat(event["at"]).timestamp()
                deliveries.append(time.time() - at)

    threading.Thread(target=listen, daemon=True).start()
    for run in range(runs):
        began = time.perf_counter()
        execution = served.call(connection, "POST", "/api/jobs/tick/start",
                                {"params": {"n": base + run}})
        while True:
            status = served.call(connection, "GET", f"/api/executions/{execution['id']}")["status"]
            if status != "STARTING":
                break
            time.sleep(0.01)
        starts.append(time.perf_counter() - began)
    time.sleep(1.0)
    connection.close()
    stream.close()
    return starts, deliveries


def _first_paint(port: int, runs: int) -> float | None:
    chromium = shutil.which("chromium")
    if chromium is None:
        return None
    from playwright.sync_api import sync_playwright

    paints = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}/login?token={TOKEN}")
        for _ in range(runs):
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
            paint = page.evaluate(
                "() => (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime"
            )
            if paint is not None:
                paints.append(paint / 1000)
        browser.close()
    return statistics.median(paints) if paints else None


@bench("web", help="serve: GET /api/executions p50/p95 (20 clients, 100k executions), start -> "
       "STARTED, event delivery, dashboard first paint")
def web(ctx: Context) -> Iterator[Row]:
    per_client = 10 if ctx.quick else 50
    runs = 5 if ctx.quick else 20
    for database in ctx.databases:
        url = ctx.repository_url(database, "web")
        populate(url, EXECUTIONS)
        served = Served(ctx, url, database)
        try:
            served.call(served.connection(), "GET", "/api/executions?limit=50")  # warm up
            latencies = _list_latencies(served, per_client)
            yield Row("GET /api/executions?limit=50 p50, 20 clients", database,
                      statistics.median(latencies), note=f"{len(latencies)} requests, 100k executions")
            yield Row("GET /api/executions?limit=50 p95, 20 clients", database, p95(latencies),
                      target=at_most(0.05))
            starts, deliveries = _start_latencies(served, runs, 10_000_000)
            yield Row("start request -> STARTED p95", database, p95(starts), target=at_most(1.0),
                      note=f"{runs} starts (detached process)")
            if deliveries:
                yield Row("event delivery p95", database, p95(deliveries), target=at_most(1.0),
                          note=f"{len(deliveries)} events: commit -> SSE client")
            paint = _first_paint(served.port, 3 if ctx.quick else 5)
            yield Row("dashboard first paint (100k executions)", database,
                      paint if paint is not None else "no chromium", target=at_most(1.0))
        finally:
            served.close()

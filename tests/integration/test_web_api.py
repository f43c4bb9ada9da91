"""The HTTP API of `batchctl serve` (issue 12), in process through FastAPI's TestClient, on
SQLite and Postgres: every endpoint and error status, tokens and roles on every route, keyset
pagination under concurrent inserts, the event stream, escaping of user text on every page."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from batchctl.config import Config
from batchctl.model import Trigger
from batchctl.operator import Batch
from batchctl.web.app import WebState, create_app
from batchctl.web.auth import Tokens, digest
from tests.conftest import wait_for

OPERATE = {"Authorization": "Bearer op-token"}
READ = {"Authorization": "Bearer read-token"}
SCRIPT = "<script>alert(1)</script>"

JOBS = '''
import time
from batchctl import Job, Param

job = Job("hello", description="Says <b>hello</b>", params={"who": str, "n": Param(int, default=1)})

@job.tasklet
def greet(ctx):
    for i in range(ctx.state.get("i", 0), ctx.params["n"]):
        ctx.log.info("hello %s", ctx.params["who"])
        time.sleep(0.1)
        ctx.state["i"] = i + 1
        yield

fail = Job("fail", params={"x": Param(str, default="")})

@fail.tasklet
def boom(ctx):
    raise RuntimeError("<img src=x onerror=alert(2)>")
'''


@pytest.fixture
def web(config: Config, write_job: Callable[[str, str], Path]) -> Iterator[tuple[TestClient, Batch]]:
    write_job("hello", JOBS)
    tokens = Tokens.load(
        {"tokens": {"viewer": {"token": "sha256:" + digest("read-token").hex(), "role": "read"}}},
        {"BATCHCTL_API_TOKEN": "op-token"},
    )
    with Batch(config) as batch:
        state = WebState(batch=batch, tokens=tokens, recover_interval=0.5)
        with TestClient(create_app(state, on_request=lambda line: None)) as client:
            yield client, batch
        state.stopping.set()
        # A stream's last read may still hold a pooled connection in its thread: let it go back
        # before the Batch closes the pool.
        wait_for(lambda: batch.repository.engine.pool.checkedout() == 0, timeout=10)


def finished(batch: Batch, execution_id: int) -> Any:
    return wait_for(lambda: (e := batch.execution(execution_id)) and not e.status.is_live and e)


ROUTES = [
    ("GET", "/api/jobs"), ("GET", "/api/jobs/hello"), ("GET", "/api/executions"),
    ("GET", "/api/executions/1"), ("GET", "/api/executions/1/log"), ("GET", "/api/events"),
    ("GET", "/api/workers"), ("GET", "/metrics"),
    ("POST", "/api/jobs/hello/start"), ("POST", "/api/jobs/hello/stop"),
    ("POST", "/api/jobs/hello/restart"), ("POST", "/api/executions/1/stop"),
    ("POST", "/api/executions/1/abandon"), ("POST", "/api/executions/1/restart"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_a_token(web: Any, method: str, path: str) -> None:
    client, _ = web
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic b3A6"}):
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401, (path, headers)
        assert response.json() == {"error": {"message": response.json()["error"]["message"],
                                              "exit_code": None}}
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), [r for r in ROUTES if r[0] == "POST"])
def test_a_read_token_may_not_write(web: Any, method: str, path: str) -> None:
    client, _ = web
    response = client.request(method, path, headers=READ, json={"params": {"who": "x"}})
    assert response.status_code == 403
    assert "may only read" in response.json()["error"]["message"]


def test_start_show_log_and_events(web: Any) -> None:
    client, batch = web
    response = client.post("/api/jobs/hello/start", headers=OPERATE,
                           json={"params": {"who": "world", "n": "2"}})
    assert response.status_code == 202
    started = response.json()
    assert started["status"] == "STARTING"
    assert started["trigger"] == {"kind": "http", "detail": "env"}
    assert started["params"] == {"who": "world", "n": 2}
    done = finished(batch, started["id"])
    assert done.status.value == "COMPLETED"

    shown = client.get(f"/api/executions/{started['id']}", headers=READ).json()
    from batchctl import render

    expected = render.execution_dict(done, batch.step_executions(done.id), batch.skipped_items(done.id))
    assert shown == json.loads(json.dumps(expected))
    assert [s["name"] for s in shown["steps"]] == ["greet"]

    log = client.get(f"/api/executions/{started['id']}/log", headers=READ)
    assert log.status_code == 200 and "hello world" in log.text
    with client.stream("GET", f"/api/executions/{started['id']}/log?follow=1", headers=READ) as stream:
        body = "".join(stream.iter_text())
    assert "event: line" in body and "hello world" in body and body.rstrip().endswith("data: {}")

    events = sse_events(client, f"/api/events?execution={started['id']}", count=4)
    statuses = [(e["step"], e["status"]) for e in events]
    assert statuses[:2] == [(None, "STARTING"), (None, "STARTED")]
    resumed = sse_events(client, "/api/events", count=1,
                         headers={**READ, "Last-Event-ID": str(events[1]["id"])})
    assert resumed[0]["id"] == events[2]["id"]


def sse_events(client: TestClient, path: str, count: int, headers: dict[str, str] = READ) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    with client.stream("GET", path, headers=headers) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                found.append(json.loads(line[len("data: "):]))
                if len(found) >= count:
                    break
    return found


def test_error_statuses(web: Any) -> None:
    client, batch = web
    def error(response: Any, status: int, exit_code: int | None) -> str:
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) == {"error"} and body["error"]["exit_code"] == exit_code
        return str(body["error"]["message"])

    error(client.get("/api/nope", headers=READ), 404, None)
    error(client.get("/nope"), 404, None)
    error(client.get("/api/jobs/nope", headers=READ), 404, 2)
    error(client.get("/api/executions/999", headers=READ), 404, 2)
    error(client.get("/api/executions/99999999999999999999999", headers=READ), 404, 2)
    error(client.get("/api/executions/abc", headers=READ), 404, 2)
    error(client.post("/api/jobs/hello/start", headers=OPERATE, content=b"{nope"), 400, None)
    error(client.post("/api/jobs/hello/start", headers=OPERATE, json=[1]), 400, None)
    error(client.post("/api/jobs/hello/start", headers=OPERATE, json={"params": 3}), 400, None)
    error(client.post("/api/jobs/hello/start", headers=OPERATE, json={"parms": {}}), 400, None)
    assert "'who'" in error(client.post("/api/jobs/hello/start", headers=OPERATE, json={}), 422, 2)
    error(client.post("/api/jobs/hello/start", headers=OPERATE,
                      json={"params": {"who": "a", "n": "x"}}), 422, 2)
    error(client.post("/api/jobs/nope/start", headers=OPERATE, json={}), 404, 2)
    error(client.get("/api/executions?limit=0", headers=READ), 400, None)
    error(client.get("/api/executions?status=NOPE", headers=READ), 400, 2)
    error(client.get("/api/executions?since=yesterday", headers=READ), 400, None)
    error(client.get("/api/executions?cursor=x1", headers=READ), 400, None)
    error(client.get("/api/events", headers={**READ, "Last-Event-ID": "x"}), 400, None)

    first = client.post("/api/jobs/hello/start", headers=OPERATE, json={"params": {"who": "a"}}).json()
    assert "already" in error(client.post("/api/jobs/hello/start", headers=OPERATE,
                                          json={"params": {"who": "a"}}), 409, 4)
    finished(batch, first["id"])
    assert "already completed" in error(
        client.post("/api/jobs/hello/start", headers=OPERATE, json={"params": {"who": "a"}}), 409, 4)
    error(client.post(f"/api/executions/{first['id']}/stop", headers=OPERATE), 409, 4)
    error(client.post("/api/jobs/hello/stop", headers=OPERATE), 409, 4)
    error(client.post(f"/api/executions/{first['id']}/restart", headers=OPERATE), 409, 4)
    error(client.post("/api/jobs/hello/restart", headers=OPERATE), 409, 4)
    error(client.post(f"/api/executions/{first['id']}/abandon", headers=OPERATE), 409, 4)


def test_stop_restart_abandon(web: Any) -> None:
    client, batch = web
    started = client.post("/api/jobs/hello/start", headers=OPERATE,
                          json={"params": {"who": "long", "n": 200}}).json()
    wait_for(lambda: batch.execution(started["id"]).status.value == "STARTED")
    stopped = client.post("/api/jobs/hello/stop", headers=OPERATE)
    assert stopped.status_code == 200 and stopped.json()["status"] == "STOPPING"
    assert finished(batch, started["id"]).status.value == "STOPPED"
    restarted = client.post(f"/api/executions/{started['id']}/restart", headers=OPERATE)
    assert restarted.status_code == 202 and restarted.json()["resumed_from"] == started["id"]
    again = restarted.json()["id"]
    wait_for(lambda: batch.execution(again).status.value == "STARTED")
    assert client.post(f"/api/executions/{again}/stop", headers=OPERATE).status_code == 200
    finished(batch, again)
    by_name = client.post("/api/jobs/hello/restart", headers=OPERATE)
    assert by_name.status_code == 202
    third = by_name.json()["id"]
    wait_for(lambda: batch.execution(third).status.value == "STARTED")
    client.post(f"/api/executions/{third}/stop", headers=OPERATE)
    finished(batch, third)
    abandoned = client.post(f"/api/executions/{third}/abandon", headers=OPERATE)
    assert abandoned.status_code == 200 and abandoned.json()["status"] == "ABANDONED"


def _insert_executions(batch: Batch, count: int, prefix: str) -> None:
    from batchctl.model import instance_key
    from batchctl.operator import start_rule

    for i in range(count):
        params = {"who": f"{prefix}{i}"}
        execution = batch.repository.create_execution(
            "hello", instance_key(params), params, start_rule, process=None, trigger=Trigger("api")
        )
        batch.repository.end_execution(execution, __import__("batchctl").Status.COMPLETED, None)


def test_pagination_is_stable_under_concurrent_inserts(web: Any) -> None:
    client, batch = web
    _insert_executions(batch, 45, "a")
    seen: list[int] = []
    stop = threading.Event()
    inserter = threading.Thread(target=lambda: _insert_executions(batch, 30, "b"))
    url: str | None = "/api/executions?limit=7&job=hello"
    first = True
    while url:
        page = client.get(url, headers=READ).json()
        seen += [item["id"] for item in page["items"]]
        if first:
            inserter.start()  # new executions arrive while the pages are read
            first = False
        url = f"/api/executions?limit=7&job=hello&cursor={page['next_cursor']}" if page["next_cursor"] else None
    inserter.join()
    stop.set()
    assert seen == sorted(seen, reverse=True)
    assert len(seen) == len(set(seen))
    assert set(range(1, 46)) <= set(seen)  # every execution older than the first page, once

    statuses = client.get("/api/executions?status=completed,FAILED&limit=1000", headers=READ).json()
    assert len(statuses["items"]) == 75 and statuses["next_cursor"] is None
    assert client.get("/api/executions?since=2000-01-01&until=2000-01-02", headers=READ).json()["items"] == []
    assert len(client.get("/api/executions?since=2000-01-01T00:00:00Z&limit=5", headers=READ).json()["items"]) == 5


def test_reads_do_not_write(web: Any, config: Config) -> None:
    """A live execution whose process is gone is left to the background check: a read does not
    mark it (the background task does, within its interval)."""
    client, batch = web
    from batchctl.operator import start_rule
    from batchctl.model import instance_key

    lost = batch.repository.create_execution(
        "hello", instance_key({"who": "ghost"}), {"who": "ghost"}, start_rule,
        process={"host": "elsewhere", "pid": 1, "pid_scope": None}, trigger=Trigger("api"),
    )
    batch.repository.update_execution(lost, heartbeat_at=__import__("batchctl.model").model.utcnow()
                                      .replace(year=2000))
    assert client.get(f"/api/executions/{lost.id}", headers=READ).json()["status"] == "STARTING"
    wait_for(lambda: batch.repository.execution(lost.id).status.value == "FAILED", timeout=10)


def test_health_metrics_jobs_workers(web: Any) -> None:
    client, batch = web
    assert client.get("/healthz").json() == {"status": "ok"}
    jobs = client.get("/api/jobs", headers=READ).json()
    assert [j["name"] for j in jobs] == ["fail", "hello"]
    assert jobs[1]["description"] == "Says <b>hello</b>" and jobs[1]["schedules"] == []
    failed = client.post("/api/jobs/fail/start", headers=OPERATE, json={}).json()
    finished(batch, failed["id"])
    text = client.get("/metrics", headers=READ).text
    for line in ("# TYPE batchctl_executions gauge", 'batchctl_executions{job="fail",status="FAILED"} 1',
                 "# TYPE batchctl_execution_duration_seconds histogram",
                 'batchctl_execution_duration_seconds_bucket{job="fail",le="+Inf"} 1',
                 "# TYPE batchctl_items_read_total counter", "# TYPE batchctl_live_workers gauge",
                 "# HELP batchctl_live_executions"):
        assert line in text
    assert client.get("/api/workers", headers=READ).json() == []
    openapi = client.get("/api/openapi.json").json()
    assert "/api/executions" in openapi["paths"]


def test_healthz_is_503_when_the_repository_is_unreachable(tmp_path: Path, jobs_dir: Path) -> None:
    config = Config(database_url=f"sqlite:///{tmp_path / 'r.db'}", jobs_dir=jobs_dir,
                    log_dir=tmp_path / "logs")
    batch = Batch(config)
    with TestClient(create_app(WebState(batch, Tokens.load({}, {"BATCHCTL_API_TOKEN": "t"})),
                               on_request=lambda line: None)) as client:
        batch._repository.engine.dispose()
        batch._repository.url = "postgresql://nobody@127.0.0.1:1/none"
        from batchctl.repository.connect import create_repository_engine

        batch._repository.engine = create_repository_engine("postgresql://nobody@127.0.0.1:1/none")
        response = client.get("/healthz")
        assert response.status_code == 503 and response.json()["error"]["exit_code"] == 5
    batch.close()


def test_user_text_is_escaped_on_every_page(web: Any) -> None:
    client, batch = web
    started = client.post("/api/jobs/hello/start", headers=OPERATE,
                          json={"params": {"who": SCRIPT}}).json()
    failed = client.post("/api/jobs/fail/start", headers=OPERATE, json={"params": {"x": SCRIPT}}).json()
    finished(batch, started["id"])
    finished(batch, failed["id"])
    for path in ("/", "/?fragment=1", f"/executions/{started['id']}", f"/executions/{failed['id']}",
                 f"/executions/{failed['id']}?fragment=1", "/jobs", "/jobs/hello", "/jobs/fail",
                 "/workers", "/login?next=%22%3E%3Cscript%3E"):
        page = client.get(path, headers=READ)
        assert page.status_code == 200, path
        assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
        assert "<b>hello" not in page.text, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get("/", headers=READ).text
    assert "&lt;img src=x onerror=alert(2)&gt;" in client.get(f"/executions/{failed['id']}", headers=READ).text


def test_pages_sign_in_and_cross_site_check(web: Any) -> None:
    client, _ = web
    for path in ("/", "/jobs", "/jobs/hello", "/workers", "/executions/1"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login?next=")
    assert client.get("/", headers=READ).status_code == 200  # pages take the Bearer header too
    bad = client.post("/login", content="token=wrong", follow_redirects=False,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert bad.status_code == 401
    good = client.post("/login", content="token=op-token&next=/jobs", follow_redirects=False,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert good.status_code == 303 and good.headers["location"] == "/jobs"
    cookie = good.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/jobs").status_code == 200  # the session cookie
    # A state-changing request by cookie needs this site's Origin.
    foreign = client.post("/api/jobs/hello/start", json={"params": {"who": "x"}},
                          headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    missing = client.post("/api/jobs/hello/start", json={"params": {"who": "x"}})
    assert missing.status_code == 403
    own = client.post("/api/jobs/hello/start", json={"params": {"who": "x"}},
                      headers={"Origin": "http://testserver"})
    assert own.status_code == 202 and own.json()["trigger"]["detail"] == "env"
    assert client.get("/login?token=read-token&next=//evil.example",
                      follow_redirects=False).headers["location"] == "/"
    client.post("/logout", headers={"Origin": "http://testserver"})
    assert client.get("/", follow_redirects=False).status_code == 303


def test_a_listing_shows_an_execution_recorded_elsewhere_once_its_event_is_seen(web: Any) -> None:
    """Listings are reused while nothing changes; a status change written by another process
    (here: straight into the repository) reaches the next listing within moments."""
    client, batch = web
    _insert_executions(batch, 1, "first")
    wait_for(lambda: len(client.get("/api/executions", headers=READ).json()["items"]) == 1)
    _insert_executions(batch, 1, "second")
    listed = wait_for(lambda: (items := client.get("/api/executions", headers=READ).json()["items"])
                      and len(items) == 2 and items)
    assert [item["params"]["who"] for item in listed] == ["second0", "first0"]


def test_a_start_through_the_api_is_in_the_very_next_listing(web: Any) -> None:
    client, batch = web
    _insert_executions(batch, 1, "before")
    wait_for(lambda: len(client.get("/api/executions", headers=READ).json()["items"]) == 1)
    started = client.post("/api/jobs/hello/start", headers=OPERATE,
                          json={"params": {"who": "now"}}).json()
    listed = client.get("/api/executions", headers=READ).json()["items"]
    assert listed[0]["id"] == started["id"]
    finished(batch, started["id"])

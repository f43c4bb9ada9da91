"""`batchctl serve` as a real process: the sign-in URL it prints, its registration as a service,
the refusal to listen elsewhere without a token, no secret in job processes, SIGTERM with an
open event stream; and no other command imports the web stack."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import wait_for

JOB = '''
import os
from batchctl import Job

job = Job("env", params={"tag": str})

@job.tasklet
def show(ctx):
    ctx.log.info("secret visible: %s", "BATCHCTL_API_TOKEN" in os.environ)
'''


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHCTL_")}
    (tmp_path / "jobs").mkdir(exist_ok=True)
    (tmp_path / "jobs" / "env.py").write_text(JOB)
    env.update(BATCHCTL_DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}",
               BATCHCTL_JOBS_DIR=str(tmp_path / "jobs"), BATCHCTL_LOG_DIR=str(tmp_path / "logs"),
               BATCHCTL_HEARTBEAT_INTERVAL="1", NO_COLOR="1", **extra)
    return env


def batchctl(*args: str, env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "batchctl", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, str, dict[str, str]]]:
    env = environment(tmp_path)
    process = batchctl("serve", "--port", "0", env=env)
    assert process.stderr is not None
    lines = []
    while True:
        line = process.stderr.readline()
        assert line, "serve ended early: " + "".join(lines)
        lines.append(line)
        match = re.search(r"(http://127\.0\.0\.1:\d+/)login\?token=(\S+)", line)
        if match:
            break
    yield process, match.group(1), match.group(2), env
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=10)  # closes the pipes


def fetch(url: str, token: str | None = None, data: bytes | None = None) -> Any:
    """The JSON of a response, closed."""
    with get(url, token, data) as response:
        return json.load(response)


def get(url: str, token: str | None = None, data: bytes | None = None) -> Any:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    return urllib.request.urlopen(request, timeout=10)


def test_serve_prints_a_sign_in_url_registers_and_stops_on_sigterm(served: Any) -> None:
    process, url, token, env = served
    assert fetch(url + "healthz") == {"status": "ok"}
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(url + "api/jobs")
    assert refused.value.code == 401
    refused.value.close()
    import http.cookiejar

    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with browser.open(f"{url}login?token={token}", timeout=10) as signed:  # the link serve printed
        assert signed.status == 200 and "Executions" in signed.read().decode()

    workers = subprocess.run([sys.executable, "-m", "batchctl", "workers", "--json"], env=env,
                             capture_output=True, text=True, check=True)
    assert [w["kind"] for w in json.loads(workers.stdout)] == ["serve"]

    started = fetch(url + "api/jobs/env/start", token, b'{"params": {"tag": "a"}}')
    assert started["trigger"] == {"kind": "http", "detail": "generated"}
    wait_for(lambda: fetch(f"{url}api/executions/{started['id']}", token)["status"] == "COMPLETED")
    with get(f"{url}api/executions/{started['id']}/log", token) as response:
        log = response.read().decode()
    assert "secret visible: False" in log

    stream = get(url + "api/events", token)  # an open event stream must not hold the shutdown
    assert stream.readline().startswith(b"retry")
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=10)
    assert time.monotonic() - began < 10
    assert process.returncode == 0
    stream.close()
    _, err = process.communicate(timeout=10)
    assert "GET /api/jobs 401" in err and "GET /login 303" in err
    assert token not in err.split("\n", 1)[1]  # after the curl hint, no line shows the token


def test_serve_refuses_another_address_without_a_token(tmp_path: Path) -> None:
    process = batchctl("serve", "--host", "0.0.0.0", "--port", "0", env=environment(tmp_path))
    out, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "needs an API token" in err and "BATCHCTL_API_TOKEN" in err


def test_serve_with_a_configured_token_prints_none(tmp_path: Path) -> None:
    process = batchctl("serve", "--host", "0.0.0.0", "--port", "0",
                       env=environment(tmp_path, BATCHCTL_API_TOKEN="configured-token-123"))
    assert process.stderr is not None
    line = ""
    while "serving" not in line:
        line = process.stderr.readline()
        assert line, "serve ended early"
        assert "login?token=" not in line
    port = int(re.search(r":(\d+)/", line).group(1))  # type: ignore[union-attr]
    assert fetch(f"http://127.0.0.1:{port}/api/executions", "configured-token-123")["items"] == []
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=10)
    assert process.returncode == 0


def test_no_other_command_imports_the_web_stack(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from batchctl import cli\n"
        "for args in (['--help'], ['jobs', '--json'], ['history'], ['workers'], ['schedules']):\n"
        "    try:\n"
        "        cli.main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "web = sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'uvicorn', 'pydantic') or m.startswith('batchctl.web'))\n"
        "print('WEB', web)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=environment(tmp_path),
                            capture_output=True, text=True, cwd=tmp_path)
    assert "WEB []" in result.stdout, result.stdout + result.stderr

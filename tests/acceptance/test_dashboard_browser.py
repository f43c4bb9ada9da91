"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright for
Python): sign in, start a job from its form and watch it go STARTED -> COMPLETED without a
reload, stop a running one with its button, a `<script>` param shown as text. Each page is
saved as a screenshot under the test's tmp_path; BATCHCTL_DOCS_SCREENSHOT=1 also refreshes the
README's docs/dashboard.png."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKEN = "browser-test-token-0123456789"
DOCS = Path(__file__).resolve().parents[2] / "docs"

JOB = '''
import time
from datetime import date
from batchctl import Job, Param

job = Job("report", description="Count a day's orders <b>fast</b>",
          params={"day": date, "batches": Param(int, default=3, help="units of work"),
                  "note": Param(str, default="")})

@job.tasklet
def count(ctx):
    for i in range(ctx.state.get("i", 0), ctx.params["batches"]):
        ctx.log.info("batch %d of %s", i, ctx.params["note"])
        time.sleep(0.3)
        ctx.state["i"] = i + 1
        yield

@job.tasklet
def publish(ctx):
    ctx.log.info("published")
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("dashboard")
    (folder / "jobs").mkdir()
    (folder / "jobs" / "report.py").write_text(JOB)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHCTL_")}
    env.update(BATCHCTL_DATABASE_URL=f"sqlite:///{folder / 'r.db'}", BATCHCTL_JOBS_DIR=str(folder / "jobs"),
               BATCHCTL_LOG_DIR=str(folder / "logs"), BATCHCTL_API_TOKEN=TOKEN,
               BATCHCTL_HEARTBEAT_INTERVAL="1")
    process = subprocess.Popen([sys.executable, "-m", "batchctl", "serve", "--port", "0"], env=env,
                               text=True, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert process.stderr is not None
    while True:
        line = process.stderr.readline()
        assert line, "serve ended early"
        match = re.search(r"on (http://127\.0\.0\.1:\d+/)", line)
        if match:
            break
    yield match.group(1)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=15)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=server)
    signed = context.new_page()
    signed.on("dialog", lambda dialog: dialog.accept())  # the confirmation of stop/restart/abandon
    signed.goto("/")
    assert "/login" in signed.url  # no session: the sign-in page
    signed.fill("#token", TOKEN)
    signed.click("button[type=submit]")
    signed.wait_for_url(re.compile(r"/$"))
    yield signed
    context.close()


def shot(page: Any, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def test_start_from_the_form_and_watch_it_complete(page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page.goto("/jobs")
    shot(page, tmp_path, "jobs")
    page.click("text=report")
    # A bad value is refused next to its field.
    page.fill("#param-day", "2024-01-31")
    page.fill("#param-batches", "-1.5")
    page.click("form#start button[type=submit]")
    expect(page.locator('.field-error[data-for="batches"]')).to_contain_text("batches")
    shot(page, tmp_path, "job-form-error")
    page.fill("#param-batches", "8")
    page.fill("#param-note", "<script>window.pwned=1</script>")
    page.click("form#start button[type=submit]")
    page.wait_for_url(re.compile(r"/executions/\d+$"))
    status = page.locator("#status")
    expect(status).to_have_text("STARTED", timeout=15000)
    url = page.url
    expect(status).to_have_text("COMPLETED", timeout=20000)
    assert page.url == url  # no reload: the status came over the event stream
    expect(page.locator("#log")).to_contain_text("published", timeout=10000)
    assert page.evaluate("window.pwned") is None
    expect(page.locator(".params-full")).to_contain_text("<script>window.pwned=1</script>")
    shot(page, tmp_path, "execution")
    page.goto("/")
    expect(page.locator("#executions td.params").first).to_contain_text("<script>")
    assert page.evaluate("window.pwned") is None
    shot(page, tmp_path, "executions")
    page.goto("/workers")
    expect(page.locator("#workers")).to_contain_text("serve")
    shot(page, tmp_path, "workers")
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto("/")
    shot(page, tmp_path, "executions-phone")


def test_stop_a_running_execution_with_its_button(page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page.goto("/jobs/report")
    page.fill("#param-day", "2024-02-01")
    page.fill("#param-batches", "200")
    page.click("form#start button[type=submit]")
    page.wait_for_url(re.compile(r"/executions/\d+$"))
    expect(page.locator("#status")).to_have_text("STARTED", timeout=15000)
    stop = page.locator('button[data-action="stop"]')
    expect(stop).to_be_enabled()
    expect(page.locator('button[data-action="restart"]')).to_be_disabled()
    stop.click()
    expect(page.locator("#status")).to_have_text("STOPPED", timeout=15000)
    expect(page.locator('button[data-action="restart"]')).to_be_enabled()
    expect(page.locator('button[data-action="stop"]')).to_be_disabled()
    shot(page, tmp_path, "execution-stopped")
    page.goto("/")
    page.set_viewport_size({"width": 1100, "height": 620})
    path = tmp_path / "dashboard.png"
    page.screenshot(path=str(path))
    if os.environ.get("BATCHCTL_DOCS_SCREENSHOT") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copy(path, DOCS / "dashboard.png")

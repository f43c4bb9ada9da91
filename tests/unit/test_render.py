"""What `history` and `show` print: user text never reaches the terminal as control codes."""

from __future__ import annotations

import io
import re
import json
from datetime import datetime, timezone

import pytest
from rich.console import Console

from batchctl import render
from batchctl.model import JobExecution, SkippedItem, Status, StepExecution

CLEAR = "\x1b[2J"
TITLE = "\x1b]0;pwned\x07"
NASTY = f"bad {CLEAR}{TITLE} \x9b31m \u202eevil \ud800 end"
NOW = datetime(2024, 1, 31, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """render's stdout, as a terminal with colour, into a string."""
    buffer = io.StringIO()
    console = Console(
        file=buffer, force_terminal=True, width=250, highlight=False, markup=False, emoji=False
    )
    monkeypatch.setattr(render, "stdout", console)
    return buffer


def execution() -> JobExecution:
    return JobExecution(
        id=7, instance_id=1, job_name="eod", params={"note": TITLE}, status=Status.FAILED,
        exit_code="FAILED", exit_message=f"{NASTY}\nsecond line {CLEAR}", created_at=NOW,
        started_at=NOW, ended_at=NOW, host=f"host{CLEAR}", pid=1, log_path=f"/logs/{TITLE}.log",
    )


def assert_escaped(text: str) -> None:
    # The only escape sequences left are rich's own colour codes (ESC [ ... m).
    without_styles = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert "\x1b" not in without_styles and "\x07" not in text and "\x9b" not in text
    assert "\u202e" not in text and "\ud800" not in text
    assert "\\x1b[2J" in text and "\\x1b]0;pwned\\x07" in text


def test_printable_escapes_control_characters_and_keeps_other_text() -> None:
    assert render.printable("a\x1b[2Jb\tc\r\nd é ü") == "a\\x1b[2Jb\\tc\\r\\nd é ü"
    assert render.printable("l1\nl2\x00", newlines=True) == "l1\nl2\\x00"
    assert render.printable("\x7f\x9b\u202e\u2066\udc80") == "\\x7f\\x9b\\u202e\\u2066\\udc80"


def test_history_escapes_exit_messages_and_names(shown: io.StringIO) -> None:
    render.print_history([execution()])
    assert_escaped(shown.getvalue())


def test_show_escapes_the_execution_its_steps_and_skipped_items(shown: io.StringIO) -> None:
    step = StepExecution(
        id=3, job_execution_id=7, name=f"load{CLEAR}", status=Status.FAILED,
        exit_message=NASTY, started_at=NOW, ended_at=NOW,
    )
    skipped = SkippedItem(
        step_execution_id=3, phase="process", position=1, item={"x": TITLE}, error=NASTY,
        step_name=f"load{TITLE}",
    )
    render.print_execution(execution(), [step], [skipped])
    text = shown.getvalue()
    assert_escaped(text)
    assert "second line \\x1b[2J" in text  # the whole message, line by line


def test_json_output_has_no_nan(capsys: pytest.CaptureFixture[str]) -> None:
    """A context a job saved may hold NaN: --json prints null, standard JSON."""
    render.print_json({"context": {"x": float("nan"), "y": [float("inf"), 1.5]}})
    out = capsys.readouterr().out
    assert json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == {
        "context": {"x": None, "y": [None, 1.5]}
    }

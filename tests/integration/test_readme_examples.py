"""The README's job examples run as written (issue 10).

Every fenced ```python block of README.md is either a job module or marked as a fragment. The
markers are HTML comments on the line before a fence (invisible on GitHub):

- `<!-- example: fragment (why) -->`: not a runnable job (a part of one, a caller of the API);
  its case here is skipped, explicitly and with the reason.
- `<!-- example: postgres -->`: a job that also runs on Postgres (every job runs on SQLite).
- `<!-- example: file PATH -->` before any block: the block's text is a file of the project
  (an example's input), written to PATH beside the jobs folder before the jobs run.

A job block starts with a `# jobs/NAME.py` comment, the file it is written to; the first
fence after it whose lines start with `batchctl start` holds the commands that run it, each
run as written (from the project folder, in this process) and expected to exit 0.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from batchctl import cli

README = Path(__file__).resolve().parents[2] / "README.md"
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*example:\s*(\w+)\s*(.*?)\s*-->\s*$")
_MODULE = re.compile(r"^#\s*(jobs/[\w.]+\.py)\s*$")


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    marker: str | None = None
    argument: str = ""


@dataclass
class Example:
    line: int
    module: str | None
    source: str
    commands: list[list[str]] = field(default_factory=list)
    fragment: str | None = None  # why it is not a runnable job
    postgres: bool = False


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text with the example marker before each, if any.
    Blocks indented inside a list item count too (their indentation is removed)."""
    found: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index].strip())
        if opening is None:
            index += 1
            continue
        indent = len(lines[index]) - len(lines[index].lstrip())
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = "\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n"
        marker = _MARKER.match(lines[index - 1].strip()) if index > 0 else None
        found.append(
            Block(
                line=index + 1,
                language=opening.group(1),
                text=body,
                marker=marker.group(1) if marker else None,
                argument=marker.group(2) if marker else "",
            )
        )
        index = end + 1
    return found


def examples(text: str) -> tuple[list[Example], dict[str, str]]:
    """The python blocks as examples, and the project files the README gives."""
    found: list[Example] = []
    files: dict[str, str] = {}
    all_blocks = blocks(text)
    for position, block in enumerate(all_blocks):
        if block.marker == "file":
            files[block.argument] = block.text
        if block.language != "python":
            continue
        if block.marker == "fragment":
            found.append(Example(block.line, None, block.text, fragment=block.argument or "fragment"))
            continue
        first = block.text.splitlines()[0] if block.text.strip() else ""
        module = _MODULE.match(first)
        example = Example(
            block.line, module.group(1) if module else None, block.text,
            postgres=block.marker == "postgres",
        )
        for later in all_blocks[position + 1 :]:
            if later.language == "python":
                break
            commands = [
                shlex.split(line)[1:]
                for line in later.text.splitlines()
                if line.startswith("batchctl start ")
            ]
            if commands:
                example.commands = commands
                break
        found.append(example)
    return found, files


EXAMPLES, FILES = examples(README.read_text(encoding="utf-8"))


def _cases() -> list[Any]:
    cases = []
    for example in EXAMPLES:
        name = Path(example.module).stem if example.module else f"line-{example.line}"
        cases.append(pytest.param(example, "sqlite", id=f"{name}-sqlite"))
        if example.postgres:
            cases.append(pytest.param(example, "postgres", id=f"{name}-postgres"))
    return cases


def test_the_readme_has_job_examples_and_marks_its_fragments() -> None:
    runnable = [example for example in EXAMPLES if example.fragment is None]
    assert {Path(e.module).stem for e in runnable if e.module} >= {"report", "ledger"}
    assert any(example.fragment for example in EXAMPLES)
    assert "data/entries-20240131.csv" in FILES


@pytest.mark.parametrize(("example", "database"), _cases())
def test_a_readme_example_runs_as_written(
    example: Example,
    database: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if example.fragment is not None:
        pytest.skip(f"README line {example.line} is marked as a fragment: {example.fragment}")
    assert example.module, (
        f"README line {example.line}: a python block must start with '# jobs/NAME.py' (a job "
        "module) or follow '<!-- example: fragment (why) -->'"
    )
    assert example.commands, (
        f"README line {example.line}: no 'batchctl start' command follows the job {example.module}"
    )
    url = (
        f"sqlite:///{tmp_path / 'batchctl.db'}" if database == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    project = tmp_path / "project"
    for relative, text in {**FILES, example.module: example.source}.items():
        path = project / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (project / "config.toml").write_text(f'[batchctl]\ndatabase = "{url}"\n', encoding="utf-8")
    for name in ("BATCHCTL_CONFIG", "BATCHCTL_DATABASE_URL", "BATCHCTL_JOBS_DIR",
                 "BATCHCTL_LOG_DIR", "BATCHCTL_PROJECT_DIR", "BATCHCTL_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.chdir(project)

    for command in example.commands:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            cli.main(command)
        captured = capsys.readouterr()
        assert exited.value.code == 0, (
            f"README line {example.line}: batchctl {shlex.join(command)} exited "
            f"{exited.value.code}\nstdout: {captured.out}\nstderr: {captured.err}"
        )

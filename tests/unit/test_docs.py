"""The README documents the command line (in the manner of sqlite-utils' test_docs.py): every
command, subcommand, argument and option that `batchctl --help` shows has help text, every
command appears in the README's "Command line" section, and each of its long options is spelled
out where that section describes the command (its table row or its paragraph). Hidden commands
and options are exempt."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import typer.main

from batchctl import cli

README = Path(__file__).resolve().parents[2] / "README.md"


def commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """(path, command) for the app and every visible command and subcommand under it."""
    yield " ".join(path), command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if not sub.hidden:
            yield from commands(sub, (*path, name))


COMMANDS = dict(commands(typer.main.get_command(cli.app)))


def command_line_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Command line\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def documentation(path: str) -> str:
    """What the README's "Command line" section says about one command: the usage line (for
    the app itself), its table rows, and its `- **name**:` paragraph."""
    section = command_line_section()
    if not path:
        return "\n".join(line for line in section.splitlines() if line.startswith("batchctl ["))
    rows = [
        line for line in section.splitlines()
        if re.match(rf"\| `batchctl {re.escape(path)}( |`)", line)
    ]
    paragraph = re.search(rf"^- \*\*{re.escape(path)}\*\*.*?(?=^- |^\n|\Z)", section, re.M | re.S)
    return "\n".join(rows + ([paragraph.group(0)] if paragraph else []))


def visible_params(command: Any) -> list[Any]:
    return [
        param for param in command.params
        if not getattr(param, "hidden", False) and "--help" not in getattr(param, "opts", ())
    ]


def long_options(param: Any) -> list[str]:
    return [opt for opt in (*param.opts, *param.secondary_opts) if opt.startswith("--")]


def test_the_walk_finds_every_command() -> None:
    assert {"start", "restart", "stop", "history", "db", "db upgrade", "schedules"} <= set(COMMANDS)
    assert "run-execution" not in COMMANDS  # hidden: internal


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda path: path or "batchctl")
def test_every_command_has_help(path: str) -> None:
    command = COMMANDS[path]
    assert (command.help or "").strip(), f"batchctl {path} has no help text"


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda path: path or "batchctl")
def test_every_argument_and_option_has_help(path: str) -> None:
    missing = [param.name for param in visible_params(COMMANDS[path])
               if not (getattr(param, "help", None) or "").strip()]
    assert not missing, f"batchctl {path}: no help for {missing}"


@pytest.mark.parametrize("path", sorted(p for p in COMMANDS if p))
def test_every_command_is_in_the_readme(path: str) -> None:
    assert documentation(path), f"README's Command line section does not describe batchctl {path}"


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda path: path or "batchctl")
def test_every_long_option_is_in_the_readme(path: str) -> None:
    documented = documentation(path)
    missing = [
        option
        for param in visible_params(COMMANDS[path])
        for option in long_options(param)
        if not re.search(rf"{re.escape(option)}(?![\w-])", documented)
    ]
    assert not missing, f"README does not spell out {missing} where it describes batchctl {path}"

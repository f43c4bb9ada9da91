"""The command group `main` runs converts a command from its Typer definition only when it is
needed, and is otherwise the group Typer would build: same listing, same help, same commands."""

from __future__ import annotations

from typing import Any

import pytest
import typer.main

from batchctl import cli
from batchctl.cligroup import lazy_group


@pytest.fixture(autouse=True)
def fixed_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("NO_COLOR", "1")


def help_text(command: Any, *args: str) -> str:
    """What `batchctl ARGS --help` prints through `command` (the lazy or Typer's own group)."""
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        command.main([*args, "--help"], prog_name="batchctl", standalone_mode=False)
    return out.getvalue()


def test_group_help_lists_what_typer_lists() -> None:
    listing = help_text(lazy_group(cli.app))
    assert "start" in listing and "upgrade" not in listing
    assert listing == help_text(typer.main.get_command(cli.app))


def test_group_help_converts_no_command() -> None:
    group = lazy_group(cli.app)
    help_text(group)
    assert group.commands == {}


@pytest.mark.parametrize("path", [("start",), ("history",), ("db",), ("db", "upgrade")])
def test_command_help_matches_typer(path: tuple[str, ...]) -> None:
    assert help_text(lazy_group(cli.app), *path) == help_text(typer.main.get_command(cli.app), *path)


def test_group_lists_every_command_typer_builds() -> None:
    eager = typer.main.get_command(cli.app)
    group = lazy_group(cli.app)
    ctx = group.make_context("batchctl", ["--help"], resilient_parsing=True)
    assert group.list_commands(ctx) == eager.list_commands(ctx)  # type: ignore[attr-defined]


def test_unknown_command_is_not_found() -> None:
    group = lazy_group(cli.app)
    ctx = group.make_context("batchctl", ["--help"], resilient_parsing=True)
    assert group.get_command(ctx, "no-such-command") is None

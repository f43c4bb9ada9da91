"""`batchctl --version` and shell completion: the script each shell sources, and the answers
the shell then gets from batchctl."""

from __future__ import annotations

from importlib.metadata import version

import pytest


def test_version_prints_the_installed_version(run_cli) -> None:
    outcome = run_cli("--version")
    assert outcome.code == 0
    assert outcome.out == f"batchctl {version('batchctl')}\n"
    assert outcome.err == ""


@pytest.mark.parametrize(
    ("shell", "marker"),
    [("bash", "complete -o default -F _batchctl_completion batchctl"),
     ("zsh", "compdef _batchctl_completion batchctl"),
     ("fish", "complete --command batchctl")],
)
def test_completion_prints_the_script_of_each_shell(run_cli, shell: str, marker: str) -> None:
    outcome = run_cli("completion", shell)
    assert outcome.code == 0, outcome
    assert marker in outcome.out
    assert "_BATCHCTL_COMPLETE=complete_" in outcome.out


def test_completion_of_an_unknown_shell_exits_2(run_cli) -> None:
    outcome = run_cli("completion", "tcsh")
    assert outcome.code == 2
    assert len(outcome.err_lines) == 1 and "tcsh" in outcome.err


def test_the_shell_gets_commands_and_options(run_cli, monkeypatch) -> None:
    """What the bash script asks (COMP_WORDS, COMP_CWORD and the complete variable) is
    answered with the matching commands, then with the command's options."""
    monkeypatch.setenv("_BATCHCTL_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "batchctl pr")
    monkeypatch.setenv("COMP_CWORD", "1")
    assert run_cli().out.split() == ["prune"]

    monkeypatch.setenv("COMP_WORDS", "batchctl prune --")
    monkeypatch.setenv("COMP_CWORD", "2")
    offered = run_cli().out.split()
    assert {"--older-than", "--keep-last", "--job", "--dry-run", "--include-restartable"} <= set(offered)

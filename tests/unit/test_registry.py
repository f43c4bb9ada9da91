"""Job discovery: modules and packages of the jobs directory, and the entry-point group."""

from __future__ import annotations

import importlib.metadata
import textwrap
from pathlib import Path
from typing import Callable

import pytest

from batchctl.errors import JobDefinitionError, UnknownJob
from batchctl.registry import ENTRY_POINT_GROUP, Registry

WriteJob = Callable[[str, str], Path]


def discover(jobs_dir: Path) -> Registry:
    return Registry.discover(jobs_dir, entry_points=False)


def test_every_job_at_the_top_level_of_a_module_is_registered(jobs_dir: Path, write_job: WriteJob) -> None:
    write_job(
        "accounting",
        """
        from batchctl import Job
        eod = Job("eod", description="End of day")
        eom = Job("eom")
        def not_a_job(): pass
        """,
    )
    registry = discover(jobs_dir)
    assert sorted(registry.jobs) == ["eod", "eom"]
    assert registry.get("eod").description == "End of day"
    assert registry.problems == []


def test_a_job_in_a_package_is_registered(jobs_dir: Path) -> None:
    package = jobs_dir / "billing"
    package.mkdir()
    (package / "steps.py").write_text(
        "def charge(ctx):\n    ctx.state['charged'] = True\n"
    )
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            from batchctl import Job
            from .steps import charge
            job = Job("billing")
            job.tasklet(charge)
            """
        )
    )
    registry = discover(jobs_dir)
    assert [step.name for step in registry.get("billing").steps] == ["charge"]


def test_private_files_and_other_files_are_ignored(jobs_dir: Path, write_job: WriteJob) -> None:
    write_job("_helpers", "raise RuntimeError('must not be imported')")
    (jobs_dir / "notes.txt").write_text("not python")
    (jobs_dir / "folder_without_init").mkdir()
    registry = discover(jobs_dir)
    assert registry.jobs == {}
    assert registry.problems == []


def test_a_missing_jobs_directory_gives_no_jobs(tmp_path: Path) -> None:
    registry = discover(tmp_path / "nowhere")
    assert registry.jobs == {}
    assert registry.problems == []


def test_a_broken_module_is_reported_with_file_and_line(jobs_dir: Path, write_job: WriteJob) -> None:
    path = write_job(
        "broken",
        """
        from batchctl import Job
        job = Job("broken")
        raise RuntimeError("cannot load")
        """,
    )
    registry = discover(jobs_dir)
    [problem] = registry.problems
    assert problem.where == f"{path}:4"
    assert "RuntimeError: cannot load" in problem.message


def test_a_syntax_error_is_reported_with_file_and_line(jobs_dir: Path, write_job: WriteJob) -> None:
    path = write_job("typo", "x = 1\ndef broken(:\n    pass\n")
    [problem] = discover(jobs_dir).problems
    assert problem.where == f"{path}:2"
    assert "SyntaxError" in problem.message


def test_a_broken_module_does_not_prevent_other_jobs(jobs_dir: Path, write_job: WriteJob) -> None:
    write_job("a_broken", "import no_such_module_anywhere\n")
    write_job("b_good", "from batchctl import Job\njob = Job('good')\n")
    registry = discover(jobs_dir)
    assert registry.get("good").name == "good"
    assert len(registry.problems) == 1
    assert "ModuleNotFoundError" in registry.problems[0].message


def test_an_unknown_job_error_names_the_known_jobs_and_the_load_problems(
    jobs_dir: Path, write_job: WriteJob
) -> None:
    write_job("a_broken", "raise ValueError('oops')\n")
    write_job("b_good", "from batchctl import Job\njob = Job('good')\n")
    with pytest.raises(UnknownJob) as raised:
        discover(jobs_dir).get("missing")
    message = raised.value.message
    assert "unknown job 'missing'" in message
    assert "known jobs: good" in message
    assert "a_broken.py:1" in message


def test_a_job_named_only_with_digits_is_reported_as_a_load_problem(
    jobs_dir: Path, write_job: WriteJob
) -> None:
    path = write_job("digits", "from batchctl import Job\njob = Job('123')\n")
    [problem] = discover(jobs_dir).problems
    assert problem.where == f"{path}:2"
    assert "only of digits" in problem.message


def test_duplicate_job_names_are_reported_with_both_places(jobs_dir: Path, write_job: WriteJob) -> None:
    first = write_job("first", "from batchctl import Job\njob = Job('same')\n")
    second = write_job("second", "from batchctl import Job\n\njob = Job('same')\n")
    registry = discover(jobs_dir)
    assert "same" not in registry.jobs
    [problem] = registry.problems
    assert problem.where == f"{second}:3"
    assert "duplicate job name 'same'" in problem.message
    with pytest.raises(JobDefinitionError) as raised:
        registry.get("same")
    assert f"{first}:2" in raised.value.message
    assert f"{second}:3" in raised.value.message


def test_a_job_imported_into_another_module_is_not_a_duplicate(jobs_dir: Path, write_job: WriteJob) -> None:
    write_job("base", "from batchctl import Job\njob = Job('shared')\n")
    write_job("reuse", "from batchctl_jobs.base import job\n")
    registry = discover(jobs_dir)
    assert list(registry.jobs) == ["shared"]
    assert registry.problems == []


def test_the_same_module_name_in_another_jobs_directory_is_loaded_afresh(tmp_path: Path) -> None:
    for folder, name in (("one", "first-job"), ("two", "second-job")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "samename.py").write_text(f"from batchctl import Job\njob = Job({name!r})\n")
    assert list(discover(tmp_path / "one").jobs) == ["first-job"]
    assert list(discover(tmp_path / "two").jobs) == ["second-job"]


# -- entry points --------------------------------------------------------------------------------


@pytest.fixture
def entry_point_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed-looking package `plugin_jobs_mod` advertising one job and one broken one."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "plugin_jobs_mod.py").write_text("from batchctl import Job\nplugin = Job('from-plugin')\n")
    monkeypatch.syspath_prepend(str(site))
    points = [
        importlib.metadata.EntryPoint("plugin", "plugin_jobs_mod:plugin", ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("module", "plugin_jobs_mod", ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("gone", "no_such_plugin_module:job", ENTRY_POINT_GROUP),
    ]

    def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
        return points if group == ENTRY_POINT_GROUP else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


@pytest.mark.usefixtures("entry_point_module")
def test_jobs_are_found_through_entry_points(jobs_dir: Path) -> None:
    registry = Registry.discover(jobs_dir)
    assert registry.get("from-plugin").name == "from-plugin"
    [problem] = registry.problems
    assert problem.where.startswith("entry point gone")
    assert "ModuleNotFoundError" in problem.message


@pytest.mark.usefixtures("entry_point_module")
def test_entry_points_can_be_skipped(jobs_dir: Path) -> None:
    registry = Registry.discover(jobs_dir, entry_points=False)
    assert registry.jobs == {}
    assert registry.problems == []

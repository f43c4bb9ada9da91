"""Path templates and SQL binds see a partition's keys beside the job params; relative paths
are relative to the project directory."""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path

from batchctl.items.paths import resolve_path, resolve_url, template_values
from batchctl.job import StepContext


PROJECT = Path("/srv/project")


def _ctx(partition: dict | None, project_dir: Path = PROJECT) -> StepContext:
    ctx = StepContext(
        job_name="j", step_name="s", params={"date": date(2024, 1, 31)}, state={},
        job_context={}, execution_id=1, step_execution_id=1, stop_event=threading.Event(),
        project_dir=project_dir,
    )
    ctx.partition = partition
    return ctx


def test_a_path_template_names_the_partition_keys_beside_the_params() -> None:
    ctx = _ctx({"branch": "north"})
    assert resolve_path("out/{date:%Y%m%d}-{branch}.csv", ctx) == PROJECT / "out/20240131-north.csv"


def test_outside_a_partition_templates_see_the_params_only() -> None:
    assert template_values(_ctx(None)) == {"date": date(2024, 1, 31)}


def test_relative_paths_are_relative_to_the_project_directory_not_the_current_one() -> None:
    ctx = _ctx(None)
    assert resolve_path("data/{date:%Y%m%d}.csv", ctx) == PROJECT / "data/20240131.csv"
    assert resolve_path(lambda ctx: "data/x.csv", ctx) == PROJECT / "data/x.csv"
    assert resolve_path(Path("data/y.csv"), ctx) == PROJECT / "data/y.csv"
    assert resolve_path("/abs/z.csv", ctx) == Path("/abs/z.csv")
    assert resolve_path("~/z.csv", ctx) == Path.home() / "z.csv"


def test_a_relative_sqlite_url_of_an_item_is_relative_to_the_project_directory() -> None:
    ctx = _ctx(None)
    assert resolve_url("sqlite:///data/x.db", ctx) == "sqlite:////srv/project/data/x.db"
    assert resolve_url("sqlite:///data/x.db?timeout=5", ctx) == (
        "sqlite:////srv/project/data/x.db?timeout=5"
    )
    assert resolve_url(lambda ctx: "sqlite:///y.db", ctx) == "sqlite:////srv/project/y.db"
    for literal in ("sqlite:////abs/x.db", "sqlite:///:memory:", "postgresql://u@h/db"):
        assert resolve_url(literal, ctx) == literal


def test_a_context_without_a_project_directory_uses_the_current_one() -> None:
    ctx = StepContext(
        job_name="j", step_name="s", params={}, state={}, job_context={}, execution_id=1,
        step_execution_id=1, stop_event=threading.Event(),
    )
    assert ctx.project_dir == Path.cwd()
    assert resolve_path("x.csv", ctx) == Path.cwd() / "x.csv"

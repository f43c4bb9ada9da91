"""Path templates and SQL binds see a partition's keys beside the job params."""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path

from batchctl.items.paths import resolve_path, template_values
from batchctl.job import StepContext


def _ctx(partition: dict | None) -> StepContext:
    ctx = StepContext(
        job_name="j", step_name="s", params={"date": date(2024, 1, 31)}, state={},
        job_context={}, execution_id=1, step_execution_id=1, stop_event=threading.Event(),
    )
    ctx.partition = partition
    return ctx


def test_a_path_template_names_the_partition_keys_beside_the_params() -> None:
    ctx = _ctx({"branch": "north"})
    assert resolve_path("out/{date:%Y%m%d}-{branch}.csv", ctx) == Path("out/20240131-north.csv")


def test_outside_a_partition_templates_see_the_params_only() -> None:
    assert template_values(_ctx(None)) == {"date": date(2024, 1, 31)}

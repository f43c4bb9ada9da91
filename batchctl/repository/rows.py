"""Rows to domain objects and back: what every query class needs and none should own.

`from_row` turns a row into one of the model's dataclasses; the values written go through the
few helpers here (a context's JSON, a skipped item's text, the changes that end an execution),
so that each has one canonical form whichever query writes it. No queries run here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import fields
from functools import cache
from datetime import date, datetime
from typing import Any, Mapping, TypeVar

from sqlalchemy import Row

from batchctl.model import JobExecution, SkippedItem, Status, StepExecution, storable_json, utcnow

ITEM_TEXT_LIMIT = 4_000  # characters of a skipped item's JSON (or repr) kept in the repository
ERROR_TEXT_LIMIT = 4_000  # characters of a skipped item's error kept

T = TypeVar("T")


def from_row(cls: type[T], row: Row[Any], **overrides: Any) -> T:
    """A domain dataclass from a row whose columns are named as its fields (other columns are
    ignored). Reads the row as a tuple beside its column names: a listing converts thousands
    of rows, and looking each field up in the row's mapping cost more than the query."""
    names = _init_fields(cls)  # type: ignore[arg-type]
    values = {name: value for name, value in zip(row._fields, row) if name in names}
    values.update(overrides)
    return cls(**values)


@cache
def _init_fields(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls) if f.init)


def execution_from_row(row: Row[Any]) -> JobExecution:
    """A JobExecution from a job_execution row joined with its instance's params."""
    return from_row(JobExecution, row, status=Status(row.status))


def step_execution_from_row(row: Row[Any]) -> StepExecution:
    """A StepExecution (a partition too) from a step_execution row."""
    return from_row(StepExecution, row, status=Status(row.status))


def context_json(value: Any, name: str = "ctx.state") -> str:
    """A context as the repository stores it (the same text as JSONText writes); UnstorableValue
    naming the bad key under `name`. Checked before the write, so that a context that is not
    JSON fails with its key named, not as a driver error halfway through a transaction."""
    return storable_json(value, name)


def column_values(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Changes of a domain object as column values: a Status as its text."""
    return {k: (v.value if isinstance(v, Status) else v) for k, v in changes.items()}


def ending(status: Status, message: str | None, ended_at: datetime | None = None) -> dict[str, Any]:
    """The changes that end an execution, a step or a partition with `status`: its exit code
    is the status's name, `message` its exit message (as given: callers that store an empty
    message as NULL pass `message or None`), ended now unless `ended_at` says when.

    As domain changes (`status` a Status): pass through `column_values` for a bulk UPDATE."""
    return {
        "status": status,
        "exit_code": status.value,
        "exit_message": message,
        "ended_at": ended_at if ended_at is not None else utcnow(),
    }


def skip_row(skipped: SkippedItem) -> dict[str, Any]:
    """A skipped_item row: the item and its error as bounded text."""
    return {
        "step_execution_id": skipped.step_execution_id,
        "phase": skipped.phase,
        "position": skipped.position,
        "item": item_text(skipped.item),
        "error": skipped.error_text[:ERROR_TEXT_LIMIT],
        "created_at": skipped.created_at or utcnow(),
    }


def item_text(item: Any) -> str | None:
    """A skipped item as JSON where it can be (dataclasses as objects), else its repr: any item
    a reader produced must be recordable, so this never refuses."""
    if item is None:
        return None
    try:
        text = json.dumps(item, default=_item_json, ensure_ascii=False, sort_keys=False)
    except (TypeError, ValueError):
        text = repr(item)
    return text[:ITEM_TEXT_LIMIT]


def _item_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return str(value)


__all__ = [
    "ERROR_TEXT_LIMIT",
    "ITEM_TEXT_LIMIT",
    "column_values",
    "context_json",
    "ending",
    "execution_from_row",
    "from_row",
    "item_text",
    "skip_row",
    "step_execution_from_row",
]

"""Paths and URLs as templates over the job params (and a partition's keys)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Union

from batchctl.errors import JobDefinitionError

PathTemplate = Union[str, "os.PathLike[str]", Callable[[Any], Union[str, "os.PathLike[str]"]]]


def resolve_path(template: PathTemplate, ctx: Any) -> Path:
    """`template` formatted with the job params (`"out/{date:%Y%m%d}.csv"`) and, in a
    partition, its context's keys; or `template(ctx)` when it is a function; `~` is expanded.

    A relative path is relative to the project directory (`ctx.project_dir`: the config
    file's folder), not to the current one, so that a job started by cron, from another folder
    or by a service reads and writes the same files."""
    if callable(template):
        value: Any = template(ctx)
    elif isinstance(template, str):
        value = format_template(template, template_values(ctx))
    else:
        value = template
    return in_project(Path(os.path.expanduser(os.fspath(value))), ctx)


def in_project(path: Path, ctx: Any) -> Path:
    """`path` made absolute against the project directory of `ctx` (unchanged when it is
    absolute, or when `ctx` names no project directory)."""
    base = getattr(ctx, "project_dir", None)
    if path.is_absolute() or base is None:
        return path
    return Path(base) / path


def resolve_url(url: str | Callable[[Any], str], ctx: Any) -> str:
    """A database URL as given, or `url(ctx)` when it is a function; a relative SQLite file
    (`sqlite:///data/x.db`) is relative to the project directory, as the repository's is."""
    value = str(url(ctx)) if callable(url) else url
    prefix = "sqlite:///"
    if value.startswith(prefix) and not value.startswith(prefix + "/"):
        rest = value[len(prefix):]
        path, sep, query = rest.partition("?")
        if path and path != ":memory:" and not path.startswith("file:"):
            return f"{prefix}{in_project(Path(path), ctx)}{sep}{query}"
    return value


def template_values(ctx: Any) -> dict[str, Any]:
    """What templates and SQL binds may name: the job params, then the partition's keys."""
    return {**ctx.params, **(getattr(ctx, "partition", None) or {})}


def format_template(template: str, params: Mapping[str, Any]) -> str:
    try:
        return template.format_map(params)
    except KeyError as exc:
        raise JobDefinitionError(
            f"path {template!r} names param {exc.args[0]!r}, which the job was not given"
        ) from None
    except (ValueError, IndexError, AttributeError) as exc:
        raise JobDefinitionError(f"invalid path template {template!r}: {exc}") from None

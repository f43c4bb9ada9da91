"""Paths and URLs as templates over the job params (and a partition's keys)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Union

from batchctl.errors import JobDefinitionError

PathTemplate = Union[str, "os.PathLike[str]", Callable[[Any], Union[str, "os.PathLike[str]"]]]


def resolve_path(template: PathTemplate, ctx: Any) -> Path:
    """`template` formatted with the job params (`"out/{date:%Y%m%d}.csv"`) and, in a
    partition, its context's keys; or `template(ctx)` when it is a function; `~` is expanded."""
    if callable(template):
        value: Any = template(ctx)
    elif isinstance(template, str):
        value = format_template(template, template_values(ctx))
    else:
        value = template
    return Path(os.path.expanduser(os.fspath(value)))


def resolve_url(url: str | Callable[[Any], str], ctx: Any) -> str:
    """A database URL as given (taken literally), or `url(ctx)` when it is a function."""
    return str(url(ctx)) if callable(url) else url


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

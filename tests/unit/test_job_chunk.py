"""Declaring chunk steps: the decorator, the form without processor, and what is refused."""

from __future__ import annotations

import pytest

from batchctl import Job
from batchctl.errors import JobDefinitionError
from batchctl.job import DEFAULT_RETRY_LIMIT, DEFAULT_SKIP_LIMIT, LISTENER_METHODS


def read(ctx):
    return []


def write(items, ctx):
    pass


def test_chunk_decorator_and_chunk_step():
    job = Job("chunky")

    @job.chunk(reader=read, writer=write, size=50, skip=ValueError, retry=(OSError,))
    def post(item, ctx):
        """Posts one entry."""
        return item

    step = job.chunk_step("copy", reader=read, writer=write)
    first, second = job.steps
    assert (first.name, first.kind, first.chunk.processor, first.description) == ("post", "chunk", post, "Posts one entry.")
    assert first.chunk.size == 50 and first.chunk.skip == (ValueError,) and first.chunk.retry == (OSError,)
    assert first.chunk.skip_limit == DEFAULT_SKIP_LIMIT and first.chunk.retry_limit == DEFAULT_RETRY_LIMIT
    assert second is step and step.chunk.processor is None and step.description == ""
    assert step.chunk.skip_limit == 0 and step.chunk.retry_limit == 0 and step.chunk.size == 100
    assert {"before_chunk", "after_chunk", "on_chunk_error", "on_skip"} <= set(LISTENER_METHODS)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"size": 0}, "size must be a positive integer"),
        ({"reader": 5}, "reader must be"),
        ({"writer": object()}, "writer must be"),
        ({"skip": "ValueError"}, "skip must name exception types"),
        ({"retry": ValueError, "retry_limit": -1}, "retry_limit"),
        ({"skip": ValueError, "skip_limit": 1.5}, "skip_limit"),
        ({"backoff": -1}, "backoff"),
    ],
)
def test_bad_chunk_declarations_are_refused(options, message):
    job = Job("bad")
    arguments = {"reader": read, "writer": write, **options}
    with pytest.raises(JobDefinitionError, match=message):
        job.chunk_step("step", **arguments)


def test_listener_object_with_only_chunk_methods_is_accepted():
    class Skips:
        def on_skip(self, ctx, skipped):
            pass

    job = Job("listened")
    assert job.listener(Skips()) in job.listeners

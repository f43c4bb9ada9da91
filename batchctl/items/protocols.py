"""What a reader and a writer object provide: the protocols the chunk loop relies on.

A job may also give plain functions (`read(ctx) -> Iterable[item]`, `write(items, ctx)`); see
batchctl.adapters for how both forms meet the chunk loop. The record protocols are an optional
fast path: when no processor sees the items, a reader offering records and a writer taking them
pass tuples instead of building a dict per item.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable


@runtime_checkable
class ItemReader(Protocol):
    """`open(ctx, state)` with the last committed `state()` (empty at first), so a restart
    seeks; `read()` gives one item, None at the end. Without `state()` a restart reads past the
    committed items instead of seeking."""

    def open(self, ctx: Any, state: dict[str, Any]) -> None: ...
    def read(self) -> Any: ...
    def state(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


@runtime_checkable
class ItemWriter(Protocol):
    """`write(items)` a chunk at a time; `state()` is committed with each chunk and handed back
    to `open` on restart. Optional: `complete()` once the last chunk committed, and
    `transactional` (true unless it says otherwise: it writes through `ctx.connection`, inside
    the chunk's transaction)."""

    def open(self, ctx: Any, state: dict[str, Any]) -> None: ...
    def write(self, items: list[Any]) -> None: ...
    def state(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class RecordReader(Protocol):
    """Optional fast path of a reader whose dicts could as well be tuples."""

    def record_names(self) -> Sequence[str] | None: ...
    def use_records(self) -> None: ...
    def read_chunk(
        self, size: int, on_error: Callable[[BaseException, Any, int | None], None]
    ) -> list[Any] | None: ...


class RecordWriter(Protocol):
    """Optional fast path of a writer that takes tuples in the order of `names`."""

    def take_records(self, names: Sequence[str]) -> bool: ...


ReaderFunction = Callable[[Any], Iterable[Any]]
WriterFunction = Callable[[list[Any], Any], Any]

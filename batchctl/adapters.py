"""Readers and writers in either form, behind the one interface the chunk loop uses.

A reader is a function `read(ctx) -> Iterable[item]` or an object (batchctl.items.protocols
`ItemReader`); a writer a function `write(items, ctx)` or an object (`ItemWriter`). The chunk
loop sees `read_chunk(size, on_error)`, `state()`, `close()` and `total` of a reader, and
`write(items)`, `state()`, `reset(state)`, `complete()`, `close()` and `transactional` of a
writer, whichever form the job gave.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

from batchctl.job import StepContext

OnReadError = Callable[[BaseException, Any, "int | None"], None]
"""`on_error(error, raw_item, position)`: records a read error as a skip, or raises it."""


class FunctionReader:
    """A function `read(ctx) -> Iterable`: a restart skips the items already committed.

    An error raised by the iterable ends it (a generator cannot go on), so it fails the step.
    """

    def __init__(self, function: Callable[[StepContext], Any], ctx: StepContext, state: Any) -> None:
        self.position = int((state or {}).get("position", 0))
        iterable = function(ctx)
        try:
            self.total: int | None = len(iterable)
        except TypeError:
            self.total = None
        self._items = iter(iterable)
        if self.position:
            next(itertools.islice(self._items, self.position, self.position), None)

    def read_chunk(self, size: int, on_error: OnReadError) -> list[Any] | None:
        items = list(itertools.islice(self._items, size))
        if not items:
            return None
        self.position += len(items)
        return items

    def state(self) -> dict[str, Any]:
        return {"position": self.position}

    def close(self) -> None:
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


class ObjectReader:
    """An object with `open(ctx, state)`, `read()` (None at the end), `state()`, `close()`;
    `read_chunk(size, on_error)` when it has one (the built-in readers do: it is faster).

    A reader without `state()` cannot seek: on restart it is read past the records already
    committed, as a function reader is, never silently from its first item again.
    """

    def __init__(self, reader: Any, ctx: StepContext, state: Any, position: int) -> None:
        self.reader = reader
        self.position = position
        opener = getattr(reader, "open", None)
        if opener is not None:
            opener(ctx, dict(state or {}))
        total = getattr(reader, "total", None)
        self.total = total() if callable(total) else None
        self._ended = False
        if not callable(getattr(reader, "state", None)) and position:
            self._read_past(position)
        fast = getattr(reader, "read_chunk", None)
        if fast is not None:
            self.read_chunk = fast  # type: ignore[method-assign]

    def _read_past(self, committed: int) -> None:
        """Consume the `committed` records (failed reads included) a stateless reader gave
        before the restart."""
        for _ in range(committed):
            try:
                if self.reader.read() is None:
                    self._ended = True
                    return
            except Exception:
                continue

    def read_chunk(self, size: int, on_error: OnReadError) -> list[Any] | None:
        if self._ended:
            return None
        read = self.reader.read
        items: list[Any] = []
        consumed = 0
        while consumed < size:
            try:
                item = read()
            except Exception as exc:
                consumed += 1
                on_error(exc, None, self.position + consumed)
                continue
            if item is None:
                self._ended = True
                break
            consumed += 1
            items.append(item)
        self.position += consumed
        return items if consumed else None

    def state(self) -> Any:
        state = getattr(self.reader, "state", None)
        return state() if state is not None else None

    def close(self) -> None:
        close = getattr(self.reader, "close", None)
        if close is not None:
            close()


class FunctionWriter:
    """A function `write(items, ctx)`: it may write through `ctx.connection`, so it writes
    inside the chunk's transaction."""

    transactional = True

    def __init__(self, function: Callable[[list[Any], StepContext], Any], ctx: StepContext) -> None:
        self._function = function
        self._ctx = ctx

    def write(self, items: list[Any]) -> None:
        self._function(items, self._ctx)

    def state(self) -> None:
        return None

    def reset(self, state: Any) -> None:
        pass

    def complete(self) -> None:
        pass

    def close(self) -> None:
        pass


class ObjectWriter:
    """An object with `open(ctx, state)`, `write(items)`, `state()`, `close()`, and optionally
    `complete()` (called once the last chunk committed) and `transactional` (whether it writes
    through `ctx.connection`; true unless it says otherwise)."""

    def __init__(self, writer: Any, ctx: StepContext, state: Any) -> None:
        self.writer = writer
        self._ctx = ctx
        self.transactional = bool(getattr(writer, "transactional", True))
        self.write = writer.write
        self._open(state)

    def _open(self, state: Any) -> None:
        opener = getattr(self.writer, "open", None)
        if opener is not None:
            opener(self._ctx, dict(state or {}))

    def state(self) -> Any:
        state = getattr(self.writer, "state", None)
        return state() if state is not None else None

    def reset(self, state: Any) -> None:
        """Back to the last committed state after a rolled-back chunk (a file is truncated)."""
        if getattr(self.writer, "open", None) is not None:
            self.close()
            self._open(state)

    def complete(self) -> None:
        complete = getattr(self.writer, "complete", None)
        if complete is not None:
            complete()

    def close(self) -> None:
        close = getattr(self.writer, "close", None)
        if close is not None:
            close()


def open_reader(reader: Any, ctx: StepContext, state: Any, position: int) -> Any:
    if callable(getattr(reader, "read", None)):
        return ObjectReader(reader, ctx, state, position)
    return FunctionReader(reader, ctx, state)


def open_writer(writer: Any, ctx: StepContext, state: Any) -> Any:
    if callable(getattr(writer, "write", None)):
        return ObjectWriter(writer, ctx, state)
    return FunctionWriter(writer, ctx)


def agree_on_records(reader: Any, writer: Any) -> list[str] | None:
    """When no processor sees the items, a reader whose dicts could as well be tuples
    (`record_names()`, `use_records()`) and a writer that takes such tuples (`take_records`)
    pass tuples: the same rows, without building a dict per item. The column names, or None."""
    source = getattr(reader, "reader", None)
    sink = getattr(writer, "writer", None)
    offer = getattr(source, "record_names", None)
    take = getattr(sink, "take_records", None)
    if source is None or offer is None or take is None:
        return None
    names = offer()
    if not names or not take(names):
        return None
    source.use_records()
    return list(names)

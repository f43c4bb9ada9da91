"""JSON Lines files: one JSON value per line."""

from __future__ import annotations

import dataclasses
import itertools
import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Callable

from batchctl.items.files import FileWriter, open_for_reading
from batchctl.items.paths import PathTemplate, resolve_path

_loads = json.loads


class JsonLinesReader:
    """Reads a JSON Lines file: each line one item (usually a dict). Blank lines are ignored;
    a line that is not JSON is a read error (skippable with `skip=(ValueError,)`), recorded
    with its line number."""

    def __init__(self, path: PathTemplate, *, encoding: str = "utf-8") -> None:
        self.template = path
        self.encoding = encoding
        self._file: Any = None
        self._line = 0

    def open(self, ctx: Any, state: dict[str, Any]) -> None:
        path = resolve_path(self.template, ctx)
        self._file, _ = open_for_reading(path, self.encoding, state)
        self._line = int(state.get("line", 0))
        if "offset" in state:
            self._file.seek(int(state["offset"]))

    def read(self) -> Any:
        """One item, or None at the end (the chunk loop uses the faster `read_chunk`)."""
        for line in self._file:
            self._line += 1
            if line.strip():
                return _loads(line)
        return None

    def read_chunk(
        self, size: int, on_error: Callable[[BaseException, Any, int | None], None]
    ) -> list[Any] | None:
        lines = list(itertools.islice(self._file, size))
        if not lines:
            return None
        try:
            items = list(map(_loads, lines))
        except ValueError:
            items = []
            for number, line in enumerate(lines, start=self._line + 1):
                if not line.strip():
                    continue
                try:
                    items.append(_loads(line))
                except ValueError as exc:
                    on_error(exc, line.decode(self.encoding, "replace").rstrip("\r\n"), number)
        self._line += len(lines)
        return items

    def state(self) -> dict[str, Any]:
        return {"offset": self._file.tell(), "line": self._line}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _json_default(value: Any) -> Any:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class JsonLinesWriter(FileWriter):
    """Writes each item as one line of JSON (dates as ISO text, dataclasses as objects).

    Only standard JSON: an item holding a float NaN or Infinity, which JSON has no form for,
    is refused with a ValueError (skippable with `skip=(ValueError,)` on the step) rather
    than written as `NaN`, which other readers of the file would reject.

    ```
    JsonLinesWriter("out/events-{date:%Y%m%d}.jsonl", atomic=True)
    ```
    """

    def __init__(
        self,
        path: PathTemplate,
        *,
        encoding: str = "utf-8",
        atomic: bool = False,
        checksum: bool = False,
        sort_keys: bool = False,
    ) -> None:
        super().__init__(path, atomic=atomic, checksum=checksum)
        self.encoding = encoding
        self._dumps = json.JSONEncoder(
            ensure_ascii=False,
            separators=(",", ":"),
            sort_keys=sort_keys,
            default=_json_default,
            allow_nan=False,
        ).encode

    def write(self, items: list[Any]) -> None:
        if items:
            try:
                text = "\n".join(map(self._dumps, items)) + "\n"
            except ValueError as exc:
                if "Out of range float" not in str(exc):
                    raise
                raise ValueError(
                    "an item holds a float NaN or Infinity, which JSON has no form for"
                ) from None
            self.emit(text.encode(self.encoding))

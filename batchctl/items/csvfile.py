"""CSV files: `CsvReader` (rows as dicts or dataclasses, typed) and `CsvWriter`.

The reader parses with the `csv` module over the file's binary lines, so that its byte offset
after each chunk is known: a restart seeks there. Conversion of a row is one generated function
(a dict display or a dataclass call), the fastest Python has.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import itertools
import typing
from datetime import date, datetime
from decimal import Decimal
from operator import attrgetter, itemgetter
from typing import Any, Callable, Iterable, Mapping, Sequence

from batchctl.errors import JobDefinitionError
from batchctl.items.files import FileWriter, line_decoder, open_for_reading
from batchctl.items.paths import PathTemplate, resolve_path

Converter = Callable[[str], Any]

_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_date(text: str) -> date:
    return date.fromisoformat(text)


def _parse_datetime(text: str) -> datetime:
    return datetime.fromisoformat(text)


# How a declared type converts a field; any other callable converts as itself.
CONVERTERS: dict[Any, Converter] = {
    str: str,
    int: int,
    float: float,
    bool: parse_bool,
    Decimal: Decimal,
    date: _parse_date,
    datetime: _parse_datetime,
}


def converter_for(kind: Any) -> Converter | None:
    """The converter for a type (None for str: kept as read), unwrapping `X | None`."""
    args = typing.get_args(kind)
    if args and type(None) in args:
        rest = [arg for arg in args if arg is not type(None)]
        if len(rest) == 1:
            kind = rest[0]
    if kind is str or kind is Any:
        return None
    if kind in CONVERTERS:
        return CONVERTERS[kind]
    if callable(kind):
        return kind  # type: ignore[no-any-return]
    raise JobDefinitionError(f"cannot convert CSV fields to {kind!r}")


def build_row_converter(
    names: Sequence[str], types: Mapping[str, Any], row_type: Any, *, many: bool = False
) -> Callable[[Any], Any]:
    """A function from one CSV record (a list of str) to an item; with `many`, from a list of
    records to a list of items (one list comprehension: no Python call per record).

    A record must have exactly `len(names)` fields. A typed field that is empty becomes None.
    """
    namespace: dict[str, Any] = {"row_type": row_type}
    values = []
    for index, name in enumerate(names):
        convert = converter_for(types[name]) if name in types else None
        if convert is None:
            values.append(f"v{index}")
        else:
            namespace[f"c{index}"] = convert
            values.append(f"(c{index}(v{index}) if v{index} else None)")
    # No names (an empty file): `()` unpacks a record of no fields, and refuses any other.
    targets = "".join(f"v{index}, " for index in range(len(names))) or "() "
    if row_type is dict:
        body = "{" + ", ".join(f"{name!r}: {value}" for name, value in zip(names, values)) + "}"
    elif row_type is tuple:
        body = "(" + "".join(f"{value}, " for value in values) + ")"
    else:
        fields = {field.name for field in dataclasses.fields(row_type)}
        body = "row_type(" + ", ".join(
            f"{name}={value}" for name, value in zip(names, values) if name in fields
        ) + ")"
    if many:
        source = f"def convert(rows):\n    return [{body} for {targets}in rows]\n"
    else:
        source = f"def convert(row):\n    {targets}= row\n    return {body}\n"
    exec(compile(source, "<batchctl csv row>", "exec"), namespace)  # noqa: S102 - our own text
    return namespace["convert"]  # type: ignore[no-any-return]


class CsvReader:
    """Reads a CSV file: each record an item, a dict keyed by the header (or a dataclass, or a
    tuple in the file's column order).

    ```
    CsvReader("data/entries-{date:%Y%m%d}.csv", types={"amount_cents": int})
    CsvReader("data/entries.csv", row_type=Entry)   # fields converted by their annotations
    ```

    `types` maps columns to a type (`int`, `float`, `Decimal`, `bool`, `date`, `datetime`) or
    any function of the text; an empty typed field becomes None. With `header=False` give
    `fieldnames`. A record that does not convert (or has the wrong number of fields) is a read
    error: skippable with `skip=(ValueError,)` on the step, recorded with its record number.
    Blank lines are ignored. Encodings must be ASCII-compatible (UTF-8, Latin-1, cp1252...).
    A file with no header (empty, blank or only a byte-order mark) is zero items: an empty
    extract is a normal day, not an error.
    """

    def __init__(
        self,
        path: PathTemplate,
        *,
        types: Mapping[str, Any] | None = None,
        row_type: Any = dict,
        fieldnames: Sequence[str] | None = None,
        header: bool = True,
        dialect: str | type[csv.Dialect] = "excel",
        encoding: str = "utf-8",
        **fmtparams: Any,
    ) -> None:
        if row_type not in (dict, tuple) and not dataclasses.is_dataclass(row_type):
            raise JobDefinitionError("CsvReader row_type must be dict, tuple or a dataclass")
        if not header and not fieldnames:
            raise JobDefinitionError("CsvReader with header=False needs fieldnames")
        self.template = path
        self.types = dict(types or {})
        self.row_type = row_type
        self.fieldnames = list(fieldnames) if fieldnames else None
        self.header = header
        self.dialect = dialect
        self.encoding = encoding
        self.fmtparams = fmtparams
        self.names: list[str] = []
        self._file: Any = None
        self._rows: Any = None
        self._record = 0

    def open(self, ctx: Any, state: dict[str, Any]) -> None:
        path = resolve_path(self.template, ctx)
        self._file, _ = open_for_reading(path, self.encoding, state)
        try:
            self._start(path, state)
        except BaseException:
            self.close()
            raise

    def _start(self, path: Any, state: dict[str, Any]) -> None:
        lines = map(line_decoder(self.encoding), self._file)
        self._rows = csv.reader(lines, self.dialect, **self.fmtparams)
        names = next(filter(None, self._rows), None) if self.header else None  # past blank lines
        empty = self.header and names is None  # nothing but blank lines: zero items
        if self.fieldnames:
            names = self.fieldnames
        if names is None:
            names = []
        self.names = list(names)
        types = dict(self.types)
        if dataclasses.is_dataclass(self.row_type) and not empty:
            hints = typing.get_type_hints(self.row_type)
            fields = [field.name for field in dataclasses.fields(self.row_type)]
            missing = [name for name in fields if name not in self.names]
            if missing:
                raise JobDefinitionError(
                    f"{path}: no column for field(s) {', '.join(missing)} of "
                    f"{getattr(self.row_type, '__name__', self.row_type)} (columns: {', '.join(self.names)})"
                )
            for name in fields:
                types.setdefault(name, hints.get(name, str))
        self._use(self.row_type, types)
        self._record = int(state.get("record", 0))
        if "offset" in state:
            self._file.seek(int(state["offset"]))

    def record_names(self) -> list[str] | None:
        """The column names, when rows are dicts that could as well be tuples (records)."""
        return list(self.names) if self.row_type is dict and self.names else None

    def use_records(self) -> None:
        """Read tuples in the order of `record_names()` instead of dicts: a chunk step with no
        processor does this when its writer takes records too, so that no dict is built."""
        self._use(tuple, self._types)

    def _use(self, row_type: Any, types: dict[str, Any]) -> None:
        self._types = types
        self._convert = build_row_converter(self.names, types, row_type)
        self._convert_all = build_row_converter(self.names, types, row_type, many=True)

    def read(self) -> Any:
        """One item, or None at the end (the chunk loop uses the faster `read_chunk`)."""
        while True:
            row = next(self._rows, None)
            if row is None:
                return None
            if row:
                self._record += 1
                return self._convert_one(row)

    def read_chunk(
        self, size: int, on_error: Callable[[BaseException, Any, int | None], None]
    ) -> list[Any] | None:
        """Up to `size` records as items; None at the end. `on_error(error, raw, record)` gets
        each record that does not parse or convert (and raises when it may not be skipped).

        The records are converted as they are parsed, so that no list of raw records stays
        alive (a thousand lists per chunk would wake the garbage collector every chunk). On any
        error the chunk is read again from its start, record by record, to learn which failed.
        """
        start = self._file.tell()
        try:
            items = self._convert_all(itertools.islice(self._rows, size))
        except Exception:  # a blank line, a bad record: again, one by one
            self._file.seek(start)
            return self._read_each(size, on_error)
        if not items:
            return None
        self._record += len(items)
        return items

    def _read_each(
        self, size: int, on_error: Callable[[BaseException, Any, int | None], None]
    ) -> list[Any] | None:
        rows: list[list[str]] = []
        failures = 0
        while len(rows) + failures < size:
            try:
                rows.extend(itertools.islice(self._rows, size - len(rows) - failures))
                break
            except csv.Error as exc:
                failures += 1
                on_error(exc, None, self._record + len(rows) + failures)
        if not rows:
            self._record += failures
            return [] if failures else None
        try:
            items = self._convert_all(rows)
        except Exception:  # a blank line, a bad record: convert one by one to learn which
            items = self._convert_each(rows, on_error)
        self._record += len(rows) + failures
        return items

    def _convert_each(
        self, rows: list[list[str]], on_error: Callable[[BaseException, Any, int | None], None]
    ) -> list[Any]:
        items = []
        for index, row in enumerate(rows, start=self._record + 1):
            if not row:
                continue  # a blank line
            try:
                items.append(self._convert_one(row))
            except Exception as exc:
                on_error(self._naming_column(exc, row), self._raw(row), index)
        return items

    def _naming_column(self, error: Exception, row: list[str]) -> Exception:
        """`error` with the column whose conversion raised it named first (`column 'amount':
        invalid literal...`), of the same type, so that `skip=` rules still match it; `error`
        itself when no single column is to blame (a record of the wrong length)."""
        if len(row) != len(self.names):
            return error
        for name, text in zip(self.names, row):
            convert = converter_for(self._types[name]) if name in self._types else None
            if convert is None or not text:
                continue
            try:
                convert(text)
            except Exception:
                try:
                    named = type(error)(f"column {name!r}: {error}")
                except Exception:  # an exception type that takes other arguments
                    return error
                named.__cause__ = error
                return named
        return error

    def _convert_one(self, row: list[str]) -> Any:
        if len(row) != len(self.names):
            raise ValueError(f"the record has {len(row)} fields, the header {len(self.names)}")
        return self._convert(row)

    def _raw(self, row: list[str]) -> Any:
        return dict(zip(self.names, row)) if len(row) == len(self.names) else row

    def state(self) -> dict[str, Any]:
        return {"offset": self._file.tell(), "record": self._record}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class CsvWriter(FileWriter):
    """Writes items as CSV records: dicts (by key), dataclasses (by field) or sequences.

    ```
    CsvWriter("out/balances-{date:%Y%m%d}.csv", atomic=True, checksum=True)
    ```

    `fields` chooses and orders the columns (default: the first item's keys or fields); a
    header is written unless `header=False`. Each chunk is formatted whole before a byte is
    written, so an item that cannot be formatted writes nothing and can be skipped. With
    `fields` the header is written on opening, so that zero items still make a CSV file with
    its header; without, zero items make an empty file (there is no item to take columns from).
    """

    def __init__(
        self,
        path: PathTemplate,
        *,
        fields: Sequence[str] | None = None,
        header: bool = True,
        dialect: str | type[csv.Dialect] = "excel",
        encoding: str = "utf-8",
        atomic: bool = False,
        checksum: bool = False,
        **fmtparams: Any,
    ) -> None:
        super().__init__(path, atomic=atomic, checksum=checksum)
        self.fields = list(fields) if fields else None
        self.header = header
        self.dialect = dialect
        self.encoding = encoding
        self.fmtparams = fmtparams
        self._fields: list[str] | None = None
        self._getter: Callable[[Any], Any] | None = None
        self._records = False
        self._buffer = io.StringIO()
        self._csv = csv.writer(self._buffer, dialect, **fmtparams)

    def __deepcopy__(self, memo: dict[int, Any]) -> CsvWriter:
        """A writer of its own with the same settings (each partition of a partitioned step
        gets one): a new buffer and csv writer, as a newly built writer has."""
        clone = copy.copy(self)
        kept = {k: v for k, v in vars(self).items() if k not in ("_buffer", "_csv")}
        vars(clone).update(copy.deepcopy(kept, memo))
        clone._buffer = io.StringIO()
        clone._csv = csv.writer(clone._buffer, clone.dialect, **clone.fmtparams)
        return clone

    def restore(self, state: dict[str, Any]) -> None:
        saved = state.get("fields")
        self._fields = list(saved) if saved else self.fields
        self._getter = None
        if self.fresh and self.header and self._fields:
            self._csv.writerow(self._fields)
            self.emit(self._buffer.getvalue().encode(self.encoding))
            self._buffer.seek(0)
            self._buffer.truncate()

    def saved_state(self) -> dict[str, Any]:
        return {"fields": self._fields} if self._fields else {}

    def take_records(self, names: Sequence[str]) -> bool:
        """Take tuples in the order of `names` instead of dicts, if those are its columns."""
        if self.fields is not None and list(self.fields) != list(names):
            return False
        self.fields = list(names)
        self._records = True
        if not self._fields:
            self._fields = list(names)
        self._getter = None
        return True

    def write(self, items: list[Any]) -> None:
        if not items:
            return
        buffer = self._buffer
        buffer.seek(0)
        buffer.truncate()
        if self._getter is None:
            self._start(items[0])
            if self.fresh and self.header and self._fields:
                self._csv.writerow(self._fields)
        self._csv.writerows(map(self._getter, items))  # type: ignore[arg-type]
        self.emit(buffer.getvalue().encode(self.encoding))

    def _start(self, first: Any) -> None:
        if self._fields is None:
            if isinstance(first, Mapping):
                self._fields = [str(key) for key in first]
            elif dataclasses.is_dataclass(first):
                self._fields = [field.name for field in dataclasses.fields(first)]
            elif self.header:
                raise JobDefinitionError("CsvWriter needs fields= to write a header for sequences")
        self._getter = _as_record if self._records else _getter(first, self._fields)


def _getter(first: Any, fields: list[str] | None) -> Callable[[Any], Any]:
    """A C-level function from an item to its record (a tuple of fields)."""
    if isinstance(first, Mapping) or dataclasses.is_dataclass(first):
        assert fields is not None
        get = itemgetter(*fields) if isinstance(first, Mapping) else attrgetter(*fields)
        if len(fields) == 1:
            return lambda item: (get(item),)
        return get
    return _as_record


def _as_record(item: Iterable[Any]) -> Iterable[Any]:
    return item

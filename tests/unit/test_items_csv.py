"""CsvReader and CsvWriter: conversion, seeking restarts, truncation, atomic finish, checksums."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from batchctl.errors import JobDefinitionError
from batchctl.items import CsvReader, CsvWriter, resolve_path
from batchctl.items.files import CheckpointMismatch


def ctx(**params: Any) -> Any:
    return SimpleNamespace(params=params, engine=None, connection=None)


def read_all(reader: Any, size: int = 3, errors: list[Any] | None = None) -> list[Any]:
    def on_error(error: BaseException, raw: Any, position: int | None) -> None:
        if errors is None:
            raise error
        errors.append((type(error).__name__, raw, position))

    items: list[Any] = []
    while (chunk := reader.read_chunk(size, on_error)) is not None:
        items.extend(chunk)
    return items


def test_path_templates_format_params_and_dates():
    assert resolve_path("data/e-{date:%Y%m%d}-{n}.csv", ctx(date=date(2024, 1, 31), n=3)) == Path(
        "data/e-20240131-3.csv"
    )
    assert resolve_path(lambda c: f"x/{c.params['n']}", ctx(n=1)) == Path("x/1")
    with pytest.raises(JobDefinitionError, match="names param 'day'"):
        resolve_path("{day}.csv", ctx(date=date(2024, 1, 31)))


def test_reader_types_blank_lines_bom_and_quoted_newlines(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(
        b"\xef\xbb\xbfid,name,amount,day,ok\r\n1,\"two\r\nlines\",1.50,2024-01-31,yes\r\n\r\n"
        b"2,plain,,2024-02-01,false\r\n"
    )
    reader = CsvReader(path, types={"id": int, "amount": Decimal, "day": date, "ok": bool})
    reader.open(ctx(), {})
    assert read_all(reader) == [
        {"id": 1, "name": "two\r\nlines", "amount": Decimal("1.50"), "day": date(2024, 1, 31), "ok": True},
        {"id": 2, "name": "plain", "amount": None, "day": date(2024, 2, 1), "ok": False},
    ]
    reader.close()


@dataclass
class Entry:
    id: int
    amount: float
    note: str | None = None


def test_reader_builds_dataclasses_by_their_annotations(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("amount,id,extra\n2.5,1,x\n3,2,y\n")
    reader = CsvReader(path, row_type=Entry)
    with pytest.raises(JobDefinitionError, match="note"):
        reader.open(ctx(), {})
    path.write_text("amount,id,note\n2.5,1,x\n3,2,\n")
    reader.open(ctx(), {})
    assert read_all(reader) == [Entry(1, 2.5, "x"), Entry(2, 3.0, "")]
    reader.close()


def test_bad_records_go_to_on_error_with_their_record_number(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,amount\n1,10\n2,zehn\n3\n4,40\n")
    reader = CsvReader(path, types={"id": int, "amount": int})
    reader.open(ctx(), {})
    errors: list[Any] = []
    assert read_all(reader, size=10, errors=errors) == [{"id": 1, "amount": 10}, {"id": 4, "amount": 40}]
    reader.close()
    assert errors == [("ValueError", {"id": "2", "amount": "zehn"}, 2), ("ValueError", ["3"], 3)]


def test_reader_restarts_at_its_saved_offset_without_rereading(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("n\n" + "".join(f"{i}\n" for i in range(10)))
    first = CsvReader(path, types={"n": int})
    first.open(ctx(), {})
    assert [r["n"] for r in first.read_chunk(4, None)] == [0, 1, 2, 3]  # type: ignore[arg-type]
    state = first.state()
    first.close()
    second = CsvReader(path, types={"n": int})
    second.open(ctx(), state)
    assert [r["n"] for r in read_all(second)] == [4, 5, 6, 7, 8, 9]
    second.close()


def test_writer_truncates_to_the_committed_offset_on_restart(tmp_path):
    path = tmp_path / "out.csv"
    writer = CsvWriter(path)
    writer.open(ctx(), {})
    writer.write([{"a": 1, "b": "x,y"}, {"a": 2, "b": None}])
    committed = writer.state()
    writer.write([{"a": 3, "b": "lost"}])  # written, never committed
    writer.close()
    again = CsvWriter(path)
    again.open(ctx(), committed)
    again.write([{"a": 3, "b": "z"}])
    again.close()
    assert path.read_bytes().decode() == 'a,b\r\n1,"x,y"\r\n2,\r\n3,z\r\n'
    assert committed == {"offset": len(b'a,b\r\n1,"x,y"\r\n2,\r\n'), "fields": ["a", "b"]}


def test_writer_refuses_a_file_shorter_than_its_checkpoint(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("a\n")
    writer = CsvWriter(path)
    with pytest.raises(CheckpointMismatch):
        writer.open(ctx(), {"offset": 100})


def test_atomic_finish_with_checksum(tmp_path):
    writer = CsvWriter(str(tmp_path / "out-{day}.csv"), fields=["b", "a"], atomic=True, checksum=True)
    writer.open(ctx(day="d1"), {})
    writer.write([{"a": 1, "b": 2}])
    part = tmp_path / "out-d1.csv.part"
    assert part.exists() and not (tmp_path / "out-d1.csv").exists()
    state = writer.state()
    writer.close()
    # Renamed by an earlier attempt that died before the step was recorded complete:
    part.replace(tmp_path / "out-d1.csv")
    writer.open(ctx(day="d1"), state)
    writer.write([{"a": 3, "b": 4}])
    writer.complete()
    writer.close()
    final = tmp_path / "out-d1.csv"
    assert final.read_bytes().decode() == "b,a\r\n2,1\r\n4,3\r\n" and not part.exists()
    digest = hashlib.sha256(final.read_bytes()).hexdigest()
    assert (tmp_path / "out-d1.csv.sha256").read_text() == f"{digest}  out-d1.csv\n"


def test_writer_writes_nothing_of_a_chunk_with_an_unformattable_item(tmp_path):
    path = tmp_path / "out.csv"
    writer = CsvWriter(path)
    writer.open(ctx(), {})
    writer.write([{"a": 1}])
    with pytest.raises(KeyError):
        writer.write([{"a": 2}, {"b": 3}])
    writer.close()
    assert path.read_bytes().decode() == "a\r\n1\r\n"


@pytest.mark.parametrize(
    "content", [b"", b"\xef\xbb\xbf", b"\r\n\n", b"\xef\xbb\xbf\n"], ids=["empty", "bom", "blank", "bom-blank"]
)
@pytest.mark.parametrize("row_type", [dict, Entry])
def test_a_file_without_a_header_is_zero_items(tmp_path, content: bytes, row_type: Any):
    """An empty extract is a normal day: zero items, not an internal SyntaxError, and not a
    missing-column error for a dataclass (there are no columns at all)."""
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    reader = CsvReader(path, row_type=row_type, types={"id": int} if row_type is dict else None)
    reader.open(ctx(), {})
    assert read_all(reader) == []
    assert reader.read() is None
    state = reader.state()
    reader.close()
    again = CsvReader(path, row_type=row_type)
    again.open(ctx(), state)
    assert read_all(again) == []
    again.close()


def test_a_header_after_blank_lines_is_the_header(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("\n\nid\n1\n")
    reader = CsvReader(path, types={"id": int})
    reader.open(ctx(), {})
    assert read_all(reader) == [{"id": 1}]
    reader.close()


def test_a_writer_with_fields_writes_the_header_for_zero_items(tmp_path):
    path = tmp_path / "out.csv"
    writer = CsvWriter(path, fields=["a", "b"])
    writer.open(ctx(), {})
    writer.write([])
    writer.complete()
    writer.close()
    assert path.read_bytes() == b"a,b\r\n"


def test_a_writer_with_fields_writes_the_header_once_across_a_restart(tmp_path):
    path = tmp_path / "out.csv"
    writer = CsvWriter(path, fields=["a"])
    writer.open(ctx(), {})
    committed = writer.state()
    writer.write([{"a": 1}])  # written, never committed
    writer.close()
    again = CsvWriter(path, fields=["a"])
    again.open(ctx(), committed)
    again.write([{"a": 2}])
    again.close()
    assert path.read_bytes() == b"a\r\n2\r\n"


def test_a_writer_without_fields_and_zero_items_writes_an_empty_file(tmp_path):
    """No item, no columns to name: documented as an empty file."""
    path = tmp_path / "out.csv"
    writer = CsvWriter(path)
    writer.open(ctx(), {})
    writer.complete()
    writer.close()
    assert path.read_bytes() == b""

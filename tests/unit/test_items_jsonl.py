"""JsonLinesReader and JsonLinesWriter."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from batchctl.items import JsonLinesReader, JsonLinesWriter
from tests.unit.test_items_csv import ctx, read_all


def test_round_trip_with_restart_and_bad_lines(tmp_path):
    path = tmp_path / "out.jsonl"
    writer = JsonLinesWriter(path)
    writer.open(ctx(), {})
    writer.write([{"n": 1, "day": date(2024, 1, 31), "amount": Decimal("1.5")}, {"n": 2, "s": "é"}])
    state = writer.state()
    writer.write([{"n": 99}])
    writer.close()
    writer = JsonLinesWriter(path)
    writer.open(ctx(), state)
    writer.write([{"n": 3}])
    writer.close()
    with path.open("a") as handle:
        handle.write("\n{not json}\n[4]\n")
    reader = JsonLinesReader(path)
    reader.open(ctx(), {})
    errors: list[Any] = []
    first = reader.read_chunk(2, None)  # type: ignore[arg-type]
    assert first == [{"n": 1, "day": "2024-01-31", "amount": "1.5"}, {"n": 2, "s": "é"}]
    saved = reader.state()
    reader.close()
    reader = JsonLinesReader(path)
    reader.open(ctx(), saved)
    assert read_all(reader, size=10, errors=errors) == [{"n": 3}, [4]]
    reader.close()
    assert errors == [("JSONDecodeError", "{not json}", 5)]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_the_writer_refuses_an_item_holding_nan_and_writes_nothing_of_its_chunk(tmp_path, value):
    """`json` would write `NaN`, which no other JSON reader accepts: the item is refused with
    a ValueError (skippable), and nothing of its chunk reaches the file."""
    path = tmp_path / "out.jsonl"
    writer = JsonLinesWriter(path)
    writer.open(ctx(), {})
    writer.write([{"n": 1}])
    with pytest.raises(ValueError, match="NaN or Infinity"):
        writer.write([{"n": 2}, {"n": 3, "x": [value]}])
    writer.close()
    assert path.read_text() == '{"n":1}\n'

"""SqlReader (keyset pages, restarts) and SqlWriter (insert, upsert) on SQLite."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy

from batchctl.items import SqlReader, SqlWriter
from batchctl.repository.connect import create_repository_engine
from tests.unit.test_items_csv import read_all


@pytest.fixture
def engine(tmp_path):
    engine = create_repository_engine(f"sqlite:///{tmp_path / 'items.db'}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, grp TEXT, n INTEGER)")
        connection.exec_driver_sql(
            "INSERT INTO t VALUES " + ", ".join(f"({i}, 'g{i % 3}', {i * 10})" for i in range(1, 24))
        )
    yield engine
    engine.dispose()


def ctx(engine: Any, **params: Any) -> Any:
    return SimpleNamespace(params=params, database=engine, connection=None)


def test_reader_pages_across_chunks_and_resumes_after_the_last_key(engine):
    reader = SqlReader("t", key="id", page_size=5)
    reader.open(ctx(engine), {})
    assert reader.total() == 23
    first = reader.read_chunk(7, None)
    assert [row["id"] for row in first] == list(range(1, 8))
    second = reader.read_chunk(7, None)
    assert [row["id"] for row in second] == list(range(8, 15))
    state = reader.state()
    assert state == {"after": [14]}
    reader.close()
    again = SqlReader("t", key="id", page_size=5)
    again.open(ctx(engine), state)
    assert [row["id"] for row in read_all(again, size=4)] == list(range(15, 24))


def test_reader_query_with_params_and_composite_key(engine):
    reader = SqlReader("SELECT grp, id, n FROM t WHERE n >= :low", key=("grp", "id"), page_size=2)
    reader.open(ctx(engine, low=100), {})
    rows = read_all(reader, size=3)
    assert [(r["grp"], r["id"]) for r in rows] == sorted((f"g{i % 3}", i) for i in range(10, 24))
    assert reader.state() == {"after": ["g2", 23]}


@dataclass
class Row:
    id: int
    grp: str
    n: int


def test_writer_insert_and_upsert_with_its_own_url(engine, tmp_path):
    url = f"sqlite:///{tmp_path / 'items.db'}"
    writer = SqlWriter("t", url=url, mode="upsert", key="id")
    assert not writer.transactional
    writer.open(ctx(None), {})
    writer.write([Row(1, "new", 1), Row(100, "g", 2)])
    writer.close()
    inserter = SqlWriter("t", url=url)
    inserter.open(ctx(None), {})
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        inserter.write([{"id": 100, "grp": "x", "n": 0}])
    inserter.write([{"id": 101, "grp": "x", "n": 0}])
    inserter.close()
    with engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT id, grp, n FROM t WHERE id IN (1, 100, 101)").all()
    assert [tuple(r) for r in rows] == [(1, "new", 1), (100, "g", 2), (101, "x", 0)]


def test_transactional_writer_needs_the_chunk_connection(engine):
    writer = SqlWriter("t")
    writer.open(ctx(engine), {})
    with pytest.raises(RuntimeError, match="ctx.connection"):
        writer.write([{"id": 1}])


def test_a_refused_bind_is_one_line_naming_each_bound_value_and_its_type(engine) -> None:
    """A value SQLite cannot bind (a dict) fails the read with what was bound, not a raw
    driver error; a query without binds fails with the driver's error as it is."""
    from batchctl.items import SqlReaderError

    reader = SqlReader("SELECT * FROM t WHERE grp = :grp", key="id", params={"grp": {"a": 1}})
    reader.open(ctx(engine), {})
    with pytest.raises(SqlReaderError) as raised:
        read_all(reader)
    message = str(raised.value)
    assert "\n" not in message
    assert ":grp = {'a': 1} (dict)" in message and "a param binds as its Python type" in message

    missing = SqlReader("SELECT * FROM nowhere", key="id")
    missing.open(ctx(engine), {})
    with pytest.raises(sqlalchemy.exc.OperationalError):
        read_all(missing)


def test_a_long_bound_value_is_cut_in_the_message() -> None:
    from batchctl.items.sql import refused_binds

    message = refused_binds({"ids": list(range(100))}, ValueError("refused"))
    assert message.startswith("SqlReader query refused by the database (refused) with binds :ids = [0, 1,")
    assert "...] (list)" not in message and "... (list)" in message

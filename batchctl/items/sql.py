"""SQL tables: `SqlReader` (keyset pagination) and `SqlWriter` (batched insert or upsert).

These speak SQL to the user's tables, never to batchctl's own (that is the repository's job).
`url=None` means the repository's own database: the reader reads it through the repository's
engine, and the writer writes through `ctx.connection`, inside the chunk's transaction, so the
rows and the checkpoint commit together (exactly once). With a URL of another database the
writer commits each chunk itself before the checkpoint: at least once, and effectively once in
upsert mode.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import date, datetime
from decimal import Decimal
from operator import attrgetter, itemgetter
from typing import Any, Callable, Mapping, Sequence

from batchctl.errors import JobDefinitionError
from batchctl.items.paths import resolve_url, template_values

DEFAULT_PAGE_SIZE = 1000  # rows fetched per query by SqlReader (at least the chunk size)

# Used with fullmatch: `^...$` with match() lets a name end in a newline.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?")
_BIND = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")


def _keys(key: str | Sequence[str] | None) -> tuple[str, ...]:
    if key is None:
        return ()
    return (key,) if isinstance(key, str) else tuple(key)


def _quote_name(preparer: Any, name: str) -> str:
    return ".".join(preparer.quote(part) for part in name.split("."))


def _own_engine(url: str) -> Any:
    from batchctl.repository.connect import create_repository_engine

    return create_repository_engine(url)


def _jsonable(value: Any) -> Any:
    """A key value as the checkpoint keeps it (JSON)."""
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


class SqlReaderError(Exception):
    """The database refused a query of a SqlReader that binds values: the message names each
    bound value with its Python type, since a param binds as its type (a `date` param as a
    date), which one database accepts where another refuses it."""


# SQLSTATEs of a bound value the database would not take as it is: no operator for its type,
# a type mismatch, a value that does not parse as the column's type, an undeterminable type.
_TYPE_REFUSALS = ("42883", "42804", "42P18", "22P02", "22007", "22008", "22003")
_BIND_VALUE_LIMIT = 80  # characters of a bound value's repr shown in the error


def refused_binds(binds: Mapping[str, Any], exc: Any) -> str:
    """One line: the database's reason, and every bound value with its Python type; with a hint
    to cast when the reason is the type of a value."""
    lines = str(getattr(exc, "orig", exc)).strip().splitlines()
    reason = lines[0] if lines else type(exc).__name__
    shown = ", ".join(
        f":{name} = {_short_repr(value)} ({type(value).__name__})" for name, value in binds.items()
    )
    message = f"SqlReader query refused by the database ({reason}) with binds {shown}"
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if sqlstate in _TYPE_REFUSALS or "binding parameter" in reason.lower():
        first = next(iter(binds))
        message += (
            f"; a param binds as its Python type: cast it in the query "
            f"(CAST(:{first} AS text)) or pass params= with the value to bind"
        )
    return message


def _short_repr(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= _BIND_VALUE_LIMIT else shown[: _BIND_VALUE_LIMIT - 3] + "..."


class SqlReader:
    """Reads a table or a query page by page, in the order of `key`, resuming after the last
    committed key on restart (keyset pagination: no offset scans, no item read twice).

    ```
    SqlReader("ledger", key="entry_id")                          # the repository's database
    SqlReader("SELECT * FROM entries WHERE day = :date", key="id", url="postgresql://...")
    ```

    `key` is a column (or a tuple of columns) that is unique and not null in the result. A query
    may name job params (and a partition's keys) as `:name` binds; `params` gives others (a dict
    or `fn(ctx) -> dict`).
    Rows arrive as dicts keyed by column name.
    """

    def __init__(
        self,
        table_or_query: str,
        *,
        key: str | Sequence[str],
        url: str | Callable[[Any], str] | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        params: Mapping[str, Any] | Callable[[Any], Mapping[str, Any]] | None = None,
        count: bool = True,
    ) -> None:
        self.source = table_or_query.strip()
        self.keys = _keys(key)
        if not self.keys:
            raise JobDefinitionError("SqlReader needs a key column")
        self.url = url
        self.page_size = page_size
        self.params = params
        self.count = count
        self._engine: Any = None
        self._owned = False
        self._buffer: list[dict[str, Any]] = []
        self._index = 0
        self._exhausted = False
        self._after: list[Any] | None = None  # the key of the last item read: the state
        self._fetched: list[Any] | None = None  # the key of the last row fetched: the next page

    def open(self, ctx: Any, state: dict[str, Any]) -> None:
        from sqlalchemy import text

        if self.url is None:
            self._engine, self._owned = ctx.database, False
        else:
            self._engine, self._owned = _own_engine(resolve_url(self.url, ctx)), True
        preparer = self._engine.dialect.identifier_preparer
        if _IDENTIFIER.fullmatch(self.source):
            source = _quote_name(preparer, self.source)
            names: list[str] = []
        else:
            source = f"({self.source}) AS batchctl_source"
            names = _BIND.findall(self.source)
        given = self.params(ctx) if callable(self.params) else dict(self.params or {})
        values = template_values(ctx)
        self._binds = {name: values[name] for name in names if name in values}
        self._binds.update(given)
        keys = ", ".join(preparer.quote(key) for key in self.keys)
        marks = ", ".join(f":batchctl_k{i}" for i in range(len(self.keys)))
        after = f"{keys} > {marks}" if len(self.keys) == 1 else f"({keys}) > ({marks})"
        self._first = text(f"SELECT * FROM {source} ORDER BY {keys} LIMIT :batchctl_limit")
        self._next = text(
            f"SELECT * FROM {source} WHERE {after} ORDER BY {keys} LIMIT :batchctl_limit"
        )
        self._count = text(f"SELECT count(*) FROM {source}")
        saved = state.get("after")
        self._after = list(saved) if saved is not None else None
        self._fetched = self._after
        self._buffer, self._index, self._exhausted = [], 0, False

    def total(self) -> int | None:
        if not self.count:
            return None
        return int(self._query(lambda c: c.execute(self._count, self._binds).scalar_one()))

    def _query(self, work: Callable[[Any], Any]) -> Any:
        from sqlalchemy.exc import DBAPIError

        from batchctl.repository.connect import READ_ONLY, is_unreachable

        try:
            with self._engine.connect() as connection:
                connection.execution_options(**{READ_ONLY: True})
                with connection.begin():
                    return work(connection)
        except DBAPIError as exc:
            if not self._binds or is_unreachable(exc):
                raise
            raise SqlReaderError(refused_binds(self._binds, exc)) from exc

    def _fetch(self, size: int) -> None:
        limit = max(self.page_size, size)
        params = dict(self._binds, batchctl_limit=limit)
        if self._fetched is None:
            statement = self._first
        else:
            statement = self._next
            params.update({f"batchctl_k{i}": value for i, value in enumerate(self._fetched)})

        def work(connection: Any) -> list[dict[str, Any]]:
            result = connection.execute(statement, params)
            names = list(result.keys())
            return [dict(zip(names, row)) for row in result.fetchall()]

        self._buffer = self._query(work)
        self._index = 0
        self._exhausted = len(self._buffer) < limit
        if self._buffer:
            last = self._buffer[-1]
            self._fetched = [last[key] for key in self.keys]

    def read(self) -> dict[str, Any] | None:
        items = self.read_chunk(1, lambda *_: None)
        return items[0] if items else None

    def read_chunk(self, size: int, on_error: Any) -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = []
        while len(items) < size:
            if self._index >= len(self._buffer):
                if self._exhausted:
                    break
                self._fetch(size - len(items))
                if not self._buffer:
                    break
            take = self._buffer[self._index : self._index + size - len(items)]
            self._index += len(take)
            items.extend(take)
        if not items:
            return None
        last = items[-1]
        self._after = [_jsonable(last[key]) for key in self.keys]
        return items

    def state(self) -> dict[str, Any]:
        return {"after": self._after}

    def close(self) -> None:
        if self._owned and self._engine is not None:
            self._engine.dispose()
        self._engine = None


class SqlWriter:
    """Writes items into a table, a chunk at a time: `mode="insert"` or `"upsert"` by `key`.

    ```
    SqlWriter("ledger")                                   # exactly once, in the chunk's transaction
    SqlWriter("ledger", url="postgresql://...", mode="upsert", key="entry_id")
    ```

    Items are dicts (by key), dataclasses (by field) or sequences (give `columns`); `columns`
    defaults to the first item's keys or fields. Inserts into Postgres use COPY (the fastest
    path; `copy=False` for executemany); everything else is one executemany per chunk.
    """

    def __init__(
        self,
        table: str,
        *,
        url: str | Callable[[Any], str] | None = None,
        mode: str = "insert",
        key: str | Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        copy: bool = True,
    ) -> None:
        if mode not in ("insert", "upsert"):
            raise JobDefinitionError(f"SqlWriter mode must be 'insert' or 'upsert', not {mode!r}")
        if mode == "upsert" and not key:
            raise JobDefinitionError("SqlWriter in upsert mode needs key=")
        if not _IDENTIFIER.fullmatch(table):
            raise JobDefinitionError(f"SqlWriter: {table!r} is not a table name")
        self.table = table
        self.url = url
        self.mode = mode
        self.keys = _keys(key)
        self.columns = list(columns) if columns else None
        self.copy = copy
        self.transactional = url is None
        self._ctx: Any = None
        self._engine: Any = None
        self._getter: Callable[[Any], Any] | None = None
        self._records = False
        self._sql: dict[str, str] = {}

    def open(self, ctx: Any, state: dict[str, Any]) -> None:
        self._ctx = ctx
        if self.url is not None and self._engine is None:
            self._engine = _own_engine(resolve_url(self.url, ctx))

    def take_records(self, names: Sequence[str]) -> bool:
        """Take tuples in the order of `names` instead of dicts, if those are its columns."""
        if self.columns is not None and list(self.columns) != list(names):
            return False
        self.columns = list(names)
        self._records = True
        return True

    def write(self, items: list[Any]) -> None:
        if not items:
            return
        if self._records:
            rows = items
        else:
            if self._getter is None:
                self._getter = self._start(items[0])
            rows = list(map(self._getter, items))
        if self.transactional:
            connection = self._ctx.connection if self._ctx is not None else None
            if connection is None:
                raise RuntimeError("SqlWriter(url=None) writes only inside a chunk (ctx.connection)")
            self._write_rows(connection, rows)
        else:
            with self._engine.begin() as connection:
                self._write_rows(connection, rows)

    def _start(self, first: Any) -> Callable[[Any], Any]:
        if self.columns is None:
            if isinstance(first, Mapping):
                self.columns = [str(key) for key in first]
            elif dataclasses.is_dataclass(first):
                self.columns = [field.name for field in dataclasses.fields(first)]
            else:
                raise JobDefinitionError("SqlWriter needs columns= to write sequences")
        if isinstance(first, Mapping) or dataclasses.is_dataclass(first):
            get = (itemgetter if isinstance(first, Mapping) else attrgetter)(*self.columns)
            return get if len(self.columns) > 1 else (lambda item: (get(item),))
        return tuple

    def _statement(self, dialect: Any) -> str:
        found = self._sql.get(dialect.name)
        if found is not None:
            return found
        assert self.columns is not None
        preparer = dialect.identifier_preparer
        table = _quote_name(preparer, self.table)
        columns = [preparer.quote(column) for column in self.columns]
        names = ", ".join(columns)
        if dialect.name == "postgresql" and self.mode == "insert" and self.copy:
            sql = f"COPY {table} ({names}) FROM STDIN"
        else:
            mark = "%s" if dialect.name == "postgresql" else "?"
            sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join([mark] * len(columns))})"
            if self.mode == "upsert":
                keys = [preparer.quote(key) for key in self.keys]
                rest = [column for column in columns if column not in keys]
                action = (
                    "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in rest)
                    if rest
                    else "DO NOTHING"
                )
                sql += f" ON CONFLICT ({', '.join(keys)}) {action}"
        self._sql[dialect.name] = sql
        return sql

    def _write_rows(self, connection: Any, rows: list[Any]) -> None:
        """One batch through the driver itself (SQLAlchemy's per-row work costs more than the
        insert); driver errors become SQLAlchemy's (`sqlalchemy.exc.IntegrityError`...), so
        that `skip=` and `retry=` name the same types on every database."""
        dialect = connection.dialect
        sql = self._statement(dialect)
        raw = connection.connection.driver_connection
        try:
            if sql.startswith("COPY"):
                with raw.cursor() as cursor, cursor.copy(sql) as copy:
                    write_row = copy.write_row
                    for row in rows:
                        write_row(row)
                return
            cursor = raw.cursor()
            try:
                cursor.executemany(sql, rows)
            finally:
                cursor.close()
        except dialect.loaded_dbapi.Error as exc:
            from sqlalchemy.exc import DBAPIError

            raise DBAPIError.instance(
                sql, None, exc, dialect.loaded_dbapi.Error, dialect=dialect
            ) from exc

    def state(self) -> None:
        return None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

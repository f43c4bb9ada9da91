"""Built-in readers and writers for chunk steps, each restartable from its saved state.

- `CsvReader`, `CsvWriter`: CSV files (rows as dicts or dataclasses, typed conversion).
- `JsonLinesReader`, `JsonLinesWriter`: one JSON value per line.
- `SqlReader`, `SqlWriter`: a table or query of any SQLAlchemy URL, or of the repository's own
  database (`url=None`), read by keyset pagination and written in batches.

Readers save their position at every chunk commit, so a restart seeks instead of re-reading.
File writers save their byte offset and truncate back to it on restart, so a file holds every
item exactly once; with `atomic=True` they write under a temporary name renamed when the step
completes, and with `checksum=True` they leave a `<file>.sha256` beside the file. Paths are
templates over the job params: `"data/entries-{date:%Y%m%d}.csv"`; a relative one is relative
to the project directory (`ctx.project_dir`, the config file's folder), never to the current
one, so that a job reads and writes the same files however it was started.
"""

from __future__ import annotations

from batchctl.items.csvfile import CsvReader, CsvWriter
from batchctl.items.jsonl import JsonLinesReader, JsonLinesWriter
from batchctl.items.paths import resolve_path
from batchctl.items.sql import SqlReader, SqlReaderError, SqlWriter

__all__ = [
    "CsvReader",
    "CsvWriter",
    "JsonLinesReader",
    "JsonLinesWriter",
    "SqlReader",
    "SqlReaderError",
    "SqlWriter",
    "resolve_path",
]

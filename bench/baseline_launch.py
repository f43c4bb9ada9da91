"""The baseline for a concurrent `batchctl start`: record one run with the bare driver.

    python bench/baseline_launch.py URL --create   # the table, once
    python bench/baseline_launch.py URL N          # run N: insert it STARTED, then COMPLETED

URL is `sqlite:///path` (sqlite3, WAL, a busy timeout and BEGIN IMMEDIATE, as batchctl does) or
`postgresql://...` (psycopg 3). Two short write transactions: the least a recorded run costs.
"""

import sys
from datetime import datetime, timezone

TABLE = "baseline_run"


def connect(url: str):  # type: ignore[no-untyped-def]
    if url.startswith("sqlite:///"):
        import sqlite3

        connection = sqlite3.connect(url[len("sqlite:///"):], timeout=30, isolation_level=None)
        connection.execute("PRAGMA journal_mode = WAL")
        return connection, "?", "BEGIN IMMEDIATE"
    import psycopg

    return psycopg.connect(url, autocommit=True), "%s", "BEGIN"


def main() -> None:
    url, what = sys.argv[1], sys.argv[2]
    connection, mark, begin = connect(url)
    if what == "--create":
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY, run INTEGER UNIQUE, "
            "status VARCHAR(16), created_at VARCHAR(40), ended_at VARCHAR(40))"
        )
        connection.close()
        return
    run = int(what)
    connection.execute(begin)
    connection.execute(
        f"INSERT INTO {TABLE} (id, run, status, created_at) VALUES ({mark}, {mark}, 'STARTED', {mark})",
        (run, run, datetime.now(timezone.utc).isoformat()),
    )
    connection.execute("COMMIT")
    connection.execute(begin)
    connection.execute(
        f"UPDATE {TABLE} SET status = 'COMPLETED', ended_at = {mark} WHERE run = {mark}",
        (datetime.now(timezone.utc).isoformat(), run),
    )
    connection.execute("COMMIT")
    connection.close()


if __name__ == "__main__":
    main()

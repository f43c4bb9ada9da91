"""The baseline for `batchctl history`: the same query with the bare driver, rows printed.

    python bench/baseline_history.py URL [JOB] [STATUS]

URL is `sqlite:///path` (sqlite3) or `postgresql://...` (psycopg 3). Newest 20 executions with
their instance's params, as `batchctl history [JOB] [--status STATUS]` shows them.
"""

import sys

LIMIT = 20


def main() -> None:
    url = sys.argv[1]
    job = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None
    status = sys.argv[3] if len(sys.argv) > 3 else None
    if url.startswith("sqlite:///"):
        import sqlite3

        connection = sqlite3.connect(url[len("sqlite:///"):])
        mark = "?"
    else:
        import psycopg

        connection = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        mark = "%s"
    where, args = [], []
    if job is not None:
        where.append(f"e.job_name = {mark}")
        args.append(job)
    if status is not None:
        where.append(f"e.status = {mark}")
        args.append(status)
    query = (
        "SELECT e.id, e.job_name, i.params, e.status, e.started_at, e.ended_at, e.exit_message"
        " FROM job_execution e JOIN job_instance i ON i.id = e.instance_id"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY e.id DESC LIMIT {LIMIT}"
    )
    cursor = connection.cursor()
    cursor.execute(query, args)
    for id_, job_name, params, status_, started, ended, message in cursor.fetchall():
        first = message.strip().splitlines()[0] if message else ""
        print(id_, job_name, params, status_, started, ended, first, sep="  ")
    connection.close()


if __name__ == "__main__":
    main()

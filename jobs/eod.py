"""End-of-day accounting for one business date.

Generates the day's journal entries (deterministically, from the date), posts them into a
ledger table, and writes the day's balance per account. Every step is safe to restart: posting
checkpoints its position in the entries file and inserts by entry id, so a restart neither
loses nor doubles an entry.
"""

from __future__ import annotations

import csv
import random
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import date
from pathlib import Path

from batchctl import Job, Param, StepContext

ACCOUNTS = ("cash", "receivables", "payables", "revenue", "expenses", "inventory", "equity")
ENTRIES_PER_DAY = 5_000
POST_BATCH = 500

job = Job(
    "eod",
    description="End-of-day accounting: post the day's entries, report balances",
    params={"date": date, "out_dir": Param(str, default="out", help="where files are written")},
)


def _paths(ctx: StepContext) -> tuple[Path, Path, Path]:
    out = Path(ctx.params["out_dir"])
    day = ctx.params["date"].strftime("%Y%m%d")
    return out / f"entries-{day}.csv", out / "ledger.db", out / f"balances-{day}.csv"


@job.tasklet
def generate_entries(ctx: StepContext) -> None:
    """Write the day's journal entries (the same file for the same date)."""
    entries, _, _ = _paths(ctx)
    entries.parent.mkdir(parents=True, exist_ok=True)
    day: date = ctx.params["date"]
    rng = random.Random(day.toordinal())
    partial = entries.with_suffix(".csv.part")
    with partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["entry_id", "account", "amount_cents"])
        for number in range(1, ENTRIES_PER_DAY + 1):
            account = rng.choice(ACCOUNTS)
            amount = rng.randint(-500_000, 500_000)
            writer.writerow([f"{day:%Y%m%d}-{number:06d}", account, amount])
    partial.replace(entries)
    ctx.log.info("generated %d entries in %s", ENTRIES_PER_DAY, entries)


@job.tasklet
def post_entries(ctx: StepContext) -> Iterator[None]:
    """Post the entries into the ledger, checkpointing after every batch."""
    entries, ledger, _ = _paths(ctx)
    with closing(sqlite3.connect(ledger)) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS ledger (entry_id TEXT PRIMARY KEY, business_date TEXT,"
            " account TEXT, amount_cents INTEGER)"
        )
        with entries.open(newline="") as handle:
            rows = csv.DictReader(handle)
            done = ctx.state.get("posted", 0)
            batch: list[tuple[str, str, str, int]] = []
            for index, row in enumerate(rows):
                if index < done:
                    continue
                batch.append((row["entry_id"], ctx.params["date"].isoformat(), row["account"],
                              int(row["amount_cents"])))
                if len(batch) == POST_BATCH:
                    done = _post(db, batch, done)
                    ctx.state["posted"] = done
                    yield
            if batch:
                ctx.state["posted"] = _post(db, batch, done)
                yield
    ctx.log.info("posted %d entries", ctx.state.get("posted", 0))


def _post(db: sqlite3.Connection, batch: list[tuple[str, str, str, int]], done: int) -> int:
    with db:
        db.executemany("INSERT OR IGNORE INTO ledger VALUES (?, ?, ?, ?)", batch)
    posted = done + len(batch)
    batch.clear()
    return posted


@job.tasklet
def balance_report(ctx: StepContext) -> None:
    """Write each account's balance for the day."""
    _, ledger, report = _paths(ctx)
    with closing(sqlite3.connect(ledger)) as db:
        balances = db.execute(
            "SELECT account, COUNT(*), SUM(amount_cents) FROM ledger WHERE business_date = ?"
            " GROUP BY account ORDER BY account",
            (ctx.params["date"].isoformat(),),
        ).fetchall()
    with report.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["account", "entries", "balance_cents"])
        writer.writerows(balances)
    ctx.job_context["accounts"] = len(balances)
    ctx.log.info("wrote balances of %d accounts to %s", len(balances), report)

"""End-of-day accounting for one business date.

Generates the day's journal entries (deterministically, from the date), posts them into a
ledger table, and writes the day's balance per account. Every step is safe to restart: posting
is a chunk step that checkpoints its position in the entries file after every chunk and upserts
by entry id, so a restart neither loses nor doubles an entry.
"""

from __future__ import annotations

import csv
import random
import sqlite3
from contextlib import closing
from datetime import date
from pathlib import Path
from typing import Any

from batchctl import Job, Param, StepContext
from batchctl.items import CsvReader, SqlWriter

ACCOUNTS = ("cash", "receivables", "payables", "revenue", "expenses", "inventory", "equity")
ENTRIES_PER_DAY = 5_000
POST_BATCH = 500

job = Job(
    "eod",
    description="End-of-day accounting: post the day's entries, report balances",
    params={"date": date, "out_dir": Param(str, default="out", help="where files are written")},
)

LEDGER = (
    "CREATE TABLE IF NOT EXISTS ledger (entry_id TEXT PRIMARY KEY, business_date TEXT,"
    " account TEXT, amount_cents INTEGER)"
)


def _paths(ctx: StepContext) -> tuple[Path, Path, Path]:
    out = ctx.project_dir / ctx.params["out_dir"]  # relative to config.toml's folder, as the items' paths
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
    _, ledger, _ = _paths(ctx)
    with closing(sqlite3.connect(ledger)) as db, db:
        db.execute(LEDGER)
    ctx.log.info("generated %d entries in %s", ENTRIES_PER_DAY, entries)


def _ledger_url(ctx: StepContext) -> str:
    _, ledger, _ = _paths(ctx)
    return f"sqlite:///{ledger}"


@job.chunk(
    reader=CsvReader("{out_dir}/entries-{date:%Y%m%d}.csv", types={"amount_cents": int}),
    writer=SqlWriter("ledger", url=_ledger_url, mode="upsert", key="entry_id"),
    size=POST_BATCH,
)
def post_entries(entry: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Post the entries into the ledger, a checkpoint after every chunk."""
    return {
        "entry_id": entry["entry_id"],
        "business_date": ctx.params["date"].isoformat(),
        "account": entry["account"],
        "amount_cents": entry["amount_cents"],
    }


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

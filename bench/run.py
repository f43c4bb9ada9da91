"""Run batchctl's benchmarks and print one table: batchctl beside a hand-written baseline.

    python bench/run.py                  # everything
    python bench/run.py --only history   # one benchmark (repeatable)
    python bench/run.py --quick          # fewer repetitions
    python bench/run.py --database sqlite --list

Benchmarks are the `@bench` functions of the `bench_*.py` modules in this folder (see
common.py). Figures are wall times in seconds (medians) unless a row says otherwise. Exit code:
0 every target met, 1 a target missed, 2 a benchmark failed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import subprocess
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, BENCHES, DATABASES, REPO_ROOT, Context, Row  # noqa: E402


def discover() -> None:
    for module in sorted(BENCH_DIR.glob("bench_*.py")):
        importlib.import_module(module.stem)


def main(argv: list[str] | None = None) -> int:
    discover()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME", choices=sorted(BENCHES),
                        help="run only this benchmark (repeatable): " + ", ".join(BENCHES))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, noisier figures")
    parser.add_argument("--long", action="store_true",
                        help="the full sizes of the long benchmarks (mq: 500 messages, not 100)")
    parser.add_argument("--database", action="append", choices=DATABASES,
                        help="only this database (repeatable; default: both)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)

    from rich.console import Console

    out = Console(width=None if sys.stdout.isatty() else 150)
    err = Console(stderr=True)
    if args.list:
        for bench in BENCHES.values():
            out.print(f"[bold]{bench.name}[/]  {bench.help}")
        return 0

    chosen = [BENCHES[name] for name in (args.only or BENCHES)]
    ctx = Context(quick=args.quick, databases=tuple(args.database or DATABASES), long=args.long)
    rows: list[Row] = []
    failed = False
    try:
        for bench in chosen:
            err.print(f"[dim]running {bench.name}...[/]")
            try:
                for row in bench.function(ctx):
                    rows.append(row)
                    err.print(f"  {row.name} ({row.database}): {_figure(row.batchctl, row.unit)}"
                              f" vs {_figure(row.baseline, row.unit)}  {row.verdict}",
                              style="dim", markup=False, highlight=False)
            except Exception as exc:
                failed = True
                err.print(f"[red]{bench.name} failed:[/] {exc}")
                err.print(traceback.format_exc(), markup=False, highlight=False)
                rows.append(Row(bench.name, "-", f"error: {type(exc).__name__}"))
    finally:
        ctx.close()
    out.print(_table(rows))
    out.print(_machine())
    if failed:
        return 2
    return 1 if any(row.verdict == "MISS" for row in rows) else 0


def _table(rows: list[Row]) -> object:
    from rich.table import Table

    table = Table(title="batchctl benchmarks (wall time, seconds)", title_justify="left")
    for column, justify in (("bench", "left"), ("database", "left"), ("batchctl", "right"),
                            ("baseline", "right"), ("ratio", "right"), ("target", "left"),
                            ("verdict", "left"), ("note", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    styles = {"ok": "green", "MISS": "bold red", "info": "dim"}
    for row in rows:
        verdict = row.verdict
        table.add_row(
            row.name,
            row.database,
            _figure(row.batchctl, row.unit),
            _figure(row.baseline, row.unit),
            f"{row.ratio:.2f}x" if row.ratio is not None else "-",
            row.target.text,
            f"[{styles[verdict]}]{verdict}[/]",
            row.note,
        )
    return table


def _figure(value: float | str | None, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.3f}" if unit == "s" else f"{value:,.0f} {unit}"


def _machine() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
            f"load average {load}, commit {commit or '?'} (plus uncommitted changes, if any)")


if __name__ == "__main__":
    sys.exit(main())

"""Command-line start-up: `batchctl --help` and `batchctl history` (issue 2)."""

from __future__ import annotations

import json
import subprocess
from typing import Iterator

from common import (
    BENCH_DIR,
    PYTHON,
    REPO_ROOT,
    Context,
    Row,
    Timing,
    at_most,
    batchctl_command,
    bench,
    clean_env,
    compare_commands,
    holds,
    import_profile,
    populate,
    stopwatch,
    within,
)

HELP_RATIO = 1.15  # batchctl --help within this factor of a bare two-command Typer app
HISTORY_SECONDS = 0.35  # batchctl history on a repository of HISTORY_EXECUTIONS
HISTORY_EXECUTIONS = 100_000
FORBIDDEN_AT_HELP = ("sqlalchemy", "alembic", "batchctl_jobs", "psycopg")  # batchctl_jobs: job modules
IMPORT_GROUP_MIN = 0.005  # seconds: smaller import groups are summed as "everything else"
HELP_ARGVS = (["--help"], ["start", "--help"], ["history", "--help"], ["db", "--help"])

_IMPORTED = """
import json, sys
from batchctl.cli import main
sys.argv = ["batchctl", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit:
    pass
roots = {{name.split(".")[0] for name in sys.modules}}
print(json.dumps(sorted(roots & set({forbidden!r}))))
"""


@bench("help", help="batchctl --help vs a bare two-command Typer app; what --help imports")
def help_startup(ctx: Context) -> Iterator[Row]:
    env = clean_env()
    bare = [PYTHON, str(BENCH_DIR / "bare_typer_app.py"), "--help"]
    mine = [*batchctl_command(), "--help"]
    timing, baseline = compare_commands([mine, bare], ctx.runs, env=env, cwd=REPO_ROOT)
    yield Row(
        "--help wall time",
        "-",
        timing.median,
        baseline.median,
        within(HELP_RATIO),
        note=_note(ctx, timing, baseline),
    )
    yield _help_imports(env)


def _help_imports(env: dict[str, str]) -> Row:
    """Run each --help in a fresh interpreter (from the repository root, where config.toml
    names the jobs folder) and list the forbidden top-level packages it imported."""
    found: dict[str, list[str]] = {}
    code = _IMPORTED.format(forbidden=FORBIDDEN_AT_HELP)
    for argv in HELP_ARGVS:
        done = subprocess.run(
            [PYTHON, "-c", code, json.dumps(argv)],
            env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        )
        imported = json.loads(done.stdout.strip().splitlines()[-1])
        if imported:
            found[" ".join(argv)] = imported
    text = "; ".join(f"{k}: {', '.join(v)}" for k, v in found.items()) or "none"
    return Row(
        "--help imports",
        "-",
        text,
        None,
        holds("none of them"),
        passed=not found,
        note=f"looked for {', '.join(FORBIDDEN_AT_HELP)} after "
        + ", ".join(" ".join(argv) for argv in HELP_ARGVS),
    )


@bench("history", help=f"batchctl history on {HISTORY_EXECUTIONS:,} executions vs the same query by hand")
def history(ctx: Context) -> Iterator[Row]:
    for database in ctx.databases:
        url = ctx.repository_url(database, "history")
        with stopwatch() as elapsed:
            counts = populate(url, HISTORY_EXECUTIONS)
        filled = f"{counts['executions']:,} executions, {counts['step_executions']:,} steps"
        fill_note = f"filled in {elapsed():.1f}s"
        env = clean_env()
        cases = (
            ("history", [], []),
            ("history eod --status FAILED", ["eod", "--status", "FAILED"], ["eod", "FAILED"]),
        )
        for name, options, baseline_args in cases:
            mine = [*batchctl_command(), "--db", url, "history", *options]
            bare = [PYTHON, str(BENCH_DIR / "baseline_history.py"), url, *baseline_args]
            timing, baseline = compare_commands([mine, bare], ctx.runs, env=env, cwd=ctx.workdir)
            yield Row(
                f"{name} ({filled})" if name == "history" else name,
                database,
                timing.median,
                baseline.median,
                at_most(HISTORY_SECONDS),
                note=_note(ctx, timing, baseline) + (f"; {fill_note}" if name == "history" else ""),
            )


def _note(ctx: Context, timing: Timing, baseline: Timing) -> str:
    return (f"median of {ctx.runs}; best {timing.best:.3f}; "
            f"cpu {timing.cpu:.3f} vs {baseline.cpu:.3f}")


@bench("history-imports", help="where batchctl history's start-up goes: import time by package")
def history_imports(ctx: Context) -> Iterator[Row]:
    """Import time of `batchctl history` (python -X importtime, median per group), beside the
    baseline script's. Information for finding what to cut, not a target."""
    for database in ctx.databases:
        url = ctx.repository_url(database, "imports")
        populate(url, 100)
        env = clean_env()
        mine = import_profile(["-m", "batchctl", "--db", url, "history"], ctx.runs, env=env,
                              cwd=ctx.workdir)
        bare = import_profile([str(BENCH_DIR / "baseline_history.py"), url], ctx.runs, env=env,
                              cwd=ctx.workdir)
        shown = sorted((g for g in mine if mine[g] >= IMPORT_GROUP_MIN), key=lambda g: -mine[g])
        for group in shown:
            yield Row(f"history imports: {group}", database, mine[group] * 1000,
                      bare.get(group, 0.0) * 1000, unit="ms", compare=False)
        rest = sum(v for g, v in mine.items() if g not in shown)
        yield Row("history imports: everything else", database, rest * 1000,
                  sum(v for g, v in bare.items() if g not in shown) * 1000, unit="ms",
                  compare=False)
        yield Row("history imports: total", database, sum(mine.values()) * 1000,
                  sum(bare.values()) * 1000, unit="ms", compare=False,
                  note="-X importtime inflates times; compare groups with each other")

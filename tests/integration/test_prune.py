"""Pruning, on SQLite and Postgres: what is deleted and what is kept (live executions, what a
restart resumes, the newest of each job), log files, dry runs that write nothing, batches."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Callable

import pytest
from sqlalchemy import func, select

from batchctl.errors import UnknownJob, UsageError
from batchctl.model import JobExecution, SkipPhase, Status, instance_key, parse_age, utcnow
from batchctl.operator import Batch
from batchctl.repository.prune import EXECUTION_CHILDREN, PruneRules
from batchctl.repository.tables import job_execution, job_instance, skipped_item, step_execution

JOBS = """
    from batchctl import Job

    hello = Job("hello", params={"n": int})

    @hello.tasklet
    def greet(ctx):
        pass

    other = Job("other", params={"n": int})

    @other.tasklet
    def work(ctx):
        pass
"""

OLD, YOUNG = 100, 1  # days since an execution ended
AGE = timedelta(days=90)


@pytest.fixture(autouse=True)
def _jobs(write_job: Callable[[str, str], Path]) -> None:
    write_job("jobs", JOBS)


def record(
    batch: Batch,
    n: int,
    status: Status | None,
    days_ago: float = OLD,
    *,
    job: str = "hello",
    resume: bool = False,
    log_dir: Path | None = None,
) -> JobExecution:
    """An execution of instance {"n": n}, afresh or resuming the instance's last one, ended
    `days_ago` with `status` (None: left live), with one step execution, one skipped item and,
    given `log_dir`, a log file."""
    repository = batch.repository
    params = {"n": n}
    execution = repository.create_execution(
        job, instance_key(params), params, lambda last: last if resume else None
    )
    step = repository.create_step_execution(execution.id, "greet", {})
    with repository.engine.begin() as connection:
        connection.execute(skipped_item.insert().values(
            step_execution_id=step.id, phase=SkipPhase.PROCESS.value, position=1, item="{}",
            error="ValueError: bad", created_at=utcnow(),
        ))
    if log_dir is not None:
        log_dir.mkdir(exist_ok=True)
        log = log_dir / f"{job}-{execution.id}.log"
        log.write_text("a log\n")
        execution = repository.update_execution(execution, log_path=str(log))
    if status is None:
        return execution
    when = utcnow() - timedelta(days=days_ago)
    return repository.end_execution(execution, status, "", started_at=when, ended_at=when)


def ids(batch: Batch) -> set[int]:
    return {e.id for e in batch.history(limit=None)}


def counts(batch: Batch) -> dict[str, int]:
    tables = (job_instance, job_execution, step_execution, skipped_item)
    with batch.repository.engine.connect() as connection:
        return {
            table.name: connection.execute(select(func.count()).select_from(table)).scalar_one()
            for table in tables
        }


def test_old_ended_executions_go_with_their_rows_and_logs_and_restartable_ones_stay(
    batch: Batch, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    completed = record(batch, 1, Status.COMPLETED, log_dir=logs)         # pruned, instance too
    failed_then = record(batch, 2, Status.FAILED)                        # resumed, completed:
    completed_after = record(batch, 2, Status.COMPLETED, resume=True)    # both pruned
    restartable = record(batch, 3, Status.FAILED, log_dir=logs)          # kept: restart resumes it
    chain_start = record(batch, 4, Status.FAILED)                        # kept: the stopped one
    stopped = record(batch, 4, Status.STOPPED, resume=True)              # resumes it
    young = record(batch, 5, Status.COMPLETED, YOUNG)                    # kept: too young
    old_half = record(batch, 6, Status.FAILED)                           # pruned; the young one
    young_half = record(batch, 6, Status.COMPLETED, YOUNG, resume=True)  # that resumed it stays
    before_live = record(batch, 7, Status.FAILED)                        # kept: a live one
    live = record(batch, 7, None, resume=True)                           # resumes it
    unknown = record(batch, 8, Status.UNKNOWN)                           # kept: awaits abandon
    abandoned = record(batch, 9, Status.ABANDONED)                       # pruned

    report = batch.prune(AGE)

    pruned = {completed.id, failed_then.id, completed_after.id, old_half.id, abandoned.id}
    kept = {restartable.id, chain_start.id, stopped.id, young.id, young_half.id, before_live.id,
            live.id, unknown.id}
    assert ids(batch) == kept
    assert (report.executions, report.step_executions, report.skipped_items) == (5, 5, 5)
    assert report.instances == 3  # n=1, n=2, n=9; n=6 keeps its young execution
    assert report.kept == 5  # restartable, chain_start, stopped, before_live, unknown
    assert report.log_files == 1 and not report.problems
    assert not (logs / f"hello-{completed.id}.log").exists()
    assert (logs / f"hello-{restartable.id}.log").exists()
    assert counts(batch) == {"job_instance": 6, "job_execution": 8, "step_execution": 8,
                             "skipped_item": 8}
    assert batch.execution(young_half.id).resumed_from is None  # its predecessor is gone
    assert batch.execution(stopped.id).resumed_from == chain_start.id
    assert batch.execution(live.id).status.is_live
    assert not pruned & ids(batch)


def test_include_restartable_prunes_the_last_failed_stopped_and_unknown_but_never_live(
    batch: Batch,
) -> None:
    record(batch, 3, Status.FAILED)
    record(batch, 4, Status.FAILED)
    record(batch, 4, Status.STOPPED, resume=True)
    record(batch, 8, Status.UNKNOWN)
    before_live = record(batch, 7, Status.FAILED)
    live = record(batch, 7, None, resume=True)

    report = batch.prune(AGE, include_restartable=True)

    assert ids(batch) == {before_live.id, live.id}  # a live execution keeps what it resumed
    assert report.executions == 4 and report.kept == 1
    assert counts(batch)["job_instance"] == 1


def test_a_kept_restartable_execution_keeps_what_it_resumes_even_with_include_restartable(
    batch: Batch,
) -> None:
    first = record(batch, 4, Status.FAILED)
    last = record(batch, 4, Status.FAILED, YOUNG, resume=True)

    batch.prune(AGE, include_restartable=True)

    assert ids(batch) == {first.id, last.id}
    assert batch.restart(last.id).status == Status.COMPLETED


def test_keep_last_keeps_the_newest_of_each_job_and_job_limits_to_one(batch: Batch) -> None:
    hello = [record(batch, n, Status.COMPLETED) for n in range(5)]
    other = [record(batch, n, Status.COMPLETED, job="other") for n in range(3)]

    report = batch.prune(AGE, keep_last=2, job="hello")

    assert report.executions == 3
    assert ids(batch) == {hello[3].id, hello[4].id, *(e.id for e in other)}

    batch.prune(AGE, keep_last=1)
    assert ids(batch) == {hello[4].id, other[2].id}


def test_a_dry_run_counts_the_same_and_writes_nothing(batch: Batch, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    for n in range(4):
        record(batch, n, Status.COMPLETED, log_dir=logs)
    record(batch, 4, Status.FAILED)
    record(batch, 4, Status.COMPLETED, resume=True)
    record(batch, 5, Status.FAILED)
    before, files = counts(batch), sorted(logs.iterdir())

    dry = batch.prune(AGE, dry_run=True)

    assert counts(batch) == before
    assert sorted(logs.iterdir()) == files
    assert dry.dry_run and dry.longest_transaction == 0.0
    real = batch.prune(AGE)
    assert (dry.executions, dry.step_executions, dry.skipped_items, dry.instances, dry.log_files,
            dry.kept) == (real.executions, real.step_executions, real.skipped_items,
                          real.instances, real.log_files, real.kept) == (6, 6, 6, 5, 4, 1)


def test_the_first_batch_has_the_given_size_and_the_next_ones_are_sized_by_time(batch: Batch) -> None:
    made = [record(batch, n, Status.COMPLETED) for n in range(7)]
    record(batch, 99, Status.FAILED)  # kept: restartable

    batches = list(batch.repository.prune(
        PruneRules(cutoff=utcnow() - AGE, protect=(Status.FAILED,), batch_size=3)
    ))

    assert batches[0].executions == 3
    assert [b.executions for b in batches[1:]] in ([4], [3, 1])  # fast batches grow, up to 2x
    assert sum(b.kept for b in batches) == 1
    assert all(b.seconds > 0 for b in batches)
    assert not {e.id for e in made} & ids(batch)
    assert batch.prune(AGE).batches == 0  # nothing left


def test_every_per_execution_table_is_listed_for_pruning() -> None:
    """A table with a foreign key to job_execution or step_execution holds rows of one
    execution: pruning must know it (EXECUTION_CHILDREN), or its foreign key refuses the delete."""
    from batchctl.repository.tables import metadata

    owners = {"job_execution", "step_execution"}
    referring = {
        table.name
        for table in metadata.tables.values()
        for key in table.foreign_keys
        if key.column.table.name in owners and table.name not in owners
    }
    assert referring <= {owned.table.name for owned in EXECUTION_CHILDREN}


def test_bad_arguments_are_refused(batch: Batch) -> None:
    with pytest.raises(UsageError):
        batch.prune(timedelta(0))
    with pytest.raises(UsageError):
        batch.prune(AGE, keep_last=-1)
    with pytest.raises(UnknownJob):
        batch.prune(AGE, job="nosuchjob")


@pytest.mark.parametrize(
    ("text", "age"),
    [("90d", timedelta(days=90)), ("12h", timedelta(hours=12)), ("30m", timedelta(minutes=30)),
     ("2w", timedelta(weeks=2)), ("45s", timedelta(seconds=45)), ("1d12h", timedelta(hours=36))],
)
def test_ages(text: str, age: timedelta) -> None:
    assert parse_age(text) == age


@pytest.mark.parametrize("text", ["", "90", "d", "1.5d", "-3d", "0d", "3y", "999999999w"])
def test_bad_ages(text: str) -> None:
    with pytest.raises(UsageError):
        parse_age(text)


# -- the command line -----------------------------------------------------------------------------


def test_prune_command_prints_what_it_removed(run_cli, batch: Batch) -> None:
    record(batch, 1, Status.COMPLETED)
    record(batch, 2, Status.FAILED)
    batch.close()

    dry = run_cli("prune", "--older-than", "90d", "--dry-run")
    assert dry.code == 0, dry
    assert dry.out.startswith("would prune 1 execution ended before ")
    assert "nothing was written (--dry-run)" in dry.out
    assert "kept 1 old execution" in dry.err and "--include-restartable" in dry.err

    done = run_cli("prune", "--older-than", "90d", "--keep-last", "0", "--json")
    assert done.code == 0, done
    report = json.loads(done.out)
    assert report["executions"] == 1 and report["instances"] == 1
    assert report["kept_restartable"] == 1 and report["dry_run"] is False
    assert report["cutoff"].endswith("+00:00")

    everything = run_cli("prune", "--older-than", "12h", "--include-restartable", "--job", "hello")
    assert everything.code == 0, everything
    assert everything.out.startswith("pruned 1 execution ")


@pytest.mark.parametrize(
    ("args", "phrase"),
    [(["--older-than", "soon"], "invalid age 'soon'"),
     (["--older-than", "90d", "--job", "nosuchjob"], "unknown job 'nosuchjob'"),
     (["--older-than", "90d", "--keep-last", "-1"], "--keep-last")],
)
def test_prune_command_refuses_bad_input_with_exit_2(run_cli, args: list[str], phrase: str) -> None:
    outcome = run_cli("prune", *args)
    assert outcome.code == 2, outcome
    assert len(outcome.err_lines) == 1 and phrase in outcome.err


"""Skip and retry in chunk steps, with their limits, on SQLite and Postgres."""

from __future__ import annotations

import pytest

from batchctl.errors import Refused
from batchctl.model import Status
from tests.integration.test_chunk_steps import sql


def test_one_bad_row_in_a_chunk_is_skipped_and_the_rest_of_the_chunk_written(batch, write_job):
    sql(batch, "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER CHECK (balance >= 0))")
    write_job("bad_row", '''
        import sqlalchemy
        from batchctl import Job
        from batchctl.items import SqlWriter

        job = Job("bad_row")

        @job.chunk(reader=lambda ctx: range(1, 31), writer=SqlWriter("accounts"), size=10,
                   skip=sqlalchemy.exc.IntegrityError)
        def account(n, ctx):
            return {"id": n, "balance": -1 if n == 15 else n}
    ''')
    execution = batch.start("bad_row", {})
    assert execution.status == Status.COMPLETED, execution.exit_message
    [step] = batch.step_executions(execution.id)
    assert (step.read_count, step.write_count, step.write_skip_count) == (30, 29, 1)
    assert step.commit_count == 3 and step.rollback_count == 1
    ids = [row[0] for row in sql(batch, "SELECT id FROM accounts ORDER BY id")]
    assert ids == [n for n in range(1, 31) if n != 15]
    [skipped] = batch.skipped_items(execution.id)
    assert skipped.phase == "write" and '"id": 15' in skipped.item
    assert "IntegrityError" in skipped.error


def test_skip_limit_fails_the_step_and_counts_over_restarts(batch, write_job):
    write_job("limited", '''
        from batchctl import Job

        job = Job("limited", params={"bad": str})

        @job.chunk(reader=lambda ctx: range(20), writer=lambda items, ctx: None, size=5,
                   skip=ValueError, skip_limit=2)
        def check(n, ctx):
            if n in {int(b) for b in ctx.params["bad"].split(",")}:
                raise ValueError(f"bad {n}")
            return n
    ''')
    execution = batch.start("limited", {"bad": "1,7,12"})
    assert execution.status == Status.FAILED
    assert "skip limit 2 exceeded" in execution.exit_message
    [step] = batch.step_executions(execution.id)
    assert (step.process_skip_count, step.commit_count, step.rollback_count) == (2, 2, 1)
    assert step.context["batchctl"]["skips"] == 2 and step.context["batchctl"]["position"] == 10
    assert len(batch.skipped_items(execution.id)) == 2

    again = batch.start("limited", {"bad": "1,7,12"})  # the limit counts the earlier skips
    assert again.status == Status.FAILED and "skip limit 2 exceeded" in again.exit_message
    [step] = batch.step_executions(again.id)
    assert (step.read_count, step.commit_count) == (0, 0)


def test_not_skippable_error_fails_the_step_with_nothing_of_its_chunk_committed(batch, write_job):
    sql(batch, "CREATE TABLE kept (n INTEGER)")
    write_job("strict", '''
        from batchctl import Job

        job = Job("strict")

        def write(items, ctx):
            mark = "?" if ctx.connection.dialect.name == "sqlite" else "%s"
            ctx.connection.exec_driver_sql(f"INSERT INTO kept VALUES ({mark})", [(n,) for n in items])
            if 13 in items:
                raise RuntimeError("disk on fire")

        job.chunk_step("copy", reader=lambda ctx: range(20), writer=write, size=5, skip=ValueError)
    ''')
    execution = batch.start("strict", {})
    assert execution.status == Status.FAILED and "disk on fire" in execution.exit_message
    [step] = batch.step_executions(execution.id)
    assert (step.write_count, step.commit_count, step.rollback_count) == (10, 2, 1)
    assert step.context["batchctl"]["position"] == 10
    assert sql(batch, "SELECT count(*), max(n) FROM kept") == [(10, 9)]


def test_retry_with_limit_and_backoff(batch, write_job):
    write_job("retried", '''
        from batchctl import Job

        job = Job("retried", params={"failures": int})
        seen = {}

        def flaky(n, ctx):
            if n == 3:
                seen[ctx.execution_id] = seen.get(ctx.execution_id, 0) + 1
                if seen[ctx.execution_id] <= ctx.params["failures"]:
                    raise TimeoutError("slow")
            return n

        job.chunk_step("work", reader=lambda ctx: range(6), writer=lambda items, ctx: None,
                       size=4, processor=flaky, retry=TimeoutError, retry_limit=2,
                       backoff=lambda attempt: 0.001 * attempt)
    ''')
    ok = batch.start("retried", {"failures": 2})
    assert ok.status == Status.COMPLETED, ok.exit_message
    [step] = batch.step_executions(ok.id)
    assert (step.write_count, step.process_skip_count) == (6, 0)

    failed = batch.start("retried", {"failures": 3})
    assert failed.status == Status.FAILED and "TimeoutError: slow" in failed.exit_message


def test_write_retry_then_scan_with_a_file_writer_writes_each_item_once(batch, write_job, tmp_path):
    out = tmp_path / "out.jsonl"
    write_job("scanned", f'''
        from batchctl import Job
        from batchctl.items import JsonLinesWriter

        job = Job("scanned")

        class Picky(JsonLinesWriter):
            def write(self, items):
                super().write([i for i in items if i["n"] != 4])   # writes the good ones first
                if any(i["n"] == 4 for i in items):
                    raise LookupError("no 4s")

        @job.chunk(reader=lambda ctx: range(9), writer=Picky({str(out)!r}), size=3,
                   retry=LookupError, retry_limit=1, skip=LookupError)
        def wrap(n, ctx):
            return {{"n": n}}
    ''')
    execution = batch.start("scanned", {})
    assert execution.status == Status.COMPLETED, execution.exit_message
    [step] = batch.step_executions(execution.id)
    assert (step.write_count, step.write_skip_count, step.rollback_count) == (8, 1, 2)
    assert out.read_text().split() == [f'{{"n":{n}}}' for n in range(9) if n != 4]


FAILED_COMMIT_JOB = '''
    import sqlalchemy
    from sqlalchemy import event
    from batchctl import Job

    job = Job("unsure")

    @job.after_chunk
    def arm(ctx, step):
        if ctx.state["batchctl"]["position"] == 10:  # after the second chunk of the first run
            commits = []

            def fail(connection):  # the chunk's commit: after the fence's read, if any
                commits.append(connection)
                if len(commits) == FAIL_AT:
                    event.remove(ctx.database, "commit", fail)
                    connection.connection.driver_connection.rollback()  # it never committed
                    raise sqlalchemy.exc.OperationalError("COMMIT", None, Exception("connection lost"))
            event.listen(ctx.database, "commit", fail)

    class Outside:
        """A writer outside the repository's transaction."""
        transactional = False

        def write(self, items):
            pass

    job.chunk_step("copy", reader=lambda ctx: range(30), writer=WRITER, size=5)
'''


def test_a_failed_commit_of_a_writer_outside_the_transaction_ends_unknown(batch, write_job):
    write_job("unsure", FAILED_COMMIT_JOB.replace("WRITER", "Outside()").replace("FAIL_AT", "2"))
    execution = batch.start("unsure", {})
    assert execution.status == Status.UNKNOWN, execution.exit_message
    assert "may or may not have been committed" in execution.exit_message
    [step] = batch.step_executions(execution.id)
    assert step.status == Status.UNKNOWN and step.commit_count == 2
    with pytest.raises(Refused, match="abandon"):
        batch.start("unsure", {})


def test_a_failed_commit_of_a_transactional_writer_is_settled_by_the_step_row(batch, write_job):
    """The chunk's writes commit with its checkpoint: the step row's version says the chunk did
    not commit (the COMMIT failed before reaching the database), so the step is FAILED, not
    UNKNOWN, and restarts from its last checkpoint."""
    write_job("unsure", FAILED_COMMIT_JOB.replace("WRITER", "lambda items, ctx: None").replace("FAIL_AT", "1"))
    execution = batch.start("unsure", {})
    assert execution.status == Status.FAILED, execution.exit_message
    assert "connection lost" in execution.exit_message
    [step] = batch.step_executions(execution.id)
    assert step.status == Status.FAILED and step.commit_count == 2
    restarted = batch.restart(execution.id)
    assert restarted.status == Status.COMPLETED
    assert sum(s.write_count for s in batch.step_executions(restarted.id)) + 10 == 30

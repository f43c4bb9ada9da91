"""Chunk steps on SQLite and Postgres: counters, filtering, items, listeners, stop and restart."""

from __future__ import annotations

from typing import Any

from batchctl.model import Status


def sql(batch: Any, statement: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    from sqlalchemy import text

    with batch.repository.engine.begin() as connection:
        result = connection.execute(text(statement), params or {})
        return [tuple(row) for row in result] if result.returns_rows else []


def test_processor_filters_and_counters_add_up(batch, write_job):
    sql(batch, "CREATE TABLE squares (n INTEGER PRIMARY KEY, square INTEGER)")
    write_job("squares", '''
        from batchctl import Job

        job = Job("squares", params={"n": int})

        def numbers(ctx):
            return range(ctx.params["n"])

        def insert(items, ctx):
            ctx.connection.exec_driver_sql(
                "INSERT INTO squares (n, square) VALUES (%s)" % ("?, ?" if ctx.connection.dialect.name == "sqlite" else "%s, %s"),
                [(n, s) for n, s in items],
            )

        @job.chunk(reader=numbers, writer=insert, size=7)
        def square(n, ctx):
            """Squares of the numbers that are not multiples of 5."""
            return None if n % 5 == 0 else (n, n * n)
    ''')
    execution = batch.start("squares", {"n": 40})
    assert execution.status == Status.COMPLETED, execution.exit_message
    [step] = batch.step_executions(execution.id)
    assert (step.read_count, step.write_count, step.filter_count) == (40, 32, 8)
    assert step.commit_count == 6 and step.rollback_count == 0
    assert step.context["batchctl"]["position"] == 40
    rows = sql(batch, "SELECT n, square FROM squares ORDER BY n")
    assert rows == [(n, n * n) for n in range(40) if n % 5]
    assert batch.job("squares").steps[0].description.startswith("Squares")


def test_chunk_step_without_processor_csv_to_table_and_back(batch, write_job, tmp_path):
    source = tmp_path / "in-20240131.csv"
    source.write_text("id,name,amount,day\n" + "".join(
        f"{i},name {i},{i * 100},2024-01-{i % 28 + 1:02d}\n" for i in range(1, 24)
    ))
    sql(batch, "CREATE TABLE entries (id INTEGER PRIMARY KEY, name TEXT, amount INTEGER, day DATE)")
    write_job("copy", f'''
        from datetime import date
        from batchctl import Job
        from batchctl.items import CsvReader, CsvWriter, SqlReader, SqlWriter

        job = Job("copy", params={{"date": date}})
        job.chunk_step(
            "load",
            reader=CsvReader({str(tmp_path)!r} + "/in-{{date:%Y%m%d}}.csv",
                             types={{"id": int, "amount": int, "day": date}}),
            writer=SqlWriter("entries"),
            size=5,
        )
        job.chunk_step(
            "dump",
            reader=SqlReader("SELECT id, name, amount FROM entries WHERE amount >= :low", key="id",
                             params={{"low": 500}}, page_size=3),
            writer=CsvWriter({str(tmp_path)!r} + "/out-{{date:%Y%m%d}}.csv", atomic=True, checksum=True),
            size=4,
        )
    ''')
    execution = batch.start("copy", {"date": "2024-01-31"})
    assert execution.status == Status.COMPLETED, execution.exit_message
    load, dump = batch.step_executions(execution.id)
    assert (load.read_count, load.write_count, load.commit_count) == (23, 23, 5)
    assert (dump.read_count, dump.write_count) == (19, 19)
    rows = sql(batch, "SELECT id, amount FROM entries ORDER BY id")
    assert rows == [(i, i * 100) for i in range(1, 24)]
    out = tmp_path / "out-20240131.csv"
    assert out.read_text().splitlines() == ["id,name,amount"] + [
        f"{i},name {i},{i * 100}" for i in range(5, 24)
    ]
    assert not (tmp_path / "out-20240131.csv.part").exists()
    import hashlib

    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert (tmp_path / "out-20240131.csv.sha256").read_text() == f"{digest}  out-20240131.csv\n"


def test_listeners_see_every_chunk_and_skip(batch, write_job, tmp_path):
    log = tmp_path / "events.txt"
    write_job("listened", f'''
        from batchctl import Job

        job = Job("listened")
        LOG = {str(log)!r}

        def note(text):
            with open(LOG, "a") as handle:
                handle.write(text + "\\n")

        @job.before_chunk
        def before(ctx):
            note("before")

        @job.after_chunk
        def after(ctx, step):
            note(f"after {{step.commit_count}} {{step.write_count}}")

        @job.on_skip
        def skipped(ctx, skip):
            note(f"skip {{skip.phase}} {{skip.item}} {{type(skip.error).__name__}}")

        @job.on_chunk_error
        def error(ctx, exc):
            note(f"error {{type(exc).__name__}}")

        attempts = []

        def flaky(items, ctx):
            if 6 in items and not attempts:
                attempts.append(1)
                raise ConnectionError("once")

        @job.chunk(reader=lambda ctx: range(10), writer=flaky, size=4,
                   skip=KeyError, retry=ConnectionError, retry_limit=1)
        def check(n, ctx):
            if n == 2:
                raise KeyError(n)
            return n
    ''')
    execution = batch.start("listened", {})
    assert execution.status == Status.COMPLETED, execution.exit_message
    [step] = batch.step_executions(execution.id)
    assert (step.read_count, step.write_count, step.process_skip_count) == (10, 9, 1)
    assert step.rollback_count == 1
    assert log.read_text().splitlines() == [
        "before", "after 1 3", "skip process 2 KeyError",
        "before", "error ConnectionError", "after 2 7",
        "before", "after 3 9",
        "before",
    ]


def test_restart_of_a_stopped_chunk_step_resumes_after_the_last_commit(batch, write_job, tmp_path):
    reads = tmp_path / "reads.txt"
    sql(batch, "CREATE TABLE out (n INTEGER PRIMARY KEY)")
    write_job("stoppable", f'''
        import time
        from batchctl import Job
        from batchctl.items import SqlWriter
        from batchctl.repository import Repository

        job = Job("stoppable", params={{"run": int}})

        class Seeking:
            """An object reader over 0..49 that seeks on open and notes every item it reads."""

            def open(self, ctx, state):
                self.next = state.get("next", 0)
                self.opened_at = self.next

            def read(self):
                if self.next >= 50:
                    return None
                with open({str(reads)!r}, "a") as handle:
                    handle.write(f"{{self.next}}\\n")
                self.next += 1
                return {{"n": self.next - 1}}

            def state(self):
                return {{"next": self.next}}

            def close(self):
                pass

        @job.after_chunk
        def stop_after_two(ctx, step):
            if ctx.state["batchctl"]["position"] == 20:
                Repository(ctx.database, "").request_stop(ctx.execution_id)
                deadline = time.monotonic() + 10
                while not ctx.stop_requested and time.monotonic() < deadline:
                    time.sleep(0.02)

        job.chunk_step("copy", reader=Seeking(), writer=SqlWriter("out"), size=10)
    ''')
    stopped = batch.start("stoppable", {"run": 1})
    assert stopped.status == Status.STOPPED, stopped.exit_message
    [first] = batch.step_executions(stopped.id)
    assert (first.status, first.read_count, first.commit_count) == (Status.STOPPED, 20, 2)
    assert first.context["batchctl"]["reader"] == {"next": 20}
    assert sql(batch, "SELECT count(*) FROM out") == [(20,)]

    resumed = batch.start("stoppable", {"run": 1})
    assert resumed.status == Status.COMPLETED and resumed.resumed_from == stopped.id
    [second] = batch.step_executions(resumed.id)
    assert (second.read_count, second.write_count) == (30, 30)
    assert [int(line) for line in reads.read_text().split()] == list(range(50))
    assert sql(batch, "SELECT count(*), min(n), max(n) FROM out") == [(50, 0, 49)]


def test_show_lists_skipped_items(batch, write_job, tmp_path):
    from batchctl import render

    source = tmp_path / "in.csv"
    source.write_text("id,amount\n1,10\n2,ten\n3,30\n4,\n5,x5\n")
    write_job("reads", f'''
        from batchctl import Job
        from batchctl.items import CsvReader

        job = Job("reads")
        job.chunk_step("load", reader=CsvReader({str(source)!r}, types={{"id": int, "amount": int}}),
                       writer=lambda items, ctx: None, size=10, skip=ValueError)
    ''')
    execution = batch.start("reads", {})
    assert execution.status == Status.COMPLETED, execution.exit_message
    [step] = batch.step_executions(execution.id)
    assert (step.read_count, step.read_skip_count, step.write_count) == (3, 2, 3)
    skipped = batch.skipped_items(execution.id)
    assert [(s.step_name, s.phase, s.position) for s in skipped] == [("load", "read", 2), ("load", "read", 5)]
    assert '"amount": "ten"' in skipped[0].item and "ValueError" in skipped[0].error
    data = render.execution_dict(execution, [step], skipped)
    assert [item["position"] for item in data["skipped"]] == [2, 5]

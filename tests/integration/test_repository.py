"""The job repository on SQLite and Postgres: identity, the live-execution guarantee, locking."""

from __future__ import annotations

from datetime import timezone

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError

from batchctl.errors import AlreadyRunning, StaleExecution, UnknownExecution
from batchctl.model import JobExecution, Status, utcnow
from batchctl.operator import Batch
from batchctl.repository import Repository
from batchctl.repository.migrate import HEAD_REVISION, current_revision
from batchctl.repository.tables import job_execution, job_instance

KEY_A = "a" * 64
KEY_B = "b" * 64


def afresh(last: JobExecution | None) -> None:
    """A decide function that always allows a new execution (bypassing the operator's rules)."""
    return None


@pytest.fixture
def repository(batch: Batch) -> Repository:
    return batch.repository


def finish(repository: Repository, execution: JobExecution, status: Status = Status.COMPLETED) -> JobExecution:
    return repository.update_execution(execution, status=status, ended_at=utcnow())


def test_the_schema_is_created_on_first_use(repository: Repository) -> None:
    assert current_revision(repository.engine) == HEAD_REVISION


def test_a_new_execution_starts_as_starting_with_version_zero(repository: Repository) -> None:
    execution = repository.create_execution(
        "job", KEY_A, {"n": 1}, afresh, process={"host": "h", "pid": 42, "pid_scope": "s"}
    )
    assert execution.status == Status.STARTING
    assert execution.version == 0
    assert execution.params == {"n": 1}
    assert (execution.host, execution.pid) == ("h", 42)
    assert execution.created_at is not None and execution.created_at.tzinfo == timezone.utc


def test_the_same_job_and_key_is_the_same_instance(repository: Repository) -> None:
    first = repository.create_execution("job", KEY_A, {"n": 1}, afresh)
    finish(repository, first)
    second = repository.create_execution("job", KEY_A, {"n": 1}, afresh)
    assert second.instance_id == first.instance_id
    assert second.id != first.id


def test_another_key_is_another_instance(repository: Repository) -> None:
    first = repository.create_execution("job", KEY_A, {"n": 1}, afresh)
    second = repository.create_execution("job", KEY_B, {"n": 2}, afresh)
    assert second.instance_id != first.instance_id


def test_the_same_key_of_another_job_is_another_instance(repository: Repository) -> None:
    first = repository.create_execution("job", KEY_A, {}, afresh)
    second = repository.create_execution("other", KEY_A, {}, afresh)
    assert second.instance_id != first.instance_id


def test_the_database_refuses_a_second_instance_with_the_same_key(repository: Repository) -> None:
    row = {"job_name": "job", "job_key": KEY_A, "params": {}, "created_at": utcnow()}
    with repository.engine.begin() as connection:
        connection.execute(insert(job_instance).values(**row))
    with pytest.raises(IntegrityError), repository.engine.begin() as connection:
        connection.execute(insert(job_instance).values(**row))


def _execution_row(instance_id: int, status: Status) -> dict[str, object]:
    return {
        "instance_id": instance_id,
        "job_name": "job",
        "status": status.value,
        "version": 0,
        "created_at": utcnow(),
        "context": {},
    }


@pytest.mark.parametrize("second", [Status.STARTING, Status.STARTED, Status.STOPPING])
def test_the_database_refuses_a_second_live_execution_of_an_instance(
    repository: Repository, second: Status
) -> None:
    live = repository.create_execution("job", KEY_A, {}, afresh)
    with pytest.raises(IntegrityError), repository.engine.begin() as connection:
        connection.execute(insert(job_execution).values(**_execution_row(live.instance_id, second)))


def test_the_database_allows_many_ended_executions_beside_a_live_one(repository: Repository) -> None:
    live = repository.create_execution("job", KEY_A, {}, afresh)
    with repository.engine.begin() as connection:
        for status in (Status.FAILED, Status.STOPPED, Status.COMPLETED, Status.ABANDONED):
            connection.execute(insert(job_execution).values(**_execution_row(live.instance_id, status)))
    assert len(repository.history("job", limit=None)) == 5


def test_a_live_execution_blocks_a_new_one_even_when_the_rule_allows_it(repository: Repository) -> None:
    repository.create_execution("job", KEY_A, {}, afresh)
    with pytest.raises(AlreadyRunning):
        repository.create_execution("job", KEY_A, {}, afresh)
    assert len(repository.history("job", limit=None)) == 1


def test_an_ended_execution_frees_the_instance_for_a_new_one(repository: Repository) -> None:
    first = repository.create_execution("job", KEY_A, {}, afresh)
    finish(repository, first, Status.FAILED)
    second = repository.create_execution("job", KEY_A, {}, afresh)
    assert second.status == Status.STARTING


def test_the_rule_sees_the_last_execution_and_its_choice_is_recorded(repository: Repository) -> None:
    first = finish(repository, repository.create_execution("job", KEY_A, {}, afresh), Status.FAILED)
    seen: list[JobExecution | None] = []

    def resume(last: JobExecution | None) -> JobExecution | None:
        seen.append(last)
        return last

    second = repository.create_execution("job", KEY_A, {}, resume)
    assert [e.id if e else None for e in seen] == [first.id]
    assert second.resumed_from == first.id


def test_an_update_bumps_the_version(repository: Repository) -> None:
    execution = repository.create_execution("job", KEY_A, {}, afresh)
    updated = repository.update_execution(execution, status=Status.STARTED)
    assert updated.version == execution.version + 1
    stored = repository.execution(execution.id)
    assert (stored.status, stored.version) == (Status.STARTED, updated.version)


def test_an_update_with_a_stale_version_raises_stale_execution(repository: Repository) -> None:
    execution = repository.create_execution("job", KEY_A, {}, afresh)
    repository.update_execution(execution, status=Status.STOPPING)  # another process wins
    with pytest.raises(StaleExecution):
        repository.update_execution(execution, status=Status.STARTED)
    assert repository.execution(execution.id).status == Status.STOPPING


def test_a_step_update_with_a_stale_version_raises_stale_execution(repository: Repository) -> None:
    execution = repository.create_execution("job", KEY_A, {}, afresh)
    step = repository.create_step_execution(execution.id, "load", {})
    repository.update_step_execution(step, commit_count=1)
    with pytest.raises(StaleExecution):
        repository.update_step_execution(step, commit_count=5)
    assert repository.step_executions(execution.id)[0].commit_count == 1


def test_an_unknown_execution_id_is_an_error(repository: Repository) -> None:
    with pytest.raises(UnknownExecution, match="no execution with id 12345"):
        repository.execution(12345)


def test_contexts_are_stored_as_json_and_read_back_equal(repository: Repository) -> None:
    context = {"offset": 10, "name": "Grüße ✓", "nested": {"list": [1, 2.5, None, True]}}
    execution = repository.create_execution("job", KEY_A, {"when": "2024-01-31"}, afresh)
    repository.update_execution(execution, context=context)
    step = repository.create_step_execution(execution.id, "load", context)
    assert repository.execution(execution.id).context == context
    assert repository.step_executions(execution.id)[0].context == context
    with repository.engine.connect() as connection:
        raw = connection.execute(
            select(text("context")).select_from(job_execution).where(job_execution.c.id == execution.id)
        ).scalar_one()
    assert isinstance(raw, str) and raw.startswith("{")
    assert step.id is not None


def test_times_are_read_back_in_utc(repository: Repository) -> None:
    execution = repository.create_execution("job", KEY_A, {}, afresh)
    now = utcnow()
    repository.update_execution(execution, started_at=now)
    stored = repository.execution(execution.id)
    assert stored.started_at == now
    assert stored.started_at.tzinfo == timezone.utc


def test_a_naive_time_is_refused(repository: Repository) -> None:
    execution = repository.create_execution("job", KEY_A, {}, afresh)
    with pytest.raises(Exception, match="naive datetime"):
        repository.update_execution(execution, started_at=utcnow().replace(tzinfo=None))


def test_step_executions_are_listed_in_the_order_they_started(repository: Repository) -> None:
    execution = repository.create_execution("job", KEY_A, {}, afresh)
    for name in ("b", "a", "c"):
        repository.create_step_execution(execution.id, name, {})
    assert [s.name for s in repository.step_executions(execution.id)] == ["b", "a", "c"]


# -- driver errors, translated in one place -------------------------------------------------------


def test_a_write_refused_by_the_live_index_is_already_running(repository: Repository) -> None:
    live = repository.create_execution("job", KEY_A, {}, afresh)
    row = _execution_row(live.instance_id, Status.STARTED)
    with pytest.raises(AlreadyRunning) as refused:
        repository._write(lambda connection: connection.execute(insert(job_execution).values(**row)))
    assert isinstance(refused.value.__cause__, IntegrityError)


def test_the_live_index_violation_is_told_by_the_index_not_by_words(repository: Repository) -> None:
    from batchctl.repository.connect import is_live_index_violation

    live = repository.create_execution("job", KEY_A, {}, afresh)
    with pytest.raises(IntegrityError) as second_live, repository.engine.begin() as connection:
        connection.execute(insert(job_execution).values(**_execution_row(live.instance_id, Status.STARTED)))
    assert is_live_index_violation(second_live.value)

    row = {"job_name": "job", "job_key": KEY_B, "params": {}, "created_at": utcnow()}
    with repository.engine.begin() as connection:
        connection.execute(insert(job_instance).values(**row))
    with pytest.raises(IntegrityError) as same_key, repository.engine.begin() as connection:
        connection.execute(insert(job_instance).values(**row))
    assert not is_live_index_violation(same_key.value)


def test_another_integrity_error_is_not_translated(repository: Repository) -> None:
    row = {"job_name": "job", "job_key": KEY_B, "params": {}, "created_at": utcnow()}
    repository._write(lambda connection: connection.execute(insert(job_instance).values(**row)))
    with pytest.raises(IntegrityError):
        repository._write(lambda connection: connection.execute(insert(job_instance).values(**row)))


def test_upgrade_schema_creates_the_schema_and_says_its_revision(database_url: str) -> None:
    repository = Repository.open(database_url, migrate=False)
    try:
        assert current_revision(repository.engine) is None
        assert repository.upgrade_schema() == HEAD_REVISION
        assert repository.upgrade_schema() == HEAD_REVISION
    finally:
        repository.close()


@pytest.mark.parametrize(
    "url",
    ["postgresql://postgres:secretpw@127.0.0.1:1/x", "sqlite:////nonexistent-batchctl-folder/repo.db"],
)
def test_an_unreachable_database_is_database_unavailable(url: str) -> None:
    from batchctl.errors import DatabaseUnavailable

    repository = Repository.open(url, migrate=False)
    try:
        with pytest.raises(DatabaseUnavailable, match="cannot reach the job repository") as caught:
            repository.upgrade_schema()
        assert "secretpw" not in str(caught.value)
        with pytest.raises(DatabaseUnavailable):
            repository.history()
    finally:
        repository.close()


def test_failing_waiting_partitions_fails_one_checkpointed_since_and_spares_one_just_ended(
    repository: Repository,
) -> None:
    from batchctl.executors import fail_waiting
    from batchctl.repository.partitions import PartitionSpec

    execution = repository.create_execution("job", KEY_A, {}, afresh)
    specs = [PartitionSpec(0, {}, {}), PartitionSpec(1, {}, {})]
    repository.create_partitions(execution.id, "load", specs, "dask")
    read = repository.partitions_of(execution.id, "load")
    repository.update_step_execution(read[0], status=Status.STARTED, write_count=5)  # a checkpoint
    repository.update_step_execution(read[1], status=Status.COMPLETED, ended_at=utcnow())

    fail_waiting(repository, read, "lost the Dask scheduler")

    after = repository.partitions_of(execution.id, "load")
    assert [(p.status, p.exit_message, p.write_count) for p in after] == [
        (Status.FAILED, "lost the Dask scheduler", 5), (Status.COMPLETED, None, 0)
    ]

"""Pruning: deleting ended executions with every row that belongs to them, in short batches.

`EXECUTION_CHILDREN` is the one list of the tables whose rows belong to a job execution; a new
per-execution table (events, schedule fires, ...) is added there, or pruning leaves its rows
behind (and its foreign key refuses the delete of the execution, which the tests would show).

The rules (how old, how many to keep, which statuses keep an instance restartable) are the
operator's; they arrive as a `PruneRules`. What is here is the mechanism: which executions a
kept one still needs (the chain a restart resumes from), and deleting in transactions of at
most `batch_size` executions, so that a busy repository never waits long for its write lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Iterator, Sequence

from sqlalchemy import Connection, ColumnElement, Table, and_, delete, exists, func, not_, or_, select, update

from batchctl.model import ABANDONABLE_STATUSES, LIVE_STATUSES, Status
from batchctl.repository.base import RepositoryBase
from batchctl.repository.tables import (
    command_message,
    event,
    job_execution,
    job_instance,
    schedule_fire,
    skipped_item,
    step_execution,
)

PRUNE_BATCH_SIZE = 500  # executions deleted by the first transaction (then sized by time)
PRUNE_BATCH_SECONDS = 0.2  # what each later transaction is sized to last: the write lock's hold
PRUNE_BATCH_MIN = 20  # executions per transaction, however slow the repository


@dataclass(frozen=True)
class Owned:
    """A table whose rows belong to job executions: `column` holds the id of a job execution
    or, with `via`, the id of a row of `via`'s table, which belongs to one."""

    table: Table
    column: str
    via: Owned | None = None

    def of(self, execution_ids: Any) -> ColumnElement[bool]:
        """The condition selecting this table's rows of the executions `execution_ids` (a list
        or a subquery of ids)."""
        if self.via is None:
            return self.table.c[self.column].in_(execution_ids)
        parents = select(self.via.table.c.id).where(self.via.of(execution_ids))
        return self.table.c[self.column].in_(parents)


_STEPS = Owned(step_execution, "job_execution_id")

# Every table whose rows belong to one job execution, children before their parents: the order
# in which pruning deletes them. Add new per-execution tables here.
EXECUTION_CHILDREN: tuple[Owned, ...] = (
    Owned(skipped_item, "step_execution_id", via=_STEPS),
    Owned(event, "execution_id"),
    Owned(schedule_fire, "execution_id"),
    Owned(command_message, "execution_id"),
    _STEPS,
)


@dataclass(frozen=True)
class PruneRules:
    """What to prune, as the operator decided it.

    Executions that ended before `cutoff` (of `job`, or of every job) are pruned, except the
    `keep_last` newest executions of each job and, for every instance whose last execution has
    a status in `protect` (live statuses always), that execution and the executions it resumes
    from: what a restart needs, or what a person must look at before abandoning it.
    """

    cutoff: datetime
    job: str | None = None
    keep_last: int | None = None
    protect: Sequence[Status] = ()
    batch_size: int = PRUNE_BATCH_SIZE


@dataclass
class PruneBatch:
    """What one batch removed (or, in a dry run, would remove)."""

    executions: int = 0
    step_executions: int = 0
    skipped_items: int = 0
    instances: int = 0
    kept: int = 0  # old enough, but kept: what a restart needs (or a person must see first)
    log_paths: list[str] = field(default_factory=list)
    seconds: float = 0.0  # how long its transaction lasted


@dataclass
class _Plan:
    """What the batches go by: the newest execution when pruning began (newer ones are never
    touched), the executions kept for a restart, and each job's oldest kept execution."""

    max_id: int
    protected: set[int]
    keep_from: dict[str, int]
    # In a dry run: executions counted so far per instance, to tell which would be emptied.
    per_instance: dict[int, int] = field(default_factory=dict)


class PruneQueries(RepositoryBase):
    """The pruning queries; `Repository` (store.py) derives from this class."""

    def prune(self, rules: PruneRules, *, dry_run: bool = False) -> Iterator[PruneBatch]:
        """Writes (reads only, with `dry_run`): delete the executions `rules` select, with
        their rows in EXECUTION_CHILDREN and the instances left without an execution, one
        transaction per batch of at most `rules.batch_size` executions, yielding what each
        removed (their log paths, for the caller to delete once the rows are gone).

        Each batch decides again, in its own transaction, what it deletes: an execution still
        ended, of an instance with no execution created since pruning began (a restart that
        resumes it meanwhile keeps it). On Postgres the batches are serializable, so that a
        start or restart racing with them is retried rather than finding a row gone. A kept
        execution whose predecessor is deleted no longer names it (`resumed_from` is cleared).
        """
        plan = self._read(lambda connection: self._plan(connection, rules))
        after = 0
        sized = rules
        while True:
            started = time.perf_counter()
            if dry_run:
                batch, after = self._read(lambda c: self._count_batch(c, sized, plan, after))
            else:
                batch, after = self._write(
                    lambda c: self._delete_batch(c, sized, plan, after), serializable=True
                )
            batch.seconds = time.perf_counter() - started
            sized = replace(sized, batch_size=_next_size(sized.batch_size, batch.seconds,
                                                         rules.batch_size))
            if after == 0:  # nothing left to look at
                if dry_run and plan.per_instance:
                    yield PruneBatch(instances=self._read(lambda c: _emptied(c, plan.per_instance)))
                return
            if batch.executions or batch.kept:
                yield batch

    # -- the plan ---------------------------------------------------------------------------------

    def _plan(self, connection: Connection, rules: PruneRules) -> _Plan:
        max_id = connection.execute(select(func.max(job_execution.c.id))).scalar() or 0
        keep_from: dict[str, int] = {}
        if rules.keep_last:
            jobs = [rules.job] if rules.job else connection.execute(
                select(job_execution.c.job_name).distinct()
            ).scalars().all()
            for job in jobs:
                oldest_kept = connection.execute(
                    select(job_execution.c.id)
                    .where(job_execution.c.job_name == job)
                    .order_by(job_execution.c.id.desc())
                    .offset(rules.keep_last - 1)
                    .limit(1)
                ).scalar()
                if oldest_kept is not None:
                    keep_from[job] = int(oldest_kept)
        return _Plan(int(max_id), _protected_chains(connection, rules, keep_from), keep_from)

    def _candidates(
        self, connection: Connection, rules: PruneRules, plan: _Plan, after: int
    ) -> tuple[list[Any], int, int]:
        """The next page of executions old enough to prune after id `after`, minus the
        protected ones; how many were protected; and the id to page on from (0 when the table
        is done)."""
        execution = job_execution
        query = (
            select(execution.c.id, execution.c.instance_id, execution.c.log_path)
            .where(
                execution.c.id > after,
                execution.c.id <= plan.max_id,
                execution.c.ended_at < rules.cutoff,
                execution.c.status.not_in([s.value for s in LIVE_STATUSES]),
            )
            .order_by(execution.c.id)
            .limit(rules.batch_size)
        )
        if rules.job is not None:
            query = query.where(execution.c.job_name == rules.job)
        if plan.keep_from:
            kept = [and_(execution.c.job_name == job, execution.c.id >= first)
                    for job, first in plan.keep_from.items()]
            query = query.where(not_(or_(*kept)))
        rows = connection.execute(query).all()
        if not rows:
            return [], 0, 0
        chosen = [row for row in rows if row.id not in plan.protected]
        return chosen, len(rows) - len(chosen), int(rows[-1].id)

    # -- one batch --------------------------------------------------------------------------------

    def _delete_batch(
        self, connection: Connection, rules: PruneRules, plan: _Plan, after: int
    ) -> tuple[PruneBatch, int]:
        rows, kept, next_after = self._candidates(connection, rules, plan, after)
        batch = PruneBatch(kept=kept)
        if not rows:
            return batch, next_after
        ids = _still_prunable(connection, [row.id for row in rows], plan.max_id)
        batch.kept += len(rows) - len(ids)
        if not ids:
            return batch, next_after
        chosen = set(ids)
        for owned in EXECUTION_CHILDREN:
            deleted = connection.execute(delete(owned.table).where(owned.of(ids))).rowcount
            if owned.table is step_execution:
                batch.step_executions = deleted
            elif owned.table is skipped_item:
                batch.skipped_items = deleted
        later = job_execution.alias("later")
        connection.execute(
            update(job_execution)
            .where(job_execution.c.resumed_from.in_(ids), job_execution.c.id.not_in(ids))
            .values(resumed_from=None, version=job_execution.c.version + 1)
        )
        batch.executions = connection.execute(
            delete(job_execution).where(job_execution.c.id.in_(ids))
        ).rowcount
        instances = sorted({row.instance_id for row in rows if row.id in chosen})
        batch.instances = connection.execute(
            delete(job_instance).where(
                job_instance.c.id.in_(instances),
                ~exists(select(later.c.id).where(later.c.instance_id == job_instance.c.id)),
            )
        ).rowcount
        batch.log_paths = [row.log_path for row in rows if row.id in chosen and row.log_path]
        return batch, next_after

    def _count_batch(
        self, connection: Connection, rules: PruneRules, plan: _Plan, after: int
    ) -> tuple[PruneBatch, int]:
        rows, kept, next_after = self._candidates(connection, rules, plan, after)
        batch = PruneBatch(kept=kept)
        if not rows:
            return batch, next_after
        ids = [row.id for row in rows]
        batch.executions = len(ids)
        for owned in EXECUTION_CHILDREN:
            counted = connection.execute(
                select(func.count()).select_from(owned.table).where(owned.of(ids))
            ).scalar_one()
            if owned.table is step_execution:
                batch.step_executions = counted
            elif owned.table is skipped_item:
                batch.skipped_items = counted
        for row in rows:
            plan.per_instance[row.instance_id] = plan.per_instance.get(row.instance_id, 0) + 1
        batch.log_paths = [row.log_path for row in rows if row.log_path]
        return batch, next_after


def _protected_chains(
    connection: Connection, rules: PruneRules, keep_from: dict[str, int]
) -> set[int]:
    """The executions a restart may still need: the last execution of each instance that is
    live or restartable (or UNKNOWN) and is not itself pruned (its status is in
    `rules.protect`, or it is too young, or among the newest kept), with every execution it
    resumes from, since a restart reads the steps of that whole chain. Few rows on a healthy
    repository; read from the status index."""
    statuses = {*LIVE_STATUSES, *ABANDONABLE_STATUSES}
    later = job_execution.alias("later")
    query = select(
        job_execution.c.id, job_execution.c.resumed_from, job_execution.c.status,
        job_execution.c.ended_at, job_execution.c.job_name,
    ).where(
        job_execution.c.status.in_([s.value for s in statuses]),
        ~exists(
            select(later.c.id).where(
                later.c.instance_id == job_execution.c.instance_id, later.c.id > job_execution.c.id
            )
        ),
    )
    protect = {s.value for s in (*LIVE_STATUSES, *rules.protect)}

    def kept(row: Any) -> bool:
        return (
            row.status in protect
            or row.ended_at is None
            or row.ended_at >= rules.cutoff
            or (rules.job is not None and row.job_name != rules.job)
            or row.id >= keep_from.get(row.job_name, row.id + 1)
        )

    roots = [row for row in connection.execute(query) if kept(row)]
    protected: set[int] = set()
    pending: set[int] = set()
    for row in roots:
        protected.add(int(row.id))
        if row.resumed_from is not None:
            pending.add(int(row.resumed_from))
    while pending - protected:
        wanted = sorted(pending - protected)
        protected.update(wanted)
        pending = set()
        for start in range(0, len(wanted), PRUNE_BATCH_SIZE):
            rows = connection.execute(
                select(job_execution.c.resumed_from).where(
                    job_execution.c.id.in_(wanted[start : start + PRUNE_BATCH_SIZE]),
                    job_execution.c.resumed_from.is_not(None),
                )
            ).scalars()
            pending.update(int(value) for value in rows)
    return protected


def _still_prunable(connection: Connection, ids: list[int], max_id: int) -> list[int]:
    """Of `ids`, those still ended and of an instance that has had no new execution since
    pruning began (one may resume them)."""
    newer = job_execution.alias("newer")
    query = select(job_execution.c.id).where(
        job_execution.c.id.in_(ids),
        job_execution.c.status.not_in([s.value for s in LIVE_STATUSES]),
        ~exists(
            select(newer.c.id).where(
                newer.c.instance_id == job_execution.c.instance_id, newer.c.id > max_id
            )
        ),
    )
    return sorted(int(value) for value in connection.execute(query).scalars())


def _emptied(connection: Connection, per_instance: dict[int, int]) -> int:
    """How many of these instances have no execution beyond the counted ones (a dry run)."""
    emptied = 0
    instances = sorted(per_instance)
    for start in range(0, len(instances), PRUNE_BATCH_SIZE):
        rows = connection.execute(
            select(job_execution.c.instance_id, func.count())
            .where(job_execution.c.instance_id.in_(instances[start : start + PRUNE_BATCH_SIZE]))
            .group_by(job_execution.c.instance_id)
        ).all()
        emptied += sum(1 for instance_id, count in rows if count == per_instance[instance_id])
    return emptied


__all__ = ["EXECUTION_CHILDREN", "Owned", "PruneBatch", "PruneQueries", "PruneRules"]


def _next_size(size: int, seconds: float, first: int) -> int:
    """The next batch's size: what should last PRUNE_BATCH_SECONDS at the last batch's pace
    (a repository on slow disks, or busy, gets smaller transactions), at most double the last
    and at most four times the first."""
    wanted = size * PRUNE_BATCH_SECONDS / max(seconds, 1e-3)
    return max(min(PRUNE_BATCH_MIN, first), min(int(wanted), size * 2, first * 4))

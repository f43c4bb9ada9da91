"""The repository's shared helpers that need no database: settle, ending, column values."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from batchctl.errors import NotLive, StaleExecution
from batchctl.model import Status
from batchctl.repository import settle
from batchctl.repository.rows import column_values, ending


def test_settle_returns_the_current_value_when_there_is_nothing_to_decide() -> None:
    applied: list[int] = []
    assert settle(3, lambda n: None, lambda n, d: applied.append(n), lambda n: n) == 3
    assert applied == []


def test_settle_rereads_and_decides_again_after_a_lost_update() -> None:
    decisions: list[int] = []

    def decide(current: int) -> str | None:
        decisions.append(current)
        return f"change {current}"

    def apply(current: int, decision: str) -> str:
        if current < 3:
            raise StaleExecution("changed by another process")
        return decision

    assert settle(1, decide, apply, lambda n: n + 1) == "change 3"
    assert decisions == [1, 2, 3]


def test_settle_stops_when_a_reread_leaves_nothing_to_do() -> None:
    def apply(current: int, decision: str) -> str:
        raise StaleExecution("changed by another process")

    assert settle(1, lambda n: "end" if n == 1 else None, apply, lambda n: n + 1) == 2


def test_settle_lets_a_refusal_through() -> None:
    def decide(current: int) -> str:
        raise NotLive("not live")

    with pytest.raises(NotLive):
        settle(1, decide, lambda n, d: d, lambda n: n)


def test_ending_sets_status_exit_code_message_and_time() -> None:
    when = datetime(2024, 1, 31, tzinfo=timezone.utc)
    assert ending(Status.FAILED, "lost", when) == {
        "status": Status.FAILED,
        "exit_code": "FAILED",
        "exit_message": "lost",
        "ended_at": when,
    }
    assert ending(Status.STOPPED, None)["ended_at"].tzinfo is not None


def test_column_values_store_a_status_as_its_name() -> None:
    assert column_values({"status": Status.STOPPED, "pid": 4}) == {"status": "STOPPED", "pid": 4}


def test_a_slow_prune_batch_makes_the_next_one_smaller() -> None:
    from batchctl.repository.prune import PRUNE_BATCH_SECONDS, _next_size

    assert _next_size(500, PRUNE_BATCH_SECONDS * 5, 500) == 100


def test_a_fast_prune_batch_at_most_doubles_the_next_and_never_passes_four_times_the_first() -> None:
    from batchctl.repository.prune import _next_size

    assert _next_size(500, 0.001, 500) == 1000
    assert _next_size(1800, 0.001, 500) == 2000


def test_a_prune_batch_never_shrinks_below_the_minimum() -> None:
    from batchctl.repository.prune import PRUNE_BATCH_MIN, _next_size

    assert _next_size(500, 1000.0, 500) == PRUNE_BATCH_MIN
    assert _next_size(3, 1000.0, 3) == 3  # a first size below the minimum is kept

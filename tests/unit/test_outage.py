"""connect.Outage: which errors are an outage, what is ridden out, and when it gives up."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, Callable

import psycopg
import pytest
from sqlalchemy.exc import InterfaceError, OperationalError

from batchctl.errors import RepositoryOutage
from batchctl.repository.connect import Outage, is_outage

URL = "postgresql://batch:secret@db.example.com/batch"


def lost() -> OperationalError:
    return OperationalError("SELECT 1", {}, psycopg.OperationalError("server closed the connection unexpectedly"))


def refused() -> OperationalError:
    return OperationalError(
        "connect", {}, psycopg.OperationalError('connection failed: connection to server at "10.0.0.1", '
                                               "port 5432 failed: Connection refused")
    )


def test_lost_and_refused_postgres_connections_are_an_outage() -> None:
    assert is_outage(lost()) and is_outage(refused())
    assert is_outage(InterfaceError("x", {}, psycopg.InterfaceError("the connection is closed")))


@pytest.mark.parametrize("error", [
    OperationalError("x", {}, psycopg.OperationalError('password authentication failed for user "batch"')),
    OperationalError("x", {}, psycopg.OperationalError('database "nope" does not exist')),
    OperationalError("x", {}, sqlite3.OperationalError("unable to open database file")),
    OperationalError("x", {}, sqlite3.OperationalError("database is locked")),
])
def test_a_wrong_configuration_and_sqlite_errors_are_not_an_outage(error: Exception) -> None:
    assert not is_outage(error)


def failing(times: int, error: Callable[[], Exception]) -> Callable[[], str]:
    calls: list[int] = []

    def work() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error()
        return "done"

    return work


def reached(timeout: float = 30.0) -> Outage:
    outage = Outage(URL, timeout)
    outage.ride(lambda: None)  # the repository answered once
    return outage


def test_an_outage_is_ridden_out_and_logged_once_each_way(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="batchctl")
    outage = reached()
    assert outage.ride(failing(3, lost)) == "done"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("repository unreachable, retrying")
    assert messages[1].startswith("repository reachable again after")
    assert not outage.down


def test_an_outage_longer_than_the_timeout_gives_up_naming_it_without_the_password() -> None:
    outage = reached(timeout=0.2)
    with pytest.raises(RepositoryOutage) as raised:
        outage.ride(failing(1000, refused))
    assert "db_outage_timeout (0.2 s)" in raised.value.message
    assert "secret" not in raised.value.message and raised.value.exit_code == 5
    # Past the timeout every call gives up at once, until the repository answers.
    with pytest.raises(RepositoryOutage):
        outage.ride(failing(1, refused))
    assert outage.ride(lambda: "back") == "back" and not outage.down


def test_a_repository_never_reached_is_not_waited_for() -> None:
    """An unreachable database at start-up is a configuration problem: reported at once."""
    outage = Outage(URL, 30.0)
    with pytest.raises(OperationalError):
        outage.ride(failing(1, refused))


def test_other_errors_pass_through_at_once() -> None:
    outage = reached()
    error: Any = lambda: OperationalError("x", {}, sqlite3.OperationalError("database is locked"))
    with pytest.raises(OperationalError):
        outage.ride(failing(1, error))


def test_a_stopping_process_stops_waiting_for_the_repository() -> None:
    outage = reached(timeout=600.0)
    calls: list[int] = []

    def work() -> None:
        calls.append(1)
        if len(calls) == 2:
            outage.cancel()  # as a signal handler would, while the ride waits
        raise refused()

    with pytest.raises(RepositoryOutage, match="stopping"):
        outage.ride(work)

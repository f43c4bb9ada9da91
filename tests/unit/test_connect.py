"""Engines: refusing URLs that would leak a password, and a private SQLite file."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import text

from batchctl.errors import ConfigError
from batchctl.repository.connect import create_repository_engine


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    "url", ["postgresql://u:S3cr@tPw@127.0.0.1/db", "postgresql+psycopg://u:S3cr@tPw@host:5432/db"]
)
def test_an_unencoded_at_sign_in_the_password_is_refused_without_showing_it(url: str) -> None:
    """The URL parser would end the password at the first '@' and give the driver its tail
    as the host, which the driver's error then prints."""
    with pytest.raises(ConfigError) as raised:
        create_repository_engine(url)
    message = raised.value.message
    assert "S3cr" not in message and "tPw" not in message
    assert "percent-encode it as %40" in message
    assert raised.value.exit_code == 5


def test_an_encoded_at_sign_is_accepted() -> None:
    engine = create_repository_engine("postgresql://u:S3cr%40tPw@127.0.0.1/db")
    assert engine.url.password == "S3cr@tPw"
    engine.dispose()


def test_a_new_sqlite_repository_and_its_wal_files_are_private(tmp_path: Path, umask_022: None) -> None:
    """Under the usual 022 umask SQLite would create them world-readable; they hold params
    and data. The -wal and -shm files take the database file's mode."""
    path = tmp_path / "repo.db"
    engine = create_repository_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as connection:  # WAL mode: -wal and -shm exist while connected
            connection.execute(text("CREATE TABLE t (x INTEGER)"))
            connection.execute(text("INSERT INTO t VALUES (1)"))
            files = [path, path.with_name("repo.db-wal"), path.with_name("repo.db-shm")]
            assert {file.name: mode(file) for file in files} == {file.name: 0o600 for file in files}
    finally:
        engine.dispose()


def test_an_existing_sqlite_file_keeps_its_mode(tmp_path: Path, umask_022: None) -> None:
    """Whoever created the file chose its mode (0640 to share it with a group, say)."""
    path = tmp_path / "repo.db"
    path.touch()
    path.chmod(0o640)
    engine = create_repository_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (x INTEGER)"))
    engine.dispose()
    assert mode(path) == 0o640

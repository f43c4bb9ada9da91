"""Configuration: option > environment > file > defaults, and clear errors naming file and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from batchctl.config import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    Config,
    mask_url,
)
from batchctl.errors import ConfigError


def write_config(folder: Path, body: str, name: str = "config.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def sqlite(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


# -- defaults and precedence ---------------------------------------------------------------------


def test_without_a_file_the_defaults_are_beside_the_current_folder(tmp_path: Path) -> None:
    config = Config.load(env={}, cwd=tmp_path)
    assert config.source is None
    assert config.database_url == sqlite(tmp_path / "batchctl.db")
    assert config.jobs_dir == tmp_path / "jobs"
    assert config.log_dir == tmp_path / "logs"
    assert config.heartbeat_interval == DEFAULT_HEARTBEAT_INTERVAL
    assert config.heartbeat_timeout == DEFAULT_HEARTBEAT_TIMEOUT


def test_the_file_overrides_the_defaults(tmp_path: Path) -> None:
    file = write_config(
        tmp_path,
        """
        [batchctl]
        database = "postgresql://u@db/batch"
        jobs_dir = "my_jobs"
        log_dir = "/var/log/batch"
        heartbeat_interval = 2
        heartbeat_timeout = 30.5
        """,
    )
    config = Config.load(file, env={}, cwd=tmp_path)
    assert config.source == file.resolve()
    assert config.database_url == "postgresql://u@db/batch"
    assert config.jobs_dir == tmp_path.resolve() / "my_jobs"
    assert config.log_dir == Path("/var/log/batch")
    assert config.heartbeat_interval == 2.0
    assert config.heartbeat_timeout == 30.5


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    file = write_config(tmp_path, '[batchctl]\ndatabase = "file.db"\njobs_dir = "file_jobs"\n')
    env = {
        "BATCHCTL_DATABASE_URL": "postgresql://u@env/batch",
        "BATCHCTL_JOBS_DIR": "/env/jobs",
        "BATCHCTL_HEARTBEAT_INTERVAL": "1",
    }
    config = Config.load(file, env=env, cwd=tmp_path)
    assert config.database_url == "postgresql://u@env/batch"
    assert config.jobs_dir == Path("/env/jobs")
    assert config.heartbeat_interval == 1.0


def test_options_override_the_environment(tmp_path: Path) -> None:
    file = write_config(tmp_path, '[batchctl]\ndatabase = "file.db"\njobs_dir = "file_jobs"\n')
    env = {"BATCHCTL_DATABASE_URL": "postgresql://u@env/batch", "BATCHCTL_JOBS_DIR": "/env/jobs"}
    config = Config.load(
        file, database_url="postgresql://u@option/batch", jobs_dir="/option/jobs", env=env, cwd=tmp_path
    )
    assert config.database_url == "postgresql://u@option/batch"
    assert config.jobs_dir == Path("/option/jobs")


def test_the_config_option_wins_over_batchctl_config(tmp_path: Path) -> None:
    chosen = write_config(tmp_path / "a", '[batchctl]\ndatabase = "a.db"\n')
    other = write_config(tmp_path / "b", '[batchctl]\ndatabase = "b.db"\n')
    config = Config.load(chosen, env={"BATCHCTL_CONFIG": str(other)}, cwd=tmp_path)
    assert config.source == chosen.resolve()


def test_batchctl_config_names_the_file(tmp_path: Path) -> None:
    file = write_config(tmp_path / "conf", '[batchctl]\ndatabase = "named.db"\n', "custom.toml")
    config = Config.load(env={"BATCHCTL_CONFIG": str(file)}, cwd=tmp_path)
    assert config.database_url == sqlite(tmp_path / "conf" / "named.db")


def test_an_explicit_config_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        Config.load(tmp_path / "missing.toml", env={}, cwd=tmp_path)


# -- relative paths ------------------------------------------------------------------------------


def test_relative_paths_in_the_file_are_relative_to_its_folder(tmp_path: Path) -> None:
    file = write_config(
        tmp_path / "project",
        '[batchctl]\ndatabase = "data/repo.db"\njobs_dir = "src/jobs"\nlog_dir = "var/logs"\n',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = Config.load(file, env={}, cwd=elsewhere)
    project = (tmp_path / "project").resolve()
    assert config.database_url == f"sqlite:///{project / 'data' / 'repo.db'}"
    assert config.jobs_dir == project / "src" / "jobs"
    assert config.log_dir == project / "var" / "logs"


def test_a_relative_sqlite_url_in_the_file_is_relative_to_its_folder(tmp_path: Path) -> None:
    file = write_config(tmp_path / "project", '[batchctl]\ndatabase = "sqlite:///repo.db"\n')
    config = Config.load(file, env={}, cwd=tmp_path)
    assert config.database_url == sqlite(tmp_path / "project" / "repo.db")


def test_the_default_database_is_beside_the_config_file(tmp_path: Path) -> None:
    file = write_config(tmp_path / "project", "[batchctl]\n")
    config = Config.load(file, env={}, cwd=tmp_path)
    assert config.database_url == sqlite(tmp_path / "project" / "batchctl.db")
    assert config.jobs_dir == (tmp_path / "project" / "jobs").resolve()


def test_an_absolute_sqlite_url_is_kept(tmp_path: Path) -> None:
    file = write_config(tmp_path, "[batchctl]\ndatabase = \"sqlite:////srv/repo.db\"\n")
    assert Config.load(file, env={}, cwd=tmp_path).database_url == "sqlite:////srv/repo.db"


def test_relative_paths_from_the_environment_are_relative_to_the_current_folder(
    tmp_path: Path,
) -> None:
    write_config(tmp_path, "[batchctl]\n")
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = {"BATCHCTL_DATABASE_URL": "here.db", "BATCHCTL_JOBS_DIR": "here_jobs"}
    config = Config.load(tmp_path / "config.toml", env=env, cwd=cwd)
    assert config.database_url == sqlite(cwd / "here.db")
    assert config.jobs_dir == (cwd / "here_jobs").resolve()


# -- lookup --------------------------------------------------------------------------------------


def test_the_nearest_config_toml_in_a_parent_folder_is_used(tmp_path: Path) -> None:
    file = write_config(tmp_path, '[batchctl]\ndatabase = "top.db"\n')
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    config = Config.load(env={}, cwd=deep)
    assert config.source == file.resolve()
    assert config.database_url == sqlite(tmp_path / "top.db")


def test_the_nearest_config_toml_wins_over_a_farther_one(tmp_path: Path) -> None:
    write_config(tmp_path, '[batchctl]\ndatabase = "far.db"\n')
    near = write_config(tmp_path / "a", '[batchctl]\ndatabase = "near.db"\n')
    deep = tmp_path / "a" / "b"
    deep.mkdir()
    assert Config.load(env={}, cwd=deep).source == near.resolve()


def test_a_config_toml_without_a_batchctl_table_is_passed_over(tmp_path: Path) -> None:
    mine = write_config(tmp_path, '[batchctl]\ndatabase = "mine.db"\n')
    write_config(tmp_path / "a", '[tool.other]\nsetting = 1\n')
    assert Config.load(env={}, cwd=tmp_path / "a").source == mine.resolve()


# -- errors --------------------------------------------------------------------------------------


def test_an_unknown_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    file = write_config(tmp_path, '[batchctl]\ndatabse = "typo.db"\n')
    with pytest.raises(ConfigError) as raised:
        Config.load(file, env={}, cwd=tmp_path)
    assert str(file.resolve()) in raised.value.message
    assert "batchctl.databse" in raised.value.message
    assert "unknown key" in raised.value.message


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('heartbeat_interval = "soon"', "must be a number of seconds"),
        ("heartbeat_interval = true", "must be a number of seconds"),
        ("heartbeat_timeout = -1", "must be greater than 0"),
        ("heartbeat_interval = nan", "must be greater than 0"),
        ("heartbeat_interval = -nan", "must be greater than 0"),
        ("heartbeat_timeout = inf", "must be greater than 0"),
        ("heartbeat_timeout = 1e30", "at most 31536000 seconds"),
        ("database = 5", "must be a non-empty string"),
        ('jobs_dir = ""', "must be a non-empty string"),
        ("log_dir = [1, 2]", "must be a non-empty string"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_file_the_key_and_the_problem(
    tmp_path: Path, line: str, problem: str
) -> None:
    file = write_config(tmp_path, f"[batchctl]\n{line}\n")
    key = line.split(" = ")[0]
    with pytest.raises(ConfigError) as raised:
        Config.load(file, env={}, cwd=tmp_path)
    message = raised.value.message
    assert str(file.resolve()) in message
    assert f"batchctl.{key}" in message
    assert problem in message


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    file = write_config(tmp_path, '[batchctl]\ndatabase = "unterminated\n')
    with pytest.raises(ConfigError) as raised:
        Config.load(file, env={}, cwd=tmp_path)
    assert str(file.resolve()) in raised.value.message
    assert "invalid TOML" in raised.value.message


def test_an_explicit_file_without_a_batchctl_table_is_an_error(tmp_path: Path) -> None:
    file = write_config(tmp_path, "[other]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"no \[batchctl\] table"):
        Config.load(file, env={}, cwd=tmp_path)


def test_a_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BATCHCTL_HEARTBEAT_TIMEOUT"):
        Config.load(env={"BATCHCTL_HEARTBEAT_TIMEOUT": "never"}, cwd=tmp_path)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999", "0", "-5"])
def test_a_non_finite_or_non_positive_environment_number_is_refused(
    tmp_path: Path, value: str
) -> None:
    """NaN compares false with everything: accepted, the engine would never heartbeat."""
    with pytest.raises(ConfigError, match="BATCHCTL_HEARTBEAT_INTERVAL must be greater than 0"):
        Config.load(env={"BATCHCTL_HEARTBEAT_INTERVAL": value}, cwd=tmp_path)


def test_a_heartbeat_timeout_not_above_the_interval_is_an_error(tmp_path: Path) -> None:
    file = write_config(tmp_path, "[batchctl]\nheartbeat_interval = 10\nheartbeat_timeout = 10\n")
    with pytest.raises(ConfigError, match="heartbeat_timeout"):
        Config.load(file, env={}, cwd=tmp_path)


def test_a_config_error_exits_with_the_environment_code() -> None:
    assert ConfigError().exit_code == 5


# -- masking -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://batch:s3cret@db:5432/jobs", "postgresql://batch:***@db:5432/jobs"),
        ("postgresql+psycopg://u:p%40ss@h/d?x=1", "postgresql+psycopg://u:***@h/d?x=1"),
        ("postgresql://batch@db/jobs", "postgresql://batch@db/jobs"),
        ("sqlite:////tmp/repo.db", "sqlite:////tmp/repo.db"),
        # An unencoded '@' (or '/', '?') in the password: none of it may show.
        ("postgresql://u:S3cr@tPw@host/db", "postgresql://u:***@host/db"),
        ("postgresql://u:a@b@c@host:5432/db?x=1", "postgresql://u:***@host:5432/db?x=1"),
        ("postgresql://u:p/ss?w@host/db", "postgresql://u:***@host/db"),
        ("postgresql://user@tenant:s3cret@host/db", "postgresql://user@tenant:***@host/db"),
        ("postgresql://batch@db:5432/jobs", "postgresql://batch@db:5432/jobs"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_mask_url_hides_a_url_inside_a_message() -> None:
    message = "cannot reach postgresql://u:hunter2@h/d: refused"
    assert "hunter2" not in mask_url(message)
    assert "postgresql://u:***@h/d" in mask_url(message)


def test_mask_url_hides_a_password_with_an_at_sign_inside_a_message() -> None:
    message = "cannot reach postgresql://u:S3cr@tPw@h/d: failed to resolve host"
    masked = mask_url(message)
    assert "S3cr" not in masked and "tPw" not in masked
    assert masked == "cannot reach postgresql://u:***@h/d: failed to resolve host"


def test_the_displayed_database_url_is_masked(tmp_path: Path) -> None:
    config = Config.load(database_url="postgresql://u:hunter2@h/d", env={}, cwd=tmp_path)
    assert config.display_database_url == "postgresql://u:***@h/d"


# -- the project directory -----------------------------------------------------------------------


def test_the_project_directory_is_the_config_files_folder_or_the_current_one(tmp_path: Path) -> None:
    """Relative paths of a job's items are relative to it (see batchctl.items.paths)."""
    project = tmp_path / "project"
    write_config(project, "[batchctl]\n")
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)

    below = project / "sub"
    below.mkdir()

    assert Config.load(project / "config.toml", env={}, cwd=elsewhere).project_dir == project.resolve()
    assert Config.load(env={}, cwd=below).project_dir == project.resolve()  # found in a parent
    assert Config.load(env={}, cwd=elsewhere).project_dir == elsewhere  # no file: the current one


def test_batchctl_project_dir_sets_it_for_processes_started_without_the_file(tmp_path: Path) -> None:
    """A detached or worker process gets the resolved configuration through its environment,
    the project directory with the rest."""
    from batchctl.launcher import child_env

    project = tmp_path / "project"
    write_config(project, "[batchctl]\n")
    parent = Config.load(project / "config.toml", env={}, cwd=tmp_path)
    env = child_env(parent)
    assert env["BATCHCTL_PROJECT_DIR"] == str(project.resolve())
    assert "BATCHCTL_CONFIG" not in env

    child = Config.load(env=env, cwd=tmp_path)
    assert child.source is None and child.project_dir == project.resolve()
    relative = Config.load(env={"BATCHCTL_PROJECT_DIR": "project"}, cwd=tmp_path)
    assert relative.project_dir == project.resolve()

"""Configuration: command-line options over environment over `config.toml` over defaults.

The file is found by `--config`, else `BATCHCTL_CONFIG`, else the nearest `config.toml` with a
`[batchctl]` table in the current folder or its parents. Relative paths in the file are relative
to the file's folder; relative paths from the environment or the command line to the current
folder.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from batchctl.defaults import (
    CONFIG_FILE_NAME,
    DEFAULT_DATABASE_FILE,
    DEFAULT_DB_OUTAGE_TIMEOUT,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_JOBS_DIR,
    DEFAULT_LOG_DIR,
    ENV_CONFIG,
    ENV_DASK_SCHEDULER,
    ENV_DATABASE_URL,
    ENV_DB_OUTAGE_TIMEOUT,
    ENV_HEARTBEAT_INTERVAL,
    ENV_HEARTBEAT_TIMEOUT,
    ENV_JOBS_DIR,
    ENV_LOG_DIR,
    ENV_PROJECT_DIR,
    MAX_SECONDS,
)
from batchctl.errors import ConfigError

_ENV_NAMES = {
    "database": ENV_DATABASE_URL,
    "jobs_dir": ENV_JOBS_DIR,
    "log_dir": ENV_LOG_DIR,
    "heartbeat_interval": ENV_HEARTBEAT_INTERVAL,
    "heartbeat_timeout": ENV_HEARTBEAT_TIMEOUT,
    "db_outage_timeout": ENV_DB_OUTAGE_TIMEOUT,
    "dask_scheduler": ENV_DASK_SCHEDULER,
}
_PATH_KEYS = ("jobs_dir", "log_dir")
_NUMBER_KEYS = ("heartbeat_interval", "heartbeat_timeout", "db_outage_timeout")
SCHEDULES_KEY = "schedules"  # [batchctl.schedules.NAME] tables, read by batchctl.schedules
API_KEY = "api"  # the [batchctl.api] table (tokens of the HTTP API), read by batchctl.web
_TABLE_KEYS = (SCHEDULES_KEY, API_KEY)


@dataclass(frozen=True)
class Config:
    """Where the repository is, where jobs and logs live, and how often executions heartbeat.

    `project_dir` is what every relative path is relative to: the config file's folder, or
    the current folder when there is none (or BATCHCTL_PROJECT_DIR, which is how a detached
    or worker process, started without the file, learns it). Steps see it as
    `ctx.project_dir`, and the built-in items resolve their relative paths against it, so
    that a job reads and writes the same files from cron, from another folder or a service.
    """

    database_url: str
    jobs_dir: Path
    log_dir: Path
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    db_outage_timeout: float = DEFAULT_DB_OUTAGE_TIMEOUT  # seconds an unreachable repository is ridden out
    # The Dask scheduler that runs mode="dask" partitions (`tcp://host:8786`); None: a
    # LocalCluster of the step's `workers` processes, started for the step.
    dask_scheduler: str | None = None
    source: Path | None = None
    project_dir: Path = field(default_factory=Path.cwd)
    schedules: Mapping[str, Any] = field(default_factory=dict, hash=False)  # raw tables
    api: Mapping[str, Any] = field(default_factory=dict, hash=False)  # raw [batchctl.api] table

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        database_url: str | None = None,
        jobs_dir: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Config:
        """Build the configuration; explicit arguments win over the environment and the file."""
        env = os.environ if env is None else env
        cwd = cwd or Path.cwd()
        file = _find_file(path, env, cwd)
        base = file.parent if file else cwd
        values: dict[str, Any] = _read_file(file) if file else {}
        schedules = values.pop(SCHEDULES_KEY, {})
        api = values.pop(API_KEY, {})
        config = replace(_from_values(values, base, file), schedules=schedules, api=api)
        config = _apply(config, _from_env(env), cwd, "environment")
        overrides = {"database": database_url, "jobs_dir": jobs_dir}
        config = _apply(config, {k: v for k, v in overrides.items() if v is not None}, cwd, "option")
        project_dir = env.get(ENV_PROJECT_DIR)
        if project_dir:
            config = replace(config, project_dir=(cwd / Path(project_dir).expanduser()).resolve())
        return _check_heartbeat(config)

    @property
    def display_database_url(self) -> str:
        return mask_url(self.database_url)


def _find_file(
    path: str | os.PathLike[str] | None, env: Mapping[str, str], cwd: Path
) -> Path | None:
    explicit = path or env.get(ENV_CONFIG)
    if explicit:
        file = (cwd / Path(explicit)).resolve()
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        return file
    for folder in (cwd, *cwd.parents):
        candidate = folder / CONFIG_FILE_NAME
        if candidate.is_file() and _has_batchctl_table(candidate):
            return candidate.resolve()
    return None


def _has_batchctl_table(file: Path) -> bool:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError:
        return False
    return re.search(r"^\s*\[batchctl\]", text, re.MULTILINE) is not None


def _read_file(file: Path) -> dict[str, Any]:
    import tomllib

    try:
        with file.open("rb") as handle:
            document = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    table = document.get("batchctl")
    if table is None:
        raise ConfigError(f"{file}: no [batchctl] table")
    if not isinstance(table, dict):
        raise ConfigError(f"{file}: 'batchctl' must be a table")
    for key, value in table.items():
        if key in _TABLE_KEYS:
            if not isinstance(value, dict):
                raise ConfigError(f"{file}: 'batchctl.{key}' must be a [batchctl.{key}] table")
            continue
        if key not in _ENV_NAMES:
            known = ", ".join(_ENV_NAMES)
            raise ConfigError(f"{file}: unknown key 'batchctl.{key}' (known keys: {known})")
        _check_type(key, value, f"{file}: 'batchctl.{key}'")
    return table


def _check_type(key: str, value: Any, where: str, *, from_text: bool = False) -> Any:
    """The value of `key` checked (and a number of seconds made a float). `from_text`: the
    value comes from the environment, where every value is text; in the TOML file a number
    must be a TOML number, so that `heartbeat_timeout = "60"` is refused like any other type
    error rather than read one way here and another by the next tool that reads the file."""
    if key in _NUMBER_KEYS:
        if isinstance(value, str) and not from_text:
            raise ConfigError(
                f"{where} must be a number of seconds, got the string {value!r} "
                "(write the number without quotes)"
            )
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where} must be a number of seconds, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number of seconds, got {value!r}")
        # NaN compares false with everything, so `value <= 0` alone would let it through and
        # the engine would never heartbeat; infinity and huge values overflow sleeps.
        if not math.isfinite(value) or not 0 < value <= MAX_SECONDS:
            raise ConfigError(
                f"{where} must be greater than 0 and at most {MAX_SECONDS:.0f} seconds, "
                f"got {value!r}"
            )
        return float(value)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a non-empty string, got {value!r}")
    return value


def _from_values(values: Mapping[str, Any], base: Path, file: Path | None) -> Config:
    config = Config(
        database_url=resolve_database_url(DEFAULT_DATABASE_FILE, base),
        jobs_dir=base / DEFAULT_JOBS_DIR,
        log_dir=base / DEFAULT_LOG_DIR,
        source=file,
        project_dir=base.resolve(),
    )
    return _apply(config, values, base, str(file))


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    return {key: env[name] for key, name in _ENV_NAMES.items() if env.get(name)}


def _apply(config: Config, values: Mapping[str, Any], base: Path, origin: str) -> Config:
    changes: dict[str, Any] = {}
    for key, raw in values.items():
        where = _ENV_NAMES[key] if origin == "environment" else f"{origin}: '{key}'"
        value = _check_type(key, raw if not isinstance(raw, Path) else str(raw), where,
                            from_text=origin in ("environment", "option"))
        if key == "database":
            changes["database_url"] = resolve_database_url(value, base)
        elif key in _PATH_KEYS:
            changes[key] = (base / Path(value).expanduser()).resolve()
        else:
            changes[key] = value
    return replace(config, **changes)


def _check_heartbeat(config: Config) -> Config:
    if config.heartbeat_timeout <= config.heartbeat_interval:
        raise ConfigError(
            f"{config.source or 'configuration'}: heartbeat_timeout "
            f"({config.heartbeat_timeout:g}s) must be greater than heartbeat_interval "
            f"({config.heartbeat_interval:g}s)"
        )
    return config


def resolve_database_url(value: str, base: Path) -> str:
    """A SQLAlchemy URL; a bare path or a relative SQLite URL is made absolute against `base`."""
    if "://" not in value:
        return f"sqlite:///{(base / Path(value).expanduser()).resolve()}"
    if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
        rest = value[len("sqlite:///") :]
        path, sep, query = rest.partition("?")
        if path and path != ":memory:" and not path.startswith("file:"):
            return f"sqlite:///{(base / path).resolve()}{sep}{query}"
    return value


# The password runs from the first ':' after the user name to the *last* '@' of the word: an
# unencoded '@' in a password (`u:S3cr@tPw@host`) must not leave its tail visible. When in
# doubt this masks too much (an '@' in the query), never too little.
_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/\s]*:)(?P<password>\S*)@")


def mask_url(url: str) -> str:
    """The URL (or any text holding URLs) with every password replaced by ***: safe to print."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***@", url)


def url_password(url: str) -> str | None:
    match = _PASSWORD.search(url)
    return match["password"] if match and match["password"] else None

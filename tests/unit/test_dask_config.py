"""mode="dask" (issue 15), the parts that need no cluster: the `dask_scheduler` key and its
environment variable, which scheduler addresses are this machine's, the executor's entry, and
that no command but a dask step imports dask or distributed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from batchctl.config import Config
from batchctl.errors import ConfigError, JobDefinitionError
from batchctl.executors import EXECUTORS, DaskExecutor
from batchctl.host import is_loopback_address
from batchctl.job import Job, PartitionMode


def write_config(folder: Path, body: str) -> Path:
    path = folder / "config.toml"
    path.write_text(textwrap.dedent(body))
    return path


def test_the_scheduler_comes_from_the_file_and_the_environment_wins(tmp_path: Path) -> None:
    write_config(tmp_path, """
        [batchctl]
        dask_scheduler = "tcp://dask.example:8786"
    """)
    assert Config.load(cwd=tmp_path, env={}).dask_scheduler == "tcp://dask.example:8786"
    env = {"BATCHCTL_DASK_SCHEDULER": "tcp://127.0.0.1:8786"}
    assert Config.load(cwd=tmp_path, env=env).dask_scheduler == "tcp://127.0.0.1:8786"


def test_without_a_scheduler_the_local_cluster_is_the_default(tmp_path: Path) -> None:
    assert Config.load(cwd=tmp_path, env={}).dask_scheduler is None


def test_a_scheduler_that_is_not_a_string_is_refused_naming_the_key(tmp_path: Path) -> None:
    write_config(tmp_path, """
        [batchctl]
        dask_scheduler = 8786
    """)
    with pytest.raises(ConfigError, match="'batchctl.dask_scheduler' must be a non-empty string"):
        Config.load(cwd=tmp_path, env={})


@pytest.mark.parametrize("address, loopback", [
    ("tcp://127.0.0.1:8786", True),
    ("127.0.0.1:8786", True),
    ("tcp://localhost:8786", True),
    ("tcp://[::1]:8786", True),
    ("tcp://127.0.5.1:8786", True),
    ("tcp://10.0.0.5:8786", False),
    ("tcp://dask-scheduler:8786", False),
    ("tls://scheduler.example.org:8786", False),
])
def test_which_scheduler_addresses_are_this_machine(address: str, loopback: bool) -> None:
    assert is_loopback_address(address) is loopback


def test_dask_is_one_executor_entry_and_a_step_mode() -> None:
    assert EXECUTORS[PartitionMode.DASK] is DaskExecutor
    job = Job("j")
    job.chunk_step("s", reader=lambda ctx: [], writer=lambda items, ctx: None,
                   partitioner=lambda ctx: [{}], mode="dask")
    assert job.step("s").partitions is not None
    assert job.step("s").partitions.mode == PartitionMode.DASK


def test_an_unknown_mode_names_dask_among_the_modes() -> None:
    job = Job("j")
    with pytest.raises(JobDefinitionError, match="dask"):
        job.chunk_step("s", reader=lambda ctx: [], writer=lambda items, ctx: None,
                       partitioner=lambda ctx: [{}], mode="dusk")


def test_no_other_command_imports_dask(tmp_path: Path) -> None:
    """Importing distributed costs about a second: only a dask step may pay it."""
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "plain.py").write_text(
        "from batchctl import Job\n"
        "job = Job('plain')\n"
        "@job.tasklet\n"
        "def once(ctx):\n"
        "    pass\n"
        "dasky = Job('dasky')\n"
        "dasky.chunk_step('s', reader=lambda ctx: [], writer=lambda items, ctx: None,\n"
        "                 partitioner=lambda ctx: [{}], mode='dask')\n"
    )
    probe = (
        "import sys\n"
        "from batchctl import cli\n"
        "db, jobs = sys.argv[1], sys.argv[2]\n"
        "for args in (['--help'], ['jobs', '--json'], ['start', 'plain'], ['history'],\n"
        "             ['show', 'plain'], ['workers'], ['schedules']):\n"
        "    try:\n        cli.main(['--db', db, '--jobs-dir', jobs, *args])\n"
        "    except SystemExit:\n        pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')"
        " or m == 'batchctl.dask_executor'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, f"sqlite:///{tmp_path / 'r.db'}", str(jobs)],
        capture_output=True, text=True, check=True, timeout=120, cwd=tmp_path,
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr

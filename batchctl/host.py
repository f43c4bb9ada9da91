"""This process's identity on its machine, and whether another process on it is alive.

A pid means something only inside one pid namespace of one boot of one machine: a command run
in another container on the same host (same host name, another pid namespace) or after a
reboot must not judge a pid it cannot see. `pid_scope()` names that scope, and an execution
records it beside its host name and pid.
"""

from __future__ import annotations

import functools
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NoReturn

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
PID_NAMESPACE_LINK = "/proc/self/ns/pid"


def host_name() -> str:
    return socket.gethostname()


def is_loopback_address(address: str) -> bool:
    """True when `address` (`tcp://127.0.0.1:8786`, `localhost:8786`, `tcp://[::1]:8786`)
    names this machine's loopback interface, so whatever listens there runs on this machine."""
    from urllib.parse import urlsplit

    return is_loopback(urlsplit(address if "://" in address else f"tcp://{address}").hostname or "")


def is_loopback(host: str) -> bool:
    """True when `host` (a name or an IP address) is this machine's loopback interface."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.cache
def pid_scope() -> str:
    """The boot and the pid namespace this process lives in, e.g. `3f2a…/pid:[4026531836]`;
    empty where the system does not tell (then pids are never judged, only heartbeats)."""
    try:
        boot = BOOT_ID_FILE.read_text().strip()
        namespace = os.readlink(PID_NAMESPACE_LINK)
    except OSError:
        return ""
    return f"{boot}/{namespace}"


def same_pid_scope(host: str | None, scope: str | None) -> bool:
    """True when a pid recorded with `host` and `scope` can be looked up from this process."""
    return bool(scope) and host == host_name() and scope == pid_scope()


def process_alive(pid: int) -> bool:
    """True while a process with this pid exists in this pid namespace and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


class ExitCalled(SystemExit):
    """`os._exit()` called by job code in the process that runs the job: turned into this
    exception, so that the step ends FAILED and the recorded status matches the process's exit."""


@contextmanager
def os_exit_raises() -> Iterator[None]:
    """While the block runs, `os._exit(code)` in this process raises ExitCalled instead of
    ending the process unrecorded. A forked child (another pid) still exits for real."""
    real_exit = os._exit
    owner = os.getpid()

    def guarded_exit(code: int) -> NoReturn:
        if os.getpid() != owner:
            real_exit(code)
        raise ExitCalled(code)

    os._exit = guarded_exit  # type: ignore[assignment]
    try:
        yield
    finally:
        os._exit = real_exit


def describe_exit(exc: SystemExit) -> str:
    """Why a step ended by an exit call: which call, with which code."""
    call = "os._exit" if isinstance(exc, ExitCalled) else "sys.exit"
    return f"the step called {call}({exc.code!r})"


__all__ = [
    "ExitCalled",
    "describe_exit",
    "host_name",
    "os_exit_raises",
    "pid_scope",
    "process_alive",
    "same_pid_scope",
]

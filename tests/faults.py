"""Faults injected between batchctl and its Postgres repository, for the outage tests.

`OutageProxy` is a TCP proxy in the test's process: batchctl (in this process or in a child)
connects to the proxy's port instead of the server's. `cut()` closes every connection it carries
and refuses (accepts and resets) every new one until `restore()`; `cut_after_commit(port)` lets
the next COMMIT of one client connection reach the server and then cuts everything before the
server's answer gets back: a COMMIT that went through and whose outcome the client never learned.
`refused` counts the connections refused since the last cut, so a test waits on "batchctl tried
to reconnect during the outage" with a deadline, never on a fixed sleep.

`Gate` lets a job (in this process or another) stop at a point and wait for the test: the job
calls `reached()` (a file appears, then it waits for the test to `open()` it); the test calls
`wait_reached()`, does what it must (cut the proxy), then `open()`.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

DEADLINE = 60.0  # seconds any wait of these helpers may last before it fails the test


def wait_until(condition: Callable[[], Any], timeout: float = DEADLINE, interval: float = 0.02) -> Any:
    """`wait_for` with this module's longer deadline and shorter poll."""
    from tests.conftest import wait_for

    return wait_for(condition, timeout, interval)


class OutageProxy:
    """A TCP proxy to `target` (host, port) on 127.0.0.1:`port`, with an outage switch.
    `OutageProxy.active` is the last one made: what a job run in the test's process reaches
    for (to cut at an exact point of its own)."""

    active: OutageProxy | None = None

    def __init__(self, target: tuple[str, int]) -> None:
        OutageProxy.active = self
        self.target = target
        self.refused = 0  # connections refused since the last cut
        self.carried = 0  # connections carried so far
        self._down = False
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._commit_ports: set[int] = set()  # client ports whose next COMMIT cuts everything
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="outage-proxy", daemon=True)
        self._thread.start()

    @classmethod
    def for_url(cls, url: str) -> OutageProxy:
        parts = urlsplit(url)
        return cls((parts.hostname or "127.0.0.1", parts.port or 5432))

    def url(self, url: str) -> str:
        """`url` (a Postgres URL) pointed at the proxy instead of the server."""
        parts = urlsplit(url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    # -- the switch --------------------------------------------------------------------------

    @property
    def down(self) -> bool:
        return self._down

    def cut(self) -> None:
        """Close every carried connection and refuse new ones until `restore()`."""
        with self._lock:
            self._down = True
            self.refused = 0
            pairs, self._pairs = self._pairs, []
            self._commit_ports.clear()
        for pair in pairs:
            for sock in pair:
                _reset(sock)

    def restore(self) -> None:
        """Carry connections again."""
        with self._lock:
            self._down = False

    def cut_after_commit(self, client_port: int) -> None:
        """Let the next COMMIT sent from `client_port` reach the server, then cut before its
        answer comes back."""
        with self._lock:
            self._commit_ports.add(client_port)

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()

    def __enter__(self) -> OutageProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the pumps ---------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                down = self._down
                if down:
                    self.refused += 1
            if down:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._pairs.append((client, server))
                self.carried += 1
            port = client.getpeername()[1]
            threading.Thread(target=self._pump, args=(client, server, port), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, client_port: int | None) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                commit = client_port is not None and client_port in self._commit_ports and b"COMMIT" in data
                sink.sendall(data)
                if commit:
                    self._cut_after(source, sink)
                    return
        except OSError:
            pass
        for sock in (source, sink):
            _reset(sock)

    def _cut_after(self, client: socket.socket, server: socket.socket) -> None:
        """The COMMIT is on its way to the server: cut the client off before the answer comes
        back, refuse new connections, and close the others. The server's socket stays open
        until the server answers (the other pump then fails to relay and closes it), so the
        server has run the COMMIT before it sees the connection go."""
        with self._lock:
            self._down = True
            self.refused = 0
            self._commit_ports.clear()
            others = [pair for pair in self._pairs if pair[0] is not client]
            self._pairs = []
        _reset(client)
        for pair in others:
            for sock in pair:
                _reset(sock)


def _reset(sock: socket.socket) -> None:
    """Close `sock` so that the other end learns at once: shut down first (which also wakes a
    pump blocked in recv on it: a bare close would not, and nothing would reach the peer)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def client_port(sa_connection: Any) -> int:
    """The local port of a SQLAlchemy connection's psycopg socket: how the proxy knows it."""
    driver = sa_connection.connection.driver_connection
    sock = socket.socket(fileno=os.dup(driver.pgconn.socket))
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


class Gate:
    """A point a job stops at until the test lets it go on (files, so that it works across
    processes): the job calls `reached()`, the test `wait_reached()` then `open()`."""

    def __init__(self, folder: Path | str, name: str = "gate") -> None:
        self.reached_file = Path(folder) / f"{name}.reached"
        self.open_file = Path(folder) / f"{name}.open"

    def reached(self, timeout: float = DEADLINE) -> None:
        self.reached_file.touch()
        wait_until(self.open_file.exists, timeout)

    def wait_reached(self, timeout: float = DEADLINE, *, unless: Callable[[], Any] | None = None) -> None:
        """Wait until the job reached the gate; AssertionError if `unless()` (the run ended)
        comes true first."""

        def reached() -> bool:
            if self.reached_file.exists():
                return True
            ended = unless() if unless is not None else None
            if ended:
                raise AssertionError(f"the run ended before it reached the gate: {ended}")
            return False

        wait_until(reached, timeout)

    def open(self) -> None:
        self.open_file.touch()

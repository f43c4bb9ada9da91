"""`batchctl serve` as a service: bind, say how to sign in, register in the worker table with a
heartbeat, serve until SIGTERM or Ctrl-C, then end within seconds (open event streams included).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from typing import Any, Callable, Mapping

import uvicorn

from batchctl.defaults import ENV_API_TOKEN, SHUTDOWN_GRACE
from batchctl.errors import EnvironmentProblem, UsageError
from batchctl.host import is_loopback
from batchctl.web.app import WebState, create_app
from batchctl.web.auth import Tokens

SERVICE_KIND = "serve"  # the worker table's kind of this service




def load_tokens(batch: Any, host: str, env: Mapping[str, str]) -> tuple[Tokens, str | None]:
    """The configured tokens; with none, a random one when binding the loopback interface
    (returned, to print), else UsageError: the API is never open."""
    tokens = Tokens.load(batch.config.api, env, batch.config.source)
    if len(tokens):
        return tokens, None
    if not is_loopback(host):
        raise UsageError(
            f"serve on {host} needs an API token: set {ENV_API_TOKEN} or add "
            "[batchctl.api.tokens] to config.toml (without one, serve binds only 127.0.0.1)"
        )
    return tokens, tokens.generate()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise EnvironmentProblem(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app at the first signal that it is stopping, so that open
    event streams end instead of holding the shutdown."""

    on_exit: Callable[[], None] = staticmethod(lambda: None)

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)
        # uvicorn re-raises a captured signal once it has shut down (the process would die of
        # it); a service told to stop that stopped cleanly exits 0, as `batchctl worker` does.
        self._captured_signals.clear()


def serve(batch: Any, host: str, port: int, *, env: Mapping[str, str] | None = None) -> None:
    """Serve the API and dashboard until SIGTERM or Ctrl-C."""
    from batchctl.host import host_name

    log = _logger()
    tokens, generated = load_tokens(batch, host, os.environ if env is None else env)
    state = WebState(batch=batch, tokens=tokens)
    app = create_app(state, on_request=log.info)
    sock = bind(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{sock.getsockname()[1]}/"
    if generated:
        print(f"batchctl serve: no API token is configured; this one lasts until serve stops.\n"
              f"Dashboard: {url}login?token={generated}\n"
              f"API: curl -H 'Authorization: Bearer {generated}' {url}api/executions",
              file=sys.stderr, flush=True)
    worker_id = batch.repository.register_worker(host_name(), os.getpid(), SERVICE_KIND)
    beating = threading.Event()
    heart = threading.Thread(target=_heartbeat, args=(batch, worker_id, beating, log),
                             name="batchctl-serve-heartbeat", daemon=True)
    heart.start()
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on",
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE), proxy_headers=True,
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
    )
    server = _Server(config)

    def on_exit() -> None:
        state.stopping.set()
        batch.stop_waiting_for_repository()  # a stop during an outage ends within seconds

    server.on_exit = on_exit  # type: ignore[method-assign]
    log.info(f"serving {batch.config.display_database_url} on {url} (worker {worker_id}); "
             "Ctrl-C or SIGTERM stops")
    try:
        server.run(sockets=[sock])
    finally:
        state.stopping.set()
        beating.set()
        sock.close()
        _connections_returned(batch, deadline=time.monotonic() + SHUTDOWN_GRACE)
        # Unreachable while stopping: RepositoryOutage at once (exit 5), as a worker does.
        batch.repository.retire_worker(worker_id)
        log.info("stopped")


def _connections_returned(batch: Any, *, deadline: float) -> None:
    """Give a read still running in a thread (a stream cancelled at shutdown) the moment it needs
    to hand its connection back, before the caller closes the Batch."""
    pool = batch.repository.engine.pool
    while getattr(pool, "checkedout", lambda: 0)() and time.monotonic() < deadline:
        time.sleep(0.05)


def _heartbeat(batch: Any, worker_id: int, stop: threading.Event, log: logging.Logger) -> None:
    while not stop.wait(batch.config.heartbeat_interval):
        try:
            batch.repository.worker_heartbeat(worker_id, None)
        except Exception as exc:  # the database may come back: keep beating
            log.info(f"heartbeat failed: {exc}")


def _logger() -> logging.Logger:
    """One line per request or event on stderr."""
    log = logging.getLogger("batchctl.serve")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log

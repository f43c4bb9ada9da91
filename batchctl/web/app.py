"""The FastAPI application of `batchctl serve`: the API and pages over one `Batch`, the one error
handler, the request log and the background lost-process check.

`Batch` is opened once by the caller and shared by the server's threads: its repository is one
SQLAlchemy engine (a pool of connections, each used by one thread at a time; SQLite connections
are made per pooled connection) and its registry is read-only once loaded, which `create_app`
does up front.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from batchctl.defaults import EVENT_POLL_INTERVAL, RECOVER_INTERVAL
from batchctl.errors import (
    BatchctlError,
    EnvironmentProblem,
    InvalidParams,
    Refused,
    UnknownExecution,
    UnknownJob,
    UsageError,
)
from batchctl.web.auth import HttpRefusal, Principal, Sessions, Tokens
from batchctl.web.listings import Listings

log = logging.getLogger("batchctl.serve")


class SignInFirst(Exception):
    """A page was asked for without a token or session: redirect to /login (303)."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class NoLog(UsageError):
    """The execution has no log file."""


NOT_FOUND = (UnknownJob, UnknownExecution, NoLog)


@dataclass
class WebState:
    """What every route needs: the Batch, the tokens and sessions, and whether serve is stopping."""

    batch: Any
    tokens: Tokens
    sessions: Sessions = field(default_factory=Sessions)
    stopping: threading.Event = field(default_factory=threading.Event)
    recover_interval: float = RECOVER_INTERVAL
    listings: Listings = field(default_factory=Listings)
    watch_interval: float = EVENT_POLL_INTERVAL


def state_of(request: Request) -> WebState:
    return request.app.state.web  # type: ignore[no-any-return]


# -- the one error handler -------------------------------------------------------------------------


def status_for(exc: BaseException) -> int:
    """The HTTP status of an error: batchctl's by their kind (exit 2: 404 unknown job or
    execution, 422 bad params, else 400; exit 4: 409; exit 5: 503), the web layer's own."""
    if isinstance(exc, HttpRefusal):
        return exc.status
    if isinstance(exc, NOT_FOUND):
        return 404
    if isinstance(exc, InvalidParams):
        return 422
    if isinstance(exc, UsageError):
        return 400
    if isinstance(exc, Refused):
        return 409
    if isinstance(exc, EnvironmentProblem):
        return 503
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code
    if isinstance(exc, RequestValidationError):
        return 400
    return 500


def error_body(message: str, exit_code: int | None) -> dict[str, Any]:
    return {"error": {"message": message, "exit_code": exit_code}}


async def handle_error(request: Request, exc: Exception) -> Response:
    """Every error as `{"error": {"message", "exit_code"}}` with its status; a page asked for
    without sign-in redirects to /login."""
    if isinstance(exc, SignInFirst):
        from urllib.parse import quote

        return RedirectResponse(f"/login?next={quote(exc.next_path, safe='/')}", status_code=303)
    status = status_for(exc)
    exit_code = exc.exit_code if isinstance(exc, BatchctlError) else None
    if isinstance(exc, (BatchctlError, HttpRefusal)):
        message = exc.message
    elif isinstance(exc, StarletteHTTPException):
        message = str(exc.detail) if status != 404 else f"no such resource: {request.url.path}"
    elif isinstance(exc, RequestValidationError):
        message = "; ".join(_validation_text(error) for error in exc.errors()) or "bad request"
    else:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        message = f"unexpected {type(exc).__name__}"
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(message, exit_code), status_code=status, headers=headers)


def _validation_text(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("query", "path", "body"))
    return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid"))


# -- the application --------------------------------------------------------------------------------


def create_app(state: WebState, *, on_request: Callable[[str], None] | None = None) -> FastAPI:
    """The application over `state.batch` (opened by the caller, closed by the caller)."""
    from batchctl.web import api, pages

    state.batch.repository  # open the engine now (and migrate), not in a request's thread
    state.batch.registry  # load the jobs once: read-only from then on
    say = on_request or log.info

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_recover_forever(state, say)),
                 asyncio.create_task(_watch_outbox(state))]
        try:
            yield
        finally:
            state.stopping.set()
            for task in tasks:
                task.cancel()
            # A read running in a thread finishes first: its connection goes back to the pool
            # before the caller closes the Batch.
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="batchctl",
        summary="Start, watch, stop and restart batch jobs",
        version=_version(),
        lifespan=lifespan,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.web = state
    for error in (Exception, BatchctlError, HttpRefusal, SignInFirst, StarletteHTTPException,
                  RequestValidationError):
        app.add_exception_handler(error, handle_error)

    app.include_router(api.router)
    app.include_router(api.root)
    app.include_router(pages.router)
    pages.mount_static(app)
    app.add_middleware(RequestLog, say=say, listings=state.listings)
    return app


class RequestLog:
    """One line per request (method, path without its query, status, time), and after any
    request that may have written, a cleared listings cache. A plain ASGI middleware:
    Starlette's `BaseHTTPMiddleware` costs a task and a stream per request."""

    def __init__(self, app: Any, say: Callable[[str], None], listings: Listings) -> None:
        self.app = app
        self.say = say
        self.listings = listings

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.monotonic(), 500
        writes = scope["method"] not in ("GET", "HEAD", "OPTIONS")

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if writes:  # before the client can see the answer and ask for a listing
                    self.listings.clear()
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if writes:
                self.listings.clear()
            # The path without its query: a sign-in link carries a token there.
            self.say(f"{scope['method']} {scope['path']} {status} "
                     f"{(time.monotonic() - started) * 1000:.0f}ms")


async def _recover_forever(state: WebState, say: Callable[[str], None]) -> None:
    """Mark lost executions every few seconds, so that requests never have to (reads do not
    write)."""
    while not state.stopping.is_set():
        try:
            for lost in await run_in_threadpool(state.batch.recover_lost):
                say(f"execution {lost.id} of {lost.job_name} marked {lost.status.value}: "
                    f"{lost.exit_message}")
        except BatchctlError as exc:
            say(f"lost-process check failed: {exc.message}")
        await asyncio.sleep(state.recover_interval)


async def _watch_outbox(state: WebState) -> None:
    """Tell the listings cache the outbox's newest id every `watch_interval` (None when the
    repository cannot be read: nothing is cached then)."""
    while not state.stopping.is_set():
        try:
            marker: int | None = await run_in_threadpool(state.batch.repository.latest_event_id)
        except BatchctlError:
            marker = None
        state.listings.see(marker)
        await asyncio.sleep(state.watch_interval)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batchctl")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "0"


# -- who is calling -----------------------------------------------------------------------------------


def caller(request: Request) -> tuple[Principal, bool] | None:
    """The principal of a Bearer token or a session cookie (and whether by cookie), or None."""
    from batchctl.web.auth import SESSION_COOKIE, NotSignedIn, bearer

    state = state_of(request)
    header = request.headers.get("authorization")
    if header is not None:
        token = bearer(header)
        principal = state.tokens.check(token) if token else None
        if principal is None:
            raise NotSignedIn("invalid API token")
        return principal, False
    session = request.cookies.get(SESSION_COOKIE)
    if session:
        principal = state.sessions.get(session)
        if principal is not None:
            return principal, True
    return None

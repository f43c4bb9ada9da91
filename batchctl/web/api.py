"""The JSON API under /api: each route parses, calls `Batch`, and answers with the objects
`--json` prints (render.execution_dict, job_dict, worker_dict). Errors are raised, never
answered here: `app.handle_error` maps them all.

Reads never write: executions are read with `recover=False`; serve's background task marks lost
processes instead.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from batchctl import render
from batchctl.defaults import LOG_TAIL_BYTES
from batchctl.errors import BatchctlError, UsageError
from batchctl.model import Trigger, parse_execution_id, utcnow
from batchctl.operator import parse_target
from batchctl.web.app import NoLog, caller, state_of
from batchctl.web.auth import BadRequest, CrossSite, Forbidden, NotSignedIn, Principal, same_origin

router = APIRouter(prefix="/api")
MAX_PAGE = 1000  # the most executions one page of /api/executions holds


# -- who may call -------------------------------------------------------------------------------


async def reader(request: Request) -> Principal:
    """Any valid token or session (401 otherwise). Async, as `operator`: no I/O, and a sync
    dependency would cost every request a trip through the thread pool."""
    found = caller(request)
    if found is None:
        raise NotSignedIn()
    return found[0]


async def operator(request: Request) -> Principal:
    """A token or session with the operate role (403 for a read-only one); by session, only
    from a page of this site (the Origin check; the cookie is SameSite=Strict as well)."""
    found = caller(request)
    if found is None:
        raise NotSignedIn()
    principal, by_cookie = found
    if not principal.may_operate:
        raise Forbidden(f"token {principal.name!r} may only read")
    if by_cookie:
        origin = request.headers.get("origin") or request.headers.get("referer")
        if not same_origin(origin, request.headers.get("host")):
            raise CrossSite()
    return principal


Reader = Annotated[Principal, Depends(reader)]
Operator = Annotated[Principal, Depends(operator)]


def execution_id(value: str) -> int:
    """A path's execution id: digits, within 64 bits (else 404: no such execution)."""
    try:
        return parse_execution_id(value)
    except UsageError:
        from batchctl.errors import UnknownExecution

        raise UnknownExecution(f"no execution with id {value!r}") from None


def _instant(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 date or instant of a query (without an offset: UTC)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise BadRequest(f"{name}: not an ISO 8601 date or instant: {value!r}") from None
        parsed = datetime(day.year, day.month, day.day)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


# -- jobs ----------------------------------------------------------------------------------------


def job_object(batch: Any, job: Any, schedules: list[Any], now: datetime) -> dict[str, Any]:
    """`jobs --json`'s object of a job, with its schedules (and their next fire) when it has any."""
    from batchctl.schedules.output import schedule_dict

    data = render.job_dict(job)
    data["schedules"] = [schedule_dict(s, now) for s in schedules if s.job == job.name]
    return data


def schedules(batch: Any) -> list[Any]:
    from batchctl.schedules import load_schedules

    valid, _problems = load_schedules(batch.config, batch.registry)
    return list(valid)


@router.get("/jobs", summary="Registered jobs, as `batchctl jobs --json`, with their schedules")
def list_jobs(request: Request, _who: Reader) -> list[dict[str, Any]]:
    batch = state_of(request).batch
    found, now = schedules(batch), utcnow()
    return [job_object(batch, job, found, now) for job in batch.jobs()]


@router.get("/jobs/{job}", summary="One job")
def get_job(request: Request, job: str, _who: Reader) -> dict[str, Any]:
    batch = state_of(request).batch
    return job_object(batch, batch.job(job), schedules(batch), utcnow())


async def _body(request: Request) -> dict[str, Any]:
    """A JSON object body (empty: `{}`); 400 otherwise."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        from batchctl.model import parse_params

        return parse_params(raw.decode("utf-8"))
    except (BatchctlError, UnicodeDecodeError) as exc:
        message = exc.message if isinstance(exc, BatchctlError) else "the body is not UTF-8"
        raise BadRequest(message.replace("--params", "the body")) from None


@router.post("/jobs/{job}/start", status_code=202,
             summary="Start a job (detached); the body is {\"params\": {...}}")
async def start_job(request: Request, job: str, who: Operator) -> JSONResponse:
    from starlette.concurrency import run_in_threadpool

    body = await _body(request)
    unknown = set(body) - {"params"}
    if unknown:
        raise BadRequest(f"unknown key {sorted(unknown)[0]!r} in the body (known: params)")
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise BadRequest("'params' must be a JSON object")
    batch = state_of(request).batch
    execution = await run_in_threadpool(
        lambda: batch.start(job, params, detach=True, trigger=Trigger("http", who.name))
    )
    return JSONResponse(render.execution_dict(execution), status_code=202)


@router.post("/jobs/{job}/stop", summary="Stop the job's most recently created execution")
def stop_job(request: Request, job: str, _who: Operator) -> dict[str, Any]:
    return render.execution_dict(state_of(request).batch.stop(_job_name(job)))


@router.post("/jobs/{job}/restart", status_code=202,
             summary="Restart the job's most recently created execution")
def restart_job(request: Request, job: str, who: Operator) -> JSONResponse:
    execution = state_of(request).batch.restart(
        _job_name(job), detach=True, trigger=Trigger("http", who.name)
    )
    return JSONResponse(render.execution_dict(execution), status_code=202)


def _job_name(job: str) -> str:
    """A job name of a path (digits would make `Batch` read an execution id: no job has one)."""
    if isinstance(parse_target(job), int):
        from batchctl.errors import UnknownJob

        raise UnknownJob(f"no job named {job!r}")
    return job


# -- executions ----------------------------------------------------------------------------------


@router.get("/executions", summary="Executions, newest first, a page at a time")
async def list_executions(
    request: Request,
    _who: Reader,
    job: Optional[str] = None,
    status: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI copies it
    since: Optional[str] = None,
    until: Optional[str] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Optional[str] = None,
) -> Response:
    """`{"items": [execution objects], "next_cursor": ...}`; pass `next_cursor` as `cursor` for
    the next page (keyset pagination: stable while new executions are inserted). `status` may
    be repeated or comma-separated; `since`/`until` are ISO 8601 (creation time, UTC without an
    offset). Answers may be reused for up to a second (web/listings.py): a status change or a
    write through this server is seen at once."""
    from starlette.concurrency import run_in_threadpool

    before = None
    if cursor:
        if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 19:
            raise BadRequest(f"invalid cursor {cursor!r}")
        before = int(cursor)
    statuses = [part for item in status for part in item.split(",") if part]
    first, last = _instant(since, "since"), _instant(until, "until")
    batch, key = state_of(request).batch, f"{request.url.path}?{request.url.query}"

    def listing() -> bytes:
        executions = batch.history(job, statuses=statuses, limit=limit + 1, before=before,
                                   since=first, until=last, recover=False)
        page = executions[:limit]
        more = len(executions) > limit
        return json_text({
            "items": [render.execution_dict(execution) for execution in page],
            "next_cursor": str(page[-1].id) if more and page else None,
        }).encode()

    body = await state_of(request).listings.get(key, lambda: run_in_threadpool(listing))
    return Response(body, media_type="application/json")


def json_response(value: Any, status_code: int = 200) -> Response:
    """JSON as `--json` writes it (NaN as null), without FastAPI's per-field encoding: the
    hot listing answers several times faster."""
    return Response(json_text(value), status_code=status_code, media_type="application/json")


def json_text(value: Any) -> str:
    try:
        return json.dumps(value, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(render._finite(value), default=str)


@router.get("/executions/{id}", summary="One execution, as `batchctl show --json`")
def get_execution(request: Request, id: str, _who: Reader) -> Response:
    return json_response(execution_detail(state_of(request).batch, execution_id(id)))


def execution_detail(batch: Any, number: int) -> dict[str, Any]:
    execution = batch.execution(number, recover=False)
    data = render.execution_dict(
        execution, batch.step_executions(number), batch.skipped_items(number)
    )
    return data


@router.get("/executions/{id}/log", summary="The log's tail; ?follow=1 streams it as SSE")
def get_log(request: Request, id: str, _who: Reader, follow: bool = False) -> Response:
    from batchctl.web.events import log_stream, log_tail

    state = state_of(request)
    number = execution_id(id)
    execution = state.batch.execution(number, recover=False)
    if not execution.log_path:
        raise NoLog(f"execution {number} has no log file: it ran in the foreground")
    path = execution.log_path
    if not Path(path).exists():
        raise NoLog(f"the log of execution {number} is gone")
    if not follow:
        text, _size = log_tail(path, LOG_TAIL_BYTES)
        return PlainTextResponse(text)

    def live() -> bool:
        return bool(state.batch.execution(number, recover=False).status.is_live)

    return _sse(log_stream(path, LOG_TAIL_BYTES, live, state.stopping.is_set))


@router.post("/executions/{id}/stop", summary="Ask a live execution to stop")
def stop_execution(request: Request, id: str, _who: Operator) -> dict[str, Any]:
    return render.execution_dict(state_of(request).batch.stop(execution_id(id)))


@router.post("/executions/{id}/abandon", summary="Mark an execution ABANDONED")
def abandon_execution(request: Request, id: str, _who: Operator) -> dict[str, Any]:
    return render.execution_dict(state_of(request).batch.abandon(execution_id(id)))


@router.post("/executions/{id}/restart", status_code=202,
             summary="Restart the instance of a STOPPED or FAILED execution (detached)")
def restart_execution(request: Request, id: str, who: Operator) -> JSONResponse:
    execution = state_of(request).batch.restart(
        execution_id(id), detach=True, trigger=Trigger("http", who.name)
    )
    return JSONResponse(render.execution_dict(execution), status_code=202)


# -- events, workers ---------------------------------------------------------------------------


@router.get("/events", summary="Server-sent events of every status change")
def events(
    request: Request,
    _who: Reader,
    job: Optional[str] = None,
    execution: Optional[str] = None,
    after: Annotated[Optional[int], Query(ge=0)] = None,
    last_event_id: Annotated[Optional[str], Header()] = None,
) -> Response:
    """Each event is `id: N`, `event: status`, `data: {"id", "execution_id", "job",
    "step_execution_id", "step", "status", "at"}` (step null for the execution's own status).
    `Last-Event-ID` (or `?after=`) resumes after that event."""
    from batchctl.web.events import EVENT_BATCH, event_stream

    state = state_of(request)
    start = after or 0
    if last_event_id:
        if not (last_event_id.isascii() and last_event_id.isdigit()) or len(last_event_id) > 19:
            raise BadRequest(f"invalid Last-Event-ID {last_event_id!r}")
        start = int(last_event_id)
    number = execution_id(execution) if execution else None

    def read(floor: int) -> list[Any]:
        return list(state.batch.events(floor, limit=EVENT_BATCH, job=job, execution=number))

    return _sse(event_stream(read, start, state.stopping.is_set, noted=state.listings.note))


def _sse(stream: Any) -> StreamingResponse:
    return StreamingResponse(
        stream, media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/workers", summary="Live workers and services, as `batchctl workers --json`")
def list_workers(request: Request, _who: Reader) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {**render.worker_dict(info),
         "heartbeat_age": round((now - info.heartbeat_at).total_seconds(), 3)}
        for info in state_of(request).batch.workers()
    ]


def dumps(value: Any) -> str:
    return json.dumps(value, default=str)


# -- health and metrics (outside /api, where probes and scrapers look) -------------------------------

root = APIRouter()


@root.get("/healthz", summary="200 when the repository answers, 503 when it does not (no token)")
def healthz(request: Request) -> dict[str, Any]:
    state_of(request).batch.history(limit=1, recover=False)  # DatabaseUnavailable -> 503
    return {"status": "ok"}


@root.get("/metrics", summary="Prometheus metrics (text format), with a read token")
def metrics(request: Request, _who: Reader) -> Response:
    from batchctl.web.metrics import CONTENT_TYPE, metrics_text

    batch = state_of(request).batch
    return Response(metrics_text(batch.stats(), batch.workers()), media_type=CONTENT_TYPE)

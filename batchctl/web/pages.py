"""The dashboard: server-rendered HTML pages over the same `Batch` reads as the API.

Every value that a user or a job supplied (params, names, messages, log lines, items) goes
through `esc` (html.escape, quotes included) before it reaches a page; the small script in
static/app.js only ever inserts text (`textContent`) or HTML fragments rendered here. The live
parts of a page are fetched again as fragments (`?fragment=1`) when an event arrives, so there is
one renderer, in Python.
"""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from pathlib import Path
from string import Template
from typing import Any, Iterable, Sequence
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from batchctl.model import Status, utcnow
from batchctl.web.app import SignInFirst, caller, state_of
from batchctl.web.auth import SESSION_COOKIE, Principal, same_origin

HERE = Path(__file__).resolve().parent
router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
NAV = (("/", "Executions"), ("/jobs", "Jobs"), ("/workers", "Workers"))
PARAM_INPUTS = {  # a declared param's type -> the input that edits it
    "int": 'type="number" step="1"',
    "float": 'type="number" step="any"',
    "date": 'type="date"',
    "datetime": 'type="datetime-local" step="1"',
    "str": 'type="text"',
}


def esc(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _template(name: str) -> Template:
    return Template((HERE / "templates" / name).read_text(encoding="utf-8"))


def mount_static(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")


def viewer(request: Request) -> Principal:
    """The caller of a page: a session or a Bearer token; else a redirect to /login."""
    found = caller(request)
    if found is None:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInFirst(path)
    return found[0]


def page(request: Request, who: Principal, title: str, name: str, body: str) -> HTMLResponse:
    nav = "".join(
        f'<a href="{href}"{" class=on" if _current(request, href) else ""}>{label}</a>'
        for href, label in NAV
    )
    signed = (f'{esc(who.name)} ({esc(who.role)}) '
              '<form method="post" action="/logout" class="inline"><button class="link">sign out</button></form>')
    html = _template("base.html").substitute(
        title=esc(title), page=esc(name), nav=nav, who=signed, body=body
    )
    return HTMLResponse(html)


def _current(request: Request, href: str) -> bool:
    path = request.url.path
    return path == "/" or path.startswith("/executions") if href == "/" else path.startswith(href)


# -- formatting -------------------------------------------------------------------------------------


def status_badge(status: str) -> str:
    return f'<span class="st st-{esc(status)}">{esc(status)}</span>'


def when(value: datetime | None) -> str:
    if value is None:
        return ""
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    return f'<time datetime="{esc(value.isoformat())}">{esc(text)}</time>'


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def params_text(params: Any) -> str:
    return json.dumps(params, sort_keys=True, ensure_ascii=False, default=str)


def first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0]


def progress(done: int, total: int) -> str:
    percent = 0 if total <= 0 else min(100, round(100 * done / total))
    return (f'<span class="bar" title="{done}/{total}"><span style="width:{percent}%"></span></span>'
            f' <span class="muted">{done}/{total}</span>')


# -- sign in ------------------------------------------------------------------------------------------


def _next(value: str | None) -> str:
    """A local path to go to after signing in (never another site)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def login_page(next_path: str, error: str = "", status: int = 200) -> HTMLResponse:
    html = _template("login.html").substitute(next=esc(_next(next_path)), error=esc(error))
    return HTMLResponse(html, status_code=status)


def signed_in(request: Request, principal: Principal, next_path: str) -> Response:
    state = state_of(request)
    response = RedirectResponse(_next(next_path), status_code=303)
    response.set_cookie(
        SESSION_COOKIE, state.sessions.create(principal), max_age=int(state.sessions.lifetime),
        httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/",
    )
    return response


@router.get("/login")
def login_form(request: Request, next: str = "/", token: str | None = None) -> Response:
    """The sign-in form; `?token=` (the link serve prints) signs in at once."""
    if token:
        principal = state_of(request).tokens.check(token)
        if principal is None:
            return login_page(next, "That token is not valid.", 401)
        return signed_in(request, principal, next)
    return login_page(next)


@router.post("/login")
async def login(request: Request) -> Response:
    origin = request.headers.get("origin")
    form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
    next_path = (form.get("next") or ["/"])[0]
    if origin is not None and not same_origin(origin, request.headers.get("host")):
        return login_page(next_path, "Sign in from this site's own page.", 403)
    token = (form.get("token") or [""])[0]
    principal = state_of(request).tokens.check(token) if token else None
    if principal is None:
        return login_page(next_path, "That token is not valid.", 401)
    return signed_in(request, principal, next_path)


@router.post("/logout")
def logout(request: Request) -> Response:
    session = request.cookies.get(SESSION_COOKIE)
    if session:
        state_of(request).sessions.drop(session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- executions --------------------------------------------------------------------------------------


def execution_rows(executions: Sequence[Any]) -> str:
    rows = []
    for e in executions:
        rows.append(
            f'<tr data-id="{e.id}">'
            f'<td class="num"><a href="/executions/{e.id}">{e.id}</a></td>'
            f'<td><a href="/jobs/{esc(e.job_name)}">{esc(e.job_name)}</a></td>'
            f'<td class="params" title="{esc(params_text(e.params))}">{esc(params_text(e.params))}</td>'
            f'<td>{status_badge(e.status.value)}</td>'
            f'<td class="muted">{esc(e.trigger or "")}</td>'
            f'<td>{when(e.created_at)}</td>'
            f'<td class="num">{duration(e.duration if e.ended_at else None)}</td>'
            f'<td class="msg">{esc(first_line(e.exit_message))}</td>'
            "</tr>"
        )
    return "".join(rows) or '<tr><td colspan="8" class="muted">no executions</td></tr>'


@router.get("/", response_class=HTMLResponse)
def executions_page(
    request: Request,
    job: str | None = None,
    status: str | None = None,
    since: str | None = None,
    until: str | None = None,
    cursor: str | None = None,
    fragment: bool = False,
) -> Response:
    from batchctl.web.api import _instant

    who = viewer(request)
    batch = state_of(request).batch
    before = int(cursor) if cursor and cursor.isascii() and cursor.isdigit() and len(cursor) < 19 else None
    found = batch.history(
        job or None, statuses=[status] if status else [], limit=PAGE_SIZE + 1, before=before,
        since=_instant(since, "since"), until=_instant(until, "until"), recover=False,
    )
    shown, more = found[:PAGE_SIZE], len(found) > PAGE_SIZE
    rows = execution_rows(shown)
    if fragment:
        return HTMLResponse(rows)
    filters = {k: v for k, v in (("job", job), ("status", status), ("since", since),
                                 ("until", until)) if v}
    pager = []
    if before is not None:
        pager.append(f'<a href="/?{esc(urlencode(filters))}">« newest</a>')
    if more and shown:
        pager.append(f'<a rel="next" href="/?{esc(urlencode({**filters, "cursor": shown[-1].id}))}">older »</a>')
    job_options = "".join(
        f'<option{" selected" if j.name == job else ""}>{esc(j.name)}</option>' for j in batch.jobs()
    )
    status_options = "".join(
        f'<option{" selected" if s.value == (status or "").upper() else ""}>{s.value}</option>'
        for s in Status
    )
    body = f"""
<form class="filters" method="get" action="/">
  <label>job <select name="job"><option value="">all</option>{job_options}</select></label>
  <label>status <select name="status"><option value="">all</option>{status_options}</select></label>
  <label>since <input type="date" name="since" value="{esc(since)}"></label>
  <label>until <input type="date" name="until" value="{esc(until)}"></label>
  <button type="submit">Filter</button>
</form>
<div class="scroll"><table class="grid" id="executions" data-live="{'1' if before is None else '0'}">
<thead><tr><th>id</th><th>job</th><th>params</th><th>status</th><th>trigger</th><th>created (UTC)</th><th>duration</th><th>message</th></tr></thead>
<tbody>{rows}</tbody></table></div>
<p class="pager">{' '.join(pager)}</p>"""
    return page(request, who, "Executions", "executions", body)


def _actions(execution: Any, who: Principal) -> str:
    allowed = {
        "stop": execution.status.is_live and execution.status != Status.STOPPING,
        "restart": execution.status.is_restartable,
        "abandon": execution.status.is_abandonable,
    }
    buttons = []
    for action, ok in allowed.items():
        disabled = "" if ok and who.may_operate else " disabled"
        buttons.append(
            f'<button class="action" data-action="{action}" data-id="{execution.id}"{disabled}>'
            f"{action.capitalize()}</button>"
        )
    return "".join(buttons)


def execution_live(batch: Any, execution: Any, who: Principal) -> str:
    """The parts of an execution's page that change while it runs."""
    steps = batch.step_executions(execution.id)
    skipped = batch.skipped_items(execution.id)
    try:
        declared = len(batch.job(execution.job_name).steps)
    except Exception:  # the job is no longer defined: no total to show
        declared = 0
    top = [s for s in steps if not s.is_partition]
    partitions: dict[str, list[Any]] = {}
    for step in steps:
        if step.is_partition:
            partitions.setdefault(step.partition_of or "", []).append(step)
    done = sum(1 for s in top if s.status == Status.COMPLETED)
    rows = []
    for step in top:
        parts = partitions.get(step.name, [])
        bar = (progress(sum(1 for p in parts if not p.status.is_live), len(parts)) if parts
               else progress(1 if step.status == Status.COMPLETED else 0, 1))
        rows.append(_step_row(step, bar, "step"))
        rows.extend(_step_row(p, "", "partition") for p in parts)
    skipped_rows = "".join(
        f"<tr><td>{esc(item.step_name)}</td><td>{esc(item.phase)}</td><td class=num>{esc(item.position)}</td>"
        f'<td class="item">{esc(item.item)}</td><td class="msg">{esc(first_line(item.error_text))}</td></tr>'
        for item in skipped
    )
    message = (f'<h2>Exit message</h2><pre class="message">{esc(execution.exit_message)}</pre>'
               if execution.exit_message else "")
    return f"""
<div class="summary">
  <span id="status">{status_badge(execution.status.value)}</span>
  {progress(done, max(declared, len(top)))}
  <span class="actions">{_actions(execution, who)}</span>
</div>
<dl class="fields">
  <dt>job</dt><dd><a href="/jobs/{esc(execution.job_name)}">{esc(execution.job_name)}</a></dd>
  <dt>params</dt><dd class="params-full">{esc(params_text(execution.params))}</dd>
  <dt>trigger</dt><dd>{esc(execution.trigger)} {esc(execution.trigger_detail)}</dd>
  <dt>created</dt><dd>{when(execution.created_at)}</dd>
  <dt>started</dt><dd>{when(execution.started_at)}</dd>
  <dt>ended</dt><dd>{when(execution.ended_at)}</dd>
  <dt>duration</dt><dd>{duration(execution.duration if execution.ended_at else None)}</dd>
  <dt>heartbeat</dt><dd>{when(execution.heartbeat_at)}</dd>
  <dt>host / pid</dt><dd>{esc(execution.host)} {esc(execution.pid)}</dd>
  <dt>resumes</dt><dd>{f'<a href="/executions/{execution.resumed_from}">{execution.resumed_from}</a>' if execution.resumed_from else ''}</dd>
</dl>
{message}
<h2>Steps</h2>
<div class="scroll"><table class="grid" id="steps"><thead><tr><th>step</th><th>status</th><th>progress</th>
<th>read</th><th>written</th><th>filtered</th><th>skipped</th><th>commits</th><th>rollbacks</th><th>duration</th><th>message</th></tr></thead>
<tbody>{''.join(rows) or '<tr><td colspan="11" class="muted">no step has started</td></tr>'}</tbody></table></div>
{f'<h2>Skipped items</h2><div class="scroll"><table class="grid" id="skipped"><thead><tr><th>step</th><th>phase</th><th>position</th><th>item</th><th>error</th></tr></thead><tbody>{skipped_rows}</tbody></table></div>' if skipped else ''}
"""


def _step_row(step: Any, bar: str, kind: str) -> str:
    skips = step.read_skip_count + step.process_skip_count + step.write_skip_count
    return (
        f'<tr class="{kind}"><td>{esc(step.name)}</td><td>{status_badge(step.status.value)}</td>'
        f"<td>{bar}</td><td class=num>{step.read_count}</td><td class=num>{step.write_count}</td>"
        f"<td class=num>{step.filter_count}</td><td class=num>{skips}</td>"
        f"<td class=num>{step.commit_count}</td><td class=num>{step.rollback_count}</td>"
        f"<td class=num>{duration(step.duration if step.ended_at else None)}</td>"
        f'<td class="msg">{esc(first_line(step.exit_message))}</td></tr>'
    )


@router.get("/executions/{id}", response_class=HTMLResponse)
def execution_page(request: Request, id: str, fragment: bool = False) -> Response:
    from batchctl.web.api import execution_id

    who = viewer(request)
    batch = state_of(request).batch
    execution = batch.execution(execution_id(id), recover=False)
    live = execution_live(batch, execution, who)
    if fragment:
        return HTMLResponse(live)
    log = (f'<h2>Log</h2><pre id="log" class="log" data-id="{execution.id}"></pre>'
           if execution.log_path else "")
    body = (f'<h1>Execution {execution.id} <span class="muted">of {esc(execution.job_name)}</span></h1>'
            f'<div id="live" data-id="{execution.id}">{live}</div>{log}')
    return page(request, who, f"Execution {execution.id}", "execution", body)


# -- jobs -------------------------------------------------------------------------------------------------


def _schedules_table(items: Iterable[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{esc(s['name'])}</td><td><code>{esc(s['cron'])}</code></td><td>{esc(s['timezone'])}</td>"
        f"<td>{'yes' if s['enabled'] else 'no'}</td><td>{esc(s['next_fire_local'] or '')}</td></tr>"
        for s in items
    )
    if not rows:
        return '<p class="muted">no schedules</p>'
    return ('<div class="scroll"><table class="grid"><thead><tr><th>schedule</th><th>cron</th>'
            f"<th>time zone</th><th>enabled</th><th>next fire</th></tr></thead><tbody>{rows}</tbody></table></div>")


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request) -> Response:
    from batchctl.web.api import job_object, schedules

    who = viewer(request)
    batch = state_of(request).batch
    found, now = schedules(batch), utcnow()
    rows = []
    for job in batch.jobs():
        data = job_object(batch, job, found, now)
        params = ", ".join(f"{name}: {p['type']}{'' if p['required'] else '?'}"
                           for name, p in data["params"].items())
        fires = ", ".join(f"{s['name']} → {s['next_fire_local'] or 'disabled'}" for s in data["schedules"])
        rows.append(
            f'<tr><td><a href="/jobs/{esc(job.name)}">{esc(job.name)}</a></td>'
            f"<td>{esc(job.description)}</td><td>{esc(params)}</td><td class=num>{len(job.steps)}</td>"
            f"<td>{esc(fires)}</td></tr>"
        )
    problems = "".join(f'<li>{esc(p)}</li>' for p in batch.registry.problems)
    body = (
        '<h1>Jobs</h1><div class="scroll"><table class="grid" id="jobs"><thead><tr><th>job</th>'
        "<th>description</th><th>params</th><th>steps</th><th>schedules</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        + (f'<h2>Problems</h2><ul class="problems">{problems}</ul>' if problems else "")
    )
    return page(request, who, "Jobs", "jobs", body)


def start_form(job: Any, who: Principal) -> str:
    fields = []
    for name, param in job.declared_params.items():
        kind = param.type.__name__
        default = "" if param.required else param.default
        field_id = f"param-{esc(name)}"
        if kind == "bool":
            checked = " checked" if default is True else ""
            control = f'<input id="{field_id}" name="{esc(name)}" data-type="bool" type="checkbox"{checked}>'
        else:
            value = default.isoformat() if hasattr(default, "isoformat") else default
            required = " required" if param.required else ""
            control = (f'<input id="{field_id}" name="{esc(name)}" data-type="{esc(kind)}" '
                       f'{PARAM_INPUTS.get(kind, PARAM_INPUTS["str"])} value="{esc(value)}"{required}>')
        help = f' <span class="muted">{esc(param.help)}</span>' if param.help else ""
        fields.append(
            f'<div class="field"><label for="{field_id}">{esc(name)} <span class="muted">{esc(kind)}'
            f'{"" if param.required else ", optional"}</span></label>{control}{help}'
            f'<span class="field-error" data-for="{esc(name)}" role="alert"></span></div>'
        )
    disabled = "" if who.may_operate else " disabled"
    return (f'<form id="start" class="start" novalidate data-job="{esc(job.name)}">{"".join(fields)}'
            f'<p class="form-error" role="alert"></p><button type="submit"{disabled}>Start</button></form>')


@router.get("/jobs/{job}", response_class=HTMLResponse)
def job_page(request: Request, job: str) -> Response:
    from batchctl.web.api import job_object, schedules

    who = viewer(request)
    batch = state_of(request).batch
    found = batch.job(job)
    data = job_object(batch, found, schedules(batch), utcnow())
    params = "".join(
        f"<tr><td>{esc(name)}</td><td>{esc(p['type'])}</td><td>{'yes' if p['required'] else 'no'}</td>"
        f"<td>{esc(params_text(p['default'])) if 'default' in p else ''}</td><td>{esc(p.get('help', ''))}</td></tr>"
        for name, p in data["params"].items()
    )
    steps = "".join(f"<li>{esc(s['name'])} <span class=muted>{esc(getattr(s['kind'], 'value', s['kind']))}</span> {esc(s['description'])}</li>"
                    for s in data["steps"])
    recent = batch.history(found.name, limit=10, recover=False)
    body = f"""
<h1>{esc(found.name)}</h1>
<p class="description">{esc(found.description)}</p>
<p class="muted">defined in {esc(found.defined_in)}</p>
<div class="columns">
<section><h2>Start</h2>{start_form(found, who)}</section>
<section><h2>Params</h2><div class="scroll"><table class="grid"><thead><tr><th>param</th><th>type</th><th>required</th><th>default</th><th>help</th></tr></thead><tbody>{params}</tbody></table></div>
<h2>Steps</h2><ol class="steps">{steps}</ol>
<h2>Schedules</h2>{_schedules_table(data["schedules"])}</section>
</div>
<h2>Recent executions</h2>
<div class="scroll"><table class="grid"><thead><tr><th>id</th><th>job</th><th>params</th><th>status</th><th>trigger</th><th>created (UTC)</th><th>duration</th><th>message</th></tr></thead>
<tbody>{execution_rows(recent)}</tbody></table></div>"""
    return page(request, who, found.name, "job", body)


# -- workers ----------------------------------------------------------------------------------------------


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request) -> Response:
    who = viewer(request)
    now = utcnow()
    rows = "".join(
        f"<tr><td class=num>{w.id}</td><td>{esc(w.kind)}</td><td>{esc(w.host)}</td><td class=num>{w.pid}</td>"
        f"<td>{when(w.started_at)}</td><td class=num>{(now - w.heartbeat_at).total_seconds():.1f}s</td>"
        f"<td>{f'<a href=/executions/{w.execution_id}>{w.execution_id}</a> {esc(w.job_name)} {esc(w.partition_name)}' if w.execution_id else ''}</td></tr>"
        for w in state_of(request).batch.workers()
    )
    body = ('<h1>Workers and services</h1><div class="scroll"><table class="grid" id="workers"><thead><tr>'
            "<th>id</th><th>kind</th><th>host</th><th>pid</th><th>started (UTC)</th><th>heartbeat age</th>"
            f"<th>running</th></tr></thead><tbody>{rows or '<tr><td colspan=7 class=muted>none</td></tr>'}"
            "</tbody></table></div>")
    return page(request, who, "Workers", "workers", body)

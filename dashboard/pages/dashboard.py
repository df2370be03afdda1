"""The dashboard's pages: Current Remote Connections, Connections, an endpoint's page, and the
administrators' Terminate.

- ``GET /``: the live sessions this user may see (docs/dashboard.md), kept current by the event
  stream of pages/live.py, and the user's endpoints with their Access buttons;
- ``GET /connections``: live and ended sessions from the audit log, filtered and paginated;
- ``GET /endpoints/{endpoint_id}``: an endpoint's settings (never its credentials) and its
  Connections tab, for anyone with access to it (the administrators' pages are under
  ``/endpoints/{id}/edit`` and siblings, pages/endpoints.py);
- ``POST /sessions/{session_id}/terminate``: administrators only (403 for anyone else); asks
  the engine to end the session for everyone, with the administrator's name.

Who sees what: administrators see every session; a user sees the sessions of the endpoints
they have access to, and any session they take part in (`live.Audience`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from dashboard.pages import live
from dashboard.security.auth import require_user
from dashboard.services import Services, live_sessions, services_of
from dashboard.services.starts import outcomes, visible_endpoint
from dashboard.web.http import flash, not_found, page_number, safe_path, take_flash, wants_json
from dashboard.web.templating import render
from engine import EngineNotRunning, LoopClosed, policy
from engine.access import quick_access
from engine.messages import Accepted, EndReason, Refused, User

log = logging.getLogger(__name__)

PAGE_SIZE = 25
END_REASONS = {
    EndReason.CONTROLLER_LEFT.value: "ended by the controller",
    EndReason.TERMINATED.value: "terminated by an administrator",
    EndReason.EXPIRED.value: "expired",
    EndReason.ABANDONED.value: "abandoned (controller did not come back)",
    EndReason.ENDPOINT_FAILED.value: "endpoint failed",
    EndReason.ENDPOINT_CLOSED.value: "closed by the endpoint",
    EndReason.SESSION_FAILED.value: "session failed",
    EndReason.ENGINE_STOPPED.value: "gateway stopped",
    EndReason.GATEWAY_RESTARTED.value: "gateway restarted (ended when last seen)",
    EndReason.RECORDING_FAILED.value: "its recording failed",
}


# --- small helpers -------------------------------------------------------------------------------


def _pages(total: int, page: int) -> dict[str, Any]:
    count = max(1, -(-total // PAGE_SIZE))
    page = min(page, count)
    return {"page": page, "pages": count, "total": total, "first": (page - 1) * PAGE_SIZE + 1 if total else 0,
            "last": min(total, page * PAGE_SIZE)}


def _cap(services: Services) -> int:
    return policy.viewer_cap(services.settings.engine.max_viewers)


def _events_url(request: Request, back: str, endpoint_id: str | None = None) -> str:
    params = {"back": back}
    if endpoint_id:
        params["endpoint"] = endpoint_id
    return f"{request.url_for('session_events').path}?{urlencode(params)}"


# --- sessions from the audit log ----------------------------------------------------------------


def sessions_page(services: Services, viewer: User, query: dict[str, Any], page: int) -> tuple[list[dict[str, Any]], int]:
    """One page (newest first) of the sessions `viewer` may see that match `query` (keyword
    arguments of `AuditReader.sessions`), and how many match. Administrators see every session;
    a user those on their endpoints and those they controlled or joined: the same query as
    the JSON API's ``GET /api/connections``, so the page and the API never disagree. Blocking."""
    window = {"limit": PAGE_SIZE, "offset": (page - 1) * PAGE_SIZE}
    if not viewer.is_admin:
        window["visible_to"] = (viewer.id, [r.id for r in services.endpoints.accessible(viewer)])
    return services.audit_reader.sessions(**query, **window)


def _viewers_of(reader: Any, session_id: str) -> list[str]:
    detail = reader.session(session_id) or {}
    return [p["actor_name"] for p in detail.get("participants", []) if p.get("role") == "viewer"]


def _history_rows(services: Services, audience: live.Audience, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Audit rows as the Connections tables show them: live ones with the engine's state now
    (viewers, state, Join, Terminate), ended ones with everyone who watched. Blocking."""
    cap = _cap(services)
    out = []
    for r in rows:
        summary = live_sessions.live_summary(services, r["id"]) if r["live"] else None
        model = live.row_model(summary, audience, cap, live_sessions.node_of(services, r["id"])) \
            if summary is not None else None
        out.append({
            "id": r["id"],
            "endpoint": {"id": r["endpoint_id"], "name": r["endpoint_name"], "protocol": r["protocol"]},
            "controller": r["controller_name"],
            "viewers": model["viewers"] if model else _viewers_of(services.audit_reader, r["id"]),
            "started_at": r["started_at"],
            "ended_at": r["ended_at"],
            "end_reason": r["end_reason"],
            "end_label": END_REASONS.get(r["end_reason"] or "", r["end_reason"] or ""),
            "ended_by": r["ended_by"],
            "live": model is not None,
            # live in the audit log but not in this engine: left open when a gateway stopped
            "state": model["state"] if model else ("ended" if r["ended_at"] else "not running"),
            "expiring": bool(model and model["expiring"]),
            "deadline": model["deadline"] if model else None,
            "join": model["join"] if model else None,
            "can_terminate": bool(model and model["can_terminate"]),
            "record": bool(r.get("record")),
            "replay": audience.may_replay(bool(r.get("record"))),
        })
    return out


# --- Connections filters --------------------------------------------------------------------------


def _day_start(text: str) -> float:
    """Local midnight of a YYYY-MM-DD date, in seconds since the epoch."""
    return time.mktime(time.strptime(text, "%Y-%m-%d"))


def _next_day(text: str) -> float:
    tm = time.strptime(text, "%Y-%m-%d")
    return time.mktime((tm.tm_year, tm.tm_mon, tm.tm_mday + 1, 0, 0, 0, 0, 0, -1))


@dataclass
class Filters:
    """The Connections filters, from the query string. Dates are days of the server's time zone;
    `until` includes its whole day. A malformed value is ignored and reported."""

    endpoint: str = ""
    user: str = ""
    since: str = ""
    until: str = ""
    reason: str = ""  # "", "live", "ended", or an EndReason value
    page: int = 1

    @classmethod
    def parse(cls, params: Any) -> tuple["Filters", list[str]]:
        errors: list[str] = []
        f = cls(endpoint=params.get("endpoint", "").strip()[:64], user=params.get("user", "").strip()[:64],
                since=params.get("since", "").strip(), until=params.get("until", "").strip(),
                reason=params.get("reason", "").strip(), page=page_number(params.get("page")))
        for name in ("since", "until"):
            value = getattr(f, name)
            if value:
                try:
                    _day_start(value)
                except (ValueError, OverflowError):
                    errors.append(f"“{value}” is not a date (YYYY-MM-DD): ignored.")
                    setattr(f, name, "")
        if f.reason and f.reason not in ("live", "ended", *END_REASONS):
            errors.append(f"“{f.reason}” is not an end reason: ignored.")
            f.reason = ""
        return f, errors

    def query(self) -> dict[str, Any]:
        """Keyword arguments for `AuditReader.sessions`."""
        q: dict[str, Any] = {}
        if self.endpoint:
            q["endpoint_id"] = self.endpoint
        if self.user:
            q["user"] = self.user
        if self.since:
            q["since"] = _day_start(self.since)
        if self.until:
            q["until"] = _next_day(self.until)
        if self.reason == "live":
            q["live"] = True
        elif self.reason == "ended":
            q["live"] = False
        elif self.reason:
            q["end_reason"] = self.reason
        return q

    @property
    def active(self) -> bool:
        return any((self.endpoint, self.user, self.since, self.until, self.reason))

    def url(self, path: str, page: int) -> str:
        params = {k: v for k, v in (("endpoint", self.endpoint), ("user", self.user), ("since", self.since),
                                    ("until", self.until), ("reason", self.reason)) if v}
        if page > 1:
            params["page"] = str(page)
        return f"{path}?{urlencode(params)}" if params else path


# --- pages -----------------------------------------------------------------------------------------


async def home(request: Request) -> Response:
    """Dashboard → Current Remote Connections."""
    user = await require_user(request)
    services = services_of(request)
    audience = await live.audience_for(services, user)

    def load() -> tuple[list[Any], dict[str, Any]]:
        endpoints = services.endpoints.accessible(user)
        return endpoints, outcomes(services, user, [e.id for e in endpoints])

    endpoints, decided = await trio.to_thread.run_sync(load)
    return await render(request, "dashboard.html", {
        "rows": live.live_rows(services, audience), "now": services.now(), "back": "/",
        "events_url": _events_url(request, "/"), "endpoints": endpoints, "decided": decided,
        "max_viewers": _cap(services),
        "flash": take_flash(request), **live.row_context(request)})


async def connections(request: Request) -> Response:
    """Connections: live and ended sessions, filtered, 25 a page."""
    user = await require_user(request)
    services = services_of(request)
    filters, errors = Filters.parse(request.query_params)
    audience = await live.audience_for(services, user)
    path = request.url.path

    def load() -> tuple[list[Any], list[dict[str, Any]], int]:
        endpoints = services.endpoints.accessible(user)
        rows, total = sessions_page(services, user, filters.query(), filters.page)
        if not rows and total and filters.page > 1:  # past the last page: show the last one
            filters.page = _pages(total, filters.page)["page"]
            rows, total = sessions_page(services, user, filters.query(), filters.page)
        return endpoints, _history_rows(services, audience, rows), total

    endpoints, rows, total = await trio.to_thread.run_sync(load)
    pages = _pages(total, filters.page)
    back = filters.url(path, pages["page"])
    return await render(request, "connections.html", {
        "rows": rows, "filters": filters, "errors": errors, "endpoints": endpoints, "pager": pages,
        "prev_url": filters.url(path, pages["page"] - 1) if pages["page"] > 1 else None,
        "next_url": filters.url(path, pages["page"] + 1) if pages["page"] < pages["pages"] else None,
        "reasons": END_REASONS, "now": services.now(), "back": back, "max_viewers": _cap(services),
        "events_url": _events_url(request, back), "flash": take_flash(request), **live.row_context(request)})


async def endpoint_page(request: Request) -> Response:
    """An endpoint's page: its settings, and its Connections tab (live and past sessions)."""
    user = await require_user(request)
    services = services_of(request)
    endpoint_id = request.path_params["endpoint_id"]
    endpoint, facts = await trio.to_thread.run_sync(visible_endpoint, services, user, endpoint_id)
    if endpoint is None or facts is None:
        return await not_found(request)  # the same answer whether it exists or not
    tab = "settings" if request.query_params.get("tab") == "settings" else "connections"
    page = page_number(request.query_params.get("page"))
    path = request.url.path
    context: dict[str, Any] = {"endpoint": endpoint, "tab": tab, "now": services.now(), "max_viewers": _cap(services),
                               "decided": quick_access(facts, services.now()),
                               "flash": take_flash(request), **live.row_context(request)}
    if tab == "connections":
        audience = await live.audience_for(services, user, endpoint_id)

        def load() -> tuple[list[dict[str, Any]], int]:
            rows, total = services.audit_reader.sessions(live=False, endpoint_id=endpoint_id, limit=PAGE_SIZE,
                                                         offset=(page - 1) * PAGE_SIZE)
            return _history_rows(services, audience, rows), total

        past, total = await trio.to_thread.run_sync(load)
        pager = _pages(total, page)
        back = path if pager["page"] == 1 else f"{path}?page={pager['page']}"
        context.update({
            "rows": live.live_rows(services, audience), "past": past, "pager": pager, "back": back,
            "events_url": _events_url(request, back, endpoint_id),
            "prev_url": (path if pager["page"] == 2 else f"{path}?page={pager['page'] - 1}")
            if pager["page"] > 1 else None,
            "next_url": f"{path}?page={pager['page'] + 1}" if pager["page"] < pager["pages"] else None})
    return await render(request, "endpoint.html", context)


# --- Terminate -------------------------------------------------------------------------------------


async def terminate(request: Request) -> Response:
    """``POST /sessions/{id}/terminate`` (CSRF-checked form): administrators only. Without
    ``confirmed=yes`` (a browser without JavaScript, which shows no confirm dialog) it first
    shows a confirmation page. ``Accept: application/json`` gets JSON instead of a redirect."""
    user = await require_user(request)
    services = services_of(request)
    session_id = request.path_params["session_id"][:128]
    form = await request.form()
    back = safe_path(form.get("next"))
    json_answer = wants_json(request)
    live_sessions.check_terminate(services, user, session_id, via="dashboard")
    summary = live_sessions.live_summary(services, session_id)
    what = f"{summary.controller.name}'s session on {summary.endpoint.name}" if summary else "the session"
    if form.get("confirmed") != "yes" and not json_answer:
        return await render(request, "dashboard_terminate.html", {
            "summary": summary, "session_id": session_id, "back": back, "now": services.now()})
    try:
        answer = await live_sessions.terminate(services, session_id, user)
    except (EngineNotRunning, LoopClosed):
        answer = None
    if isinstance(answer, Accepted):
        status, result = 200, {"result": "terminated", "session_id": session_id}
        message = f"Terminated {what}: everyone in it was disconnected."
    elif isinstance(answer, Refused):
        status = 404 if answer.reason.value == "unknown_session" else 409
        result = {"error": answer.reason.value, "detail": answer.detail or "the session has already ended"}
        message = "That session is no longer live: it has ended, or never existed."
    else:
        status, result = 503, {"error": "engine_unavailable", "detail": "the engine did not answer"}
        message = "The gateway's engine did not answer: the session may still be live. Try again."
    if json_answer:
        return JSONResponse({**result, "message": message}, status_code=status)
    flash(request, message)
    return RedirectResponse(back, status_code=303)


routes = [
    Route("/", home, methods=["GET"], name="home"),
    Route("/connections", connections, methods=["GET"], name="connections"),
    Route("/endpoints/{endpoint_id}", endpoint_page, methods=["GET"], name="endpoint_page"),
    Route("/sessions/{session_id}/terminate", terminate, methods=["POST"], name="session_terminate"),
    *live.routes,  # GET /events/sessions
]

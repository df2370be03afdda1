"""Requests for access and the approvers' queue: the pages (issue 6, docs/access.md).

- ``GET /access-requests``: the signed-in user's requests, each with its state as it is now;
- ``GET /access-requests/new?endpoint=ID``: the access request screen (Quick Access opens it
  when an endpoint requires approval and the user has none); ``POST /access-requests`` files it;
- ``GET /access-requests/{id}``: one request, for its requester, the endpoint's approvers and
  administrators (read-only); the requester may cancel it while it is pending, an approver
  (never the requester: four eyes) approves or denies it;
- ``GET /approvals``: an approver's queue, pending requests and pending extensions;
  ``POST /access-requests/{id}/decide`` with ``decision=approve|deny`` (extensions: their own
  page family, pages/extensions.py).

The repositories (`approvals`, `approvers`) store, the pure functions of `engine/access.py`
decide; this module only asks, shows the answer, and audits every request, decision and
refusal. Times are read from ``services.now()`` (the engine's clock), and shown and typed in
the server's time zone. Every POST answers JSON when the client accepts JSON (``fetch`` with
the ``X-CSRF-Token`` header), and a page or a 303 redirect otherwise.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from dashboard.repositories.approvals import AccessRequest, Extension
from dashboard.security.auth import require_user
from dashboard.services import Services, services_of
from dashboard.services.live_sessions import live_sessions_of
from dashboard.services.starts import visible_endpoint
from dashboard.web.http import flash, not_found, read_input, safe_path, take_flash, wants_json
from dashboard.web.templating import render
from engine import access as rules
from engine.access import ApprovalState
from engine.messages import Reason, Refused, User

log = logging.getLogger(__name__)

DEFAULT_DURATION_MINUTES = 60
MAX_DURATION_MINUTES = rules.MAX_REQUEST_SECONDS // 60
TIME_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S")
INPUT_FORMAT = "%Y-%m-%dT%H:%M"  # what an <input type="datetime-local"> shows and sends

# HTTP status of each refusal a page shows
STATUS = {
    Reason.NOT_APPROVER: 403,
    Reason.OWN_REQUEST: 403,
    Reason.NOT_CONTROLLER: 403,
    Reason.NO_ACCESS: 403,
    Reason.NO_WEB_SESSION: 403,
    Reason.ALREADY_DECIDED: 409,
    Reason.NO_DEADLINE: 409,
    Reason.UNKNOWN_SESSION: 404,
    Reason.UNKNOWN_MESSAGE: 404,
}

STATE_LABELS = {
    ApprovalState.PENDING: "awaiting approval",
    ApprovalState.APPROVED: "approved",
    ApprovalState.DENIED: "denied",
    ApprovalState.EXPIRED: "expired",
}


# --- small helpers -------------------------------------------------------------------------------


def field_text(data: dict[str, Any], name: str, limit: int = 2000) -> str:
    value = data.get(name)
    return value[:limit] if isinstance(value, str) else ""


def time_input(value: float) -> str:
    """`value` as an <input type="datetime-local"> shows it, in the server's time zone."""
    return time.strftime(INPUT_FORMAT, time.localtime(value))


def parse_time(value: Any) -> float | None:
    """A point in time from a form (date and time, in the server's time zone) or from JSON
    (seconds since the epoch). None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    for fmt in TIME_FORMATS:
        try:
            return time.mktime(time.strptime(text, fmt))
        except (ValueError, OverflowError):
            continue
    return None


def minutes_of(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and math.isfinite(value) and value == int(value):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def is_given(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def parse_window(data: dict[str, Any], now: float) -> tuple[float, float] | Refused:
    """The window a request form asks for: a start (empty: now) and an end, or a duration in
    minutes from the start. The rules of `engine.access.check_request` come after."""
    start = now
    if is_given(data.get("window_start")):
        parsed = parse_time(data.get("window_start"))
        if parsed is None:
            return Refused(Reason.BAD_WINDOW, "the start is not a date and time")
        start = parsed
    if is_given(data.get("window_end")):
        end = parse_time(data.get("window_end"))
        if end is None:
            return Refused(Reason.BAD_WINDOW, "the end is not a date and time")
        return start, end
    if is_given(data.get("duration")):
        minutes = minutes_of(data.get("duration"))
        if minutes is None or not 1 <= minutes <= MAX_DURATION_MINUTES:
            return Refused(Reason.BAD_WINDOW, f"the duration is 1 to {MAX_DURATION_MINUTES} minutes")
        return start, start + minutes * 60
    return Refused(Reason.BAD_WINDOW, "give an end or a duration")


def clock_text(value: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def zone_name() -> str:
    return time.strftime("%Z") or "server time"


def request_json(found: AccessRequest, now: float) -> dict[str, Any]:
    state = found.effective_state(now)
    return {"id": found.id, "user": {"id": found.user.id, "name": found.user.name},
            "endpoint": {"id": found.endpoint_id, "name": found.endpoint_name}, "reason": found.reason,
            "window_start": found.window_start, "window_end": found.window_end, "state": state.value,
            "stored_state": found.state.value, "requested_at": found.requested_at,
            "decided_at": found.decided_at, "approver": found.approver_name}


def extension_json(ext: Extension) -> dict[str, Any]:
    return {"id": ext.id, "request_id": ext.request_id, "session_id": ext.session_id,
            "user": {"id": ext.user.id, "name": ext.user.name},
            "endpoint": {"id": ext.endpoint_id, "name": ext.endpoint_name}, "until": ext.until,
            "reason": ext.reason, "state": ext.state.value, "requested_at": ext.requested_at,
            "current_end": ext.current_end}


def refusal_json(refused: Refused, status: int | None = None) -> JSONResponse:
    return JSONResponse({"error": refused.reason.value, "detail": refused.detail},
                        status_code=status or STATUS.get(refused.reason, 400))


def _request_audit(found: AccessRequest) -> dict[str, Any]:
    """Who asked for what: the detail every audit row about a request carries."""
    return {"request_id": found.id, "endpoint_id": found.endpoint_id, "endpoint_name": found.endpoint_name,
            "requester_id": found.user.id, "requester": found.user.name, "window_start": found.window_start,
            "window_end": found.window_end, "request_reason": found.reason}


def extension_audit(ext: Extension) -> dict[str, Any]:
    return {"extension_id": ext.id, "request_id": ext.request_id, "endpoint_id": ext.endpoint_id,
            "endpoint_name": ext.endpoint_name, "requester_id": ext.user.id, "requester": ext.user.name,
            "current_end": ext.current_end, "until": ext.until, "request_reason": ext.reason}


def _expire(services: Services, now: float) -> None:
    """Mark requests past their window expired, so that the stored state stays honest. Blocking."""
    count = services.approvals.expire_requests(now)
    if count:
        log.info("%d requests for access expired", count)


# --- the user's requests ----------------------------------------------------------------------------


async def list_page(request: Request) -> Response:
    """The signed-in user's requests for access, newest first."""
    user = await require_user(request)
    services = services_of(request)
    now = services.now()

    def load() -> list[AccessRequest]:
        _expire(services, now)
        return services.approvals.requests_of(user)

    found = await trio.to_thread.run_sync(load)
    if wants_json(request):
        return JSONResponse({"requests": [request_json(r, now) for r in found], "now": now})
    return await render(request, "requests.html", {
        "requests": found, "now": now, "labels": STATE_LABELS, "zone": zone_name(), "flash": take_flash(request)})


async def _form_context(services: Services, user: User, endpoint_id: str, now: float) -> dict[str, Any] | None:
    """What the request screen shows for `endpoint_id`, or None when the user may not see it
    (the same answer whether the endpoint exists or not)."""

    def load() -> dict[str, Any] | None:
        endpoint, facts = visible_endpoint(services, user, endpoint_id) if endpoint_id else (None, None)
        if endpoint is None or facts is None:
            return None
        awaiting = [a for a in facts.requests if a.is_awaiting(now)]
        return {"endpoint": endpoint, "requires_approval": facts.requires_approval,
                "awaiting_id": awaiting[-1].id if awaiting else None,
                "decision": rules.may_start(facts, now)}

    return await trio.to_thread.run_sync(load)


def _empty_form(now: float) -> dict[str, str]:
    return {"window_start": time_input(now), "window_end": "", "duration": str(DEFAULT_DURATION_MINUTES),
            "reason": ""}


async def _render_form(request: Request, context: dict[str, Any], form: dict[str, Any], now: float, *,
                       refused: Refused | None = None, status_code: int = 200) -> Response:
    return await render(request, "request_new.html", {
        **context, "form": form, "refused": refused, "now": now, "zone": zone_name(),
        "max_reason": rules.MAX_REASON_CHARS, "max_minutes": MAX_DURATION_MINUTES}, status_code=status_code)


async def new_page(request: Request) -> Response:
    """The access request screen for one endpoint: its name, the window, the reason."""
    user = await require_user(request)
    services = services_of(request)
    now = services.now()
    endpoint_id = request.query_params.get("endpoint", "")[:128]
    context = await _form_context(services, user, endpoint_id, now)
    if context is None:
        return await not_found(request)
    return await _render_form(request, context, _empty_form(now), now)


async def create(request: Request) -> Response:
    """``POST /access-requests``: file a request for access (engine.access.check_request)."""
    user = await require_user(request)
    services = services_of(request)
    now = services.now()
    data = await read_input(request)
    json_answer = wants_json(request)
    endpoint_id = field_text(data, "endpoint", 128)
    context = await _form_context(services, user, endpoint_id, now)
    if context is None:
        services.audit_event("access_request_refused", user, None, endpoint_id=endpoint_id,
                             reason=Reason.NO_ACCESS.value, detail="no such endpoint, or no role on it")
        if json_answer:
            return JSONResponse({"error": "not_found", "detail": "no such endpoint"}, status_code=404)
        return await not_found(request)
    endpoint = context["endpoint"]
    reason = field_text(data, "reason", rules.MAX_REASON_CHARS + 1000)
    form = {"window_start": field_text(data, "window_start", 64), "window_end": field_text(data, "window_end", 64),
            "duration": "" if data.get("duration") is None else str(data.get("duration"))[:16],
            "reason": reason}
    decision = context["decision"]
    window = parse_window(data, now)
    answer: AccessRequest | Refused
    if isinstance(decision, Refused) and decision.reason in (Reason.NO_ACCESS, Reason.NO_WEB_SESSION):
        # an approval never lifts a role or a profile: asking for one would not help
        answer = Refused(decision.reason, f"an approval would not help: {decision.detail}")
    elif isinstance(window, Refused):
        answer = window
    else:
        answer = await trio.to_thread.run_sync(
            services.approvals.create_request, user, endpoint_id, window[0], window[1], reason, now)
    if isinstance(answer, Refused):
        services.audit_event("access_request_refused", user, None, endpoint_id=endpoint.id, endpoint_name=endpoint.name,
                             reason=answer.reason.value, detail=answer.detail)
        if json_answer:
            return refusal_json(answer)
        return await _render_form(request, context, form, now, refused=answer,
                                  status_code=STATUS.get(answer.reason, 400))
    services.audit_event("access_requested", user, None, **_request_audit(answer))
    await live_sessions_of(request).password_changed(user, endpoint.id)  # Waiting for Approval
    if json_answer:
        return JSONResponse({"request": request_json(answer, now)}, status_code=201)
    flash(request, f"Your request for access to {endpoint.name} is filed: it awaits an approver's decision.")
    return RedirectResponse(request.url_for("access_request", request_id=answer.id).path, status_code=303)


# --- one request ---------------------------------------------------------------------------------------


def _load_request(services: Services, user: User, request_id: str, now: float
                  ) -> tuple[AccessRequest, bool, list[Extension]] | None:
    """The request, whether `user` approves its endpoint, and its extensions; None when `user`
    may not see it (neither its requester, nor an approver, nor an administrator) or it does
    not exist. Blocking."""
    _expire(services, now)
    found = services.approvals.request(request_id)
    if found is None:
        return None
    approver = found.endpoint_id in services.approvers.approver_of(user)
    if not (found.user.id == user.id or approver or user.is_admin):
        return None
    return found, approver, services.approvals.extensions_of_request(request_id)


async def _render_request(request: Request, user: User, loaded: tuple[AccessRequest, bool, list[Extension]],
                          now: float, *, refused: Refused | None = None, status_code: int = 200) -> Response:
    found, approver, extensions = loaded
    state = found.effective_state(now)
    own = found.user.id == user.id
    pending = state is ApprovalState.PENDING
    return await render(request, "request.html", {
        "req": found, "state": state, "label": STATE_LABELS[state], "own": own, "approver": approver,
        "may_decide": approver and not own and pending, "may_cancel": own and pending,
        "is_open": found.approval.is_open(now) and state is ApprovalState.APPROVED,
        "not_yet_open": state is ApprovalState.APPROVED and now < found.window_start,
        "withdrawn": found.state is ApprovalState.EXPIRED and found.decided_at is not None
        and found.approver_name is None,
        "decided_as": None if found.approver_name is None else
        "denied" if found.state is ApprovalState.DENIED else "approved",
        "extensions": extensions, "now": now, "zone": zone_name(), "labels": STATE_LABELS,
        "refused": refused, "flash": take_flash(request)}, status_code=status_code)


async def request_page(request: Request) -> Response:
    user = await require_user(request)
    services = services_of(request)
    now = services.now()
    loaded = await trio.to_thread.run_sync(
        _load_request, services, user, request.path_params["request_id"][:128], now)
    if loaded is None:
        if wants_json(request):
            return JSONResponse({"error": "not_found", "detail": "no such request"}, status_code=404)
        return await not_found(request, "request")
    if wants_json(request):
        found, _, extensions = loaded
        return JSONResponse({"request": request_json(found, now), "extensions": [extension_json(e) for e in extensions],
                             "now": now})
    return await _render_request(request, user, loaded, now)


async def cancel(request: Request) -> Response:
    """The requester withdraws a pending request."""
    user = await require_user(request)
    services = services_of(request)
    now = services.now()
    request_id = request.path_params["request_id"][:128]
    found = await trio.to_thread.run_sync(services.approvals.request, request_id)
    if found is None or found.user.id != user.id:
        if wants_json(request):
            return JSONResponse({"error": "not_found", "detail": "no such request of yours"}, status_code=404)
        return await not_found(request, "request")
    done = await trio.to_thread.run_sync(services.approvals.cancel_request, request_id, user, now)
    if done:
        services.audit_event("access_request_cancelled", user, None, **_request_audit(found))
        await live_sessions_of(request).password_changed(user, found.endpoint_id)
        message = f"Your request for access to {found.endpoint_name} is withdrawn."
    else:
        services.audit_event("access_request_cancel_refused", user, None, request_id=found.id,
                             reason=Reason.ALREADY_DECIDED.value, detail="this request is no longer pending")
        message = "This request is no longer pending: nothing to withdraw."
    if wants_json(request):
        return JSONResponse({"result": "cancelled" if done else "refused", "message": message},
                            status_code=200 if done else 409)
    flash(request, message)
    return RedirectResponse(request.url_for("access_request", request_id=found.id).path, status_code=303)


# --- decisions -------------------------------------------------------------------------------------


def decision_of(data: dict[str, Any]) -> bool | None:
    value = field_text(data, "decision", 16)
    return True if value == "approve" else False if value == "deny" else None


async def decide(request: Request) -> Response:
    """``POST /access-requests/{id}/decide``: an approver approves or denies a pending request."""
    user = await require_user(request)
    services = services_of(request)
    now = services.now()
    request_id = request.path_params["request_id"][:128]
    data = await read_input(request)
    json_answer = wants_json(request)
    approve = decision_of(data)
    found = await trio.to_thread.run_sync(services.approvals.request, request_id)
    if found is None:
        services.audit_event("decision_refused", user, None, request_id=request_id,
                             reason=Reason.UNKNOWN_MESSAGE.value, detail="no such request")
        if json_answer:
            return JSONResponse({"error": "not_found", "detail": "no such request"}, status_code=404)
        return await not_found(request, "request")
    answer: AccessRequest | Refused
    if approve is None:
        answer = Refused(Reason.MALFORMED, "the decision is approve or deny")
    else:
        answer = await trio.to_thread.run_sync(services.approvals.decide, request_id, user, approve, now)
    if isinstance(answer, Refused):
        services.audit_event("decision_refused", user, None, **_request_audit(found),
                             decision=field_text(data, "decision", 16), reason=answer.reason.value, detail=answer.detail)
        if json_answer:
            return refusal_json(answer)
        status = STATUS.get(answer.reason, 400)
        loaded = await trio.to_thread.run_sync(_load_request, services, user, request_id, now)
        if loaded is None:  # not theirs to see: say why the decision was refused, nothing more
            return await render(request, "error.html", {"title": "Decision refused", "message": answer.detail},
                                status_code=status)
        return await _render_request(request, user, loaded, now, refused=answer, status_code=status)
    kind = "access_approved" if approve else "access_denied"
    services.audit_event(kind, user, None, **_request_audit(answer))
    await live_sessions_of(request).password_changed(answer.user, answer.endpoint_id)
    if json_answer:
        return JSONResponse({"request": request_json(answer, now)})
    verb = "Approved" if approve else "Denied"
    flash(request, f"{verb}: {answer.user.name}'s request for access to {answer.endpoint_name}.")
    return RedirectResponse(safe_path(data.get("next"), request.url_for("approvals").path), status_code=303)


# --- the approvers' queue -----------------------------------------------------------------------------


async def render_approvals(request: Request, user: User, now: float, *, refused: Refused | None = None,
                            status_code: int = 200) -> Response:
    services = services_of(request)

    def load() -> tuple[list[AccessRequest], list[Extension], bool]:
        _expire(services, now)
        return (services.approvals.pending_for(user, now), services.approvals.extensions_for(user, now),
                bool(services.approvers.approver_of(user)))

    pending, extensions, approves = await trio.to_thread.run_sync(load)
    if wants_json(request) and refused is None:
        return JSONResponse({"requests": [request_json(r, now) for r in pending],
                             "extensions": [extension_json(e) for e in extensions], "now": now})
    return await render(request, "approvals.html", {
        "pending": pending, "extensions": extensions, "approves": approves, "now": now, "zone": zone_name(),
        "refused": refused, "flash": take_flash(request)}, status_code=status_code)


async def approvals_page(request: Request) -> Response:
    user = await require_user(request)
    return await render_approvals(request, user, services_of(request).now())


routes = [
    Route("/access-requests", list_page, methods=["GET"], name="access_requests"),
    Route("/access-requests", create, methods=["POST"], name="access_request_create"),
    Route("/access-requests/new", new_page, methods=["GET"], name="access_request_new"),
    Route("/access-requests/{request_id}", request_page, methods=["GET"], name="access_request"),
    Route("/access-requests/{request_id}/cancel", cancel, methods=["POST"], name="access_request_cancel"),
    Route("/access-requests/{request_id}/decide", decide, methods=["POST"], name="access_request_decide"),
    Route("/approvals", approvals_page, methods=["GET"], name="approvals"),
]

"""Extensions of an approval: ``POST /sessions/{session_id}/extension``, the controller of a live
session started under an approval asks to move its end; ``GET /extensions/{id}``, that
extension's state (JSON); ``POST /extensions/{id}/decide``, an approver (from the queue of
pages/requests.py) approves it (the approval's window, and the deadline of every live session
under it, move to the new end) or denies it."""

from __future__ import annotations

from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from dashboard.pages.requests import (
    MAX_DURATION_MINUTES, STATUS, clock_text, decision_of, extension_audit, extension_json, field_text, is_given,
    minutes_of, parse_time, refusal_json, render_approvals, zone_name,
)
from dashboard.repositories.approvals import AccessRequest, Extension
from dashboard.security.auth import require_user
from dashboard.services import services_of
from dashboard.services.live_sessions import live_sessions_of
from dashboard.web.http import flash, not_found, read_input, safe_path, wants_json
from engine import access as rules
from engine.messages import Reason, Refused


def parse_until(data: dict[str, Any], current_end: float) -> float | Refused:
    """The new end an extension asks for: `until` (a date and time, or seconds since the
    epoch), or `minutes` more than the approval's current end."""
    if is_given(data.get("until")):
        until = parse_time(data.get("until"))
        if until is None:
            return Refused(Reason.BAD_WINDOW, "the new end is not a date and time")
        return until
    if is_given(data.get("minutes")):
        minutes = minutes_of(data.get("minutes"))
        if minutes is None or not 1 <= minutes <= MAX_DURATION_MINUTES:
            return Refused(Reason.BAD_WINDOW, f"an extension adds 1 to {MAX_DURATION_MINUTES} minutes")
        return current_end + minutes * 60
    return Refused(Reason.BAD_WINDOW, "give a new end or a number of minutes")


async def ask_extension(request: Request) -> Response:
    """``POST /sessions/{session_id}/extension``: the session's controller asks to move the end
    of the approval it runs under (engine.access.may_request_extension)."""
    user = await require_user(request)
    services = services_of(request)
    now = services.now()
    session_id = request.path_params["session_id"][:128]
    data = await read_input(request)
    json_answer = wants_json(request)
    under = await live_sessions_of(request).under_approval(session_id)  # whichever node runs it
    controller, approval_id = under if under is not None else (None, None)
    approval: AccessRequest | None = None
    answer: Extension | Refused
    if controller is None:
        answer = Refused(Reason.UNKNOWN_SESSION, "this session is not live (it ended, or never existed)")
    elif controller.id != user.id:
        answer = Refused(Reason.NOT_CONTROLLER, "only the session's controller may ask to extend it")
    elif not approval_id:
        answer = Refused(Reason.NO_DEADLINE, "this session runs under no approval: it has no end to move")
    else:
        approval = await trio.to_thread.run_sync(services.approvals.request, approval_id)
        until = parse_until(data, approval.window_end) if approval is not None else \
            Refused(Reason.NO_DEADLINE, "the approval this session runs under no longer exists")
        if isinstance(until, Refused):
            answer = until
        else:
            answer = await trio.to_thread.run_sync(
                services.approvals.request_extension, user, approval_id, session_id, until,
                field_text(data, "reason", rules.MAX_REASON_CHARS + 1000), now)
    back = f"/sessions/{session_id}"
    if isinstance(answer, Refused):
        services.audit_event("extension_refused", user, session_id, reason=answer.reason.value, detail=answer.detail,
                             request_id=approval.id if approval is not None else None)
        if json_answer:
            return JSONResponse({"error": answer.reason.value, "detail": answer.detail,
                                 "message": f"Not asked: {answer.detail}."},
                                status_code=STATUS.get(answer.reason, 400))
        flash(request, f"Extension not asked: {answer.detail}.")
        target = request.url_for("access_request", request_id=approval.id).path if approval is not None else back
        return RedirectResponse(safe_path(data.get("next"), target), status_code=303)
    services.audit_event("extension_requested", user, session_id, **extension_audit(answer))
    message = (f"Asked to extend to {clock_text(answer.until)} ({zone_name()}): "
               "an approver will decide.")
    if json_answer:
        return JSONResponse({"result": "requested", "extension": extension_json(answer), "message": message},
                            status_code=201)
    flash(request, message)
    return RedirectResponse(safe_path(data.get("next"),
                                       request.url_for("access_request", request_id=answer.request_id).path),
                            status_code=303)


async def extension_state(request: Request) -> Response:
    """``GET /extensions/{id}`` (JSON): an extension's state, for its requester (the session page
    follows its own request), the endpoint's approvers and administrators."""
    user = await require_user(request)
    services = services_of(request)

    def load() -> Extension | None:
        found = services.approvals.extension(request.path_params["extension_id"][:128])
        if found is None:
            return None
        if found.user.id == user.id or user.is_admin or found.endpoint_id in services.approvers.approver_of(user):
            return found
        return None

    found = await trio.to_thread.run_sync(load)
    if found is None:
        return JSONResponse({"error": "not_found", "detail": "no such extension request"}, status_code=404)
    return JSONResponse({"extension": extension_json(found)})


async def decide_extension(request: Request) -> Response:
    """``POST /extensions/{id}/decide``: an approver approves (the approval's window, and the
    deadline of every live session under it, move to the new end) or denies an extension."""
    user = await require_user(request)
    services = services_of(request)
    now = services.now()
    extension_id = request.path_params["extension_id"][:128]
    data = await read_input(request)
    json_answer = wants_json(request)
    approve = decision_of(data)
    found = await trio.to_thread.run_sync(services.approvals.extension, extension_id)
    if found is None:
        services.audit_event("decision_refused", user, None, extension_id=extension_id,
                             reason=Reason.UNKNOWN_MESSAGE.value, detail="no such extension request")
        if json_answer:
            return JSONResponse({"error": "not_found", "detail": "no such extension request"}, status_code=404)
        return await not_found(request, "extension request")
    answer: Extension | Refused
    if approve is None:
        answer = Refused(Reason.MALFORMED, "the decision is approve or deny")
    else:
        answer = await trio.to_thread.run_sync(services.approvals.decide_extension, extension_id, user, approve, now)
    if isinstance(answer, Refused):
        services.audit_event("decision_refused", user, found.session_id, **extension_audit(found),
                             decision=field_text(data, "decision", 16), reason=answer.reason.value, detail=answer.detail)
        if json_answer:
            return refusal_json(answer)
        return await render_approvals(request, user, now, refused=answer, status_code=STATUS.get(answer.reason, 400))
    moved: list[str] = []
    if approve:
        moved = await live_sessions_of(request).extend(answer.request_id, answer.until, answer.user.id,
                                                       answer.endpoint_id)
        services.audit_event("extension_approved", user, answer.session_id, **extension_audit(found),
                             sessions=moved)
    else:
        services.audit_event("extension_denied", user, answer.session_id, **extension_audit(found))
    if json_answer:
        return JSONResponse({"extension": extension_json(answer), "sessions": moved})
    if approve:
        sessions = (" No live session runs under it." if not moved else
                    " 1 live session now ends then." if len(moved) == 1 else
                    f" {len(moved)} live sessions now end then.")
        flash(request, f"Approved: {answer.user.name}'s access to {answer.endpoint_name} now ends at "
                        f"{clock_text(answer.until)}.{sessions}")
    else:
        flash(request, f"Denied: {answer.user.name}'s extension on {answer.endpoint_name}.")
    return RedirectResponse(safe_path(data.get("next"), request.url_for("approvals").path), status_code=303)


routes = [
    Route("/extensions/{extension_id}", extension_state, methods=["GET"], name="extension"),
    Route("/extensions/{extension_id}/decide", decide_extension, methods=["POST"], name="extension_decide"),
    Route("/sessions/{session_id}/extension", ask_extension, methods=["POST"], name="session_extension"),
]

"""The session pages: ``GET /connect/{endpoint_id}`` (the page a launch opens: the live terminal,
which starts the session) and ``GET /sessions/{session_id}`` (the session page; with
``?share=TOKEN``, a share link, it first shows the join dialog, which opens the session in a new
window).
"""

from __future__ import annotations

import trio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from dashboard.gateway import wire
from dashboard.gateway.files import files_offer
from dashboard.security import share
from dashboard.security.auth import require_user
from dashboard.services import services_of
from dashboard.services.live_sessions import live_sessions_of
from dashboard.services.password_offer import password_offer
from dashboard.services.starts import launches_of
from dashboard.web.templating import render
from engine import policy
from engine.messages import Reason


# --- pages -------------------------------------------------------------------------------------


async def _page_refused(request: Request, title: str, message: str, status: int, reason: str) -> Response:
    return await render(request, "error.html", {"title": title, "message": message, "reason": reason},
                        status_code=status)


async def session_page(request: Request) -> Response:
    """The session page. With ``?share=TOKEN``: the join dialog (the session opens in a new
    window); without: the live session at once (a dashboard join, or the controller's return)."""
    user = await require_user(request)
    services = services_of(request)
    session_id = request.path_params["session_id"]
    token = request.query_params.get("share")
    if token is not None and share.check_token(services, token, session_id) is not None:
        services.audit_event("share_link_refused", user, None, reason=share.ShareProblem.INVALID.value)
        return await _page_refused(request, "Invalid share link",
                                   "This share link is not valid: it was altered, or it is not a cosession "
                                   "share link. Ask for the link again.", 403, "invalid_share_link")
    directory = live_sessions_of(request)
    endpoint, controller = directory.parties(session_id)
    if endpoint is None or controller is None:
        return await _page_refused(request, "Session ended",
                                   "This session has ended (or never existed). A share link works only "
                                   "while its session is live.", 410, "session_ended")
    is_controller = controller.id == user.id
    if not is_controller and not await trio.to_thread.run_sync(services.access.may_see, user, endpoint.id):
        services.audit_event("share_link_refused", user, session_id, reason=Reason.NO_ACCESS.value)
        return await _page_refused(request, "No access",
                                   f"You have no access to the endpoint {endpoint.name}, so you "
                                   "cannot join its sessions. Ask an administrator for access.", 403, "no_access")
    config = {
        "mode": "join" if token is not None else "session",
        "session_id": session_id,
        "ws_url": f"/ws/sessions/{session_id}",
        "session_url": f"/sessions/{session_id}",
        "share": token,
        "endpoint": {"id": endpoint.id, "name": endpoint.name, "protocol": endpoint.protocol.value},
        "controller": wire.user_json(controller),
        "you": wire.user_json(user),
        "max_viewers": policy.viewer_cap(services.settings.engine.max_viewers),
        "desktop_module": request.url_for("static", path="desktop.js").path,
    }
    if is_controller:  # the controller coming back: its own tools (a viewer's page never has them)
        under = await directory.under_approval(session_id)  # the session may run on another node
        config["approval_id"] = under[1] if under is not None else None
        stored = await trio.to_thread.run_sync(services.endpoints.get, endpoint.id)
        config["send_password"] = None if stored is None else await trio.to_thread.run_sync(
            password_offer, services, user, stored)
        config["files"] = await trio.to_thread.run_sync(files_offer, services, user, endpoint)
    summary = services.engine.session(session_id)  # None for a moment after the start
    return await render(request, "session.html", {
        "config": config, "summary": summary, "endpoint_name": endpoint.name,
        "joint_session": (summary.endpoint if summary else endpoint).joint_session, "is_controller": is_controller,
    })


async def start_page(request: Request) -> Response:
    """The page a launch opens (``?launch=TOKEN``, from pages/launcher.py): the live
    terminal, which starts the session with that launch. Without a launch: the launcher."""
    user = await require_user(request)
    services = services_of(request)
    endpoint_id = request.path_params["endpoint_id"]
    token = request.query_params.get("launch")
    if token is None:
        return RedirectResponse(request.url_for("launcher", endpoint_id=endpoint_id).path, status_code=303)
    launch = launches_of(request).peek(token, user, endpoint_id, services.now())
    endpoint = await trio.to_thread.run_sync(services.endpoints.get, endpoint_id) if launch is not None else None
    if launch is None or endpoint is None:
        return await _page_refused(request, "Launch expired", "This launch was used already or has expired. "
                                   "Start the session again from the launcher.", 410, "launch_expired")
    parameters = launch.parameters
    config = {
        "mode": "start",
        "ws_url": f"/ws/endpoints/{endpoint_id}/start",
        "launch": token,
        "cols": parameters.cols, "rows": parameters.rows,
        "endpoint": {"id": endpoint.id, "name": endpoint.name, "protocol": endpoint.protocol.value},
        "controller": wire.user_json(user),
        "you": wire.user_json(user),
        "max_viewers": policy.viewer_cap(services.settings.engine.max_viewers),
        "approval_id": launch.grant.approval_id or None,
        "send_password": await trio.to_thread.run_sync(password_offer, services, user, endpoint),
        "files": await trio.to_thread.run_sync(files_offer, services, user, endpoint.spec),
        "desktop_module": request.url_for("static", path="desktop.js").path,
    }
    return await render(request, "session.html", {
        "config": config, "summary": None, "endpoint_name": endpoint.name, "endpoint": endpoint,
        "joint_session": endpoint.joint_session, "is_controller": True,
    }, headers={"Cache-Control": "no-store"})

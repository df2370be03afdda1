"""The Session Launcher and Quick Access: how a user starts a session on an endpoint.

- ``GET /launch/{endpoint_id}``: the launcher. Parameters of the session (terminal type and
  size, a new tab or a new window), credentials when the endpoint stores none, a token from the
  user's authenticator when their access profile requires MFA, and the Access button. When the
  user may not start (approval required or pending, or no web session at all) it says why and
  links to what helps.
- ``POST /launch/{endpoint_id}``: the Access button. Checks everything (`authorise_start`:
  the access model's `may_start`, then the TOTP token, which is spent), remembers the
  parameters, and answers a one-time **launch** URL, ``/connect/{endpoint_id}?launch=TOKEN``,
  which the launcher opens in a new tab or window.
- ``POST /quick/{endpoint_id}``: Quick Access, one click on an endpoint's row; exactly the
  five outcomes of `engine.access.quick_access`.

The decisions and the launches are services/starts.py's (the start websocket spends the
launch). Every decision is audited: ``start_authorised`` or ``start_refused`` (with the
reason) and ``quick_access`` (with its outcome).
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import NoMatchFound, Route

from dashboard.repositories.endpoints import Endpoint
from dashboard.security.auth import require_user
from dashboard.services import Services, services_of
from dashboard.services.starts import (
    LAUNCH_SECONDS, STARTABLE, Launch, audit_start, authorise_start, launches_of, visible_endpoint,
)
from dashboard.web.http import not_found, wants_json
from dashboard.web.templating import render
from engine import Credentials
from engine import access as rules
from engine.access import AccessFacts, LaunchParameters, QuickAccess, QuickOutcome, StartGrant
from engine.messages import EndpointProtocol, Reason, Refused, User

log = logging.getLogger(__name__)


# --- pages ---------------------------------------------------------------------------------------


async def _context(request: Request) -> tuple[Services, User, Endpoint | None, AccessFacts | None]:
    user = await require_user(request)
    services = services_of(request)
    endpoint_id = request.path_params["endpoint_id"]

    endpoint, facts = await trio.to_thread.run_sync(visible_endpoint, services, user, endpoint_id)
    return services, user, endpoint, facts


async def _access_denied(request: Request, endpoint: Endpoint, decided: QuickAccess) -> Response:
    return await render(request, "access_denied.html", {"endpoint": endpoint, "decided": decided}, status_code=403)


async def launcher_page(request: Request) -> Response:
    services, user, endpoint, facts = await _context(request)
    if endpoint is None or facts is None:
        return await not_found(request)
    decided = rules.quick_access(facts, services.now())
    if decided.outcome is QuickOutcome.DENIED:
        audit_start(services, user, endpoint, Refused(decided.reason or Reason.NO_ACCESS, decided.detail), "launcher")
        return await _access_denied(request, endpoint, decided)
    parameters = decided.parameters or rules.DEFAULT_PARAMETERS
    return await render(request, "launcher.html", {
        "endpoint": endpoint, "decided": decided, "parameters": parameters, "facts": facts,
        "startable": endpoint.protocol in STARTABLE,
        "needs_credentials": endpoint.protocol is EndpointProtocol.SSH and not endpoint.has_credentials,
        "vnc_password": endpoint.protocol is EndpointProtocol.VNC and not endpoint.has_credentials,
        "rdp_credentials": endpoint.protocol is EndpointProtocol.RDP and not endpoint.has_credentials,
        "terminal_types": rules.TERMINAL_TYPES, "limits": rules.TERMINAL_LIMITS | rules.SCREEN_LIMITS,
        "terminal": endpoint.protocol in (EndpointProtocol.SSH, EndpointProtocol.SYNTHETIC),
    })


def _refusal(status: int, refused: Refused) -> JSONResponse:
    return JSONResponse({"error": refused.reason.value, "detail": refused.detail}, status_code=status)


async def launch(request: Request) -> Response:
    """The Access button: authorise, remember the parameters, answer the launch URL (JSON for
    the launcher's script; a 303 to it for a form posted without script)."""
    services, user, endpoint, facts = await _context(request)
    if endpoint is None or facts is None:
        return _refusal(404, Refused(Reason.NO_ACCESS, "no such endpoint"))
    wants_json_answer = wants_json(request)
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not all(isinstance(v, (str, int)) for v in body.values()):
            return _refusal(400, Refused(Reason.MALFORMED, "send a JSON object of strings and numbers"))
        values: dict[str, Any] = body
    else:
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
    parameters = rules.check_parameters(values)
    if isinstance(parameters, Refused):
        return _refusal(400, parameters)
    if endpoint.protocol not in STARTABLE:
        return _refusal(501, Refused(Reason.ENDPOINT_UNAVAILABLE,
                                     f"{endpoint.protocol.value.upper()} sessions are not available in the browser yet"))
    credentials = None
    if endpoint.protocol is EndpointProtocol.SSH and not endpoint.has_credentials:
        username = str(values.get("username", "")).strip()
        password, key = str(values.get("password", "")), str(values.get("private_key", ""))
        if not username or not (password or key) or len(username) > 256 or len(password) > 4096 \
                or len(key) > 32768:
            return _refusal(400, Refused(Reason.CREDENTIALS_REQUIRED,
                                         "this endpoint stores no credentials: enter a user name and a password or key"))
        credentials = Credentials(username, password or None, key or None,
                                  str(values.get("passphrase", "")) or None)
    elif endpoint.protocol is EndpointProtocol.VNC and not endpoint.has_credentials:
        password = str(values.get("password", ""))  # a VNC server may ask for none
        if len(password) > 4096:
            return _refusal(400, Refused(Reason.MALFORMED, "the password has at most 4096 characters"))
        credentials = Credentials("", password) if password else None
    elif endpoint.protocol is EndpointProtocol.RDP and not endpoint.has_credentials:
        # both may be empty: the server then shows its own logon screen (unless it requires NLA)
        username, password = str(values.get("username", "")).strip(), str(values.get("password", ""))
        if len(username) > 256 or len(password) > 511:
            return _refusal(400, Refused(Reason.MALFORMED, "the user name has at most 256 characters, "
                                         "the password at most 511"))
        credentials = Credentials(username, password or None) if username or password else None
    now = services.now()
    mfa_token = str(values.get("mfa_token", "")) or None
    decided = await trio.to_thread.run_sync(authorise_start, services, user, facts, mfa_token, now)
    audit_start(services, user, endpoint, decided, "launcher")
    if isinstance(decided, Refused):
        return _refusal(403, decided)
    await trio.to_thread.run_sync(services.launch_parameters.save, user, endpoint.id, parameters, now)
    url = _issue(request, user, endpoint, parameters, decided, credentials, now)
    if not wants_json_answer:
        return RedirectResponse(url, status_code=303)
    return JSONResponse({"url": url, "open_in": parameters.open_in,
                         "width": parameters.width, "height": parameters.height})


def _issue(request: Request, user: User, endpoint: Endpoint, parameters: LaunchParameters, grant: StartGrant,
           credentials: Credentials | None, now: float) -> str:
    token = launches_of(request).issue(
        Launch(user.id, endpoint.id, parameters, grant, credentials, now + LAUNCH_SECONDS), now)
    return f"{request.url_for('connect', endpoint_id=endpoint.id).path}?launch={token}"


async def quick_access(request: Request) -> Response:
    """One click on an endpoint's row: exactly `engine.access.quick_access`'s five outcomes."""
    services, user, endpoint, facts = await _context(request)
    if endpoint is None or facts is None:
        return await not_found(request)
    now = services.now()
    decided = rules.quick_access(facts, now)
    services.audit_event("quick_access", user, None, endpoint_id=endpoint.id, endpoint_name=endpoint.name,
                         outcome=decided.outcome.value, reason=decided.reason.value if decided.reason else None)
    match decided.outcome:
        case QuickOutcome.START if endpoint.protocol in STARTABLE:
            assert decided.grant is not None and decided.parameters is not None
            audit_start(services, user, endpoint, decided.grant, "quick_access")
            await trio.to_thread.run_sync(services.launch_parameters.save, user, endpoint.id, decided.parameters, now)
            url = _issue(request, user, endpoint, decided.parameters, decided.grant, None, now)
        case QuickOutcome.START | QuickOutcome.LAUNCHER:
            url = request.url_for("launcher", endpoint_id=endpoint.id).path
        case QuickOutcome.REQUEST:
            url = f"{_url(request, 'access_request_new', '/access-requests/new')}?endpoint={endpoint.id}"
        case QuickOutcome.PENDING:
            url = _url(request, "access_request", f"/access-requests/{decided.request_id}",
                       request_id=decided.request_id)
        case _:
            audit_start(services, user, endpoint, Refused(decided.reason or Reason.NO_ACCESS, decided.detail),
                        "quick_access")
            return await _access_denied(request, endpoint, decided)
    return RedirectResponse(url, status_code=303)


def _url(request: Request, name: str, fallback: str, **params: Any) -> str:
    try:
        return request.url_for(name, **params).path
    except NoMatchFound:  # the requests pages are not mounted (a trimmed app)
        return fallback


routes = [
    Route("/launch/{endpoint_id}", launcher_page, methods=["GET"], name="launcher"),
    Route("/launch/{endpoint_id}", launch, methods=["POST"], name="launch"),
    Route("/quick/{endpoint_id}", quick_access, methods=["POST"], name="quick_access"),
]

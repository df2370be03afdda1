"""The Session Launcher and Quick Access: how a user starts a session on an endpoint.

- ``GET /launch/{endpoint_id}``: the launcher. Parameters of the session (terminal type and
  size for SSH, screen size for VNC and RDP, a new tab or a new window), credentials when the
  endpoint stores none, a token from the user's authenticator when their access profile
  requires MFA, and the Access button. When the user may not start (approval required or
  pending, or no web session at all) it says why and links to what helps.
- ``POST /launch/{endpoint_id}``: the Access button. Checks everything (`authorise_start`:
  the access model's `may_start`, then the TOTP token, which is spent), remembers the
  parameters, and answers a one-time **launch** URL, ``/connect/{endpoint_id}?launch=TOKEN``,
  which the launcher opens in a new tab or window.
- ``POST /quick/{endpoint_id}``: Quick Access, one click on an endpoint's row; exactly the
  five outcomes of `engine.access.quick_access`.

A launch lives in this process's memory for `LAUNCH_SECONDS`, is bound to its user and
endpoint, and is spent by the start websocket (dashboard/gateway.py). It carries the
credentials typed into the launcher, so they never travel in a URL and never reach a page:
only the gateway's endpoint connection sees them. Every decision is audited:
``start_authorised`` or ``start_refused`` (with the reason) and ``quick_access`` (with its
outcome).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from engine import access as rules
from engine.access import AccessFacts, LaunchParameters, QuickAccess, QuickOutcome, StartGrant
from engine.messages import EndpointProtocol, Reason, Refused, User
from engine.connection import Credentials

log = logging.getLogger(__name__)

LAUNCH_SECONDS = 120.0  # from the Access button to the session page's websocket
MAX_LAUNCHES = 10_000  # all users together: a bound on memory, whatever a client does
STARTABLE = (EndpointProtocol.SSH, EndpointProtocol.SYNTHETIC)  # in the browser today (VNC and RDP: later issues)


@dataclass(frozen=True, slots=True, repr=False)
class Launch:
    """An authorised start, waiting for its session page to open the websocket."""

    user_id: str
    endpoint_id: str
    parameters: LaunchParameters
    grant: StartGrant
    credentials: Credentials | None  # typed into the launcher; None: the endpoint's stored ones
    expires_at: float

    def __repr__(self) -> str:  # never the credentials
        return f"Launch(user={self.user_id}, endpoint={self.endpoint_id}, expires_at={self.expires_at})"


class Launches:
    """The launches of this process, by token. Used only on the trio loop (no lock needed)."""

    def __init__(self) -> None:
        self._by_token: dict[str, Launch] = {}

    def issue(self, launch: Launch, now: float) -> str:
        self._prune(now)
        if len(self._by_token) >= MAX_LAUNCHES:
            self._by_token.pop(next(iter(self._by_token)))  # the oldest goes
        token = secrets.token_urlsafe(24)
        self._by_token[token] = launch
        return token

    def peek(self, token: str, user: User, endpoint_id: str, now: float) -> Launch | None:
        launch = self._by_token.get(token)
        if launch is None or launch.user_id != user.id or launch.endpoint_id != endpoint_id \
                or launch.expires_at <= now:
            return None
        return launch

    def take(self, token: str, user: User, endpoint_id: str, now: float) -> Launch | None:
        """The launch, spent: a second take of the same token finds nothing."""
        launch = self.peek(token, user, endpoint_id, now)
        if launch is not None:
            del self._by_token[token]
        return launch

    def _prune(self, now: float) -> None:
        for token in [t for t, launch in self._by_token.items() if launch.expires_at <= now]:
            del self._by_token[token]


def launches_of(conn: Any) -> Launches:
    state = conn.app.state
    launches = getattr(state, "launches", None)
    if launches is None:
        launches = state.launches = Launches()
    return launches


# --- the decisions, audited ---------------------------------------------------------------------


def authorise_start(services: Any, user: User, facts: AccessFacts, mfa_token: str | None,
                    now: float, mfa_done: bool = False) -> Refused | StartGrant:
    """May `user`, of whom `facts` are known, start a session on the endpoint now? The access
    model decides (`engine.access.may_start`); when the profile requires MFA, `mfa_token` must
    be a fresh token of the user's authenticator, which this spends (`mfa_done`: a launch
    already spent one). Blocking (database) only when it checks a token."""
    decided = rules.may_start(facts, now)
    if isinstance(decided, Refused) or not decided.mfa_required or mfa_done:
        return decided
    if not mfa_token:
        return Refused(Reason.MFA_REQUIRED, "your access profile requires a token from your authenticator")
    checked = services.access.mfa_check(user, mfa_token, now)
    return checked if isinstance(checked, Refused) else decided


def audit_start(services: Any, user: User, record: Any, decided: Refused | StartGrant, via: str) -> None:
    """One audit row per start decision: who asked for which endpoint, the outcome, its reason."""
    where = {"endpoint_id": getattr(record, "id", None), "endpoint_name": getattr(record, "name", None), "via": via}
    if isinstance(decided, Refused):
        services.audit_event("start_refused", user, None, reason=decided.reason.value, detail=decided.detail, **where)
    else:
        services.audit_event("start_authorised", user, None, record=decided.record, deadline=decided.deadline,
                             approval_id=decided.approval_id or None, mfa=decided.mfa_required, **where)


def visible_endpoint(services: Any, user: User, endpoint_id: str) -> tuple[Any, AccessFacts | None]:
    """The endpoint's record and the user's facts on it, or (None, None) when it does not exist
    or is not theirs to see (one answer for both). Blocking (database)."""
    facts = services.access.visible_facts(user, endpoint_id)
    return (services.endpoints.get(endpoint_id), facts) if facts is not None else (None, None)


def outcomes(services: Any, user: User, endpoint_ids: list[str]) -> dict[str, QuickAccess]:
    """Quick Access's answer for each endpoint (what a row offers). Blocking (database)."""
    now = services.now()
    return {endpoint_id: rules.quick_access(facts, now)
            for endpoint_id, facts in services.access.facts_for(user, endpoint_ids).items()}


# --- pages ---------------------------------------------------------------------------------------


async def _context(request: Request) -> tuple[Any, User, Any, AccessFacts | None]:
    from dashboard.security.auth import require_user

    user = await require_user(request)
    services = request.app.state.services
    endpoint_id = request.path_params["endpoint_id"]

    record, facts = await trio.to_thread.run_sync(visible_endpoint, services, user, endpoint_id)
    return services, user, record, facts


async def _no_such_endpoint(request: Request) -> Response:
    from dashboard.app import render

    return await render(request, "error.html", {
        "title": "No such endpoint",
        "message": "This endpoint does not exist, or you have no access to it. Ask an administrator "
                   "if you think you should."}, status_code=404)


async def _access_denied(request: Request, record: Any, decided: QuickAccess) -> Response:
    from dashboard.app import render

    return await render(request, "access_denied.html", {"record": record, "decided": decided}, status_code=403)


async def launcher_page(request: Request) -> Response:
    from dashboard.app import render

    services, user, record, facts = await _context(request)
    if record is None or facts is None:
        return await _no_such_endpoint(request)
    decided = rules.quick_access(facts, services.now())
    if decided.outcome is QuickOutcome.DENIED:
        audit_start(services, user, record, Refused(decided.reason or Reason.NO_ACCESS, decided.detail), "launcher")
        return await _access_denied(request, record, decided)
    parameters = decided.parameters or rules.DEFAULT_PARAMETERS
    return await render(request, "launcher.html", {
        "record": record, "decided": decided, "parameters": parameters, "facts": facts,
        "startable": record.protocol in STARTABLE,
        "needs_credentials": record.protocol is EndpointProtocol.SSH and not record.has_credentials,
        "terminal_types": rules.TERMINAL_TYPES, "limits": rules.TERMINAL_LIMITS | rules.SCREEN_LIMITS,
        "terminal": record.protocol in (EndpointProtocol.SSH, EndpointProtocol.SYNTHETIC),
    })


def _refusal(status: int, refused: Refused) -> JSONResponse:
    return JSONResponse({"error": refused.reason.value, "detail": refused.detail}, status_code=status)


async def launch(request: Request) -> Response:
    """The Access button: authorise, remember the parameters, answer the launch URL (JSON for
    the launcher's script; a 303 to it for a form posted without script)."""
    services, user, record, facts = await _context(request)
    if record is None or facts is None:
        return _refusal(404, Refused(Reason.NO_ACCESS, "no such endpoint"))
    wants_json = "application/json" in request.headers.get("accept", "")
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
    if record.protocol not in STARTABLE:
        return _refusal(501, Refused(Reason.ENDPOINT_UNAVAILABLE,
                                     f"{record.protocol.value.upper()} sessions are not available in the browser yet"))
    credentials = None
    if record.protocol is EndpointProtocol.SSH and not record.has_credentials:
        username = str(values.get("username", "")).strip()
        password, key = str(values.get("password", "")), str(values.get("private_key", ""))
        if not username or not (password or key) or len(username) > 256 or len(password) > 4096 \
                or len(key) > 32768:
            return _refusal(400, Refused(Reason.CREDENTIALS_REQUIRED,
                                         "this endpoint stores no credentials: enter a user name and a password or key"))
        credentials = Credentials(username, password or None, key or None,
                                  str(values.get("passphrase", "")) or None)
    now = services.now()
    mfa_token = str(values.get("mfa_token", "")) or None
    decided = await trio.to_thread.run_sync(authorise_start, services, user, facts, mfa_token, now)
    audit_start(services, user, record, decided, "launcher")
    if isinstance(decided, Refused):
        return _refusal(403, decided)
    await trio.to_thread.run_sync(services.access.save_parameters, user, record.id, parameters, now)
    url = _issue(request, user, record, parameters, decided, credentials, now)
    if not wants_json:
        return RedirectResponse(url, status_code=303)
    return JSONResponse({"url": url, "open_in": parameters.open_in,
                         "width": parameters.width, "height": parameters.height})


def _issue(request: Request, user: User, record: Any, parameters: LaunchParameters, grant: StartGrant,
           credentials: Credentials | None, now: float) -> str:
    token = launches_of(request).issue(
        Launch(user.id, record.id, parameters, grant, credentials, now + LAUNCH_SECONDS), now)
    return f"{request.url_for('connect', endpoint_id=record.id).path}?launch={token}"


async def quick_access(request: Request) -> Response:
    """One click on an endpoint's row: exactly `engine.access.quick_access`'s five outcomes."""
    services, user, record, facts = await _context(request)
    if record is None or facts is None:
        return await _no_such_endpoint(request)
    now = services.now()
    decided = rules.quick_access(facts, now)
    services.audit_event("quick_access", user, None, endpoint_id=record.id, endpoint_name=record.name,
                         outcome=decided.outcome.value, reason=decided.reason.value if decided.reason else None)
    match decided.outcome:
        case QuickOutcome.START if record.protocol in STARTABLE:
            assert decided.grant is not None and decided.parameters is not None
            audit_start(services, user, record, decided.grant, "quick_access")
            await trio.to_thread.run_sync(services.access.save_parameters, user, record.id, decided.parameters, now)
            url = _issue(request, user, record, decided.parameters, decided.grant, None, now)
        case QuickOutcome.START | QuickOutcome.LAUNCHER:
            url = request.url_for("launcher", endpoint_id=record.id).path
        case QuickOutcome.REQUEST:
            url = f"{_url(request, 'access_request_new', '/access-requests/new')}?endpoint={record.id}"
        case QuickOutcome.PENDING:
            url = _url(request, "access_request", f"/access-requests/{decided.request_id}",
                       request_id=decided.request_id)
        case _:
            audit_start(services, user, record, Refused(decided.reason or Reason.NO_ACCESS, decided.detail),
                        "quick_access")
            return await _access_denied(request, record, decided)
    return RedirectResponse(url, status_code=303)


def _url(request: Request, name: str, fallback: str, **params: Any) -> str:
    from starlette.routing import NoMatchFound

    try:
        return request.url_for(name, **params).path
    except NoMatchFound:  # the requests pages are not mounted (a trimmed app)
        return fallback


routes = [
    Route("/launch/{endpoint_id}", launcher_page, methods=["GET"], name="launcher"),
    Route("/launch/{endpoint_id}", launch, methods=["POST"], name="launch"),
    Route("/quick/{endpoint_id}", quick_access, methods=["POST"], name="quick_access"),
]

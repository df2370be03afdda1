"""Starting a session: the decisions the Session Launcher, Quick Access (pages/launcher.py) and
the start websocket (gateway/sockets.py) share, and the launches between them.

A launch is an authorised start waiting for its session page to open the websocket. It lives
in this process's memory for `LAUNCH_SECONDS`, is bound to its user and endpoint, and is spent
by the start websocket. It carries the credentials typed into the launcher, so they never travel
in a URL and never reach a page: only the gateway's endpoint connection sees them. Every
decision is audited: ``start_authorised`` or ``start_refused`` (with the reason).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from dashboard.repositories.endpoints import Endpoint
from dashboard.services import Services
from engine import Credentials
from engine import access as rules
from engine.access import AccessFacts, LaunchParameters, QuickAccess, StartGrant
from engine.messages import EndpointProtocol, Reason, Refused, User

LAUNCH_SECONDS = 120.0  # from the Access button to the session page's websocket
MAX_LAUNCHES = 10_000  # all users together: a bound on memory, whatever a client does
STARTABLE = (EndpointProtocol.SSH, EndpointProtocol.VNC, EndpointProtocol.RDP,
             EndpointProtocol.SYNTHETIC)  # what starts in the browser today


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


def launches_of(conn: HTTPConnection) -> Launches:
    return conn.app.state.launches


# --- the decisions, audited ---------------------------------------------------------------------


def authorise_start(services: Services, user: User, facts: AccessFacts, mfa_token: str | None,
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
    checked = services.mfa.check(user, mfa_token, now)
    return checked if isinstance(checked, Refused) else decided


def audit_start(services: Services, user: User, endpoint: Any, decided: Refused | StartGrant, via: str) -> None:
    """One audit row per start decision: who asked for which endpoint, the outcome, its reason."""
    where = {"endpoint_id": getattr(endpoint, "id", None), "endpoint_name": getattr(endpoint, "name", None), "via": via}
    if isinstance(decided, Refused):
        services.audit_event("start_refused", user, None, reason=decided.reason.value, detail=decided.detail, **where)
    else:
        services.audit_event("start_authorised", user, None, record=decided.record, deadline=decided.deadline,
                             approval_id=decided.approval_id or None, mfa=decided.mfa_required, **where)


def visible_endpoint(services: Services, user: User, endpoint_id: str
                     ) -> tuple[Endpoint | None, AccessFacts | None]:
    """The endpoint's endpoint and the user's facts on it, or (None, None) when it does not exist
    or is not theirs to see (one answer for both). Blocking (database)."""
    facts = services.access.visible_facts(user, endpoint_id)
    return (services.endpoints.get(endpoint_id), facts) if facts is not None else (None, None)


def outcomes(services: Services, user: User, endpoint_ids: list[str]) -> dict[str, QuickAccess]:
    """Quick Access's answer for each endpoint (what a row offers). Blocking (database)."""
    now = services.now()
    return {endpoint_id: rules.quick_access(facts, now)
            for endpoint_id, facts in services.access.facts_for(user, endpoint_ids).items()}

"""The live sessions this process serves, and what pages, API and gateway do to live sessions:
end one for everyone (Terminate, one path for the dashboard and the API) and move the deadline
of those started under an approval (Extend).

`LiveSessions` is the directory of the sessions whose participants' websockets this process
serves (dashboard/gateway): their endpoint, controller, the approval they run under, the
endpoint connection built here, and the participants' channels. It forgets a session when the
engine ends it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from starlette.requests import HTTPConnection

from dashboard.security.auth import Forbidden
from dashboard.services import Services
from dashboard.services.password_offer import password_offer
from engine import EndpointConnection
from engine import policy
from engine.messages import (
    Accepted, EndpointSpec, Extend, Flush, Reason, Refused, Role, SessionFinished, SessionSummary, Terminate, User,
)

log = logging.getLogger(__name__)


# --- every node's live sessions, wherever a page or the API lists them ---------------------------


def all_live_sessions(services: Services) -> list[SessionSummary]:
    """This node's live sessions and, with a bus, every other node's as they announced them
    (docs/cluster.md): what the dashboard, the JSON API and the endpoint pages list."""
    local, cluster = services.engine.live_sessions(), services.cluster
    return local + cluster.sessions.remote_sessions() if cluster is not None else local


def live_summary(services: Services, session_id: str) -> SessionSummary | None:
    """A live session's summary, whichever node runs it; None if no node does."""
    summary = services.engine.session(session_id)
    if summary is None and services.cluster is not None:
        summary = services.cluster.sessions.remote_session(session_id)
    return summary


def remote_summary(services: Services, session_id: str) -> SessionSummary | None:
    """The summary of a live session that another node runs (as it announced it); None if this
    node runs it, or no node does."""
    if services.cluster is None or services.engine.session(session_id) is not None:
        return None
    return services.cluster.sessions.remote_session(session_id)


def node_of(services: Services, session_id: str) -> str | None:
    """The node that runs a live session, when this one is a node of several (None otherwise)."""
    return services.cluster.sessions.node_of(session_id) if services.cluster is not None else None

REPLY_SECONDS = 15.0  # the engine answers in milliseconds; this is a bound
TERMINATE_REPLY_SECONDS = 10.0
AUDIT_FLUSH_SECONDS = 2.0  # a bound on waiting for the audit store's commit after a terminate


class Attached(Protocol):
    """A participant's websocket served here (dashboard.gateway.channel.Channel)."""

    role: Role | None

    def post(self, message: dict[str, Any]) -> None: ...

    @property
    def closed(self) -> bool: ...


@dataclass(eq=False)
class LiveSession:
    """What this process knows of one live session it serves."""

    session_id: str
    endpoint: EndpointSpec
    controller: User
    connection: EndpointConnection | None = None  # the endpoint connection, if built here
    channels: set[Attached] = field(default_factory=set)
    approval_id: str | None = None  # the request for access it was started under (its deadline's source)
    desktop_size: tuple[int, int] | None = None  # a graphical session's, as its last keyframe said
    node: str | None = None  # the node that runs it, when another does (dashboard/services/cluster.py)


class LiveSessions:
    """The directory of this application (``app.state.live_sessions``)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.sessions: dict[str, LiveSession] = {}
        self._watching = False
        self.refusals = 0  # refused client messages, all connections (for tests and load tests)

    def watch(self) -> None:
        """Forget sessions when the engine ends them (once, when the first session is served:
        the engine and the loop are running by then)."""
        if self._watching:
            return
        self._watching = True
        self.services.engine.watch(self.services.bridge.reply_to(self._on_change))

    def _on_change(self, change: Any) -> None:
        if isinstance(change, SessionFinished):
            self.sessions.pop(change.session_id, None)

    def live(self, session_id: str, endpoint: EndpointSpec, controller: User) -> LiveSession:
        live = self.sessions.get(session_id)
        if live is None:
            live = self.sessions[session_id] = LiveSession(session_id, endpoint, controller)
        return live

    def runs_elsewhere(self, session_id: str) -> bool:
        """Served here for participants of a session another node runs, or unknown here."""
        live = self.sessions.get(session_id)
        if live is not None:
            return live.node is not None
        return self.services.engine.session(session_id) is None

    def parties(self, session_id: str) -> tuple[EndpointSpec | None, User | None]:
        """A live session's endpoint and controller: from the sessions served here (the engine's
        directory is updated a moment after a start is answered, and a viewer may be quicker),
        else from the engine's directory."""
        live = self.sessions.get(session_id)
        if live is not None:
            return live.endpoint, live.controller
        summary = live_summary(self.services, session_id)  # the engine's, or another node's as it announced it
        if summary is not None:
            return summary.endpoint, summary.controller
        return None, None

    async def extend(self, request_id: str, until: float, controller_id: str, endpoint_id: str) -> list[str]:
        """An approved extension moved the end of approval `request_id` (of `controller_id` on
        `endpoint_id`) to `until`: move the deadline of every live session started under it, on
        this node and, with a bus, on every other (the engine's Extend, by its controller, rule 7;
        docs/cluster.md). Returns the ids of the sessions whose deadline moved."""
        moved = await self.extend_here(request_id, until)
        if self.services.cluster is not None:
            moved += await self.services.cluster.access.extend(request_id, controller_id, endpoint_id)
        return moved

    async def under_approval(self, session_id: str) -> tuple[User, str | None] | None:
        """A live session's controller and the approval it runs under (None: no node runs it)."""
        live = self.sessions.get(session_id)
        summary = remote_summary(self.services, session_id) if live is None or live.node is not None else None
        if summary is None:
            return (live.controller, live.approval_id) if live is not None else None
        return summary.controller, await self.services.cluster.access.approval_of(session_id)

    async def extend_here(self, request_id: str, until: float, session_id: str | None = None) -> list[str]:
        """`extend` for the sessions this node runs (only `session_id`, if given)."""
        services = self.services
        moved = []
        for live in [s for s in self.sessions.values() if s.approval_id == request_id and s.node is None
                     and session_id in (None, s.session_id)]:
            answer = await services.bridge.request(lambda reply_to, live=live: services.engine.route(
                live.session_id, Extend(until, live.controller, reply_to)), REPLY_SECONDS)
            if isinstance(answer, Accepted):
                moved.append(live.session_id)
            else:
                log.info("session %s not extended: %s", live.session_id, getattr(answer, "reason", "no answer"))
        return moved


    async def password_changed(self, user: User, endpoint_id: str) -> None:
        """The user's request for access to the endpoint changed (filed, decided, withdrawn):
        tell its controller's pages in the live sessions served here, and with a bus on every
        other node, what Send Password offers now (Request Access, Waiting for Approval, Send
        Password)."""
        if self.services.cluster is not None:
            self.services.cluster.access.changed(user, endpoint_id)
        await self.password_changed_here(user, endpoint_id)

    async def password_changed_here(self, user: User, endpoint_id: str) -> None:
        lives = [s for s in self.sessions.values() if s.endpoint.id == endpoint_id and s.controller.id == user.id]
        if not lives:
            return
        endpoint = await trio.to_thread.run_sync(self.services.endpoints.get, endpoint_id)
        if endpoint is None:
            return
        offer = await trio.to_thread.run_sync(password_offer, self.services, user, endpoint)
        for live in lives:
            for channel in list(live.channels):
                if channel.role is Role.CONTROLLER and not channel.closed:
                    channel.post({"type": "password_state", "offer": offer})


def live_sessions_of(conn: HTTPConnection) -> LiveSessions:
    return conn.app.state.live_sessions


# --- Terminate: one path for the dashboard and the API ---------------------------------------


def check_terminate(services: Services, by: User, session_id: str | None, via: str) -> None:
    """Rule 5 (`policy.check_terminate`), before anything else: a refusal is audited with where
    it came from and answered with `Forbidden`."""
    refused = policy.check_terminate(by)
    if refused is not None:
        services.audit_event("terminate_refused", by, session_id, reason=refused.reason.value, via=via)
        raise Forbidden("Only an administrator may terminate a session.")


async def terminate(services: Services, session_id: str, by: User,
                    timeout: float = TERMINATE_REPLY_SECONDS) -> Accepted | Refused | None:
    """Ask the engine to end a session for everyone, as `by` (`check_terminate` first); its
    answer, or None if it gave none within `timeout`. Never blocks the loop. After an
    `Accepted`, waits for the audit store's commit: the engine told it the terminate before it
    answered, so an audit log read next lists it."""
    answer = await services.bridge.request(
        lambda reply_to: services.engine.route(session_id, Terminate(by, reply_to)), timeout)
    if isinstance(answer, Refused) and answer.reason is Reason.UNKNOWN_SESSION and services.cluster is not None:
        # not run here: the node that runs it ends it for every participant on every node
        return await services.cluster.terminate(session_id, by)
    if isinstance(answer, Accepted):
        await services.bridge.request(lambda reply_to: services.audit(Flush(reply_to)), AUDIT_FLUSH_SECONDS)
    return answer

"""The two websockets of a session and their authorisation:

- ``WS /ws/endpoints/{endpoint_id}/start``: the controller starts a session;
- ``WS /ws/sessions/{session_id}``: a viewer joins, or the controller comes back within the
  grace period.

Before `accept()`: the Origin must be this server's; then the signed-in user; then the first
message (a start or a join), which the access model and the engine decide.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import trio
from starlette.websockets import WebSocket

from dashboard.gateway import wire
from dashboard.gateway.channel import (
    CLOSE_POLICY, Channel, ChannelClosed, SessionWire,
)
from dashboard.gateway.connections import build_connection
from dashboard.gateway.desktop import DesktopWire
from dashboard.gateway.terminal import TERMINAL
from dashboard.repositories.endpoints import Endpoint
from dashboard.security import share
from dashboard.security.auth import current_user
from dashboard.services.live_sessions import LiveSessions, live_sessions_of
from dashboard.services.starts import audit_start, authorise_start, launches_of, visible_endpoint
from engine import Credentials
from engine.access import Profile, StartGrant
from engine.messages import EndpointProtocol, EndpointSpec, Join, Joined, Reason, Refused, StartSession, User

log = logging.getLogger(__name__)

# A terminal's wire has no state of its own: one serves every websocket. A desktop's RFB stream
# has (its handshake, a message split across websocket messages): one per websocket.
SESSION_WIRES: dict[EndpointProtocol, Callable[[], SessionWire]] = {
    **{protocol: (lambda: TERMINAL) for protocol in TERMINAL.protocols},
    **{protocol: DesktopWire for protocol in DesktopWire.protocols},
}


def session_wire(protocol: EndpointProtocol) -> SessionWire:
    """The wire of a session on an endpoint of `protocol` (a terminal unless another is known)."""
    return SESSION_WIRES.get(protocol, lambda: TERMINAL)()


# --- opening a websocket -----------------------------------------------------------------------


async def _open(websocket: WebSocket) -> tuple[LiveSessions, User] | None:
    """The signed-in user; accepts the websocket. None if refused (and closed).

    The Origin and the sign-in are decided before any route by dashboard/security/admission.py,
    which refuses the handshake with 403 (and audits it); the check here only keeps a route from
    accepting an anonymous websocket in an application assembled without it."""
    directory = live_sessions_of(websocket)
    user = await current_user(websocket)
    if user is None:
        await websocket.close(code=CLOSE_POLICY)  # before accept: the handshake gets a 403
        return None
    try:
        await websocket.accept()
    except Exception as exc:  # noqa: BLE001
        # A client that sent bytes before our answer broke its handshake: Hypercorn answered
        # 400 meanwhile and refuses a second answer (h11's LocalProtocolError). Nothing to serve.
        log.debug("websocket not accepted: %r", exc)
        return None
    return directory, user


# --- the websocket routes ----------------------------------------------------------------------


async def start_socket(websocket: WebSocket) -> None:
    opened = await _open(websocket)
    if opened is None:
        return
    directory, user = opened
    services = directory.services
    endpoint_id = websocket.path_params["endpoint_id"]
    channel = Channel(directory, websocket, user)
    try:
        start = await channel.first_request(wire.Start)
        if start is None:
            return
        authorised = await _authorise(channel, endpoint_id, start)
        if authorised is None:
            return
        endpoint, grant, credentials = authorised.endpoint, authorised.grant, authorised.credentials
        try:
            connection = build_connection(services, endpoint, credentials, start, authorised.term_type,
                                          authorised.desktop_size, authorised.profile)
        except Exception as exc:
            log.warning("cannot build a connection to endpoint %s: %s", endpoint_id, type(exc).__name__)
            await channel.refuse_fatally(Reason.ENDPOINT_UNAVAILABLE, str(exc) if isinstance(exc, ValueError)
                                         else "the endpoint's settings are not usable")
            return
        if credentials is not None:  # rule 9: every credential use, never the credential
            services.audit_event("credential_use", user, None, endpoint=endpoint_id, source=authorised.source,
                                 username=credentials.username)
        answer = await channel.await_joined(lambda reply_to: services.engine.submit_start(StartSession(
            endpoint.spec, user, channel.queue, reply_to, connection, grant.deadline, start.cols, start.rows,
            record=grant.record)))
        if not isinstance(answer, Joined):
            connection.close()
            await channel.refuse_fatally(answer.reason if answer else wire.WireReason.INTERNAL_ERROR,
                                         answer.detail if answer else "the engine did not answer",
                                         audit=False)
            return
        if services.cluster is not None:  # reachable from the other nodes before anyone learns its id
            await services.cluster.own(answer.session_id)
        await channel.serve(answer, session_wire(endpoint.protocol), endpoint.spec, user, connection,
                            approval_id=grant.approval_id or None)
    except ChannelClosed:
        await channel.close(CLOSE_POLICY, "too many refused messages")
        await channel.linger()


@dataclass(frozen=True, slots=True, repr=False)
class _Authorised:
    endpoint: Endpoint
    grant: StartGrant
    credentials: Credentials | None
    source: str  # of the credentials: 'entered', 'stored' or 'none'
    term_type: str | None
    desktop_size: tuple[int, int] | None = None  # the launcher's, for a graphical endpoint
    profile: Profile | None = None  # the starter's access profile: what a desktop's client may share


async def _authorise(channel: Channel, endpoint_id: str, start: wire.Start) -> _Authorised | None:
    """Who may start, with which credentials: a launch from the launcher (pages/launcher.py,
    already authorised, its MFA token spent) or, for API clients, the access model's decision
    here, with `mfa_token` when the profile requires one. Refuses fatally (and audits) and
    answers None when the start may not go on."""
    services, user = channel.services, channel.user
    endpoint, facts = await trio.to_thread.run_sync(visible_endpoint, services, user, endpoint_id)
    if endpoint is None:  # the same answer whether the endpoint exists or not
        await channel.refuse_fatally(Reason.NO_ACCESS, "you have no access to this endpoint")
        return None
    now = services.now()
    launch = None
    if start.launch is not None:
        launch = launches_of(channel.websocket).take(start.launch, user, endpoint_id, now)
        if launch is None:
            await channel.refuse_fatally(wire.WireReason.LAUNCH_EXPIRED, "this launch was used or has expired: "
                                         "start again from the launcher")
            return None
    # with a launch the launcher spent the MFA token; role, profile and approval are checked again now
    decided = await trio.to_thread.run_sync(authorise_start, services, user, facts,
                                            None if launch else start.mfa_token, now, launch is not None)
    if launch is None or isinstance(decided, Refused):  # the launcher audited the launch's grant
        audit_start(services, user, endpoint, decided, "launch" if launch else "websocket")
    if isinstance(decided, Refused):
        await channel.refuse_fatally(decided.reason, decided.detail, audit=False)
        return None
    credentials: Credentials | None = None
    source = "none"
    if start.credentials is not None:
        c = start.credentials
        credentials, source = Credentials(c.username, c.password, c.private_key, c.passphrase), "entered"
    elif launch is not None and launch.credentials is not None:
        credentials, source = launch.credentials, "entered"
    elif endpoint.protocol in (EndpointProtocol.SSH, EndpointProtocol.VNC, EndpointProtocol.RDP):
        credentials = await trio.to_thread.run_sync(services.endpoints.stored_credentials, endpoint_id)
        source = "stored" if credentials is not None else "none"
        if credentials is None and endpoint.protocol is EndpointProtocol.SSH:
            await channel.refuse_fatally(wire.WireReason.CREDENTIALS_REQUIRED,
                                         "this endpoint needs a user name and a password or key")
            return None  # a VNC server may ask for no password, an RDP server show its own logon
    parameters = launch.parameters if launch else None
    return _Authorised(endpoint, decided, credentials, source, parameters.terminal if parameters else None,
                       (parameters.width, parameters.height) if parameters else None, facts.profile)


async def session_socket(websocket: WebSocket) -> None:
    opened = await _open(websocket)
    if opened is None:
        return
    directory, user = opened
    services = directory.services
    session_id = websocket.path_params["session_id"]
    channel = Channel(directory, websocket, user)
    channel.session_id = session_id
    try:
        join = await channel.first_request(wire.JoinRequest)
        if join is None:
            return
        if join.share is not None and share.check_token(services, join.share, session_id) is not None:
            await channel.refuse_fatally(wire.WireReason.INVALID_SHARE_LINK,
                                         "this share link is not valid: it was altered or is for another session")
            return
        if services.cluster is not None and directory.runs_elsewhere(session_id):  # by another node, perhaps
            await _join_elsewhere(channel, services.cluster, session_id)
            return
        endpoint, controller = directory.parties(session_id)
        # a role of at least viewer (engine.access.may_join): a viewer inherits the controller's
        # approval and profile for this session; the engine adds its own rules
        has_access = endpoint is not None and await trio.to_thread.run_sync(
            services.access.may_join, user, endpoint.id)
        # the engine decides (and audits) every join, including refusals for unknown sessions
        answer = await channel.await_joined(lambda reply_to: services.engine.route(
            session_id, Join(user, channel.queue, reply_to, has_access)))
        if not isinstance(answer, Joined):
            await channel.refuse_fatally(answer.reason if answer else wire.WireReason.INTERNAL_ERROR,
                                         answer.detail if answer else "the engine did not answer",
                                         audit=answer is None)
            return
        if endpoint is None or controller is None:  # it started between the lookup and the join
            endpoint, controller = directory.parties(session_id)
        endpoint = endpoint or EndpointSpec("", "", EndpointProtocol.SSH)
        await channel.serve(answer, session_wire(endpoint.protocol), endpoint, controller or user)
    except ChannelClosed:
        await channel.close(CLOSE_POLICY, "too many refused messages")
        await channel.linger()


async def _join_elsewhere(channel: Channel, cluster: Any, session_id: str) -> None:
    """A session this node does not run: the node that runs it decides the join (and audits
    it) through the bus (dashboard/services/cluster.py); this node serves the websocket."""
    answer = await cluster.join(session_id, channel.user, channel.queue)
    if isinstance(answer, Refused):
        await channel.refuse_fatally(answer.reason, answer.detail,
                                     audit=answer.reason is Reason.UNKNOWN_SESSION)
        return
    joined, endpoint, controller, node = answer
    live = channel.directory.live(session_id, endpoint, controller)
    live.node = node
    try:
        await channel.serve(joined, session_wire(endpoint.protocol), endpoint, controller)
    finally:
        if not live.channels:
            channel.directory.sessions.pop(session_id, None)

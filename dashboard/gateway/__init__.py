"""The websocket gateway: one websocket per participant of a session, and the session pages.

Routes (docs/protocol.md describes the messages):

- ``GET /connect/{endpoint_id}``: the start page (credentials form, then the live terminal);
- ``GET /sessions/{session_id}``: the session page; with ``?share=TOKEN`` (a share link) it
  first shows the join dialog, which opens the session in a new window;
- ``WS /ws/endpoints/{endpoint_id}/start``: the controller starts a session;
- ``WS /ws/sessions/{session_id}``: a viewer joins, or the controller comes back within the
  grace period.

Each websocket is served by one `Channel` on the trio loop, with two tasks: a receiver that
checks every client message against the sender's role (a viewer's channel has no path to the
endpoint's input at all), and a sender that drains the participant's bounded `OutboundQueue`
once per flush window, so that a viewer that cannot keep up only ever delays itself (the engine
resynchronises it from a keyframe when its queue overflows).
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import trio
from starlette.requests import HTTPConnection, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from dashboard.gateway import wire
from dashboard.security import share
from engine import policy
from engine.actors.base import send
from engine.bridge import LoopClosed
from engine.messages import (
    Accepted, Disconnected, Eject, Extend, EndpointSpec, Frame, Input, Join, Joined, Keyframe, Leave, EndpointProtocol, Reason, Refused,
    Resize, Role, SessionEnded, SessionFinished, SessionSummary, StartSession, TransferControl, User,
)
from engine.sinks import OutboundQueue
from engine.connection import Credentials

log = logging.getLogger(__name__)

# What sending to a client that has gone away raises (Starlette turns only OSError into
# WebSocketDisconnect; Hypercorn's own stream errors and a close racing a send surface as these).
CLIENT_GONE = (WebSocketDisconnect, OSError, RuntimeError, trio.BrokenResourceError, trio.ClosedResourceError,
               trio.BusyResourceError)

FIRST_MESSAGE_SECONDS = 60.0  # a client that opens a websocket and says nothing is closed
REPLY_SECONDS = 15.0  # the engine answers a start or a join in milliseconds; this is a bound
MAX_REFUSALS = 100  # refused messages on one connection before it is closed (audit flood)
CLOSE_LINGER = 5.0  # after our close frame, how long to wait for the client's
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008  # websocket close code: policy violation
CLOSE_REFUSED = 4403  # ours: a start or join was refused (the refusal message says why)


# --- per-process state -------------------------------------------------------------------------


@dataclass(eq=False)
class LiveSession:
    """What this gateway knows of one live session it serves."""

    session_id: str
    endpoint: EndpointSpec
    controller: User
    connection: Any = None  # the endpoint connection, if this gateway built it
    channels: set["Channel"] = field(default_factory=set)
    size: tuple[int, int] = (80, 24)
    approval_id: str | None = None  # the request for access it was started under (its deadline's source)


class Gateway:
    """The gateway's state in one application (``app.state.gateway``)."""

    def __init__(self, services: Any) -> None:
        self.services = services
        self.sessions: dict[str, LiveSession] = {}
        self._watching = False
        self.refusals = 0  # refused client messages, all connections (for tests and load tests)

    def watch(self) -> None:
        """Forget sessions when the engine ends them (once, on first use)."""
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


async def extend_sessions(conn: HTTPConnection, request_id: str, until: float) -> list[str]:
    """An approved extension moved the end of approval `request_id` to `until`: move the
    deadline of every live session started under it (the engine's Extend, by its controller,
    rule 7). Returns the ids of the sessions whose deadline moved."""
    gateway = gateway_of(conn)
    services = gateway.services
    moved = []
    for live in [s for s in gateway.sessions.values() if s.approval_id == request_id]:
        answer = await services.bridge.request(lambda reply_to, live=live: services.engine.route(
            live.session_id, Extend(until, live.controller, reply_to)), REPLY_SECONDS)
        if isinstance(answer, Accepted):
            moved.append(live.session_id)
        else:
            log.info("session %s not extended: %s", live.session_id, getattr(answer, "reason", "no answer"))
    return moved


def gateway_of(conn: HTTPConnection) -> Gateway:
    state = conn.app.state
    gateway = getattr(state, "gateway", None)
    if gateway is None:
        gateway = state.gateway = Gateway(state.services)
    return gateway


# --- the outbound side -------------------------------------------------------------------------


class _FlushQueue(OutboundQueue):
    """An OutboundQueue that also says when `flush_bytes` are pending, so that the sender
    does not wait for the end of its window with a full batch in hand."""

    def __init__(self, max_bytes: int, flush_bytes: int, on_ready: Callable[[], None],
                 on_full: Callable[[], None]) -> None:
        super().__init__(max_bytes, on_ready)
        self._flush_bytes = flush_bytes
        self._on_full = on_full
        self._full_signalled = False

    def offer(self, frame: Frame) -> bool:
        accepted = super().offer(frame)
        if accepted and not self._full_signalled and self.pending_bytes >= self._flush_bytes:
            self._full_signalled = True
            self._on_full()
        return accepted

    def take(self) -> list[Any]:
        self._full_signalled = False
        return super().take()


@dataclass(frozen=True, slots=True, repr=False)  # repr=False: a message may hold a password (Send Password)
class _Wire:
    """A message the gateway itself queues for a client (a refusal, a size change), so that it
    reaches the client in order with the engine's deliveries."""

    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _CloseRequest:
    """Queued after a last message: the sender closes the websocket once it has sent it."""

    code: int
    reason: str


class _ChannelClosed(Exception):
    pass


# --- one websocket -----------------------------------------------------------------------------


class Channel:
    """One participant's websocket: its queue, its sender, its receiver. What it may send
    depends on the role the engine gave it (`RIGHTS`), fixed for the connection's life."""

    def __init__(self, gateway: Gateway, websocket: WebSocket, user: User) -> None:
        self.gateway = gateway
        self.services = gateway.services
        self.websocket = websocket
        self.user = user
        settings = self.services.settings
        self.flush_seconds = max(0.0, settings.gateway.flush_ms / 1000)
        self.flush_messages = max(1, settings.gateway.flush_messages)
        self.flush_bytes = max(1, settings.gateway.flush_bytes)
        self.max_message_bytes = settings.gateway.max_message_bytes
        self.queue = _FlushQueue(settings.engine.queue_max_bytes, self.flush_bytes,
                                 self._from_actor(self._wake), self._from_actor(self._flush_now_set))
        self._ready = trio.Event()
        self._flush_now = trio.Event()
        self.joined: Joined | None = None
        self.role: Role | None = None
        self.rights: ControllerRights | ViewerRights | None = None
        self.live: LiveSession | None = None
        self.session_id: str | None = None
        self.refusals = 0
        self.messages_sent = 0  # websocket messages, for tests of the coalescing
        self.left = False
        self.ended = False
        self._gone = False  # the handler has returned: a late Joined is left at once
        self.closing = False  # our close frame is sent: what the client still sends is dropped
        self._receive_scope = trio.CancelScope()

    # actor threads → loop

    def _from_actor(self, fn: Callable[[], None]) -> Callable[[], None]:
        bridge = self.services.bridge

        def schedule() -> None:
            try:
                bridge.call_soon(fn)
            except LoopClosed:
                pass

        return schedule

    def _wake(self) -> None:
        self._ready.set()

    def _flush_now_set(self) -> None:
        self._flush_now.set()

    # sending (only one task sends at a time: before the join the handler, after it the sender)

    async def _send_text(self, message: dict[str, Any]) -> None:
        self.messages_sent += 1
        await self.websocket.send({"type": "websocket.send", "text": wire.dumps(message)})

    async def _send_bytes(self, data: bytes) -> None:
        self.messages_sent += 1
        await self.websocket.send({"type": "websocket.send", "bytes": data})

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send the close frame. The handler then still reads until the client's close arrives
        (at most CLOSE_LINGER seconds): returning from an ASGI websocket handler while Hypercorn
        answers a close from the client races its unlocked send_eof against that answer
        (trio.BusyResourceError in Hypercorn's connection task, which takes the server down)."""
        self.closing = True
        self._receive_scope.deadline = min(self._receive_scope.deadline, trio.current_time() + CLOSE_LINGER)
        try:
            await self.websocket.close(code, reason or None)
        except CLIENT_GONE:
            pass  # already closed by either side

    async def linger(self) -> None:
        """After `close` in the handler's own task: read until the client's close arrives."""
        with self._receive_scope:
            while await self.receive() is not None:
                pass

    def post(self, message: dict[str, Any]) -> None:
        """Queue a gateway message for this client (any time after the join, from the loop)."""
        self.queue.event(_Wire(message))

    # refusals

    def refuse(self, reason: str, detail: str = "", of: str = "", size: int | None = None) -> dict[str, Any]:
        """Count and audit one refused client message; the refusal to send back."""
        self.refusals += 1
        self.gateway.refusals += 1
        # the type only if it is one of ours: nothing the client wrote goes into the audit log
        audit_detail: dict[str, Any] = {"reason": str(reason), "message": of if of in wire.KINDS else "unknown",
                                        "role": self.role.value if self.role else "none"}
        if self.joined is not None:
            audit_detail["participant"] = self.joined.participant_id
        if size is not None:
            audit_detail["size"] = size
        kind = "input_refused" if of == "input" else "message_refused"
        self.services.audit_event(kind, self.user, self.session_id, **audit_detail)
        return wire.refused(reason, detail, of)

    async def refuse_now(self, reason: str, detail: str = "", of: str = "", size: int | None = None) -> None:
        """Before the join (no sender task yet): refuse and send at once."""
        await self._send_text(self.refuse(reason, detail, of, size))
        if self.refusals > MAX_REFUSALS:
            raise _ChannelClosed()

    def refuse_queued(self, reason: str, detail: str = "", of: str = "", size: int | None = None) -> None:
        """After the join: the refusal reaches the client in order with its deliveries."""
        self.post(self.refuse(reason, detail, of, size))

    async def refuse_fatally(self, reason: str, detail: str = "", *, audit: bool = True) -> None:
        """A start or join that cannot go ahead: say why, close, wait for the client's close."""
        if audit:
            self.services.audit_event("websocket_refused", self.user, self.session_id, reason=str(reason))
        try:
            await self._send_text(wire.refused(reason, detail, fatal=True))
        except CLIENT_GONE:
            pass
        await self.close(CLOSE_REFUSED, str(reason))
        await self.linger()

    # receiving

    async def receive(self) -> dict[str, Any] | None:
        """The next ASGI message, or None once the client has gone."""
        try:
            message = await self.websocket.receive()
        except CLIENT_GONE:
            return None
        if message["type"] == "websocket.disconnect":
            return None
        return message

    def decode(self, message: dict[str, Any]) -> tuple[Any, wire.WireError | None]:
        try:
            return wire.decode(message, self.max_message_bytes), None
        except wire.WireError as exc:
            return None, exc

    async def first_request(self, expected: type) -> Any:
        """Wait for the first message, which must be an `expected`; refuse anything else.
        None if the client went away or said nothing in time (closed then)."""
        with trio.move_on_after(FIRST_MESSAGE_SECONDS):
            while True:
                message = await self.receive()
                if message is None:
                    return None
                request, error = self.decode(message)
                if error is not None:
                    await self.refuse_now(error.reason, error.detail, error.kind, _size(message))
                elif not isinstance(request, expected):
                    await self.refuse_now(wire.WireReason.UNEXPECTED_MESSAGE,
                                          f"send {wire.kind_of(expected)} first",
                                          wire.kind_of(request))
                else:
                    return request
        await self.refuse_fatally(wire.WireReason.TIMEOUT, "no start or join message in time")
        return None

    # the engine's answer to a start or a join

    async def await_joined(self, submit: Callable[[Callable[[Any], None]], None]) -> Joined | Refused | None:
        done = trio.Event()
        answer: list[Any] = []

        def on_reply(reply: Any) -> None:
            if self._gone:
                if isinstance(reply, Joined):  # nobody is there to take part any more
                    send(reply.session, Leave(reply.participant_id))
                return
            answer.append(reply)
            done.set()

        submit(self.services.bridge.reply_to(on_reply))
        with trio.move_on_after(REPLY_SECONDS):
            await done.wait()
        if not answer:
            self._gone = True
            log.error("no answer from the engine within %s s for %s", REPLY_SECONDS, self.user.name)
            return None
        return answer[0]

    # after the join: two tasks

    async def serve(self, joined: Joined, endpoint: EndpointSpec, controller: User,
                    connection: Any = None, approval_id: str | None = None) -> None:
        self.joined = joined
        self.role = joined.role
        self.rights = RIGHTS[joined.role]
        self.session_id = joined.session_id
        self.gateway.watch()
        self.live = self.gateway.live(joined.session_id, endpoint, controller)
        if connection is not None:
            self.live.connection = connection
        if approval_id is not None:
            self.live.approval_id = approval_id
        self.live.channels.add(self)
        try:
            await self._send_text(self._joined_message(joined, endpoint, controller))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender)
                await self._receiver()
                nursery.cancel_scope.cancel()
        except CLIENT_GONE:
            pass
        finally:
            self.live.channels.discard(self)
            if not (self.left or self.ended or self.queue.closed):
                # the websocket dropped without a leave: a closed tab, a lost network (rule 8)
                send(joined.session, Disconnected(joined.participant_id))

    def _joined_message(self, joined: Joined, endpoint: EndpointSpec, controller: User) -> dict[str, Any]:
        return {
            "type": "joined", "session_id": joined.session_id, "participant_id": joined.participant_id,
            "role": joined.role.value, "state": joined.state.value, "deadline": joined.deadline,
            "now": self.services.now(),
            "rejoined": joined.rejoined, "you": wire.user_json(self.user),
            "controller": wire.user_json(controller),
            "members": [wire.member_json(m) for m in joined.members],
            "max_viewers": policy.viewer_cap(self.services.settings.engine.max_viewers),
            "endpoint": {"id": endpoint.id, "name": endpoint.name, "protocol": endpoint.protocol.value},
            "share_url": share.share_url(self.services, joined.session_id),
            "session_url": f"/sessions/{joined.session_id}",
        }

    async def _sender(self) -> None:
        """Drain the queue: at most `flush_messages` batches per flush window (sooner when
        `flush_bytes` are pending), merged frames as one binary message, keyframes after a reset.
        More than one batch per window lets a typed line's echo and its output, a few ms apart,
        both go at once (the line latency's p99 was the window otherwise: docs/benchmarks.md);
        a steady stream is still coalesced. When the queue closes (the participant is gone from
        the session) the websocket is closed."""
        flushes: collections.deque[float] = collections.deque([-math.inf] * self.flush_messages,
                                                              maxlen=self.flush_messages)
        try:
            while True:
                await self._ready.wait()
                self._ready = trio.Event()
                delay = flushes[0] + self.flush_seconds - trio.current_time()  # the oldest in the window
                if delay > 0 and self.queue.pending_bytes < self.flush_bytes:
                    with trio.move_on_after(delay):
                        await self._flush_now.wait()
                items = self.queue.take()
                self._flush_now = trio.Event()
                flushes.append(trio.current_time())
                for item in items:
                    if await self._deliver(item):
                        return
                if self.queue.closed:
                    for item in self.queue.take():  # anything that came with the close
                        await self._deliver(item)
                    await self.close(CLOSE_NORMAL, "session ended" if self.ended else "")
                    return
        except CLIENT_GONE:
            self._receive_scope.cancel()  # the client went away; the receiver need not wait

    async def _deliver(self, item: Any) -> bool:
        """Send one queue item; True if it asked to close the websocket."""
        if item.kind == "data":
            data = b"".join(frame.data for frame in item.value)
            for start in range(0, len(data), wire.MAX_FRAME_BYTES):
                await self._send_bytes(data[start:start + wire.MAX_FRAME_BYTES])
        elif item.kind == "keyframe":
            keyframe: Keyframe = item.value
            await self._send_text({"type": "reset", "cols": keyframe.cols, "rows": keyframe.rows})
            await self._send_bytes(keyframe.data)
        else:
            event = item.value
            if isinstance(event, _Wire):
                await self._send_text(event.message)
            elif isinstance(event, _CloseRequest):
                await self.close(event.code, event.reason)
                return True
            else:
                if isinstance(event, SessionEnded):
                    self.ended = True
                message = wire.event_json(event)
                if message is not None:
                    if message["type"] == "state":  # countdowns run on the gateway's clock
                        message["now"] = self.services.now()
                    await self._send_text(message)
        return False

    async def _receiver(self) -> None:
        """Until the client's close (or CLOSE_LINGER after ours): check and handle each message."""
        with self._receive_scope:
            while True:
                message = await self.receive()
                if message is None:
                    return
                if self.closing:
                    continue
                request, error = self.decode(message)
                if error is not None:
                    self.refuse_queued(error.reason, error.detail, error.kind, _size(message))
                else:
                    self.handle(request, _size(message))
                if self.refusals > MAX_REFUSALS:
                    self.closing = True
                    self.services.audit_event("websocket_closed", self.user, self.session_id,
                                              reason=wire.WireReason.TOO_MANY_REFUSALS.value,
                                              participant=self.joined.participant_id if self.joined else None)
                    self.post(wire.refused(wire.WireReason.TOO_MANY_REFUSALS,
                                           "too many refused messages: closing", fatal=True))
                    self.queue.event(_CloseRequest(CLOSE_POLICY, "too many refused messages"))

    # what a participant may send: the common part; the rest is its role's

    def handle(self, request: Any, size: int) -> None:
        joined = self.joined
        assert joined is not None and self.rights is not None
        if isinstance(request, wire.LeaveRequest):
            self.left = True
            send(joined.session, Leave(joined.participant_id))
        elif isinstance(request, wire.RequestControl):
            # always refused by the engine (rule 6), which audits it; the refusal comes back here
            self.services.engine.route(joined.session_id, TransferControl(
                joined.participant_id, joined.participant_id, self.services.bridge.reply_to(self._control_reply)))
        elif isinstance(request, wire.EjectRequest):
            # the engine decides (controller or administrator; never the controller) and audits
            self.services.engine.route(joined.session_id, Eject(
                request.participant_id, self.user, request.reason, self.services.bridge.reply_to(self._eject_reply),
                by_participant=joined.participant_id))
        elif isinstance(request, wire.Ping):
            self.post({"type": "pong", "id": request.id})
        elif isinstance(request, (wire.Start, wire.JoinRequest)):
            self.refuse_queued(wire.WireReason.UNEXPECTED_MESSAGE, "already in the session",
                               wire.kind_of(request), size)
        else:
            self.rights.handle(self, joined, request, size)

    def _control_reply(self, reply: Any) -> None:
        if isinstance(reply, Refused) and not self.queue.closed:
            self.post(wire.refused(reply.reason, reply.detail, "request_control"))

    def _eject_reply(self, reply: Any) -> None:
        if isinstance(reply, Refused) and not self.queue.closed:
            self.post(wire.refused(reply.reason, reply.detail, "eject"))


class ControllerRights:
    """What the controller may send beyond the common messages: its input and its window size
    go to the endpoint."""

    role = Role.CONTROLLER

    def handle(self, channel: Channel, joined: Joined, request: Any, size: int) -> None:
        live = channel.live
        assert live is not None
        if isinstance(request, wire.TerminalInput):
            if request.data:
                send(joined.session, Input(joined.participant_id, request.data))
        elif isinstance(request, wire.ResizeRequest):
            send(joined.session, Resize(joined.participant_id, request.cols, request.rows))
            live.size = (request.cols, request.rows)
            # The engine tells participants of no resize; the viewers served here follow it.
            message = {"type": "size", "cols": request.cols, "rows": request.rows}
            for other in list(live.channels):
                if other is not channel and not other.queue.closed:
                    other.post(message)
        elif isinstance(request, wire.StreamRequest):
            self._stream(channel, live, request, size)
        elif isinstance(request, wire.SendPassword):
            channel.services.bridge.spawn(self._send_password, channel, live, size)
        else:
            channel.refuse_queued(Reason.UNKNOWN_MESSAGE, "", wire.kind_of(request), size)

    @staticmethod
    async def _send_password(channel: Channel, live: LiveSession, size: int) -> None:
        """Send Password: the stored password, to this controller's websocket only, if the
        access model allows it now (engine.access.may_send_password: at least supervisor, a
        profile with clipboard upload). Each use is a `decrypt_field` audit event."""
        from engine.access import may_send_password

        services, user, endpoint = channel.services, channel.user, live.endpoint

        def decide() -> tuple[Refused | None, str | None]:
            facts = services.access.facts(user, endpoint.id)
            refused = may_send_password(facts.role, facts.profile)
            if refused is not None:
                return refused, None
            credentials = services.endpoints.stored_credentials(endpoint.id)
            if credentials is None or not credentials.password:
                return Refused(Reason.NO_STORED_PASSWORD, "this endpoint stores no password"), None
            return None, credentials.password

        refused, password = await trio.to_thread.run_sync(decide)
        if channel.queue.closed:
            return
        if refused is not None:
            channel.refuse_queued(refused.reason, refused.detail, "send_password", size)
            return
        services.audit_event("decrypt_field", user, live.session_id, endpoint_id=endpoint.id,
                             endpoint_name=endpoint.name, field="password", purpose="send_password")
        channel.post({"type": "password", "password": password})

    @staticmethod
    def _stream(channel: Channel, live: LiveSession, request: wire.StreamRequest, size: int) -> None:
        from protocols.synthetic import SyntheticConnection

        connection = live.connection
        if not isinstance(connection, SyntheticConnection):
            channel.refuse_queued(Reason.NOT_PERMITTED, "stream is for synthetic endpoints", "stream", size)
            return
        if request.rate > 0:
            connection.start_stream(request.rate)
        else:
            connection.stop_stream()
        channel.post({"type": "stream", "rate": request.rate, "frames_emitted": connection.frames_emitted,
                      "inputs_received": connection.inputs_received, "input_bytes": connection.input_bytes})


class ViewerRights:
    """What a viewer may send beyond the common messages: nothing. There is no path from here
    to the endpoint's input: input and resize are refused, counted and audited, and never
    become an engine message (rule 1)."""

    role = Role.VIEWER

    def handle(self, channel: Channel, joined: Joined, request: Any, size: int) -> None:
        kind = wire.kind_of(request)
        if isinstance(request, (wire.TerminalInput, wire.ResizeRequest, wire.StreamRequest, wire.SendPassword)):
            channel.refuse_queued(Reason.NOT_CONTROLLER, "viewers are read-only", kind, size)
        else:
            channel.refuse_queued(Reason.UNKNOWN_MESSAGE, "", kind, size)


RIGHTS = {Role.CONTROLLER: ControllerRights(), Role.VIEWER: ViewerRights()}


def _size(message: dict[str, Any]) -> int:
    data = message.get("bytes")
    if data is not None:
        return len(data)
    return len(message.get("text") or "")


# --- opening a websocket -----------------------------------------------------------------------


async def _open(websocket: WebSocket) -> tuple[Gateway, User] | None:
    """Origin, then the signed-in user; accepts the websocket. None if refused (and closed)."""
    gateway = gateway_of(websocket)
    services = gateway.services
    if not _check_origin(websocket):
        services.audit_event("websocket_refused", None, None, reason="bad_origin",
                             origin=(websocket.headers.get("origin") or "")[:200], path=websocket.url.path)
        await websocket.close(code=CLOSE_POLICY)  # before accept: the handshake gets a 403
        return None
    user = await _current_user(websocket)
    await websocket.accept()
    if user is None:
        services.audit_event("websocket_refused", None, None, reason=wire.WireReason.NOT_SIGNED_IN.value,
                             path=websocket.url.path)
        try:
            await websocket.send_text(wire.dumps(wire.refused(wire.WireReason.NOT_SIGNED_IN, "sign in first",
                                                              fatal=True)))
            await websocket.close(CLOSE_REFUSED)
            with trio.move_on_after(CLOSE_LINGER):  # see Channel.close
                while (await websocket.receive())["type"] != "websocket.disconnect":
                    pass
        except CLIENT_GONE:
            pass
        return None
    return gateway, user


def _check_origin(websocket: WebSocket) -> bool:
    from dashboard.security.auth import check_origin

    return check_origin(websocket)


async def _current_user(conn: HTTPConnection) -> User | None:
    from dashboard.security.auth import current_user

    return await current_user(conn)


def _build_connection(services: Any, record: Any, credentials: Credentials | None, start: wire.Start,
                      term_type: str | None = None) -> Any:
    """The endpoint connection for a start, built on the loop."""
    spec: EndpointSpec = record.spec
    if spec.protocol is EndpointProtocol.SYNTHETIC:
        from protocols.synthetic import SyntheticConnection

        return SyntheticConnection(services.engine.clock, frame_bytes=start.frame_bytes or 64)
    if spec.protocol is EndpointProtocol.SSH:
        from protocols.ssh import SshConnection

        endpoint_id = spec.id

        def in_the_database(method: Callable[[str, str], Any], what: str) -> Callable[[str], None]:
            def call(key: str) -> None:  # from the connection's task: write in a worker thread
                async def write() -> None:
                    try:
                        await trio.to_thread.run_sync(method, endpoint_id, key)
                    except Exception:
                        log.exception("recording the %s of endpoint %s", what, endpoint_id)
                try:
                    services.bridge.spawn(write)
                except LoopClosed:
                    pass
            return call

        assert credentials is not None
        return SshConnection(
            services.bridge, spec.host, spec.port, credentials, known_host_key=record.host_key,
            # first use: trust the key for this endpoint; a changed key: keep it for an administrator
            on_host_key=in_the_database(services.endpoints.record_host_key, "host key"),
            on_host_key_changed=in_the_database(services.endpoints.note_changed_host_key, "changed host key"),
            connect_timeout=services.settings.ssh.connect_timeout_seconds,
            keepalive_interval=services.settings.ssh.keepalive_seconds,
            **({"term_type": term_type} if term_type else {}))
    raise ValueError(f"sessions on {spec.protocol.value} endpoints are not available here")


# --- the websocket routes ----------------------------------------------------------------------


def _session_parties(gateway: Gateway, session_id: str) -> tuple[EndpointSpec | None, User | None]:
    """A live session's endpoint and controller: from this gateway's own sessions (the engine's
    directory is updated a moment after a start is answered, and a viewer may be quicker),
    else from the engine's directory."""
    live = gateway.sessions.get(session_id)
    if live is not None:
        return live.endpoint, live.controller
    summary: SessionSummary | None = gateway.services.engine.session(session_id)
    if summary is not None:
        return summary.endpoint, summary.controller
    return None, None


async def start_socket(websocket: WebSocket) -> None:
    opened = await _open(websocket)
    if opened is None:
        return
    gateway, user = opened
    services = gateway.services
    endpoint_id = websocket.path_params["endpoint_id"]
    channel = Channel(gateway, websocket, user)
    try:
        start = await channel.first_request(wire.Start)
        if start is None:
            return
        authorised = await _authorise(channel, endpoint_id, start)
        if authorised is None:
            return
        record, grant, credentials = authorised.record, authorised.grant, authorised.credentials
        try:
            connection = _build_connection(services, record, credentials, start, authorised.term_type)
        except Exception as exc:
            log.warning("cannot build a connection to endpoint %s: %s", endpoint_id, type(exc).__name__)
            await channel.refuse_fatally(Reason.ENDPOINT_UNAVAILABLE, str(exc) if isinstance(exc, ValueError)
                                         else "the endpoint's settings are not usable")
            return
        if credentials is not None:  # rule 9: every credential use, never the credential
            services.audit_event("credential_use", user, None, endpoint=endpoint_id, source=authorised.source,
                                 username=credentials.username)
        answer = await channel.await_joined(lambda reply_to: services.engine.submit_start(StartSession(
            record.spec, user, channel.queue, reply_to, connection, grant.deadline, start.cols, start.rows,
            record=grant.record)))
        if not isinstance(answer, Joined):
            connection.close()
            await channel.refuse_fatally(answer.reason if answer else wire.WireReason.INTERNAL_ERROR,
                                         answer.detail if answer else "the engine did not answer",
                                         audit=False)
            return
        await channel.serve(answer, record.spec, user, connection, approval_id=grant.approval_id or None)
    except _ChannelClosed:
        await channel.close(CLOSE_POLICY, "too many refused messages")
        await channel.linger()
    finally:
        channel._gone = True


@dataclass(frozen=True, slots=True, repr=False)
class _Authorised:
    record: Any  # dashboard.endpoints.EndpointRecord
    grant: Any  # engine.access.StartGrant
    credentials: Credentials | None
    source: str  # of the credentials: 'entered', 'stored' or 'none'
    term_type: str | None


async def _authorise(channel: "Channel", endpoint_id: str, start: wire.Start) -> _Authorised | None:
    """Who may start, with which credentials: a launch from the launcher (dashboard/launcher.py,
    already authorised, its MFA token spent) or, for API clients, the access model's decision
    here, with `mfa_token` when the profile requires one. Refuses fatally (and audits) and
    answers None when the start may not go on."""
    from dashboard.pages import launcher

    services, user = channel.services, channel.user
    record, facts = await trio.to_thread.run_sync(launcher.visible_endpoint, services, user, endpoint_id)
    if record is None:  # the same answer whether the endpoint exists or not
        await channel.refuse_fatally(Reason.NO_ACCESS, "you have no access to this endpoint")
        return None
    now = services.now()
    launch = None
    if start.launch is not None:
        launch = launcher.launches_of(channel.websocket).take(start.launch, user, endpoint_id, now)
        if launch is None:
            await channel.refuse_fatally(wire.WireReason.LAUNCH_EXPIRED, "this launch was used or has expired: "
                                         "start again from the launcher")
            return None
    # with a launch the launcher spent the MFA token; role, profile and approval are checked again now
    decided = await trio.to_thread.run_sync(launcher.authorise_start, services, user, facts,
                                            None if launch else start.mfa_token, now, launch is not None)
    if launch is None or isinstance(decided, Refused):  # the launcher audited the launch's grant
        launcher.audit_start(services, user, record, decided, "launch" if launch else "websocket")
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
    elif record.protocol is EndpointProtocol.SSH:
        credentials = await trio.to_thread.run_sync(services.endpoints.stored_credentials, endpoint_id)
        source = "stored"
        if credentials is None:
            await channel.refuse_fatally(wire.WireReason.CREDENTIALS_REQUIRED,
                                         "this endpoint needs a user name and a password or key")
            return None
    return _Authorised(record, decided, credentials, source, launch.parameters.terminal if launch else None)


async def session_socket(websocket: WebSocket) -> None:
    opened = await _open(websocket)
    if opened is None:
        return
    gateway, user = opened
    services = gateway.services
    session_id = websocket.path_params["session_id"]
    channel = Channel(gateway, websocket, user)
    channel.session_id = session_id
    try:
        join = await channel.first_request(wire.JoinRequest)
        if join is None:
            return
        if join.share is not None and share.check_token(services, join.share, session_id) is not None:
            await channel.refuse_fatally(wire.WireReason.INVALID_SHARE_LINK,
                                         "this share link is not valid: it was altered or is for another session")
            return
        endpoint, controller = _session_parties(gateway, session_id)
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
            endpoint, controller = _session_parties(gateway, session_id)
        await channel.serve(answer, endpoint or EndpointSpec("", "", EndpointProtocol.SSH), controller or user)
    except _ChannelClosed:
        await channel.close(CLOSE_POLICY, "too many refused messages")
        await channel.linger()
    finally:
        channel._gone = True


# --- pages -------------------------------------------------------------------------------------


async def _page_refused(request: Request, title: str, message: str, status: int, reason: str) -> Response:
    from dashboard.app import render

    return await render(request, "error.html", {"title": title, "message": message, "reason": reason},
                        status_code=status)


async def session_page(request: Request) -> Response:
    """The session page. With ``?share=TOKEN``: the join dialog (the session opens in a new
    window); without: the live session at once (a dashboard join, or the controller's return)."""
    from dashboard.app import render
    from dashboard.security.auth import require_user

    user = await require_user(request)
    services = request.app.state.services
    session_id = request.path_params["session_id"]
    token = request.query_params.get("share")
    if token is not None and share.check_token(services, token, session_id) is not None:
        services.audit_event("share_link_refused", user, None, reason=share.ShareProblem.INVALID.value)
        return await _page_refused(request, "Invalid share link",
                                   "This share link is not valid: it was altered, or it is not a cosession "
                                   "share link. Ask for the link again.", 403, "invalid_share_link")
    endpoint, controller = _session_parties(gateway_of(request), session_id)
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
    }
    if is_controller:  # the controller coming back: its own tools (a viewer's page never has them)
        live = gateway_of(request).sessions.get(session_id)
        config["approval_id"] = live.approval_id if live is not None else None
        record = await trio.to_thread.run_sync(services.endpoints.get, endpoint.id)
        config["send_password"] = record is not None and await trio.to_thread.run_sync(
            _may_send_password, services, user, record)
    summary = services.engine.session(session_id)  # None for a moment after the start
    return await render(request, "session.html", {
        "config": config, "summary": summary, "endpoint_name": endpoint.name,
        "joint_session": (summary.endpoint if summary else endpoint).joint_session, "is_controller": is_controller,
    })


async def start_page(request: Request) -> Response:
    """The page a launch opens (``?launch=TOKEN``, from dashboard/launcher.py): the live
    terminal, which starts the session with that launch. Without a launch: the launcher."""
    from dashboard.app import render
    from dashboard.security.auth import require_user
    from dashboard.pages.launcher import launches_of

    user = await require_user(request)
    services = request.app.state.services
    endpoint_id = request.path_params["endpoint_id"]
    token = request.query_params.get("launch")
    if token is None:
        return RedirectResponse(request.url_for("launcher", endpoint_id=endpoint_id).path, status_code=303)
    launch = launches_of(request).peek(token, user, endpoint_id, services.now())
    record = await trio.to_thread.run_sync(services.endpoints.get, endpoint_id) if launch is not None else None
    if launch is None or record is None:
        return await _page_refused(request, "Launch expired", "This launch was used already or has expired. "
                                   "Start the session again from the launcher.", 410, "launch_expired")
    parameters = launch.parameters
    config = {
        "mode": "start",
        "ws_url": f"/ws/endpoints/{endpoint_id}/start",
        "launch": token,
        "cols": parameters.cols, "rows": parameters.rows,
        "endpoint": {"id": record.id, "name": record.name, "protocol": record.protocol.value},
        "controller": wire.user_json(user),
        "you": wire.user_json(user),
        "max_viewers": policy.viewer_cap(services.settings.engine.max_viewers),
        "approval_id": launch.grant.approval_id or None,
        "send_password": await trio.to_thread.run_sync(_may_send_password, services, user, record),
    }
    return await render(request, "session.html", {
        "config": config, "summary": None, "endpoint_name": record.name, "record": record,
        "joint_session": record.joint_session, "is_controller": True,
    }, headers={"Cache-Control": "no-store"})


def _may_send_password(services: Any, user: User, record: Any) -> bool:
    """Whether the session page offers Send Password (the gateway decides again at each use)."""
    from engine.access import may_send_password

    if record.secret_kind != "password":
        return False
    facts = services.access.facts(user, record.id)
    return may_send_password(facts.role, facts.profile) is None


routes: list[BaseRoute] = [
    Route("/connect/{endpoint_id}", start_page, methods=["GET"], name="connect"),
    Route("/sessions/{session_id}", session_page, methods=["GET"], name="session"),
    WebSocketRoute("/ws/endpoints/{endpoint_id}/start", start_socket, name="ws_start"),
    WebSocketRoute("/ws/sessions/{session_id}", session_socket, name="ws_session"),
]

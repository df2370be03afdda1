"""One participant's websocket: its bounded queue, its sender and its receiver.

Each websocket is served by one `Channel` on the trio loop, with two tasks: a receiver that
checks every client message against the sender's role (a viewer's channel has no path to the
endpoint's input at all: see gateway/rights.py), and a sender that drains the participant's
bounded `OutboundQueue` once per flush window, so that a viewer that cannot keep up only ever
delays itself (its queue owes it a resync, which its sender's next `take()` asks for).

What differs between kinds of session is a `SessionWire`, chosen from the endpoint's protocol
at the join: how a client's messages are read, what each role may send, how the endpoint's
output is written (the terminal's is gateway/terminal.py). The rest (the flush window, the
control messages common to every session, refusals, closing) is the same for all.
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import trio
from starlette.websockets import WebSocket, WebSocketDisconnect

from dashboard.gateway import wire
from dashboard.gateway.flush_queue import FlushQueue
from dashboard.security import share
from dashboard.security.admission import CONNECTION_STATE_KEY
from dashboard.services.live_sessions import LiveSession, LiveSessions
from engine import EndpointConnection, LoopClosed, policy, tell_session
from engine.messages import (
    Disconnected, Eject, EndpointSpec, Joined, Leave, ParticipantStalled, Point, Refused, RemoteClipboard, Role, Say,
    SessionEnded, TransferControl, User,
)

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


# --- the outbound side (the queue itself: gateway/flush_queue.py) -------------------------------


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


class ChannelClosed(Exception):
    """Too many refused messages before the join: the socket closes the websocket."""


# --- what differs between kinds of session ------------------------------------------------------


class Rights(Protocol):
    """What one role may send beyond the messages common to every participant (gateway/rights.py)."""

    role: Role

    def handle(self, channel: "Channel", joined: Joined, request: Any, size: int) -> None: ...


class SessionWire(Protocol):
    """A kind of session on a participant's websocket (gateway/terminal.py)."""

    def decode(self, message: dict[str, Any], max_bytes: int) -> Any:
        """One ASGI ``websocket.receive`` message → a request value; raises `wire.WireError`."""

    def rights(self, role: Role) -> Rights:
        """What `role` may send, fixed for the connection's life."""

    async def send_output(self, channel: "Channel", item: Any) -> None:
        """Write one ``data`` or ``keyframe`` item of the queue to the client."""

    async def begin(self, channel: "Channel") -> bool:
        """After ``joined``, before anything else is sent (a graphical wire's RFB handshake).
        False: the websocket is done (closed by the wire)."""


# --- one websocket -----------------------------------------------------------------------------


class Channel:
    """One participant's websocket: its queue, its sender, its receiver. What it may send
    depends on the role the engine gave it (`SessionWire.rights`), fixed for the connection's
    life."""

    def __init__(self, directory: LiveSessions, websocket: WebSocket, user: User) -> None:
        self.directory = directory
        self.services = directory.services
        self.websocket = websocket
        self.user = user
        settings = self.services.settings
        self.flush_seconds = max(0.0, settings.gateway.flush_ms / 1000)
        self.flush_messages = max(1, settings.gateway.flush_messages)
        self.flush_bytes = max(1, settings.gateway.flush_bytes)
        self.max_message_bytes = settings.gateway.max_message_bytes
        self.stall_seconds = settings.engine.stall_seconds
        self.metrics = self.services.metrics
        self.queue = FlushQueue(settings.engine.queue_max_bytes, self.flush_bytes,
                                 self._from_actor(self._wake), self._from_actor(self._flush_now_set), self.metrics)
        self._ready = trio.Event()
        self._flush_now = trio.Event()
        self.joined: Joined | None = None
        self.role: Role | None = None
        self.session_wire: SessionWire | None = None  # from the join on
        self.rights: Rights | None = None  # the role's, from the join on
        self.live: LiveSession | None = None
        self.session_id: str | None = None
        self.refusals = 0
        self.messages_sent = 0  # websocket messages, for tests of the coalescing
        self.left = False
        self.ended = False
        self.closing = False  # our close frame is sent: what the client still sends is dropped
        self.stalled = False  # a send waited stall_seconds: the client stopped reading; cut
        # The password Send Password gave this controller, kept only while keystrokes are
        # recorded (recordings.record_input): input holding it is marked secret, never recorded.
        self.sent_password: bytes | None = None
        # The desktop's latest clipboard text (the engine tells the controller only); it reaches
        # the page only when asked and allowed (gateway/clipboard.py `copy_remote`).
        self.remote_clipboard: str | None = None
        self._receive_scope = trio.CancelScope()
        self._send_began: float | None = None  # trio time at which the send in flight began
        self._sending = trio.Event()
        # the times (services.now()) of this participant's accepted chat messages and pointers
        self._said: collections.deque[float] = collections.deque(maxlen=policy.CHAT_LIMIT)
        self._pointed: collections.deque[float] = collections.deque(maxlen=policy.POINT_LIMIT)

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

    @property
    def closed(self) -> bool:
        """The participant is gone from the session (its queue is closed)."""
        return self.queue.closed

    # sending (only one task sends at a time: before the join the handler, after it the sender)

    async def send_text(self, message: dict[str, Any]) -> None:
        await self._send({"type": "websocket.send", "text": wire.dumps(message)})

    async def send_bytes(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})

    async def _send(self, message: dict[str, Any]) -> None:
        self.messages_sent += 1
        self.metrics.websocket_messages_out += 1
        payload = message["bytes"] if "bytes" in message else message["text"]  # JSON is ASCII: a byte a character
        self.metrics.websocket_bytes_out += len(payload)
        self._send_began = trio.current_time()
        self._sending.set()
        try:
            await self.websocket.send(message)
        finally:
            self._send_began = None  # one send at a time (see above)

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

    def close_queued(self, code: int, reason: str) -> None:
        """Close the websocket once what is queued before this is sent; read nothing more."""
        self.closing = True
        self.queue.event(_CloseRequest(code, reason))

    # refusals

    def refuse(self, reason: str, detail: str = "", of: str = "", size: int | None = None) -> dict[str, Any]:
        """Count and audit one refused client message; the refusal to send back."""
        self.refusals += 1
        self.directory.refusals += 1
        self.metrics.messages_refused.labels(str(reason)).inc()
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
        await self.send_text(self.refuse(reason, detail, of, size))
        if self.refusals > MAX_REFUSALS:
            raise ChannelClosed()

    def refuse_queued(self, reason: str, detail: str = "", of: str = "", size: int | None = None) -> None:
        """After the join: the refusal reaches the client in order with its deliveries."""
        self.post(self.refuse(reason, detail, of, size))

    async def refuse_fatally(self, reason: str, detail: str = "", *, audit: bool = True) -> None:
        """A start or join that cannot go ahead: say why, close, wait for the client's close."""
        self.metrics.refusals.labels("join" if self.session_id is not None else "start", str(reason)).inc()
        log.info("%s refused: %s", "join" if self.session_id is not None else "start", reason,
                 extra={"session": self.session_id, "user": self.user.name, "reason": str(reason)})
        if audit:
            self.services.audit_event("websocket_refused", self.user, self.session_id, reason=str(reason))
        try:
            await self.send_text(wire.refused(reason, detail, fatal=True))
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
        """Before the join the first message is a start or a join, the same for every kind of
        session; after it, the session's wire reads what the client sends."""
        try:
            if self.session_wire is None:
                return wire.decode(message, self.max_message_bytes), None
            return self.session_wire.decode(message, self.max_message_bytes), None
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
        answer = await self.services.bridge.request(submit, REPLY_SECONDS, on_late=_leave_at_once)
        if answer is None:
            log.error("no answer from the engine within %s s for %s", REPLY_SECONDS, self.user.name)
        return answer

    # after the join: two tasks

    async def serve(self, joined: Joined, session_wire: SessionWire, endpoint: EndpointSpec, controller: User,
                    connection: EndpointConnection | None = None, approval_id: str | None = None) -> None:
        started = self.session_id is None  # a start's channel has no session before its answer
        self.joined = joined
        self.role = joined.role
        self.session_wire = session_wire
        self.rights = session_wire.rights(joined.role)
        self.session_id = joined.session_id
        self.directory.watch()
        self.live = self.directory.live(joined.session_id, endpoint, controller)
        if connection is not None:
            self.live.connection = connection
        if approval_id is not None:
            self.live.approval_id = approval_id
        self.live.channels.add(self)
        self.metrics.joins.labels(endpoint.protocol.value, joined.role.value).inc()
        fields = {"session": joined.session_id, "participant": joined.participant_id, "user": self.user.name,
                  "endpoint": endpoint.name, "protocol": endpoint.protocol.value, "role": joined.role.value}
        log.info("%s the session", "started" if started else "rejoined" if joined.rejoined else "joined",
                 extra=fields)
        try:
            await self.send_text(self._joined_message(joined, endpoint, controller))
            if not await session_wire.begin(self):
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender)
                nursery.start_soon(self._watch_sends)
                await self._receiver()
                nursery.cancel_scope.cancel()
        except CLIENT_GONE:
            pass
        finally:
            self.live.channels.discard(self)
            if not (self.left or self.ended or self.stalled or self.queue.closed):
                # the websocket dropped without a leave: a closed tab, a lost network (rule 8)
                tell_session(joined, Disconnected(joined.participant_id))
                gone = "disconnected"
            else:
                gone = "left" if self.left else "ended" if self.ended else "removed"
            log.info("left the session", extra={**fields, "reason": gone})

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
            "recorded": joined.recorded,
        }

    async def _sender(self) -> None:
        """Drain the queue: at most `flush_messages` batches per flush window (sooner when
        `flush_bytes` are pending), merged frames as one binary message, keyframes after a reset.
        More than one batch per window lets a typed line's echo and its output, a few ms apart,
        both go at once (the line latency's p99 was the window otherwise: docs/benchmarks.md);
        a steady stream is still coalesced. When the queue closes (the participant is gone from
        the session) what is left goes at once, without waiting for the window (nothing more
        will come to merge with it), and the websocket is closed."""
        flushes: collections.deque[float] = collections.deque([-math.inf] * self.flush_messages,
                                                              maxlen=self.flush_messages)
        try:
            while True:
                await self._ready.wait()
                self._ready = trio.Event()
                delay = flushes[0] + self.flush_seconds - trio.current_time()  # the oldest in the window
                if delay > 0 and self.queue.pending_bytes < self.flush_bytes and not self.queue.closed:
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

    async def _watch_sends(self) -> None:
        """A send in flight `stall_seconds` after it began (or CLOSE_LINGER, once the participant
        is gone from the session): the client took nothing for that long. The session is told it
        stalled (disconnected, audited) if it still runs, and the connection is cut: Hypercorn
        cannot cancel the send, and would hold the socket as long as the client does."""
        while True:
            await self._sending.wait()
            self._sending = trio.Event()
            began = self._send_began
            if began is None:
                continue
            # Once the participant is gone from the session (ended, terminated, ejected) what is
            # left to send is its last messages and the close: a send blocked CLOSE_LINGER is
            # cut then, not held until stall_seconds (checked every CLOSE_LINGER: a closed queue
            # wakes no one when it was not empty).
            deadline = began + self.stall_seconds
            while self._send_began == began and trio.current_time() < deadline:
                if self.queue.closed and trio.current_time() >= began + CLOSE_LINGER:
                    break
                await trio.sleep_until(min(deadline, trio.current_time() + CLOSE_LINGER))
            if self._send_began != began:
                continue  # that send completed; the next one, if any, set _sending
            self.stalled = True
            joined = self.joined
            if joined is not None and not self.queue.closed:
                tell_session(joined, ParticipantStalled(joined.participant_id, trio.current_time() - began))
            connection = (self.websocket.scope.get("state") or {}).get(CONNECTION_STATE_KEY)
            if connection is not None:
                connection.abort()
            self._receive_scope.cancel()
            return

    async def _deliver(self, item: Any) -> bool:
        """Send one queue item; True if it asked to close the websocket."""
        if item.kind in ("data", "keyframe"):
            assert self.session_wire is not None
            await self.session_wire.send_output(self, item)
            if item.kind == "data":
                self.metrics.delivered(item.value)
        else:
            event = item.value
            if isinstance(event, _Wire):
                await self.send_text(event.message)
            elif isinstance(event, _CloseRequest):
                await self.close(event.code, event.reason)
                return True
            else:
                if isinstance(event, SessionEnded):
                    self.ended = True
                elif isinstance(event, RemoteClipboard):
                    self.remote_clipboard = event.text
                message = wire.event_json(event)
                if message is not None:
                    if message["type"] == "state":  # countdowns run on the gateway's clock
                        message["now"] = self.services.now()
                    await self.send_text(message)
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
            tell_session(joined, Leave(joined.participant_id))
        elif isinstance(request, wire.RequestControl):
            # always refused by the engine (rule 6), which audits it; the refusal comes back here
            tell_session(joined, TransferControl(
                joined.participant_id, joined.participant_id, self.services.bridge.reply_to(self._control_reply)))
        elif isinstance(request, wire.EjectRequest):
            # the engine decides (controller or administrator; never the controller) and audits
            tell_session(joined, Eject(
                request.participant_id, self.user, request.reason, self.services.bridge.reply_to(self._eject_reply),
                by_participant=joined.participant_id))
        elif isinstance(request, wire.Ping):
            self.post({"type": "pong", "id": request.id})
        elif isinstance(request, wire.ChatRequest):
            self._say(joined, request.text.strip(), size)
        elif isinstance(request, wire.PointRequest):
            self._point(joined, request, size)
        elif isinstance(request, (wire.Start, wire.JoinRequest)):
            self.refuse_queued(wire.WireReason.UNEXPECTED_MESSAGE, "already in the session",
                               wire.kind_of(request), size)
        else:
            self.rights.handle(self, joined, request, size)

    def _say(self, joined: Joined, text: str, size: int) -> None:
        """Chat, common to every participant: bounded here (length, rate), so that a client that
        floods is refused and, past MAX_REFUSALS, closed; the session audits and tells everyone."""
        now = self.services.now()
        refused = policy.check_chat(text, self._said, now)
        if refused is not None:
            self.refuse_queued(refused.reason, refused.detail, "chat", size)
            return
        self._said.append(now)
        tell_session(joined, Say(joined.participant_id, text))

    def _point(self, joined: Joined, request: wire.PointRequest, size: int) -> None:
        """The pointer: shown to everyone, never input to the endpoint (there is no path to it here)."""
        now = self.services.now()
        refused = policy.check_point(self._pointed, now)
        if refused is not None:
            self.refuse_queued(refused.reason, refused.detail, "point", size)
            return
        self._pointed.append(now)
        tell_session(joined, Point(joined.participant_id, request.x, request.y))

    def _control_reply(self, reply: Any) -> None:
        if isinstance(reply, Refused) and not self.queue.closed:
            self.post(wire.refused(reply.reason, reply.detail, "request_control"))

    def _eject_reply(self, reply: Any) -> None:
        if isinstance(reply, Refused) and not self.queue.closed:
            self.post(wire.refused(reply.reason, reply.detail, "eject"))


def _leave_at_once(reply: Any) -> None:
    """A start or join answered after its websocket stopped waiting: nobody is there to take part."""
    if isinstance(reply, Joined):
        tell_session(reply, Leave(reply.participant_id))


def _size(message: dict[str, Any]) -> int:
    data = message.get("bytes")
    if data is not None:
        return len(data)
    return len(message.get("text") or "")

"""A joint session across nodes: this node's link to the others through the bus (docs/cluster.md).

A session lives on the node where its controller connected: its actors, its endpoint
connection and its rules stay there. `ClusterLink` plays both sides on every node:

- **Owning node.** For each session its engine runs, it answers on the session's control
  subject (protocols/session_bus.py): a join from another node becomes an ordinary engine
  `Join` whose sink is a `RemoteParticipant`, so the cap, presence, eject, expiry and
  terminate are decided by this node's SessionActor exactly as for a local viewer; a remote
  participant's leave, chat or pointer is told to the session under the participant id this
  node gave it (a node cannot speak for another participant). Frames are published ONCE per
  session (`SessionRelay`), whatever the number of remote viewers; each remote participant
  gets its own keyframe and control events on its own subject.
- **Viewer's node.** A viewer whose websocket lands here joins through the bus (`join`); this
  node holds ONE subscription per session (`_Mirror`) and fans the frames out to its own
  viewers' bounded queues, so a slow remote viewer only ever delays itself (its queue owes a
  resync, asked of the owning node).

Everything published goes through one `Outbox` (protocols/bus.py), an ordered FIFO fed from the actors'
threads without blocking and drained on the loop in batches (protocols/bus.py): it keeps a
joiner's keyframe and the frames after it in the EndpointActor's order. Every node's live
sessions, for the dashboards: cluster_live.py.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable

import trio

from dashboard.services import Services
from dashboard.services.cluster_access import AccessAcrossNodes, known_user
from dashboard.services.cluster_files import serve_files
from dashboard.services.cluster_live import NodeSessions
from engine import LoopClosed, tell_session
from engine.messages import (
    Accepted, Disconnected, Eject, EndpointSpec, EndReason, Flush, Frame, Input, Join, Joined, Keyframe, Leave,
    ParticipantStalled, Point, Reason, Refused, Resize, Say, SessionEnded, SessionFinished, SessionUpdated, Terminate,
    TransferControl, User,
)
from protocols import session_bus as sb
from protocols.bus import Bus, BusError, BusTimeout, Outbox

log = logging.getLogger(__name__)

REQUEST_SECONDS = 5.0  # a join or terminate crosses two nodes; the owning node answers in milliseconds
ENGINE_SECONDS = 15.0  # as the gateway's own bound on the engine's answer
PUBLISH_MAX_BYTES = 32 << 20  # frames waiting for the bus; past it a frame is dropped and its viewers resync
MIRROR_QUEUE = 8192  # messages a node's subscription to one session holds for its reader
_PARTICIPANT_MESSAGES = (Leave, Disconnected, ParticipantStalled, Say, Point, Input, Resize)


class SessionRelay:
    """The owning node's one publication of a session's frames. The EndpointActor offers each
    frame, the same object, to every remote participant's sink in turn: only the first offer
    of a frame publishes it."""

    def __init__(self, link: "ClusterLink", session_id: str) -> None:
        self._link = link
        self._subject = sb.frame_subject(session_id)
        self._lock = threading.Lock()
        self._last: Frame | None = None
        self._seq = 0  # frames published: a gap in the numbers tells a viewer's node it lost some
        self.participants: dict[str, "RemoteParticipant"] = {}  # token → sink

    def frame(self, frame: Frame) -> None:
        with self._lock:
            if frame is self._last:
                return
            self._last = frame
            payload = sb.encode_frame(frame, self._seq + 1)
            published = self._link.publisher.put(self._subject, payload, droppable=True)
            if published:
                self._seq += 1
        if not published:
            for participant in list(self.participants.values()):  # they missed it: a keyframe for each
                participant.resync()


class RemoteParticipant:
    """The sink, on the owning node, of a participant whose websocket is on another node: what
    the engine delivers to it goes to the bus. It never refuses a frame: the viewer's own node
    bounds its queue (and asks for a resync through the control subject)."""

    def __init__(self, link: "ClusterLink", relay: SessionRelay, session_id: str, token: str, user: User) -> None:
        self._link = link
        self._relay = relay
        self._subject = sb.participant_subject(session_id, token)
        self.token = token
        self.user = user
        self.participant_id = ""  # given by the session's answer
        self._request_keyframe: Callable[[], None] | None = None

    def attach(self, request_keyframe: Callable[[], None]) -> None:
        self._request_keyframe = request_keyframe

    def resync(self) -> None:
        if self._request_keyframe is not None:
            self._request_keyframe()

    def offer(self, frame: Frame) -> bool:
        self._relay.frame(frame)
        return True

    def keyframe(self, keyframe: Keyframe, resync: bool = False) -> None:
        self._link.publisher.put(self._subject, sb.encode({"keyframe": keyframe, "resync": resync}))

    def event(self, event: Any) -> None:
        try:
            payload = sb.encode({"event": event})
        except TypeError:
            return  # an event for this node's own business (a recorder's), not for a client
        self._link.publisher.put(self._subject, payload)

    def close(self) -> None:
        self._relay.participants.pop(self.token, None)
        self._link.publisher.put(self._subject, sb.encode({"closed": True}))


class RemoteSession:
    """Stands for the SessionActor in a remote participant's `Joined` (`Joined.session`), so
    that the gateway's `tell_session` reaches the owning node: every message goes to the
    session's control subject with this participant's token."""

    def __init__(self, link: "ClusterLink", session_id: str, token: str) -> None:
        self._link, self._session_id, self._token = link, session_id, token
        self._subject = sb.control_subject(session_id)

    def tell(self, message: Any) -> None:
        reply_to = getattr(message, "reply_to", None)
        if reply_to is None:
            self._link.publisher.put(self._subject, sb.encode({"op": "tell", "token": self._token,
                                                               "message": message}))
            return
        self._link.spawn(self._request, message, reply_to)

    async def _request(self, message: Any, reply_to: Callable[[Any], None]) -> None:
        try:
            answer = await self._link.ask(self._session_id, {"op": "ask", "token": self._token, "message": message})
        except (BusError, sb.WireError) as exc:
            log.info("no answer from the session's node: %s", exc)
            answer = Refused(Reason.SESSION_ENDED, "the session's node does not answer")
        reply_to(answer)


@dataclass(eq=False)
class _Viewer:
    queue: Any  # the channel's FlushQueue
    keyed: bool = False  # its keyframe arrived: the frames after it are its own


class _Mirror:
    """This node's one subscription to a session run elsewhere, and its viewers here."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.viewers: dict[str, _Viewer] = {}
        self.subscription: Any = None
        self.last_seq: int | None = None  # of the last frame that arrived
        self.frames_lost = 0

    def frame(self, frame: Frame, seq: int) -> None:
        """A frame to every viewer here that has its keyframe. Frames the bus lost on the way
        (an outage, this subscription too slow) would leave the viewers' screens wrong until
        the next keyframe: each of them owes a resync instead, asked of the owning node."""
        lost = seq - self.last_seq - 1 if self.last_seq is not None else 0
        self.last_seq = seq
        if lost > 0:
            self.frames_lost += lost
            log.warning("session %s: %d frames lost on the bus; its viewers here resync", self.session_id, lost)
        for viewer in list(self.viewers.values()):
            if viewer.keyed:
                if lost > 0:
                    viewer.queue.missed(lost)
                viewer.queue.offer(frame)


class ClusterLink:
    """This node's side of the bus (``services.cluster``). Run with `run` in the serving nursery."""

    def __init__(self, services: Services, bus: Bus, node_id: str) -> None:
        self.services = services
        self.bus = bus
        self.node_id = node_id
        self.publisher = Outbox(self._on_loop, PUBLISH_MAX_BYTES)
        self._nursery: trio.Nursery | None = None
        self._owned: dict[str, tuple[SessionRelay, trio.CancelScope]] = {}
        self._mirrors: dict[str, _Mirror] = {}
        self._spawns: Any = None
        self.sessions = NodeSessions(services, bus, node_id, self.publisher.put)  # every node's live sessions
        # this node's app's directory of the sessions it serves (dashboard.services.live_sessions),
        # which knows the approval each session of this node runs under: set by create_app
        self.directory: Any = None
        self.access = AccessAcrossNodes(self)  # approvals and requests for access, on every node
        # how often the sessions followed here are looked up in the database (_watch_owners)
        self.owner_check_seconds = min(1.0, services.settings.engine.heartbeat_seconds)

    def _on_loop(self, fn: Callable[[], None]) -> None:
        try:
            self.services.bridge.call_soon(fn)
        except LoopClosed:
            pass

    def spawn(self, async_fn: Callable[..., Any], *args: Any) -> None:
        """Run a task in this link's nursery, from the loop's callbacks too: the bus's client
        (trio-asyncio) is reachable only from tasks started inside the bus's lifetime, which
        tasks started by the loop bridge's callbacks are not."""
        try:
            self._spawns.send_nowait((async_fn, args))
        except (trio.WouldBlock, trio.ClosedResourceError):
            log.warning("the cluster link is not running: %s dropped", getattr(async_fn, "__name__", async_fn))

    async def _run_spawns(self, nursery: trio.Nursery, receive: Any) -> None:
        async for async_fn, args in receive:
            nursery.start_soon(async_fn, *args)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._spawns, receive = trio.open_memory_channel[tuple[Any, tuple[Any, ...]]](math.inf)
            nursery.start_soon(self._run_spawns, nursery, receive)
            nursery.start_soon(self.publisher.drain, self.bus)
            nursery.start_soon(self._watch_owners)
            nursery.start_soon(self.sessions.run)
            nursery.start_soon(self.access.follow)
            self.services.engine.watch(self.services.bridge.reply_to(self._on_change))
            for summary in self.services.engine.live_sessions():
                self._own(summary.session_id)
            task_status.started()

    # --- the owning node -----------------------------------------------------------------------

    def _on_change(self, change: Any) -> None:
        if isinstance(change, SessionUpdated):
            self._own(change.summary.session_id)
        elif isinstance(change, SessionFinished):
            owned = self._owned.pop(change.session_id, None)
            if owned is not None:
                owned[1].cancel()
        self.sessions.note(change)

    def _own(self, session_id: str) -> None:
        """A session of this node's engine appeared (its watch): answer for it on the bus."""
        if session_id not in self._owned:
            self.spawn(self.own, session_id)

    async def own(self, session_id: str) -> None:
        """Answer for a session this node runs; returns once other nodes can reach it (the
        start socket waits for this before it tells the controller the session's id)."""
        if session_id in self._owned or self._nursery is None or not sb.safe_id(session_id) \
                or self.sessions.ended_lately(session_id):
            return
        relay, scope = SessionRelay(self, session_id), trio.CancelScope()
        self._owned[session_id] = (relay, scope)
        try:
            subscription = await self.bus.subscribe(sb.control_subject(session_id))
        except BusError as exc:
            log.warning("session %s cannot be joined from other nodes: %s", session_id, exc)
            self._owned.pop(session_id, None)
            return
        self.spawn(self._serve_control, session_id, relay, scope, subscription)

    async def _serve_control(self, session_id: str, relay: SessionRelay, scope: trio.CancelScope,
                             subscription: Any) -> None:
        with scope:
            try:
                async for message in subscription:
                    try:
                        body = sb.decode(message.payload)
                    except sb.WireError as exc:
                        log.warning("session %s: a control message not understood: %s", session_id, exc)
                        continue
                    if isinstance(body, dict):
                        # in the link's nursery: a terminate's answer outlives the session it ends
                        assert self._nursery is not None
                        self._nursery.start_soon(self._control, session_id, relay, body, message)
            finally:
                with trio.CancelScope(shield=True):
                    await subscription.unsubscribe()

    async def _control(self, session_id: str, relay: SessionRelay, body: dict[str, Any], message: Any) -> None:
        op, services = body.get("op"), self.services
        if op == "join":
            answer = await self._join_here(session_id, relay, body)
        elif op == "terminate":
            by = await known_user(services, body.get("by"))
            if by is None:
                return
            answer = await services.bridge.request(
                lambda reply_to: services.engine.route(session_id, Terminate(by, reply_to)), ENGINE_SECONDS)
            if isinstance(answer, Accepted):  # the terminate row is committed before the answer
                await services.bridge.request(lambda reply_to: services.audit(Flush(reply_to)), 2.0)
        elif op in ("tell", "ask"):
            participant = relay.participants.get(str(body.get("token")))
            inner = self._as_participant(participant, body.get("message"))
            if inner is None:
                # a node that speaks for no participant of this session: nothing reaches the
                # session, and input (or a resize) for its endpoint is audited as on a websocket
                answer = Refused(Reason.NOT_A_PARTICIPANT)
                if isinstance(body.get("message"), (Input, Resize)):
                    services.audit_event("input_refused", None, session_id, reason=answer.reason.value, via="bus",
                                         message=type(body.get("message")).__name__)
            elif op == "tell":
                services.engine.route(session_id, inner)
                return
            else:
                answer = await services.bridge.request(
                    lambda reply_to: services.engine.route(session_id, replace(inner, reply_to=reply_to)),
                    ENGINE_SECONDS)
        elif op in ("extend", "approval"):
            answer = await self.access.answer(op, session_id, body)
        elif op == "files":
            answer = await serve_files(self, session_id, body)
        elif op == "resync":
            participant = relay.participants.get(str(body.get("token")))
            if participant is not None:
                participant.resync()
            return
        else:
            return
        if message.reply:
            try:
                await message.respond(sb.encode({"answer": answer or Refused(Reason.SESSION_ENDED,
                                                                              "the engine did not answer")}))
            except BusError as exc:
                log.info("session %s: cannot answer a %s: %s", session_id, op, exc)

    @staticmethod
    def _as_participant(participant: RemoteParticipant | None, inner: Any) -> Any:
        """A remote participant's message as this node lets it reach the session: under the
        participant id and user this node gave it at its join, whatever the message said."""
        if participant is None or not participant.participant_id:
            return None
        pid = participant.participant_id
        if isinstance(inner, _PARTICIPANT_MESSAGES):
            return replace(inner, participant_id=pid)
        if isinstance(inner, Eject):
            return replace(inner, by=participant.user, by_participant=pid)
        if isinstance(inner, TransferControl):
            return replace(inner, participant_id=pid)
        return None

    async def _join_here(self, session_id: str, relay: SessionRelay, body: dict[str, Any]) -> Any:
        services = self.services
        user, token = await known_user(services, body.get("user")), str(body.get("token", ""))
        if user is None or not sb.safe_id(token) or token in relay.participants:
            return Refused(Reason.MALFORMED, "a join from another node that this node cannot read, or of no user")
        summary = services.engine.session(session_id)
        if summary is None:
            return Refused(Reason.UNKNOWN_SESSION)
        # the access model is the database's: this node decides as the viewer's node would
        has_access = await trio.to_thread.run_sync(services.access.may_join, user, summary.endpoint.id)
        participant = RemoteParticipant(self, relay, session_id, token, user)
        relay.participants[token] = participant

        def leave_late(reply: Any) -> None:
            if isinstance(reply, Joined):
                tell_session(reply, Leave(reply.participant_id))

        answer = await services.bridge.request(
            lambda reply_to: services.engine.route(session_id, Join(user, participant, reply_to, has_access)),
            ENGINE_SECONDS, on_late=leave_late)
        if not isinstance(answer, Joined):
            relay.participants.pop(token, None)
            return answer
        participant.participant_id = answer.participant_id
        return {"joined": answer, "endpoint": summary.endpoint, "controller": summary.controller,
                "node": self.node_id}

    # --- a viewer's node -----------------------------------------------------------------------

    async def ask(self, session_id: str, body: dict[str, Any], seconds: float = REQUEST_SECONDS) -> Any:
        """The answer of the node that runs `session_id` to `body` (None if its reply has none).
        Raises BusTimeout (no node answers), BusError or sb.WireError (no readable reply)."""
        reply = sb.decode((await self.bus.request(sb.control_subject(session_id), sb.encode(body), seconds)).payload)
        return reply.get("answer") if isinstance(reply, dict) else None

    async def join(self, session_id: str, user: User, queue: Any
                   ) -> tuple[Joined, EndpointSpec, User, str] | Refused:
        """Join a session that another node runs, for a websocket served here whose bounded
        queue is `queue`. Its Joined's `session` is a `RemoteSession`: `tell_session` works."""
        if not sb.safe_id(session_id) or self._nursery is None:
            return Refused(Reason.UNKNOWN_SESSION)
        token = secrets.token_hex(8)
        mirror = await self._mirror(session_id)
        if mirror is None:
            return Refused(Reason.UNKNOWN_SESSION, "the bus between nodes is unreachable")
        viewer = mirror.viewers[token] = _Viewer(queue)
        resync = sb.encode({"op": "resync", "token": token})
        queue.attach(lambda: self.publisher.put(sb.control_subject(session_id), resync))
        try:
            answer = await self.ask(session_id, {"op": "join", "token": token, "user": user})
        except BusTimeout:
            log.info("join of %s: no node answered", session_id)
            answer = Refused(Reason.UNKNOWN_SESSION)  # no node runs it
        except (BusError, sb.WireError) as exc:
            log.warning("joining session %s through the bus: %s", session_id, exc)
            answer = Refused(Reason.UNKNOWN_SESSION, "the session's node does not answer")
        if isinstance(answer, dict) and isinstance(answer.get("joined"), Joined):
            joined = replace(answer["joined"], session=RemoteSession(self, session_id, token))
            return joined, answer["endpoint"], answer["controller"], str(answer.get("node"))
        self._forget(mirror, token, viewer)
        return answer if isinstance(answer, Refused) else Refused(Reason.UNKNOWN_SESSION)

    async def terminate(self, session_id: str, by: User) -> Accepted | Refused | None:
        """Terminate a session that another node runs (the owning node decides and audits)."""
        if not sb.safe_id(session_id):
            return Refused(Reason.UNKNOWN_SESSION)
        try:
            answer = await self.ask(session_id, {"op": "terminate", "by": by})
        except BusTimeout:
            return Refused(Reason.UNKNOWN_SESSION)
        except (BusError, sb.WireError) as exc:
            log.warning("terminating session %s through the bus: %s", session_id, exc)
            return None
        return answer if isinstance(answer, (Accepted, Refused)) else None

    async def _mirror(self, session_id: str) -> _Mirror | None:
        mirror = self._mirrors.get(session_id)
        if mirror is not None:
            return mirror
        mirror = self._mirrors[session_id] = _Mirror(session_id)
        try:
            mirror.subscription = await self.bus.subscribe(sb.output_subjects(session_id), queue_size=MIRROR_QUEUE)
        except BusError as exc:
            log.warning("cannot follow session %s: %s", session_id, exc)
            self._mirrors.pop(session_id, None)
            return None
        self.spawn(self._follow, mirror)
        return mirror

    def _forget(self, mirror: _Mirror, token: str, viewer: _Viewer | None = None) -> None:
        if viewer is None or mirror.viewers.get(token) is viewer:
            mirror.viewers.pop(token, None)
        if not mirror.viewers and self._mirrors.get(mirror.session_id) is mirror:
            del self._mirrors[mirror.session_id]
            if mirror.subscription is not None:
                self.spawn(mirror.subscription.unsubscribe)

    async def _watch_owners(self) -> None:
        """A node that dies says nothing: the survivor that sweeps ends its sessions in the
        database (`node_failed`, engine/nodes.py). Every `owner_check_seconds` each session
        followed here is looked up there, and an ended one ends for the viewers here, with the
        reason it was given. So a viewer sees its session's end within the lease (three of the
        dead node's heartbeats) plus a heartbeat plus this check."""
        while True:
            await trio.sleep(self.owner_check_seconds)
            for session_id, mirror in list(self._mirrors.items()):
                try:
                    row = await trio.to_thread.run_sync(self.services.audit_reader.session, session_id)
                except Exception as exc:  # the database is down: look again at the next check
                    log.info("cannot check session %s: %s", session_id, type(exc).__name__)
                    continue
                if row is None or row.get("ended_at") is None or self._mirrors.get(session_id) is not mirror:
                    continue
                try:
                    reason = EndReason(row.get("end_reason"))
                except ValueError:
                    reason = EndReason.NODE_FAILED
                if reason is not EndReason.NODE_FAILED and \
                        self.services.now() - float(row["ended_at"]) < 3 * self.owner_check_seconds:
                    continue  # its own node's end is on its way through the bus, with who ended it
                log.warning("session %s ended on its node (%s): closing its viewers here", session_id, reason)
                for token, viewer in list(mirror.viewers.items()):
                    viewer.queue.event(SessionEnded(reason, None, "the node that ran the session stopped"
                                                    if reason is EndReason.NODE_FAILED else ""))
                    viewer.queue.close()
                    self._forget(mirror, token, viewer)

    async def _follow(self, mirror: _Mirror) -> None:
        """The session's frames to every viewer here (each its own bounded queue), and each
        viewer's keyframes and events to that viewer alone."""
        async for message in mirror.subscription:
            token = sb.token_of(message.subject)
            try:
                if token is None:
                    mirror.frame(*sb.decode_frame(message.payload))
                    continue
                viewer = mirror.viewers.get(token)
                if viewer is None:
                    continue  # another node's viewer
                body = sb.decode(message.payload)
            except sb.WireError as exc:
                log.warning("session %s: a message from its node not understood: %s", mirror.session_id, exc)
                continue
            if not isinstance(body, dict):
                continue
            if isinstance(body.get("keyframe"), Keyframe):
                viewer.queue.keyframe(body["keyframe"], bool(body.get("resync")))
                viewer.keyed = True
            elif "event" in body:
                viewer.queue.event(body["event"])
            elif body.get("closed"):
                viewer.queue.close()
                self._forget(mirror, token, viewer)

"""`Engine`: the public surface of the actor system, for the gateway and for load testers.

Two kinds of calls:
- non-blocking (`submit_start`, `route`, `watch`, `set_joint_session`, `audit`, and
  `tell_session` for a participant's own messages): safe on the trio loop;
  answers come through the `reply_to` carried by each message;
- blocking (`open_session`, `join_session`, `terminate`, `extend`, `stop`): for Python code
  that drives the actors directly (load tests, scripts, tests). Never call them on the loop.

Refusals are values: `open_session` and `join_session` return a `Participant` or a `Refused`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
import threading
import time
from typing import Any, Callable

import pykka

from config.settings import Settings, load
from engine.actors.base import send
from engine.actors.pool import ActorPool
from engine.actors.supervisor import EngineSupervisor
from engine.clock import Clock, SystemClock
from engine.errors import EngineNotRunning, ReplyTimeout
from engine.metrics import EngineMetrics
from engine.messages import (
    Accepted, AuditEvent, ClaimNode, Describe, Disconnected, Eject, EndpointSpec, Extend, Flush, Flushed, Input,
    Join, Joined, Leave, NodeClaimed, RecordingPolicy, Refused, Resize, Route, SessionSummary, SetJointSession,
    Shutdown, StartSession, Terminate, TransferControl, User, Watch,
)
from engine.nodes import Node
from engine.recorders import Recordings
from engine.sinks import CollectingSink
from engine.store import StoreActor

log = logging.getLogger(__name__)

_CLAIM_SECONDS = 60.0  # claiming the node's row: one transaction, plus the ends of what a crash left open

# The threads that run the engine's actors: the workers of every actor pool, and the store's own
# thread (pykka names a ThreadingActor's thread after its class).
_ACTOR_THREAD = re.compile(r"^(cosession-actors-\d+-\d+|StoreActor-\d+)$")


def actor_threads() -> list[threading.Thread]:
    """Every thread that runs an actor of an engine in this process; none once they stopped."""
    return [t for t in threading.enumerate() if _ACTOR_THREAD.match(t.name)]


def tell_session(joined: Joined, message: Any) -> bool:
    """Tell a participant's session one of that participant's messages (`Input`, `Resize`,
    `Leave`, `Disconnected`), straight to the session's actor. Never blocks: safe on the loop.
    False if the session has already ended (a late message is not an error)."""
    return send(joined.session, message)


class Participant:
    """A controller's or viewer's handle on a session, for Python callers."""

    def __init__(self, engine: "Engine", joined: Joined, sink: Any) -> None:
        self._engine = engine
        self.joined = joined
        self.sink = sink

    session_id = property(lambda self: self.joined.session_id)
    participant_id = property(lambda self: self.joined.participant_id)
    role = property(lambda self: self.joined.role)

    def send_input(self, data: bytes | str) -> None:
        tell_session(self.joined, Input(self.participant_id, data.encode() if isinstance(data, str) else data))

    def resize(self, cols: int, rows: int) -> None:
        tell_session(self.joined, Resize(self.participant_id, cols, rows))

    def leave(self) -> None:
        tell_session(self.joined, Leave(self.participant_id))

    def disconnect(self) -> None:
        """As if the participant's tab closed."""
        tell_session(self.joined, Disconnected(self.participant_id))

    def eject(self, participant_id: str, by: User, reason: str = "", timeout: float = 10) -> Accepted | Refused:
        """Eject another participant, as `by`: this participant when it is this participant's
        user, else someone outside the session (an administrator)."""
        mine = any(m.participant_id == self.participant_id and m.user.id == by.id for m in self.joined.members)
        return self._engine._call(lambda r: self._engine.route(self.session_id, Eject(
            participant_id, by, reason, r, by_participant=self.participant_id if mine else None)), timeout)

    def request_control(self, timeout: float = 10) -> Refused:
        return self._engine._call(lambda r: self._engine.route(
            self.session_id, TransferControl(self.participant_id, self.participant_id, r)), timeout)

    def wait_for_output(self, needle: bytes | str, timeout: float = 5.0) -> bool:
        needle = needle.encode() if isinstance(needle, str) else needle
        return self.sink.wait_for(lambda s: needle in s.output, timeout)

    def __repr__(self) -> str:
        return f"Participant({self.participant_id}, {self.role.value}, session={self.session_id})"


class Engine:
    def __init__(self, settings: Settings | None = None, *, clock: Clock | None = None,
                 database_url: str | None = None,
                 connect: Callable[[StartSession], Any] | None = None,
                 metrics: EngineMetrics | None = None) -> None:
        self.settings = settings or load()
        # what the actors count, on its own registry unless the caller shares one (/metrics)
        self.metrics = metrics if metrics is not None else EngineMetrics()
        self._own_clock = clock is None
        self._clock = clock
        self._database_url = database_url or self.settings.database_url
        self._connect = connect or self._no_connect
        self._directory: dict[str, SessionSummary] = {}
        self._pool: ActorPool | None = None
        self._store: Any = None
        self._supervisor: Any = None
        self.recordings: Recordings | None = None  # the recorded sessions' files (engine/recorder.py)
        self.node: Node | None = None  # this run of this node, once started (engine/nodes.py)
        self.recovered: tuple[str, ...] = ()  # sessions an earlier run left open, ended at start

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> "Engine":
        """Start the store, claim this node's row (ending, as `gateway_restarted`, the sessions
        an earlier run of this node left open), then the supervisor. Raises `NodeInUse` if a
        running process uses this node's name on this database, or the database's error."""
        if self._own_clock:
            self._clock = SystemClock()
        node = Node.this_process(self.settings.engine.node_id)
        # The store keeps a thread of its own: its commits block on the database, and a pool
        # worker blocked there would be taken from every session (engine/actors/pool.py).
        self._store = StoreActor.start(self._database_url, self._clock, node=node,
                                       heartbeat_seconds=self.settings.engine.heartbeat_seconds,
                                       refusal_interval=self.settings.audit.refusal_interval_seconds,
                                       metrics=self.metrics)
        try:
            claimed = self._call(lambda r: self._store.tell(ClaimNode(r)), _CLAIM_SECONDS)
        except ReplyTimeout as exc:
            claimed = exc
        if not isinstance(claimed, NodeClaimed):
            self._store.stop()
            self._store = None
            if self._own_clock:
                self._clock.stop()
            raise claimed
        self.node, self.recovered = node, claimed.ended
        self._pool = ActorPool(self.settings.engine.actor_workers)
        self.recordings = Recordings(self.settings.recordings, self.settings.recordings_path, self._clock,
                                     self._store, self.settings.audit.refusal_interval_seconds)
        self.recordings.recover(claimed.ended)
        self.recordings.start_retention()
        self._supervisor = EngineSupervisor.start_on(
            self._pool, store=self._store, clock=self._clock, settings=self.settings.engine,
            connect=self._connect, directory=self._directory, metrics=self.metrics, recordings=self.recordings)
        return self

    def stop(self, timeout: float = 120.0) -> None:
        """End every session (engine_stopped), stop every actor (anything a failure orphaned
        too), end the pool's workers, then commit the audit log and stop the store. Never raises:
        past `timeout` whatever is left is stopped without waiting for sessions to end, and the
        problem is logged."""
        if self._supervisor is None:
            return
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        try:
            self._call(lambda r: self._supervisor.tell(Shutdown(r)), left())
        except (ReplyTimeout, pykka.ActorDeadError):
            log.error("sessions did not all end within %.0f s; stopping their actors", timeout)
        try:
            self._supervisor.stop(block=True, timeout=left())
        except (pykka.Timeout, pykka.ActorDeadError):
            log.error("the supervisor did not stop in time")
        self._supervisor = None
        self._pool.stop(left())  # and anything orphaned by a failure
        if self.recordings is not None:  # every recording closed (and audited) before the store stops
            self.recordings.stop(left())
        try:  # the store last: it commits what was told to it
            self._store.stop(block=True, timeout=left())
        except (pykka.Timeout, pykka.ActorDeadError):
            log.error("the store did not stop in time")
        self._store = None
        for thread in actor_threads():
            thread.join(left())
        if self._own_clock and self._clock is not None:
            self._clock.stop()

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def actor_pool(self) -> ActorPool | None:
        """The pool that runs this engine's actors (kept after stop, for its final count)."""
        return self._pool

    def alive(self) -> bool:
        """The supervisor and the audit store are running (for readiness probes). Never blocks."""
        return all(ref is not None and ref.is_alive() for ref in (self._supervisor, self._store))

    # --- non-blocking: safe on the event loop ------------------------------------------------

    def submit_start(self, start: StartSession) -> None:
        self._running().tell(start)

    def route(self, session_id: str, message: Any) -> None:
        self._running().tell(Route(session_id, message))

    def watch(self, callback: Callable[[Any], None]) -> None:
        self._running().tell(Watch(callback))

    def set_joint_session(self, endpoint_id: str, enabled: bool) -> None:
        self._running().tell(SetJointSession(endpoint_id, enabled))

    def live_sessions(self) -> list[SessionSummary]:
        return list(self._directory.values())

    def session(self, session_id: str) -> SessionSummary | None:
        return self._directory.get(session_id)

    def audit(self, message: Any) -> None:
        """Tell the audit store an `AuditEvent`, or a `Flush` whose reply says that everything
        told before it is committed. Raises `EngineNotRunning` if the engine is not running."""
        if self._store is None:
            raise EngineNotRunning("the engine is not running")
        send(self._store, message)
        if self.recordings is not None and isinstance(message, AuditEvent):
            self.recordings.mark(message)  # a marker on its session's recording, if it is one

    # --- blocking: for load testers and scripts, never on the event loop ---------------------

    def open_session(self, endpoint: EndpointSpec, controller: User, *, connection: Any = None,
                     sink: Any = None, deadline: float | None = None, cols: int = 80, rows: int = 24,
                     record: bool = False, recording_policy: RecordingPolicy = RecordingPolicy.END_SESSION,
                     timeout: float = 10.0) -> Participant | Refused:
        sink = sink if sink is not None else CollectingSink()
        answer = self._call(lambda r: self.submit_start(StartSession(
            endpoint, controller, sink, r, connection, deadline, cols, rows, record=record,
            recording_policy=recording_policy)), timeout)
        return Participant(self, answer, sink) if isinstance(answer, Joined) else answer

    def join_session(self, session_id: str, user: User, *, sink: Any = None, has_access: bool = True,
                     timeout: float = 10.0) -> Participant | Refused:
        sink = sink if sink is not None else CollectingSink()
        answer = self._call(lambda r: self.route(session_id, Join(user, sink, r, has_access)), timeout)
        return Participant(self, answer, sink) if isinstance(answer, Joined) else answer

    def terminate(self, session_id: str, by: User, timeout: float = 10.0) -> Accepted | Refused:
        return self._call(lambda r: self.route(session_id, Terminate(by, r)), timeout)

    def extend(self, session_id: str, until: float, by: User, timeout: float = 10.0) -> Accepted | Refused:
        return self._call(lambda r: self.route(session_id, Extend(until, by, r)), timeout)

    def describe(self, session_id: str, timeout: float = 10.0) -> SessionSummary | Refused:
        """The session as it is after every message sent to it before this call."""
        return self._call(lambda r: self.route(session_id, Describe(r)), timeout)

    def flush_audit(self, timeout: float = 10.0) -> Flushed:
        if self._store is None:
            raise EngineNotRunning("the engine is not running")
        return self._call(lambda r: self._store.tell(Flush(r)), timeout)

    # --- internals --------------------------------------------------------------------------

    def _running(self) -> Any:
        if self._supervisor is None:
            raise EngineNotRunning("start the engine first")
        return self._supervisor

    def _call(self, tell: Callable[[Callable[[Any], None]], None], timeout: float) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        tell(future.set_result)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            raise ReplyTimeout(f"no reply within {timeout} s") from exc

    @staticmethod
    def _no_connect(start: StartSession) -> Any:
        """Without a `connect` factory every start must carry its connection: the engine
        never builds one itself (it imports no adapter; the caller owns protocols/)."""
        raise ValueError(f"no connection given for endpoint {start.endpoint.id}")

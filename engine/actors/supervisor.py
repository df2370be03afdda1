"""EngineSupervisor: the root of the tree. Starts sessions, routes messages to them by id,
keeps the directory of live sessions that dashboards watch, and cleans up after a session
actor that crashed.

Restart strategy: one_for_one, sessions *temporary*: a crashed session is not restarted (its
live connections cannot be rebuilt); the root stops its children, which closes the endpoint
connection, tells every participant the session ended with `session_failed`, and audits the
end. The store is started by the Engine, not here, so that it outlives every session.
"""

from __future__ import annotations

import collections
import logging
import uuid
from dataclasses import replace
from typing import Any, Callable

from engine.actors.base import reply, send
from engine.actors.participant import ParticipantActor
from engine.actors.pool import PooledActor
from engine.actors.session import SessionActor
from engine.clock import Clock
from engine.metrics import EngineMetrics
from engine.messages import (
    Accepted, AuditEvent, AuditSessionEnded, ChildFailed, EndReason, Reason, Refused, Route, SessionEnded,
    SessionFinished, SessionSummary, SessionUpdated, SetJointSession, Shutdown, StartSession, Watch,
)
from config.settings import EngineSettings

log = logging.getLogger(__name__)

_RECENTLY_ENDED = 4096  # ended session ids remembered, to say "ended" rather than "unknown"


class EngineSupervisor(PooledActor):
    def __init__(self, *, store: Any, clock: Clock, settings: EngineSettings,
                 connect: Callable[[StartSession], Any], directory: dict[str, SessionSummary],
                 metrics: EngineMetrics | None = None, recordings: Any = None) -> None:
        super().__init__()
        self._recordings = recordings  # engine.recorders.Recordings, handed to every session
        self._store = store
        self._metrics = metrics if metrics is not None else EngineMetrics()
        self._clock = clock
        self._settings = settings
        self._connect = connect
        self._sessions: dict[str, Any] = {}
        # Written only here, read by any thread (a dict read is atomic): the live list.
        self._directory = directory
        self._ended: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._watchers: list[Callable[[Any], None]] = []
        self._shutdown_waiters: list[Any] = []

    def on_receive(self, message: Any) -> None:
        match message:
            case Route(session_id=sid, message=inner):
                ref = self._sessions.get(sid)
                if ref is None or not send(ref, inner):
                    reason = Reason.SESSION_ENDED if sid in self._ended else Reason.UNKNOWN_SESSION
                    reply(getattr(inner, "reply_to", None), Refused(reason))
            case StartSession():
                self._start_session(message)
            case SessionUpdated(summary=summary):
                if summary.session_id in self._sessions:
                    self._directory[summary.session_id] = summary
                    self._notify(message)
            case SessionFinished():
                self._forget(message)
            case ChildFailed(kind="session"):
                self._on_session_failed(message)
            case SetJointSession(endpoint_id=endpoint_id):
                for sid, summary in list(self._directory.items()):
                    if summary.endpoint.id == endpoint_id:
                        send(self._sessions.get(sid), message)
            case Watch(callback=callback):
                self._watchers.append(callback)
            case Shutdown(reply_to=reply_to):
                self._shutdown_waiters.append(reply_to)
                for ref in list(self._sessions.values()):
                    send(ref, Shutdown())
                self._maybe_finish_shutdown()
            case _:
                log.warning("supervisor ignored %r", type(message).__name__)

    def _start_session(self, start: StartSession) -> None:
        if self._shutdown_waiters:
            reply(start.reply_to, Refused(Reason.ENDPOINT_UNAVAILABLE, "the engine is stopping"))
            return
        session_id = start.session_id or uuid.uuid4().hex
        try:
            connection = start.connection if start.connection is not None else self._connect(start)
        except Exception as exc:  # a bad endpoint definition refuses this start, nothing else
            log.exception("cannot build a connection to endpoint %s", start.endpoint.id)
            reply(start.reply_to, Refused(Reason.ENDPOINT_UNAVAILABLE, type(exc).__name__))
            return
        start = replace(start, connection=connection, session_id=session_id)
        ref = SessionActor.start(session_id, start, supervisor=self.actor_ref, store=self._store,
                                 clock=self._clock, settings=self._settings, metrics=self._metrics,
                                 recordings=self._recordings)
        self._sessions[session_id] = ref
        ref.tell(start)

    def _forget(self, finished: SessionFinished) -> None:
        if self._sessions.pop(finished.session_id, None) is None:
            return
        self._directory.pop(finished.session_id, None)
        self._ended[finished.session_id] = None
        while len(self._ended) > _RECENTLY_ENDED:
            self._ended.popitem(last=False)
        self._notify(finished)
        self._maybe_finish_shutdown()

    def _on_session_failed(self, failed: ChildFailed) -> None:
        log.error("session %s failed: %s; cleaning up", failed.child_id, failed.detail)
        final = SessionEnded(EndReason.SESSION_FAILED, None, "internal error")
        for child in failed.children:
            if child.actor_class is ParticipantActor:
                send(child, final)
            child.stop(block=False)
        self._store.tell(AuditEvent.make("session_failure", self._clock.now(), failed.child_id,
                                         error=failed.detail))
        ended_at = self._clock.now()
        if self._recordings is not None:  # its endpoint, stopped above, closes the recording
            self._recordings.ended(failed.child_id, EndReason.SESSION_FAILED.value, ended_at)
        self._store.tell(AuditSessionEnded(failed.child_id, ended_at, EndReason.SESSION_FAILED.value))
        self._forget(SessionFinished(failed.child_id, EndReason.SESSION_FAILED))

    def _notify(self, change: Any) -> None:
        for watcher in self._watchers:
            try:
                watcher(change)
            except Exception:
                log.exception("a session watcher failed")

    def _maybe_finish_shutdown(self) -> None:
        if self._shutdown_waiters and not self._sessions:
            for reply_to in self._shutdown_waiters:
                reply(reply_to, Accepted())
            self._shutdown_waiters.clear()

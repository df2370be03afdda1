"""EndpointActor: one per session; owns the endpoint connection and the screen model, and fans
the endpoint's frames out to the subscribed participants.

Fan-out happens here, not in the session, so that a joiner's keyframe and the frames after it
come from one sender, in order: the keyframe covers exactly the frames before it. Frames go
straight into each participant's sink (a thread-safe bounded queue), not through the
participant's actor: a frame then wakes one thread instead of one per participant, which is
most of the cost of fan-out (docs/benchmarks.md). When a sink refuses a frame (it is full),
its pending frames are gone and a keyframe takes their place at once. A sink that raises is
that participant's failure, reported to the session; the other participants never notice.

Restart strategy (OTP's *transient*, with an intensity bound): a connection that fails with a
retryable error is reopened after a backoff that doubles with each recent failure; more than
`retries` failures within `window` seconds and the session is told `EndpointFailed` and ends.
The window, not a reset on reconnect, bounds an endpoint that accepts and drops at once.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import pykka

from engine.actors.base import describe_failure, send
from engine.clock import Clock, Timer
from engine.messages import (
    ChildFailed, EndpointClosed, EndpointError, EndpointFailed, EndpointFinished, EndpointOpened,
    EndpointReady, EndpointRetrying, Frame, Input, OpenEndpoint, ReconnectEndpoint, Resize, Subscribe,
    Unsubscribe,
)
from engine.screen import ScreenModel
from engine.connection import EndpointConnection, EndpointEvents

log = logging.getLogger(__name__)


class EndpointActor(pykka.ThreadingActor):
    def __init__(self, session_ref: Any, session_id: str, connection: EndpointConnection,
                 screen: ScreenModel, clock: Clock, retries: int, backoff: float, window: float) -> None:
        super().__init__()
        self._session = session_ref
        self._session_id = session_id
        self._connection = connection
        self._screen = screen
        self._clock = clock
        self._retries = retries
        self._backoff = backoff
        self._window = window
        self._subscribers: dict[str, Any] = {}  # participant id → sink
        self._fanout: list[tuple[str, Any]] = []  # the hot path iterates a list, not a dict view
        self._failures: collections.deque[float] = collections.deque()
        self._size = (80, 24)
        self._retry_timer: Timer | None = None
        self._closed = False

    def on_receive(self, message: Any) -> None:
        match message:
            case Frame():
                self._screen.feed(message.data)
                for pid, sink in self._fanout:
                    try:
                        if not sink.offer(message):
                            sink.keyframe(self._screen.keyframe(), resync=True)
                    except Exception as exc:
                        self._sink_failed(pid, exc)
                if self.actor_inbox.empty():  # parse the screen only when nobody waits
                    self._screen.idle()
            case Input(data=data):
                self._connection.send_input(data)
            case Resize(cols=cols, rows=rows):
                self._size = (cols, rows)
                self._screen.resize(cols, rows)
                self._connection.resize(cols, rows)
            case Subscribe(participant_id=pid, sink=sink):
                self._subscribers[pid] = sink
                self._fanout = list(self._subscribers.items())
                try:
                    sink.keyframe(self._screen.keyframe())
                except Exception as exc:
                    self._sink_failed(pid, exc)
            case Unsubscribe(participant_id=pid):
                if self._subscribers.pop(pid, None) is not None:
                    self._fanout = list(self._subscribers.items())
            case OpenEndpoint(cols=cols, rows=rows):
                self._size = (cols, rows)
                self._screen.resize(cols, rows)
                self._connection.open(EndpointEvents(self.actor_ref), cols, rows)
            case ReconnectEndpoint():
                self._retry_timer = None
                if not self._closed:
                    self._connection.open(EndpointEvents(self.actor_ref), *self._size)
            case EndpointOpened(detail=detail):
                send(self._session, EndpointReady(detail))
            case EndpointClosed(detail=detail):
                send(self._session, EndpointFinished(detail))
            case EndpointError(detail=detail, retryable=retryable):
                self._on_error(detail, retryable)
            case _:
                log.warning("endpoint of session %s ignored %r", self._session_id, type(message).__name__)

    def _sink_failed(self, pid: str, exc: Exception) -> None:
        log.error("the sink of participant %s failed", pid, exc_info=exc)
        if self._subscribers.pop(pid, None) is not None:
            self._fanout = list(self._subscribers.items())
            send(self._session, ChildFailed("participant", pid, describe_failure(exc)))

    def _on_error(self, detail: str, retryable: bool) -> None:
        if self._closed:
            return
        now = self._clock.now()
        while self._failures and self._failures[0] <= now - self._window:
            self._failures.popleft()
        self._failures.append(now)
        attempt = len(self._failures)
        if not retryable or attempt > self._retries:
            send(self._session, EndpointFailed(detail))
            return
        delay = self._backoff * 2 ** (attempt - 1)
        ref = self.actor_ref
        self._retry_timer = self._clock.call_later(delay, lambda: send(ref, ReconnectEndpoint(attempt)))
        send(self._session, EndpointRetrying(attempt, delay, detail))

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        try:
            self._connection.close()
        except Exception:
            log.exception("closing the endpoint connection of session %s", self._session_id)

    def on_stop(self) -> None:
        self._close()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._close()
        send(self._session, ChildFailed("endpoint", self._session_id, describe_failure(exception_value)))

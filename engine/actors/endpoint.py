"""EndpointActor: one per session; owns the endpoint connection and the screen model, and fans
the endpoint's frames out to the subscribed participants.

Fan-out happens here, not in the session, so that a joiner's keyframe and the frames after it
come from one sender, in order: the keyframe covers exactly the frames before it. Frames go
straight into each participant's sink (a thread-safe bounded queue), not through the
participant's actor: a frame then wakes one thread instead of one per participant, which is
most of the cost of fan-out (docs/benchmarks.md). A sink that raises is that participant's
failure, reported to the session; the other participants never notice.

Slow participants cost the fan-out nothing. A sink that refuses a frame (its consumer is a
whole queue behind) owes a resync and refuses every frame after it, cheaply; nothing is
rendered here then. When its consumer is ready again the sink asks (`Resynchronise`), and the
keyframe is rendered once for everyone waiting, at most once per `resync_interval` per
session (a graphical keyframe is a whole framebuffer encoded: its cost must not follow how
often a consumer can ask). A participant whose sink has refused for `stall_seconds` without
its consumer coming back is reported to the session (`ParticipantStalled`), which disconnects
it.

Restart strategy (OTP's *transient*, with an intensity bound): a connection that fails with a
retryable error is reopened after a backoff that doubles with each recent failure; more than
`retries` failures within `window` seconds and the session is told `EndpointFailed` and ends.
The window, not a reset on reconnect, bounds an endpoint that accepts and drops at once.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

from engine.actors.base import describe_failure, send
from engine.actors.pool import PooledActor
from engine.bridge import batched_calls
from engine.clock import Clock, Timer
from engine.messages import (
    ChildFailed, DisplayUpdate, EndpointClosed, EndpointError, EndpointFailed, EndpointFinished, EndpointOpened,
    EndpointReady, EndpointRetrying, Frame, Input, OpenEndpoint, ParticipantStalled, ReconnectEndpoint,
    RecordingFailed, RemoteClipboard, Resize, Resized, ResyncDue, Resynchronise, StallCheckDue, Subscribe, Unsubscribe,
)
from engine.screen import ScreenModel
from engine.connection import EndpointConnection, EndpointEvents

log = logging.getLogger(__name__)

# Output after this long a pause is worth parsing into the screen model: the screen had settled.
# Output that keeps coming is not parsed as it flows (a keyframe parses what is pending).
QUIET_SECONDS = 0.5


class EndpointActor(PooledActor):
    def __init__(self, session_ref: Any, session_id: str, connection: EndpointConnection,
                 screen: ScreenModel, clock: Clock, retries: int, backoff: float, window: float,
                 stall_seconds: float, resync_interval: float) -> None:
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
        self._recorders: set[str] = set()  # subscribers that are the session's recording
        self._failures: collections.deque[float] = collections.deque()
        self._size = (80, 24)
        self._retry_timer: Timer | None = None
        self._closed = False
        self._events = EndpointEvents(self.actor_ref)  # one for every attempt: it counts what is in flight
        self._stall_seconds = stall_seconds
        self._resync_interval = resync_interval
        self._refusing_since: dict[str, float] = {}  # participant id → when its sink first refused
        self._stall_timer: Timer | None = None
        self._waiting_for_keyframe: set[str] = set()
        self._last_resync = -float("inf")
        self._resync_timer: Timer | None = None
        self._last_output = float("-inf")

    def on_receive(self, message: Any) -> None:
        match message:
            case Frame():
                now = self._clock.now()
                after_pause, self._last_output = now - self._last_output >= QUIET_SECONDS, now
                self._screen.feed(message.data)
                self._fan_out(message)
                self._events.processed(len(message.data))
                if after_pause and self.nothing_waiting():  # parse only when no message waits for it
                    self._screen.idle()
            case DisplayUpdate(applied=applied):
                # decoded by the connection's worker thread; encoded here, once, for everyone
                frame = self._screen.update(message)
                if frame is not None:
                    self._fan_out(frame)
                # the endpoint's JPEGs into the model after the fan-out, and after the next
                # update's fan-out if that one waits already
                self._screen.settle(idle=self.nothing_waiting())
                if applied is not None:
                    try:
                        applied()
                    except Exception:  # the connection's business; never the session's end
                        log.exception("endpoint of session %s: the applied callback failed", self._session_id)
            case Resynchronise(participant_id=pid):
                self._refusing_since.pop(pid, None)  # its consumer is back: not stalled
                if pid in self._subscribers:
                    self._waiting_for_keyframe.add(pid)
                    self._resync()
            case ResyncDue():
                self._resync_timer = None
                self._resync()
            case StallCheckDue():
                self._stall_timer = None
                self._check_stalls()
            case Input(data=data):
                self._connection.send_input(data)
            case Resize(cols=cols, rows=rows):
                self._size = (cols, rows)
                self._screen.resize(cols, rows)
                self._connection.resize(cols, rows)
                for pid in self._recorders:  # in order with the frames: those after it are this size
                    try:
                        self._subscribers[pid].event(Resized(cols, rows))
                    except Exception as exc:
                        self._sink_failed(pid, exc)
            case Subscribe(participant_id=pid, sink=sink, recorder=recorder):
                self._subscribers[pid] = sink
                self._fanout = list(self._subscribers.items())
                if recorder:
                    self._recorders.add(pid)
                try:
                    ref = self.actor_ref
                    sink.attach(lambda: send(ref, Resynchronise(pid)))
                    sink.keyframe(self._screen.keyframe())
                except Exception as exc:
                    self._sink_failed(pid, exc)
            case Unsubscribe(participant_id=pid):
                self._forget(pid)
            case OpenEndpoint(cols=cols, rows=rows):
                self._size = (cols, rows)
                self._screen.resize(cols, rows)
                self._connection.open(self._events, cols, rows)
            case ReconnectEndpoint():
                self._retry_timer = None
                if not self._closed:
                    self._connection.open(self._events, *self._size)
            case RemoteClipboard():
                send(self._session, message)  # the session knows who the controller is
            case EndpointOpened(detail=detail):
                send(self._session, EndpointReady(detail))
            case EndpointClosed(detail=detail):
                send(self._session, EndpointFinished(detail))
            case EndpointError(detail=detail, retryable=retryable):
                self._on_error(detail, retryable)
            case _:
                log.warning("endpoint of session %s ignored %r", self._session_id, type(message).__name__)

    def _fan_out(self, frame: Frame) -> None:
        with batched_calls():  # the senders it wakes, woken in one call to the loop
            for pid, sink in self._fanout:
                try:
                    if not sink.offer(frame) and pid not in self._refusing_since \
                            and pid not in self._waiting_for_keyframe:
                        self._refusing(pid)
                except Exception as exc:
                    self._sink_failed(pid, exc)

    def _resync(self) -> None:
        """Render one keyframe for every participant waiting for one, unless the last resync
        was less than `resync_interval` ago: then once that much time has passed."""
        if not self._waiting_for_keyframe or self._resync_timer is not None:
            return
        due = self._last_resync + self._resync_interval
        if self._clock.now() < due:
            ref = self.actor_ref
            self._resync_timer = self._clock.call_at(due, lambda: send(ref, ResyncDue()))
            return
        self._last_resync = self._clock.now()
        keyframe = self._screen.keyframe()
        waiting, self._waiting_for_keyframe = self._waiting_for_keyframe, set()
        for pid in waiting:
            sink = self._subscribers.get(pid)
            if sink is None:
                continue
            try:
                sink.keyframe(keyframe, resync=True)
            except Exception as exc:
                self._sink_failed(pid, exc)

    def _refusing(self, pid: str) -> None:
        """A sink started refusing: note when, to disconnect its participant if its consumer
        does not come back within `stall_seconds`."""
        self._refusing_since[pid] = self._clock.now()
        self._arm_stall_timer()

    def _arm_stall_timer(self) -> None:
        if self._stall_timer is not None or not self._refusing_since:
            return
        due = min(self._refusing_since.values()) + self._stall_seconds
        ref = self.actor_ref
        self._stall_timer = self._clock.call_at(due, lambda: send(ref, StallCheckDue()))

    def _check_stalls(self) -> None:
        now = self._clock.now()
        for pid, since in list(self._refusing_since.items()):
            if now - since >= self._stall_seconds:
                del self._refusing_since[pid]
                send(self._session, ParticipantStalled(pid, now - since))
        self._arm_stall_timer()

    def _forget(self, pid: str) -> None:
        sink = self._subscribers.pop(pid, None)
        if sink is not None:
            self._fanout = list(self._subscribers.items())
        if pid in self._recorders:  # a recording closes after the last frame it was given
            self._recorders.discard(pid)
            _close_quietly(sink)
        self._refusing_since.pop(pid, None)
        self._waiting_for_keyframe.discard(pid)

    def _sink_failed(self, pid: str, exc: Exception) -> None:
        log.error("the sink of %s failed", pid, exc_info=exc)
        if pid in self._subscribers:
            recorder = pid in self._recorders
            self._forget(pid)
            send(self._session, RecordingFailed("failed", describe_failure(exc)) if recorder
                 else ChildFailed("participant", pid, describe_failure(exc)))

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
        for timer in (self._retry_timer, self._resync_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        for pid in list(self._recorders):
            self._forget(pid)
        try:
            self._connection.close()
        except Exception:
            log.exception("closing the endpoint connection of session %s", self._session_id)

    def on_stop(self) -> None:
        self._close()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._close()
        send(self._session, ChildFailed("endpoint", self._session_id, describe_failure(exception_value)))


def _close_quietly(sink: Any) -> None:
    try:
        sink.close()
    except Exception:
        log.exception("closing a recording's sink")

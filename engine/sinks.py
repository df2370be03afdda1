"""Where a participant's deliveries go: the end of the engine, the start of a client.

Frames and keyframes are put in a sink by the session's EndpointActor; control events by the
participant's own ParticipantActor. A sink is thread-safe and never blocks. `OutboundQueue`
is the bounded queue between the engine and a client that drains at its own pace (a
websocket, a Python test).

When a frame does not fit, the queue drops its pending frames and *owes* its participant a
resync. From then on it refuses every frame at the cost of a lock and a counter, and renders
nothing: the keyframe that replaces what was dropped is asked for (`Resynchronise`, through the
`request_keyframe` the EndpointActor attached) only when the consumer comes back to `take()`,
and it is rendered then, once, for that participant. A consumer that never comes back costs
nothing more than its refusals, however much the endpoint writes; so a slow or stalled viewer
never slows anyone else (docs/engine.md, "Frames, keyframes and slow viewers").
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from engine.messages import Frame, Keyframe, Resync


class Sink(Protocol):
    def attach(self, request_keyframe: Callable[[], None]) -> None:
        """Called by the EndpointActor when the participant subscribes: how this sink asks for
        a keyframe once it owes one and its consumer is ready for it. Safe from any thread."""

    def offer(self, frame: Frame) -> bool:
        """Take a frame, or refuse it (False): the consumer is a whole queue behind. A sink that
        refuses owes a resync and asks for it itself (`attach`); never raises for being full."""

    def keyframe(self, keyframe: Keyframe, resync: bool = False) -> None:
        """The screen as it is now; replaces any frames still pending. `resync`: it pays what a
        refused offer owed."""

    def event(self, event: Any) -> None:
        """A control event (joined, left, state, ended). Never dropped."""

    def close(self) -> None:
        """The participant is gone; nothing more will be delivered."""


@dataclass(slots=True)
class Item:
    """One entry of an outbound queue: frame bytes (adjacent ones are merged), a keyframe,
    or an event."""

    kind: str  # "data", "keyframe", "event"
    value: Any


class OutboundQueue:
    """A bounded, coalescing, thread-safe queue. The consumer calls `take()` whenever
    `on_ready` tells it the queue went from empty to non-empty (or started to owe a resync)."""

    def __init__(self, max_bytes: int = 1 << 20, on_ready: Callable[[], None] | None = None) -> None:
        self._max_bytes = max_bytes
        self._on_ready = on_ready
        self._lock = threading.Lock()
        self._items: list[Item] = []
        self._pending_bytes = 0  # frames not yet taken
        self.closed = False
        self._request_keyframe: Callable[[], None] | None = None
        self._owed = False  # frames were dropped; a keyframe must come before any further frame
        self._requested = False  # ... and it has been asked for
        self._dropped_since_keyframe = 0
        self.dropped_frames = 0
        self.delivered_frames = 0
        self.resyncs = 0  # keyframes received in place of dropped frames
        self.keyframes_requested = 0

    def attach(self, request_keyframe: Callable[[], None]) -> None:
        self._request_keyframe = request_keyframe

    # producer side: the endpoint actor's thread (frames, keyframes), the participant actor's (events)

    def offer(self, frame: Frame) -> bool:
        with self._lock:
            if self.closed:
                return True  # the participant is gone; nothing to resynchronise
            if self._owed:  # the cheap path of a stalled consumer: no copy, no rendering
                self.dropped_frames += 1
                self._dropped_since_keyframe += 1
                return False
            if self._pending_bytes + len(frame.data) > self._max_bytes:
                self._drop_pending_data()
                self.dropped_frames += 1
                self._dropped_since_keyframe += 1
                self._owed = True
                accepted = False
                wake = True  # a waiting consumer must come and take() so that it asks
            else:
                accepted = True
                wake = not self._items
                if self._items and self._items[-1].kind == "data":
                    self._items[-1].value.append(frame)
                else:
                    self._items.append(Item("data", [frame]))
                self._pending_bytes += len(frame.data)
                self.delivered_frames += 1
        if wake:
            self._ready()
        return accepted

    def missed(self, frames: int) -> None:
        """`frames` meant for this participant were lost before they reached its queue (a gap
        in what the bus delivered): what is pending no longer continues the screen, so it is
        dropped and a keyframe is owed, as on an overflow."""
        with self._lock:
            if self.closed or frames <= 0:
                return
            self._drop_pending_data()
            self.dropped_frames += frames
            self._dropped_since_keyframe += frames
            self._owed = True
        self._ready()

    def keyframe(self, keyframe: Keyframe, resync: bool = False) -> None:
        with self._lock:
            if self.closed:
                return
            self._drop_pending_data(count=False)
            was_empty = not self._items
            if resync:
                self.resyncs += 1
                self._items.append(Item("event", Resync(self._dropped_since_keyframe)))
            self._owed = self._requested = False
            self._dropped_since_keyframe = 0
            # Not counted against the frames' bound: a keyframe larger than the queue (a whole
            # framebuffer) must not make the next frame drop it before its consumer takes it.
            # The queue holds at most `max_bytes` of frames and one keyframe.
            self._items.append(Item("keyframe", keyframe))
        if was_empty:
            self._ready()

    def event(self, event: Any) -> None:
        with self._lock:
            was_empty = not self._items
            self._items.append(Item("event", event))
        if was_empty:
            self._ready()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            was_empty = not self._items
        if was_empty:
            self._ready()

    # consumer side

    def take(self) -> list[Item]:
        """Everything pending, in order; data items hold lists of frames. A consumer that
        takes is ready for more: if a resync is owed, this asks for its keyframe (once)."""
        with self._lock:
            items, self._items = self._items, []
            self._pending_bytes = 0
            ask = self._owed and not self._requested and not self.closed and self._request_keyframe is not None
            if ask:
                self._requested = True
                self.keyframes_requested += 1
        if ask:
            self._request_keyframe()  # type: ignore[misc]
        return items

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def owes_resync(self) -> bool:
        return self._owed

    def _drop_pending_data(self, count: bool = True) -> None:
        """Drop frames and any keyframe not yet taken: a newer keyframe will replace them all.
        Control events stay, in order."""
        kept = []
        for item in self._items:
            if item.kind == "data":
                if count:
                    self.dropped_frames += len(item.value)
                    self._dropped_since_keyframe += len(item.value)
                    self.delivered_frames -= len(item.value)
            elif item.kind == "event" and not isinstance(item.value, Resync):
                kept.append(item)
        self._items = kept
        self._pending_bytes = 0

    def _ready(self) -> None:
        if self._on_ready is not None:
            self._on_ready()


class CollectingSink:
    """Keeps everything delivered, for the Python API and tests. Unbounded: it is for
    observers that read what they asked for."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.frames: list[Frame] = []
        self.keyframes: list[Keyframe] = []
        self.events: list[Any] = []
        self.output = bytearray()  # keyframes and frames, in order, as a terminal would get them
        self.closed = False

    def attach(self, request_keyframe: Callable[[], None]) -> None:
        pass  # it never refuses a frame, so it never owes a keyframe

    def offer(self, frame: Frame) -> bool:
        with self._cond:
            self.frames.append(frame)
            self.output += frame.data
            self._cond.notify_all()
        return True

    def keyframe(self, keyframe: Keyframe, resync: bool = False) -> None:
        with self._cond:
            self.keyframes.append(keyframe)
            self.output += keyframe.data
            if resync:
                self.events.append(Resync(0))
            self._cond.notify_all()

    def event(self, event: Any) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[["CollectingSink"], bool], timeout: float = 5.0) -> bool:
        """Block until `predicate(self)` holds (re-checked on every delivery) or `timeout`
        seconds pass: a bound on how long to wait for the actors, not a wait for time."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def events_of(self, kind: type) -> list[Any]:
        with self._cond:
            return [e for e in self.events if isinstance(e, kind)]

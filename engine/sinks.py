"""Where a participant's deliveries go: the end of the engine, the start of a client.

Frames and keyframes are put in a sink by the session's EndpointActor; control events by the
participant's own ParticipantActor. A sink is thread-safe and never blocks. `OutboundQueue`
is the bounded queue between the engine and a client that drains at its own pace (a
websocket, a Python test): when it overflows, its pending frames are dropped and the endpoint
puts a keyframe in their place, so a slow viewer never slows anyone else.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from engine.messages import Frame, Keyframe, Resync


class Sink(Protocol):
    def offer(self, frame: Frame) -> bool:
        """Take a frame, or return False if full: the participant then asks for a keyframe."""

    def keyframe(self, keyframe: Keyframe, resync: bool = False) -> None:
        """The screen as it is now; replaces any frames still pending. `resync`: it follows
        a refused offer."""

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
    `on_ready` tells it the queue went from empty to non-empty."""

    def __init__(self, max_bytes: int = 1 << 20, on_ready: Callable[[], None] | None = None) -> None:
        self._max_bytes = max_bytes
        self._on_ready = on_ready
        self._lock = threading.Lock()
        self._items: list[Item] = []
        self._pending_bytes = 0
        self.closed = False
        self._dropped_since_keyframe = 0
        self.dropped_frames = 0
        self.delivered_frames = 0
        self.resyncs = 0

    # producer side: the participant actor's thread

    def offer(self, frame: Frame) -> bool:
        with self._lock:
            if self.closed:
                return True  # the participant is gone; nothing to resynchronise
            if self._pending_bytes + len(frame.data) > self._max_bytes:
                self._drop_pending_data()
                self.dropped_frames += 1
                self._dropped_since_keyframe += 1
                return False
            was_empty = not self._items
            if self._items and self._items[-1].kind == "data":
                self._items[-1].value.append(frame)
            else:
                self._items.append(Item("data", [frame]))
            self._pending_bytes += len(frame.data)
            self.delivered_frames += 1
        if was_empty:
            self._ready()
        return True

    def keyframe(self, keyframe: Keyframe, resync: bool = False) -> None:
        with self._lock:
            self._drop_pending_data(count=False)
            was_empty = not self._items
            if resync:
                self.resyncs += 1
                self._items.append(Item("event", Resync(self._dropped_since_keyframe)))
            self._dropped_since_keyframe = 0
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
        """Everything pending, in order; data items hold lists of frames."""
        with self._lock:
            items, self._items = self._items, []
            self._pending_bytes = 0
        return items

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

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

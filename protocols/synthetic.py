"""The synthetic endpoint: a real endpoint type for load tests and the demo, with no network.

It emits terminal output frames of `frame_bytes` bytes at `rate` frames per second, driven by
the engine's clock, and echoes every input it receives, so that forwarded input can be seen in
the output and counted here: `inputs_received` is the endpoint's own count, not the engine's.
"""

from __future__ import annotations

import threading
from engine.clock import Clock, Timer
from protocols.base import EndpointEvents

_FILLER = b"the quick brown fox jumps over the lazy dog 0123456789 "


class SyntheticConnection:
    def __init__(self, clock: Clock, *, rate: float = 0.0, frame_bytes: int = 64, name: str = "synthetic",
                 echo: bool = True) -> None:
        if rate < 0 or frame_bytes < 1:
            raise ValueError("rate must be >= 0 and frame_bytes >= 1")
        self._clock = clock
        self._rate = rate
        self._frame_bytes = frame_bytes
        self._name = name.encode()
        self._echo = echo
        self._events: EndpointEvents | None = None
        self._timer: Timer | None = None
        self._lock = threading.Lock()  # ticks run on the clock's thread, the rest on the actor's
        self._closed = False
        self._next_at = 0.0
        self._body = (_FILLER * (frame_bytes // len(_FILLER) + 1))[: max(0, frame_bytes - 2)] + b"\r\n"
        self.frames_emitted = 0
        self.inputs_received = 0
        self.input_bytes = 0
        self.opens = 0
        self.size = (0, 0)

    def open(self, events: EndpointEvents, cols: int, rows: int) -> None:
        with self._lock:
            if self._closed:
                return
            self._events = events
            self.opens += 1
            self.size = (cols, rows)
        events.opened("synthetic endpoint")
        if self._rate > 0:
            with self._lock:
                self._next_at = self._clock.now() + 1.0 / self._rate
                self._timer = self._clock.call_at(self._next_at, self._tick)

    def _tick(self) -> None:
        with self._lock:
            if self._closed or self._events is None:
                return
            self.frames_emitted += 1
            events = self._events
            # Schedule from the planned time, not from now, so the rate does not drift.
            self._next_at += 1.0 / self._rate
            self._timer = self._clock.call_at(self._next_at, self._tick)
        events.output(self._body)

    def send_input(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                return
            self.inputs_received += 1
            self.input_bytes += len(data)
            events = self._events
        if self._echo and events is not None:
            events.output(data)

    def resize(self, cols: int, rows: int) -> None:
        self.size = (cols, rows)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            self._events = None

    # test and demo controls: behave like an endpoint that prints, ends or fails

    def emit(self, data: bytes) -> None:
        events = self._events
        if events is not None:
            events.output(data)

    def finish(self, detail: str = "exited") -> None:
        events = self._events
        if events is not None:
            events.closed(detail)

    def fail(self, detail: str = "connection lost", retryable: bool = True) -> None:
        events = self._events
        if events is not None:
            events.failed(detail, retryable)

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"SyntheticConnection(rate={self._rate}, frame_bytes={self._frame_bytes})"


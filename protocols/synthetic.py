"""The synthetic endpoint: a real endpoint type for load tests and the demo, with no network.

It emits terminal output frames of `frame_bytes` bytes (each starting with an invisible stamp of
its emission time) at `rate` frames per second, driven by
the engine's clock, and echoes every input it receives, so that forwarded input can be seen in
the output and counted here: `inputs_received` is the endpoint's own count, not the engine's.
"""

from __future__ import annotations

import re
import threading
import time
from engine import Clock, EndpointEvents, Timer

_FILLER = b"the quick brown fox jumps over the lazy dog 0123456789 "
_STAMP = re.compile(rb"\x1b\]9999;(\d{19})\x07")


def stamp(wall_ns: int) -> bytes:
    """An invisible OSC sequence carrying the emission time (wall-clock ns), so a receiver in
    another process on this machine (a websocket load test) can measure latency."""
    return b"\x1b]9999;%019d\x07" % wall_ns


def stamps(data: bytes) -> list[int]:
    return [int(m) for m in _STAMP.findall(data)]


class SyntheticConnection:
    def __init__(self, clock: Clock, *, rate: float = 0.0, frame_bytes: int = 64, echo: bool = True) -> None:
        if rate < 0 or frame_bytes < 1:
            raise ValueError("rate must be >= 0 and frame_bytes >= 1")
        self._clock = clock
        self._rate = rate
        self._frame_bytes = frame_bytes
        self._echo = echo
        self._events: EndpointEvents | None = None
        self._timer: Timer | None = None
        self._lock = threading.Lock()  # ticks run on the clock's thread, the rest on the actor's
        self._closed = False
        self._next_at = 0.0
        filler = max(0, frame_bytes - len(stamp(0)) - 2)
        self._body = (_FILLER * (filler // len(_FILLER) + 1))[:filler] + b"\r\n"
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
            self.start_stream(self._rate)

    def start_stream(self, rate: float, phase: float = 1.0) -> None:
        """Emit `rate` frames per second from now on, the first after `phase` periods (a load
        test starts every stream after its set-up, each at its own phase in [0, 1))."""
        with self._lock:
            if self._closed or self._events is None or rate <= 0:
                return
            if self._timer is not None:
                self._timer.cancel()
            self._rate = rate
            self._next_at = self._clock.now() + phase / rate
            self._timer = self._clock.call_at(self._next_at, self._tick)

    def stop_stream(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _tick(self) -> None:
        with self._lock:
            if self._closed or self._events is None:
                return
            self.frames_emitted += 1
            events = self._events
            # Schedule from the planned time, not from now, so the rate does not drift.
            self._next_at += 1.0 / self._rate
            self._timer = self._clock.call_at(self._next_at, self._tick)
        events.output(stamp(time.time_ns()) + self._body)

    def send_input(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                return
            self.inputs_received += 1
            self.input_bytes += len(data)
            events = self._events
            if self._echo and events is not None:
                self.frames_emitted += 1
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
        with self._lock:
            events = self._events
            if events is not None:
                self.frames_emitted += 1
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


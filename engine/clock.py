"""Injected time. Expiry, grace periods, retries and the synthetic endpoint read a `Clock`, so
tests drive time with `ManualClock.advance()` instead of sleeping.

A callback runs on the clock's own thread (or the caller of `advance`) and must not block:
in practice it is always an actor `tell`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable, Protocol

log = logging.getLogger(__name__)


class Timer:
    __slots__ = ("when", "_fn", "cancelled")

    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when = when
        self._fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def _fire(self) -> None:
        if not self.cancelled:
            try:
                self._fn()
            except Exception:  # a timer's failure must not stop the clock for everyone else
                log.exception("timer callback failed")


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch."""

    def call_at(self, when: float, fn: Callable[[], None]) -> Timer: ...

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer: ...

    def stop(self) -> None: ...


class _Heap:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()

    def push(self, timer: Timer) -> None:
        heapq.heappush(self._heap, (timer.when, next(self._seq), timer))

    def pop_due(self, now: float) -> Timer | None:
        if self._heap and self._heap[0][0] <= now:
            return heapq.heappop(self._heap)[2]
        return None

    def next_when(self) -> float | None:
        return self._heap[0][0] if self._heap else None


class SystemClock:
    """Real time, with one scheduler thread for every timer of the engine."""

    def __init__(self) -> None:
        self._heap = _Heap()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="cosession-clock")
        self._thread.start()

    def now(self) -> float:
        return time.time()

    def call_at(self, when: float, fn: Callable[[], None]) -> Timer:
        timer = Timer(when, fn)
        with self._cond:
            self._heap.push(timer)
            self._cond.notify()
        return timer

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        return self.call_at(self.now() + delay, fn)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                timer = self._heap.pop_due(self.now())
                if timer is None:
                    when = self._heap.next_when()
                    self._cond.wait(None if when is None else max(0.0, when - self.now()))
                    continue
            timer._fire()


class ManualClock:
    """Time that moves only when a test says so. Due callbacks run in `advance`'s caller."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._heap = _Heap()
        self._lock = threading.RLock()

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, fn: Callable[[], None]) -> Timer:
        timer = Timer(when, fn)
        with self._lock:
            self._heap.push(timer)
        return timer

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        return self.call_at(self._now + delay, fn)

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)

    def set(self, when: float) -> None:
        """Move to `when`, firing every callback due on the way, each at its own time."""
        while True:
            with self._lock:
                next_when = self._heap.next_when()
                if next_when is None or next_when > when:
                    break
                self._now = max(self._now, next_when)
                timer = self._heap.pop_due(next_when)
            if timer is not None:
                timer._fire()
        self._now = max(self._now, when)

    def stop(self) -> None:
        pass

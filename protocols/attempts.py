"""One connection attempt, shared by the endpoint connections (SSH, VNC, RDP): what it reports
to its session, exactly once ended, and what ended its task (the first real failure to report,
and the cancellation that must go on up, trio's structured concurrency, from an exception or an
exception group of a nursery)."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import trio

from engine import EndpointEvents, LoopBridge, LoopClosed

log = logging.getLogger(__name__)


class Attempt:
    """The state one attempt shares between the actor's thread (`close`) and the loop (its task,
    under `scope`): it reports to `events` until it is closed or has reported its end."""

    protocol = "endpoint"  # names the attempt in the log

    def __init__(self, events: EndpointEvents) -> None:
        self.events = events
        self.lock = threading.Lock()
        self.closed = False  # close() was called: report nothing more
        self.finished = False  # closed or failed was reported
        self.scope = trio.CancelScope()

    def report(self, what: str, *args: Any) -> Any:
        """Tell `events` what happened; its answer (None if nothing was reported)."""
        with self.lock:
            if self.closed or self.finished:
                return None
            if what in ("closed", "failed"):
                self.finished = True
            try:
                return getattr(self.events, what)(*args)
            except Exception:
                # Nobody is listening any more (a dead actor): report nothing more, and end
                # the connection rather than leave it open with no one to close it.
                log.exception("%s: reporting %s failed; closing the connection", self.protocol, what)
                self.closed = True
                if trio.lowlevel.in_trio_run():
                    self.scope.cancel()
                return None

    def close(self) -> None:
        with self.lock:
            self.closed = True

    def cancel(self) -> None:
        self.scope.cancel()


class InputQueue:
    """What goes to the endpoint, waiting on the loop for it to take it (the controller's input,
    and for VNC the connection's own requests). Bounded: when the endpoint does not keep up, the
    controller's input is dropped, counted and logged, never waited for, so that a stuck endpoint
    cannot hold the loop or the session's actor."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.send_channel, self.receive_channel = trio.open_memory_channel[bytes](size)
        self.dropped = 0

    def offer(self, data: bytes) -> bool:
        """On the loop: queue `data` (True), or drop it if the queue is full or closed (False)."""
        try:
            self.send_channel.send_nowait(data)
            return True
        except trio.WouldBlock:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("%s: input queue full, %d input message(s) dropped so far", self.name, self.dropped)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            log.debug("%s: input after the connection ended was dropped", self.name)
        return False


class AttemptConnection:
    """The actor-thread side every endpoint connection shares: one attempt at a time, the
    previous one stopped when `open` starts another, none after `close`. A subclass sets
    `_bridge`, `_lock`, `_attempt` and `_closed`, and runs an attempt in `async _run(attempt)`."""

    _bridge: LoopBridge
    _lock: threading.Lock
    _attempt: Any
    _closed: bool

    def _begin(self, attempt: Attempt) -> None:
        """Make `attempt` the current one and run it on the loop (from an actor thread)."""
        with self._lock:
            if self._closed:
                log.debug("%s: open after close ignored", attempt.protocol)
                return
            previous, self._attempt = self._attempt, attempt
        if previous is not None:
            self._stop(previous)
        try:
            self._bridge.spawn(self._run, attempt)  # type: ignore[attr-defined]
        except LoopClosed:
            attempt.report("failed", "the gateway's network loop is not running", False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            attempt = self._attempt
        if attempt is not None:
            self._stop(attempt)

    def _stop(self, attempt: Attempt) -> None:
        attempt.close()
        try:
            self._bridge.call_soon(attempt.cancel)
        except LoopClosed:
            pass  # nothing runs on a closed loop


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


def split_cancelled(exc: BaseException, prefer: Callable[[BaseException], bool] = lambda e: False,
                    ) -> tuple[BaseException | None, BaseException | None]:
    """(what must propagate, the failure to report: the first that `prefer`s, else the first)."""
    failures = [leaf for leaf in leaves(exc) if isinstance(leaf, Exception)]
    others = [leaf for leaf in leaves(exc) if not isinstance(leaf, Exception)]
    failures.sort(key=lambda e: not prefer(e))
    failure = failures[0] if failures else None
    if not others:
        return None, failure
    if isinstance(exc, BaseExceptionGroup):
        propagate, _ = exc.split(lambda e: not isinstance(e, Exception))
        return propagate, failure
    return exc, None

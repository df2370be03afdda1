"""The contract between the engine's EndpointActor and a live endpoint connection.

A connection is driven from an actor thread and must never block it: `open`, `send_input`,
`resize` and `close` only schedule work (onto the trio loop through engine.bridge, or onto a
timer for the synthetic endpoint) and return at once. What the connection observes it reports
to its `EndpointEvents`, which turns each report into a `tell` to the EndpointActor, and bounds
the output in flight between the two.

Credentials are given to the connection when it is built and never leave it: not in a message,
not in a log line, not in an exception text.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from engine.messages import DisplayUpdate, EndpointClosed, EndpointError, EndpointOpened, Frame, RemoteClipboard


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    username: str = ""
    password: str | None = None
    private_key: str | None = None  # OpenSSH or PEM text
    passphrase: str | None = None

    def __repr__(self) -> str:  # never print a secret, even by accident
        return f"Credentials(username={self.username!r}, secret=<hidden>)"


OUTPUT_IN_FLIGHT_BYTES = 256 * 1024  # output told to the EndpointActor and not yet fanned out


class EndpointEvents:
    """What a connection reports, as tells to one EndpointActor. Safe from any thread.

    Output is flow-controlled: the bytes told and not yet fanned out by the actor are counted,
    and `output` answers False once they reach `max_in_flight`. The connection then stops
    reading from its endpoint (without blocking its loop: it pauses the read) until the
    `resume` it passed is called, from the actor's thread, when the actor has caught up to half
    the bound. So a fast endpoint waits in its own buffers (sshd's, the PTY's, where a Ctrl-C
    discards it), not in the actor's inbox. What the actor does per frame never waits for a
    participant (their sinks refuse rather than block), so no viewer slows this down.
    """

    __slots__ = ("_ref", "_lock", "_in_flight", "_max_in_flight", "_resume")

    def __init__(self, actor_ref: Any, max_in_flight: int = OUTPUT_IN_FLIGHT_BYTES) -> None:
        self._ref = actor_ref
        self._lock = threading.Lock()
        self._in_flight = 0
        self._max_in_flight = max_in_flight
        self._resume: Callable[[], None] | None = None

    def opened(self, detail: str = "") -> None:
        self._ref.tell(EndpointOpened(detail))

    def output(self, data: bytes, resume: Callable[[], None] | None = None) -> bool:
        """Tell the actor `data`. False: stop reading until `resume()` is called (once, from
        the actor's thread; schedule the read back onto the loop from there)."""
        with self._lock:
            self._in_flight += len(data)
            go_on = self._in_flight < self._max_in_flight
            if not go_on:
                self._resume = resume
        self._ref.tell(Frame(data, time.perf_counter_ns()))
        return go_on or resume is None

    def processed(self, size: int) -> None:
        """By the EndpointActor, once a frame of `size` bytes is fanned out."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - size)
            resume = None
            if self._resume is not None and self._in_flight <= self._max_in_flight // 2:
                resume, self._resume = self._resume, None
        if resume is not None:
            resume()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def display(self, items: tuple[Any, ...], applied: Callable[[], None] | None = None) -> None:
        """A graphical endpoint's decoded update (engine.messages.Display*), in order.
        `applied()` is called from the actor's thread once it is applied and fanned out."""
        self._ref.tell(DisplayUpdate(items, time.perf_counter_ns(), applied))

    def clipboard(self, text: str) -> None:
        """The endpoint's clipboard text changed (a desktop's cut text): for the controller only."""
        self._ref.tell(RemoteClipboard(text))

    def closed(self, detail: str = "") -> None:
        self._ref.tell(EndpointClosed(detail))

    def failed(self, detail: str, retryable: bool = True) -> None:
        self._ref.tell(EndpointError(detail, retryable))


class EndpointConnection(Protocol):
    def open(self, events: EndpointEvents, cols: int, rows: int) -> None:
        """Start connecting; report `opened`, then `output`s, then `closed` or `failed`.
        May be called again after a failure, to retry. When `output` answers False, stop
        reading from the endpoint until the `resume` given with it is called."""

    def send_input(self, data: bytes) -> None:
        """Queue bytes for the endpoint. Only the controller's input ever gets here."""

    def resize(self, cols: int, rows: int) -> None:
        """Follow the controller's window size."""

    def close(self) -> None:
        """Close the connection. Idempotent; reports nothing after it."""

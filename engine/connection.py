"""The contract between the engine's EndpointActor and a live endpoint connection.

A connection is driven from an actor thread and must never block it: `open`, `send_input`,
`resize` and `close` only schedule work (onto the trio loop through engine.bridge, or onto a
timer for the synthetic endpoint) and return at once. What the connection observes it reports
to its `EndpointEvents`, which turns each report into a `tell` to the EndpointActor.

Credentials are given to the connection when it is built and never leave it: not in a message,
not in a log line, not in an exception text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from engine.messages import EndpointClosed, EndpointError, EndpointOpened, Frame


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    username: str = ""
    password: str | None = None
    private_key: str | None = None  # OpenSSH or PEM text
    passphrase: str | None = None

    def __repr__(self) -> str:  # never print a secret, even by accident
        return f"Credentials(username={self.username!r}, secret=<hidden>)"


class EndpointEvents:
    """What a connection reports, as tells to one EndpointActor. Safe from any thread."""

    __slots__ = ("_ref",)

    def __init__(self, actor_ref: Any) -> None:
        self._ref = actor_ref

    def opened(self, detail: str = "") -> None:
        self._ref.tell(EndpointOpened(detail))

    def output(self, data: bytes) -> None:
        self._ref.tell(Frame(data, time.perf_counter_ns()))

    def closed(self, detail: str = "") -> None:
        self._ref.tell(EndpointClosed(detail))

    def failed(self, detail: str, retryable: bool = True) -> None:
        self._ref.tell(EndpointError(detail, retryable))


class EndpointConnection(Protocol):
    def open(self, events: EndpointEvents, cols: int, rows: int) -> None:
        """Start connecting; report `opened`, then `output`s, then `closed` or `failed`.
        May be called again after a failure, to retry."""

    def send_input(self, data: bytes) -> None:
        """Queue bytes for the endpoint. Only the controller's input ever gets here."""

    def resize(self, cols: int, rows: int) -> None:
        """Follow the controller's window size."""

    def close(self) -> None:
        """Close the connection. Idempotent; reports nothing after it."""

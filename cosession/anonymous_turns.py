"""Anonymous connections take turns at the gateway's edge (cosession/web_server.py).

trio runs, in one pass of its event loop, every task that became ready during its last wait.
Under an anonymous flood that put dozens of attackers' connections (0.3-0.5 ms of parsing,
admission and refusal each) in the same pass as a controller's keystroke and its echo: the
controller's latency p99 grew 6-7x while its median did not move. `AnonymousTurns` lets at most
``edge.max_anonymous_per_pass`` anonymous connections start handling what they received per
pass, and only once a pass has left nothing else runnable (or once they have waited
``edge.max_anonymous_wait_ms``); `EdgeStream` is where a connection takes its turn, between its
socket and Hypercorn.

Why the wait for an idle loop: a keystroke and its echo cross the loop a dozen times (the
websocket, the actors' hand-offs back to the loop, the SSH channel, the output's fan-out), and
each crossing waits for the pass in progress to end. With turns in every pass, a flood kept the
loop in long passes (1.5-3 ms, mostly anonymous connections' work) about a fifth of the time,
and the echo's p99 added up several of them. Handed out when the loop has nothing else to run,
the anonymous work waits for the controller's instead (docs/benchmarks.md, "An anonymous flood
at the edge").
"""

from __future__ import annotations

from typing import Protocol

import trio

TICK = 0.001  # seconds: the longest an idle loop waits for I/O while anonymous connections wait for turns


class Turns(Protocol):
    """A connection (web_server.ClientConnection) that waits for its turn while it is anonymous."""

    async def take_turn(self) -> None: ...


class AnonymousTurns(trio.abc.Instrument):
    """At most `per_pass` anonymous connections start handling what they received in one pass
    of the event loop, the pass after one that left no task runnable, or else the first pass
    after `max_wait` seconds; the others wait for a later pass, in the order they came. A turn
    is given, not held: whatever a connection then waits for (its application's answer, a
    client that does not read) keeps no other connection waiting. `run` hands the turns out for
    as long as the server runs; it watches the loop as a trio instrument meanwhile."""

    def __init__(self, per_pass: int, max_wait: float) -> None:
        self.per_pass = per_pass
        self.max_wait = max_wait
        self._queue = trio.lowlevel.ParkingLot()
        self._someone_waits = trio.Event()
        self._idle = trio.Event()
        self._wants_idle = False  # run waits for an idle pass
        self._idle_seen = False  # ... and the loop went to wait for I/O with nothing runnable

    @property
    def waiting(self) -> int:
        return self._queue.statistics().tasks_waiting

    async def take(self) -> None:
        self._someone_waits.set()
        await self._queue.park()

    def before_io_wait(self, timeout: float) -> None:
        """trio waits for I/O with a timeout only when no task is runnable: the loop is idle."""
        if self._wants_idle and timeout > 0:
            self._idle_seen = True

    def after_io_wait(self, timeout: float) -> None:
        """After that wait (for I/O, or `TICK` at most while turns wait), before the next pass
        is chosen: `run` is in it. The loop did block meanwhile, so the actors' threads got the
        interpreter (waking `run` at once instead, through the loop's wake-up, kept the loop
        from ever blocking while a flood waited, and an actor's hand-off waited up to 23 ms)."""
        if self._idle_seen:
            self._idle_seen = self._wants_idle = False
            self._idle.set()

    async def run(self) -> None:
        trio.lowlevel.add_instrument(self)
        try:
            while True:
                if not self.waiting:
                    self._someone_waits = trio.Event()
                    await self._someone_waits.wait()
                self._idle = trio.Event()
                self._wants_idle = True
                deadline = trio.current_time() + self.max_wait
                while not self._idle.is_set() and trio.current_time() < deadline:
                    with trio.move_on_at(min(deadline, trio.current_time() + TICK)):  # an idle loop waits no longer
                        await self._idle.wait()
                self._wants_idle = self._idle_seen = False
                self._queue.unpark(count=self.per_pass)
                await trio.lowlevel.checkpoint()  # the tasks it unparked run in the next pass, and so does it
        finally:
            self._wants_idle = self._idle_seen = False
            trio.lowlevel.remove_instrument(self)


class EdgeStream(trio.abc.HalfCloseableStream):
    """An accepted connection as Hypercorn reads and writes it (under TLS: as the SSLStream
    does). Two differences from the socket stream it wraps:

    - what an anonymous connection received (bytes, the end of the stream, a reset) is handed on
      in its turn (`AnonymousTurns`);
    - a send after the connection's EOF was sent fails as a closed stream (what Hypercorn
      expects of a closing connection) instead of as a busy one: Hypercorn's close sends the EOF
      without its send lock, and an application task that answers at that moment (a 413 to a
      body that is still arriving) would otherwise fail with trio's BusyResourceError, logged
      as an "Error in ASGI Framework" with a traceback whose formatting costs milliseconds."""

    def __init__(self, stream: trio.SocketStream, connection: Turns) -> None:
        self._stream = stream
        self._connection = connection
        self._eof_sent = False

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            return await self._stream.receive_some(max_bytes)
        finally:
            await self._connection.take_turn()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_sent:
            raise trio.ClosedResourceError("the connection is closing")
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        self._eof_sent = True
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

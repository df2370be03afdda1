"""The one place where actors and the trio event loop meet.

Loop → actor: `actor_ref.tell(message)`, which never blocks. Nothing here helps with the other
direction on purpose: `ask()` or `.get()` on the loop would stall every connection.

Actor → loop: `LoopBridge.call_soon` and `LoopBridge.spawn` schedule onto the loop through its
trio token and return at once, so an actor thread never waits for the network. Around a
fan-out, `batched_calls` hands what it schedules to the loop in one go.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Awaitable, Callable, Iterator

import trio

log = logging.getLogger(__name__)

_batch = threading.local()  # .calls: {bridge: [(fn, args), ...]} while a batch is open on this thread


@contextlib.contextmanager
def batched_calls() -> Iterator[None]:
    """On an actor's thread, around a fan-out: what it schedules with `LoopBridge.call_soon`
    (every participant's queue waking its sender) goes to the loop when the block ends, in
    order, as one call. Each call to the loop's token writes to its wake-up socket and lets go
    of the GIL for the write; behind a busy loop eleven of them took 56-70 us (median) and up to
    a second (waiting for the GIL after each), one took 14-17 us (bench/loop_wakes.py)."""
    if getattr(_batch, "calls", None) is not None:  # nested: the outermost block hands them on
        yield
        return
    _batch.calls = {}
    try:
        yield
    finally:
        calls, _batch.calls = _batch.calls, None
        for bridge, pending in calls.items():
            bridge._call_all_soon(pending)


def _call_all(pending: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
    for fn, args in pending:
        fn(*args)


class LoopClosed(RuntimeError):
    pass


class LoopBridge:
    """Owns a nursery on the trio loop for work that actors start (endpoint connections)."""

    def __init__(self) -> None:
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; every task spawned through the bridge is a child of this one."""
        try:
            async with trio.open_nursery() as nursery:
                self._token = trio.lowlevel.current_trio_token()
                self._nursery = nursery
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._token = None

    @property
    def running(self) -> bool:
        return self._token is not None

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the loop. Safe from any thread; never blocks."""
        token = self._token
        if token is None:
            raise LoopClosed("the trio loop is not running")
        batch = getattr(_batch, "calls", None)
        if batch is not None:
            batch.setdefault(self, []).append((fn, args))
            return
        try:
            token.run_sync_soon(fn, *args)
        except trio.RunFinishedError as exc:
            raise LoopClosed("the trio loop has finished") from exc

    def _call_all_soon(self, pending: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
        """A batch's calls, in order; dropped if the loop closed meanwhile (as a call_soon that
        found it closed is, by every caller)."""
        token = self._token
        if token is None:
            return
        try:
            token.run_sync_soon(_call_all, pending)
        except trio.RunFinishedError:
            log.debug("the trio loop finished: %d call(s) of a batch dropped", len(pending))

    def spawn(self, async_fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start `async_fn(*args)` as a task in the bridge's nursery."""

        def start() -> None:
            if self._nursery is None:
                log.warning("loop bridge stopped; %s not started", getattr(async_fn, "__name__", async_fn))
                return
            self._nursery.start_soon(async_fn, *args)

        self.call_soon(start)

    async def request(self, submit: Callable[[Callable[[Any], None]], None], timeout: float,
                      on_late: Callable[[Any], None] | None = None) -> Any:
        """On the loop: `submit(reply_to)` tells an actor a message carrying `reply_to`; wait for
        the reply without blocking the loop. None if none came within `timeout` seconds; a reply
        that comes after the wait ended (timed out or cancelled) goes to `on_late`, on the loop."""
        done = trio.Event()
        answer: list[Any] = []
        waiting = True

        def on_reply(reply: Any) -> None:
            if waiting:
                if not answer:
                    answer.append(reply)
                    done.set()
            elif on_late is not None:
                on_late(reply)

        submit(self.reply_to(on_reply))
        try:
            with trio.move_on_after(timeout):
                await done.wait()
        finally:
            waiting = False
        return answer[0] if answer else None

    def reply_to(self, fn: Callable[[Any], Any]) -> Callable[[Any], None]:
        """A `reply_to` for actor messages that delivers the reply to `fn` on the loop."""

        def deliver(reply: Any) -> None:
            try:
                self.call_soon(fn, reply)
            except LoopClosed:
                log.debug("reply %r dropped: loop closed", type(reply).__name__)

        return deliver

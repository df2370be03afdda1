"""The one place where actors and the trio event loop meet.

Loop → actor: `actor_ref.tell(message)`, which never blocks. Nothing here helps with the other
direction on purpose: `ask()` or `.get()` on the loop would stall every connection.

Actor → loop: `LoopBridge.call_soon` and `LoopBridge.spawn` schedule onto the loop through its
trio token and return at once, so an actor thread never waits for the network.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import trio

log = logging.getLogger(__name__)


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
        try:
            token.run_sync_soon(fn, *args)
        except trio.RunFinishedError as exc:
            raise LoopClosed("the trio loop has finished") from exc

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

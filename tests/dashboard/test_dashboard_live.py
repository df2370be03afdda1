"""The live hub (dashboard/pages/live.py) on its own: one watch on the engine, fanned out to bounded
subscriber channels; a subscriber that does not read is dropped and never slows the others or
the engine's thread."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import trio

from dashboard.pages.live import LiveHub
from engine.bridge import LoopBridge
from engine.messages import (
    EndpointSpec, EndReason, Member, EndpointProtocol, Reason, Refused, Role, SessionFinished, SessionState, SessionSummary,
    SessionUpdated, User,
)

ALICE = User("u-alice", "alice")


def summary(n: int) -> SessionSummary:
    return SessionSummary(f"s{n}", EndpointSpec("e1", "box", EndpointProtocol.SYNTHETIC), ALICE,
                          (Member("p1", ALICE, Role.CONTROLLER),), SessionState.ACTIVE, 1000.0 + n)


class FakeEngine:
    """The non-blocking surface the hub uses; answers come from another thread, as actors do."""

    def __init__(self) -> None:
        self.watchers: list[Any] = []

    def watch(self, callback: Any) -> None:
        self.watchers.append(callback)

    def route(self, session_id: str, message: Any) -> None:
        threading.Thread(target=message.reply_to, args=(Refused(Reason.UNKNOWN_SESSION),)).start()

    def live_sessions(self) -> list[SessionSummary]:
        return []


async def hub_on(nursery: trio.Nursery, queue_size: int) -> tuple[LiveHub, FakeEngine]:
    bridge = LoopBridge()
    await nursery.start(bridge.serve)
    engine = FakeEngine()
    hub = LiveHub(SimpleNamespace(engine=engine, bridge=bridge), queue_size=queue_size)
    await hub.start()
    await hub.start()  # idempotent: one watch for the process
    assert len(engine.watchers) == 1
    return hub, engine


async def test_a_slow_subscriber_is_dropped_and_the_others_get_everything(nursery):
    hub, engine = await hub_on(nursery, queue_size=8)
    with hub.subscribe() as slow, hub.subscribe() as fast:
        got = []
        for n in range(20):
            hub._on_change(SessionUpdated(summary(n)))  # what the bridge runs on the loop
            got.append(fast.receive.receive_nowait())
        assert [c.summary.session_id for c in got] == [f"s{n}" for n in range(20)]
        assert slow.dropped and not fast.dropped and hub.dropped == 1
        assert slow not in hub.subscribers and fast in hub.subscribers
        # the dropped one reads what it had, then the end of its channel: its stream ends
        kept = [slow.receive.receive_nowait() for _ in range(8)]
        assert [c.summary.session_id for c in kept] == [f"s{n}" for n in range(8)]
        try:
            slow.receive.receive_nowait()
            raise AssertionError("the dropped subscriber's channel is still open")
        except trio.EndOfChannel:
            pass
    assert hub.subscribers == set()


async def test_the_engines_thread_never_waits_for_a_subscriber(nursery):
    hub, engine = await hub_on(nursery, queue_size=4)
    watcher = engine.watchers[0]
    with hub.subscribe() as idle:
        done = threading.Event()

        def actor() -> None:  # an actor thread telling 1,000 changes to nobody who reads
            for n in range(1000):
                watcher(SessionUpdated(summary(n)))
            watcher(SessionFinished("s0", EndReason.TERMINATED))
            done.set()

        threading.Thread(target=actor).start()
        with trio.fail_after(10):
            # the actor's calls return at once, whether or not anyone reads
            assert await trio.to_thread.run_sync(done.wait, 10)
            while hub.dropped == 0:  # the changes it scheduled reach the hub on the loop
                await trio.sleep(0)
        assert idle.dropped

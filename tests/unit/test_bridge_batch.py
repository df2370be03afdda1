"""engine.bridge.batched_calls: what an actor's thread schedules during a fan-out reaches the loop
in one call to its token, in order, and runs; outside a batch every call is its own."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from engine.bridge import LoopBridge, LoopClosed, batched_calls


class CountingToken:
    """The loop's real token, counting the calls made to it."""

    def __init__(self, token: Any) -> None:
        self._token = token
        self.calls = 0

    def run_sync_soon(self, fn: Any, *args: Any) -> None:
        self.calls += 1
        self._token.run_sync_soon(fn, *args)


@pytest.fixture
async def bridge(nursery):
    running = await nursery.start(LoopBridge().serve)
    running._token = CountingToken(running._token)
    return running


async def until(predicate: Any) -> None:
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0)  # the loop runs what was scheduled


async def test_a_batch_reaches_the_loop_in_one_call_in_order(bridge):
    ran: list[int] = []

    def fan_out() -> None:  # on a thread, as an actor's fan-out
        with batched_calls():
            for n in range(11):
                bridge.call_soon(ran.append, n)
            with batched_calls():  # nested: the outermost block hands them on
                bridge.call_soon(ran.append, 11)

    await trio.to_thread.run_sync(fan_out)
    await until(lambda: len(ran) == 12)
    assert ran == list(range(12))
    assert bridge._token.calls == 1


async def test_outside_a_batch_each_call_is_its_own(bridge):
    ran: list[int] = []

    def calls() -> None:
        for n in range(3):
            bridge.call_soon(ran.append, n)

    await trio.to_thread.run_sync(calls)
    await until(lambda: len(ran) == 3)
    assert ran == [0, 1, 2] and bridge._token.calls == 3


def test_a_closed_loop_is_still_said_at_once():
    with batched_calls(), pytest.raises(LoopClosed):
        LoopBridge().call_soon(print)

"""What the endpoint connections share (protocols/attempts.py): the bounded queue toward the
endpoint drops what does not fit, counted and logged, and never waits."""

from __future__ import annotations

import logging

import pytest
import trio

from protocols.attempts import InputQueue


async def test_input_that_does_not_fit_is_dropped_counted_and_logged_once_per_hundred(caplog):
    queue = InputQueue("ssh", 2)
    with caplog.at_level(logging.WARNING, logger="protocols.attempts"):
        for i in range(102):
            queue.offer(b"%d" % i)  # never waits: the endpoint takes nothing meanwhile
    assert queue.dropped == 100
    assert [queue.receive_channel.receive_nowait() for _ in range(2)] == [b"0", b"1"]
    with pytest.raises(trio.WouldBlock):
        queue.receive_channel.receive_nowait()  # the first two kept, in order; nothing else
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["ssh: input queue full, 1 input message(s) dropped so far",
                        "ssh: input queue full, 100 input message(s) dropped so far"]


async def test_input_after_the_connection_ended_is_dropped_quietly(caplog):
    queue = InputQueue("vnc", 2)
    queue.receive_channel.close()
    with caplog.at_level(logging.WARNING, logger="protocols.attempts"):
        queue.offer(b"late")  # no exception reaches the loop
    assert caplog.records == [] and queue.dropped == 0

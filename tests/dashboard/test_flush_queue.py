"""The queue between the engine and a participant's websocket sender: when it asks the sender
to flush before the end of its coalescing window."""

from __future__ import annotations

from dashboard.gateway.flush_queue import FlushQueue
from dashboard.services.metrics import GatewayMetrics
from engine.messages import Frame


def test_a_full_batch_or_a_frame_that_asks_for_it_is_flushed_at_once():
    flushes = []
    queue = FlushQueue(1 << 20, 1000, lambda: None, lambda: flushes.append(1), GatewayMetrics(None, None))
    queue.offer(Frame(b"x" * 400))
    queue.offer(Frame(b"x" * 400))
    assert flushes == []  # small frames wait for the window: coalesced
    queue.offer(Frame(b"x" * 400))
    assert flushes == [1]  # flush_bytes pending
    queue.take()
    queue.offer(Frame(b"x" * 10, flush=True))  # a large desktop frame's flag, whatever its size
    assert flushes == [1, 1]

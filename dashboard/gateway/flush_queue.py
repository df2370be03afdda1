"""The queue between the engine and one participant's websocket sender (gateway/channel.py)."""

from __future__ import annotations

from typing import Any, Callable

from dashboard.services.metrics import GatewayMetrics
from engine import OutboundQueue
from engine.messages import Frame, Keyframe


class FlushQueue(OutboundQueue):
    """An OutboundQueue that also says when `flush_bytes` are pending, a frame that asks for it
    (`Frame.flush`) came, or the queue closed, so that the sender does not wait for the end of
    its window with a full batch or a gone participant's last messages in hand, and counts its
    overflows (the first refused frame since the last resync) and resyncs for /metrics. Frames and
    keyframes come from the session's one EndpointActor, so the flag needs no lock."""

    def __init__(self, max_bytes: int, flush_bytes: int, on_ready: Callable[[], None],
                 on_full: Callable[[], None], metrics: GatewayMetrics) -> None:
        super().__init__(max_bytes, on_ready)
        self._flush_bytes = flush_bytes
        self._on_full = on_full
        self._full_signalled = False
        self._metrics = metrics
        self._overflowed = False

    def offer(self, frame: Frame) -> bool:
        accepted = super().offer(frame)
        if accepted and not self._full_signalled and (frame.flush or self.pending_bytes >= self._flush_bytes):
            self._full_signalled = True
            self._on_full()
        elif not accepted and not self._overflowed:
            self._overflowed = True
            self._metrics.queue_overflows.inc()
        return accepted

    def keyframe(self, keyframe: Keyframe, resync: bool = False) -> None:
        super().keyframe(keyframe, resync)
        if resync and not self.closed:  # a participant already gone is not resynchronised
            self._overflowed = False
            self._metrics.resyncs.inc()

    def close(self) -> None:
        super().close()
        self._on_full()  # a sender waiting for its window's end: what is left goes now

    def take(self) -> list[Any]:
        self._full_signalled = False
        return super().take()

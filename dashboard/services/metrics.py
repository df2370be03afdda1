"""What the gateway counts for ``/metrics``, beside the engine's own (engine/metrics.py), on the
same registry: one registry per application, never prometheus-client's process-wide default.

Counted where it happens, at the cost the path can bear:

- the websockets' messages and bytes out: plain integers, incremented by the one trio thread
  that sends (`Channel.send_text`, `send_bytes`), read when the registry is collected; no lock
  per message;
- the fan-out latency, from the endpoint's output (``Frame.emitted_ns``) to the websocket
  write of the batch that carries it: one observation per delivered batch, of its oldest frame;
- joins and refusals by reason, refused client messages, and a participant queue's overflows
  and resyncs: rare next to frames, Prometheus counters (a lock each);
- live sessions and participants by protocol: read from the engine's directory when collected.

The connection guard of cosession/web_server.py registers its own counts (open, anonymous and
refused connections) through `register`.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from engine import Engine
from engine.messages import EndpointProtocol, Role

# Fan-out latency buckets (seconds): a flush window is 16 ms; a loaded gateway's p99 is tens of ms.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


class GatewayMetrics(Collector):
    def __init__(self, registry: CollectorRegistry | None, engine: Engine | None) -> None:
        """On `registry` (the engine's), or a registry of its own; `engine` None: no live sessions
        (services built for the database only, by a command or a test)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self._engine = engine
        r = self.registry
        # written only on the trio loop's thread
        self.websocket_messages_out = 0
        self.websocket_bytes_out = 0
        self.joins = Counter("cosession_joins", "Participants admitted to a session by the gateway "
                             "(a start's controller, a returning controller, a viewer)", ["protocol", "role"], registry=r)
        self.refusals = Counter("cosession_refusals", "Starts and joins refused (the websocket is closed with 4403), "
                                "by reason", ["kind", "reason"], registry=r)
        self.messages_refused = Counter("cosession_messages_refused", "Client messages refused on a session's "
                                        "websocket (a viewer's input, a malformed message, ...), by reason",
                                        ["reason"], registry=r)
        self.queue_overflows = Counter("cosession_queue_overflows", "A participant's outbound queue overflowed: "
                                       "its pending frames were dropped", registry=r)
        self.resyncs = Counter("cosession_resyncs", "Keyframes sent to a participant in place of the frames its "
                               "queue dropped", registry=r)
        self.fanout_latency = Histogram("cosession_fanout_latency_seconds", "From the endpoint's output to the "
                                        "websocket write of the batch carrying it (its oldest frame)",
                                        buckets=LATENCY_BUCKETS, registry=r)
        r.register(self)

    def register(self, collector: Callable[[], Iterable[Any]]) -> None:
        """One more source read at each scrape (cosession/web_server.py's guard)."""
        self.registry.register(_Collected(collector))

    def delivered(self, frames: list[Any]) -> None:
        """A batch of `frames` was written to a websocket."""
        emitted = frames[0].emitted_ns if frames else 0
        if emitted:
            self.fanout_latency.observe(max(0, time.perf_counter_ns() - emitted) / 1e9)

    def collect(self) -> Iterator[Any]:
        yield CounterMetricFamily("cosession_websocket_messages_out", "Websocket messages sent to participants",
                                  value=self.websocket_messages_out)
        yield CounterMetricFamily("cosession_websocket_bytes_out", "Payload bytes of the websocket messages sent to "
                                  "participants", value=self.websocket_bytes_out)
        sessions = GaugeMetricFamily("cosession_live_sessions", "Sessions live on this gateway", labels=["protocol"])
        participants = GaugeMetricFamily("cosession_live_participants", "Participants of the live sessions",
                                         labels=["protocol", "role"])
        by_protocol: collections.Counter[str] = collections.Counter()
        by_role: collections.Counter[tuple[str, str]] = collections.Counter()
        for summary in self._engine.live_sessions() if self._engine is not None else ():
            protocol = summary.endpoint.protocol.value
            by_protocol[protocol] += 1
            for member in summary.members:
                by_role[protocol, member.role.value] += 1
        for protocol in EndpointProtocol:
            sessions.add_metric([protocol.value], by_protocol[protocol.value])
            for role in Role:
                participants.add_metric([protocol.value, role.value], by_role[protocol.value, role.value])
        yield sessions
        yield participants

    def describe(self) -> Iterator[Any]:
        return iter(())  # collected on every scrape


class _Collected(Collector):
    def __init__(self, collect: Callable[[], Iterable[Any]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Any]:
        return self._collect()

    def describe(self) -> Iterator[Any]:
        return iter(())

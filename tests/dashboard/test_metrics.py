"""/metrics after a scripted session over real websockets: a start, a viewer, a refused join and
a viewer resynchronised after its queue overflowed; the Prometheus text parses with
prometheus-client's own parser and every counter says exactly what happened. Who may read it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from engine.audit import verify
from tests.dashboard.test_gateway_flow import QUEUE_BYTES, overflow_in_lockstep, stalled_viewer
from tests.fixtures.websockets import session_with_viewer


@pytest.fixture
def gateway_overrides():
    return {"engine": {"queue_max_bytes": QUEUE_BYTES}, "metrics": {"enabled": True}}


class Scrape:
    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples[name, tuple(sorted(labels.items()))]

    def total(self, name: str) -> float:
        return sum(value for (sample, _), value in self.samples.items() if sample == name)


async def scrape(gateway: Any, **headers: str) -> Scrape:
    def get() -> httpx.Response:
        return httpx.get(gateway.url("/metrics"), headers=headers, timeout=10)

    answer = await trio.to_thread.run_sync(get)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return Scrape(answer.text)


async def test_the_metrics_count_exactly_a_scripted_session(harness):
    gateway = harness.gateway
    controller, viewer, sid = await session_with_viewer(harness)       # a start and a viewer
    harness.user("carol", grant=False)
    refused_client, refused = await harness.join("carol", sid)          # a refused join
    assert refused["type"] == "refused" and refused["reason"] == "no_access"
    slow = await stalled_viewer(harness, "slow", sid)                   # a viewer that stops reading
    directory = gateway.app.state.live_sessions
    connection = harness.connection(sid)
    overflowed = await overflow_in_lockstep(harness, sid, "slow", controller, viewer, fill=b"y")
    connection.emit(b"after the stall\r\n")
    for client in (controller, viewer):
        await client.output_contains(b"after the stall")
    await slow.control("resync", deadline=15)                            # it reads again: resynchronised
    await slow.output_contains(b"after the stall", deadline=15)
    await trio.to_thread.run_sync(gateway.engine.flush_audit)

    def messages_sent() -> int:
        return sum(channel.messages_sent for channel in directory.sessions[sid].channels)

    sent = await trio.to_thread.run_sync(gateway.call_on_loop, messages_sent)
    m = await scrape(gateway)

    assert m.value("cosession_joins_total", protocol="synthetic", role="controller") == 1
    assert m.value("cosession_joins_total", protocol="synthetic", role="viewer") == 2
    assert m.total("cosession_joins_total") == 3
    assert m.value("cosession_refusals_total", kind="join", reason="no_access") == 1
    assert m.total("cosession_refusals_total") == 1
    assert m.value("cosession_queue_overflows_total") == 1
    assert m.value("cosession_resyncs_total") == 1
    assert m.total("cosession_messages_refused_total") == 0
    assert m.value("cosession_live_sessions", protocol="synthetic") == 1
    assert m.total("cosession_live_sessions") == 1
    assert m.value("cosession_live_participants", protocol="synthetic", role="controller") == 1
    assert m.value("cosession_live_participants", protocol="synthetic", role="viewer") == 2
    assert m.total("cosession_participants_removed_total") == 0
    assert m.total("cosession_sessions_ended_total") == 0
    assert m.total("cosession_endpoint_retries_total") == 0
    assert m.total("cosession_endpoint_failures_total") == 0
    # every websocket message: the live channels' and the refused join's one refusal
    assert m.value("cosession_websocket_messages_out_total") == sent + 1
    assert m.value("cosession_websocket_bytes_out_total") >= 2 * overflowed.frames * len(overflowed.body)  # controller and viewer: every frame
    batches = m.value("cosession_fanout_latency_seconds_count")
    assert 0 < batches <= sent and m.value("cosession_fanout_latency_seconds_sum") > 0
    assert m.types["cosession_fanout_latency_seconds"] == "histogram"
    # the audit log: every row this gateway wrote, none waiting
    total_rows = await trio.to_thread.run_sync(_audit_rows, gateway)
    assert m.value("cosession_audit_rows_written_total") == total_rows > 0
    assert m.value("cosession_audit_rows_pending") == 0
    assert m.value("cosession_audit_store_lag_seconds") == 0
    assert m.value("cosession_connections_open") >= 4
    assert m.total("cosession_connections_refused_total") == 0

    # the controller leaves: the session ends, and the counters say so
    await controller.send({"type": "leave"})
    await viewer.control("ended")
    m = await scrape(gateway)
    assert m.value("cosession_sessions_ended_total", protocol="synthetic", reason="controller_left") == 1
    assert m.total("cosession_live_sessions") == 0
    assert m.total("cosession_live_participants") == 0


def _audit_rows(gateway: Any) -> int:
    report = verify(gateway.settings.database_url)
    assert report.ok
    return report.rows


async def test_metrics_answer_loopback_clients_only_without_a_token(harness):
    gateway = harness.gateway
    await scrape(gateway)  # from loopback, directly: answered

    def through_a_proxy() -> httpx.Response:
        return httpx.get(gateway.url("/metrics"), headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10)

    answer = await trio.to_thread.run_sync(through_a_proxy)
    assert answer.status_code == 403
    assert "cosession_" not in answer.text

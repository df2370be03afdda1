"""/healthz and /readyz against the real gateway: with its database (a real PostgreSQL server)
reachable, stopped and back; with its engine stopped; answered without a sign-in and without a
detail; the probe's connection not counted as anonymous. /metrics behind its setting and token."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from engine.clock import ManualClock
from tests.fixtures.gateway import LiveGateway
from tests.fixtures.postgres import PostgresServer

TOKEN = "a-metrics-token-of-some-length"


def probe(gateway: LiveGateway, path: str) -> httpx.Response:
    return httpx.get(gateway.url(path), timeout=10)


def ready_after_a_second(gateway: LiveGateway) -> httpx.Response:
    """The next /readyz answer that is not the cached one (the engine's clock moves past it)."""
    gateway.clock.advance(1.5)
    return probe(gateway, "/readyz")


def test_readyz_follows_the_database_and_healthz_the_process(tmp_path: Path):
    with PostgresServer() as pg:
        gateway = LiveGateway(tmp_path / "data", clock=ManualClock(),
                              overrides={"engine": {"database_url": pg.url}}).start()
        try:
            health, ready = probe(gateway, "/healthz"), probe(gateway, "/readyz")
            assert (health.status_code, health.text) == (200, "ok\n")
            assert (ready.status_code, ready.text) == (200, "ready\n")
            for answer in (health, ready):  # no sign-in, nothing to remember
                assert "set-cookie" not in answer.headers and answer.headers["cache-control"] == "no-store"

            pg.stop()
            assert probe(gateway, "/readyz").status_code == 200  # the answer of a second ago
            down = ready_after_a_second(gateway)
            assert (down.status_code, down.text) == (503, "not ready\n")  # and nothing about why
            assert probe(gateway, "/healthz").status_code == 200  # the process still serves

            pg.start()
            # the pool's connections to the stopped server are dropped at their first use
            answers = [ready_after_a_second(gateway).status_code for _ in range(3)]
            assert 200 in answers and answers[-1] == 200, answers
        finally:
            gateway.stop()


@pytest.fixture
def gateway_clock():
    return ManualClock()


def test_readyz_says_not_ready_once_the_engine_stopped(live_gateway):
    assert probe(live_gateway, "/readyz").status_code == 200
    live_gateway.engine.stop()
    assert ready_after_a_second(live_gateway).status_code == 503
    assert probe(live_gateway, "/healthz").status_code == 200


def test_a_probes_connection_is_not_counted_as_anonymous(live_gateway):
    guard = live_gateway.web_server
    with httpx.Client(base_url=live_gateway.base_url, timeout=10) as balancer, \
            httpx.Client(base_url=live_gateway.base_url, timeout=10) as stranger:
        assert balancer.get("/healthz").status_code == 200  # kept alive after it
        assert balancer.get("/readyz").status_code == 200
        assert (guard.open_connections, guard.anonymous_connections) == (1, 0)
        assert stranger.get("/login").status_code == 200
        assert (guard.open_connections, guard.anonymous_connections) == (2, 1)


def test_metrics_are_off_by_default(live_gateway):
    answer = probe(live_gateway, "/metrics")
    assert answer.status_code == 404
    assert "strict-transport-security" not in answer.headers  # plain HTTP: no HSTS (see test_tls_browser.py)


def test_metrics_with_a_token_ask_for_it(tmp_path: Path):
    gateway = LiveGateway(tmp_path / "data", overrides={"metrics": {"enabled": True, "token": TOKEN}}).start()
    try:
        missing = probe(gateway, "/metrics")
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        wrong = httpx.get(gateway.url("/metrics"), headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
        assert wrong.status_code == 401 and "cosession_" not in wrong.text
        right = httpx.get(gateway.url("/metrics"), headers={"Authorization": "Bearer " + TOKEN})
        assert right.status_code == 200 and "cosession_joins_total" in right.text
    finally:
        gateway.stop()

"""The session page in Chromium when a viewer stops reading: past `engine.stall_seconds` (the
engine's ManualClock) the viewer is disconnected, and the controller's page says so and drops it
from its list, while its own terminal goes on."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from playwright.sync_api import expect
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from cosession.join import _headers, login
from engine.clock import ManualClock
from tests.dashboard.test_session_eject_browser import TERMINAL_TEXT, Site
from tests.fixtures.browser import WAIT
from tests.fixtures.gateway import PASSWORD

pytestmark = pytest.mark.browser

BOUND = 60.0  # seconds: a bound on waiting for the gateway, never a wait for time to pass


@pytest.fixture
def gateway_clock():
    return ManualClock()


@pytest.fixture
def site(live_gateway, browser):
    with Site(live_gateway, browser) as s:
        yield s
    assert s.errors == []


def stalled_viewer(gateway, name: str, session_id: str) -> socket.socket:
    """A viewer that joins and never reads again (a 4 KiB receive buffer)."""
    cookie = login(gateway.base_url, name, PASSWORD)
    host, port = gateway.base_url.split("//")[1].rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(BOUND)
    sock.connect((host, int(port)))
    ws = WSConnection(ConnectionType.CLIENT)
    headers = [(k.decode(), v.decode()) for k, v in _headers(gateway.base_url, cookie, None)]
    sock.sendall(ws.send(Request(host=f"{host}:{port}", target=f"/ws/sessions/{session_id}", extra_headers=headers)))
    while True:
        ws.receive_data(sock.recv(4096))
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                sock.sendall(ws.send(TextMessage(json.dumps({"type": "join"}))))
            elif isinstance(event, TextMessage) and json.loads(event.data)["type"] == "joined":
                return sock


def until(predicate, what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not predicate():
        assert time.monotonic() < deadline, f"not within {BOUND:g} s: {what}"
        threading.Event().wait(0.01)  # a poll interval: nothing reports this condition


def test_the_controller_is_told_that_a_stalled_viewer_was_disconnected(site, live_gateway):
    site.user("alice")
    site.user("bob")
    alice = site.signed_in("alice")
    sid = site.start(alice)
    bob = stalled_viewer(live_gateway, "bob", sid)
    try:
        expect(alice.get_by_test_id("viewer-count")).to_have_text("1")
        live = live_gateway.app.state.live_sessions
        queue = next(c.queue for c in live.sessions[sid].channels if c.user.name == "bob")
        connection = live.sessions[sid].connection
        n = 0
        while not queue.owes_resync:  # its socket's buffers, then its queue, fill
            for _ in range(64):
                connection.emit(b"%06d " % n + b"y" * 4000 + b"\r\n")
                n += 1
            # every frame offered to it was taken or dropped
            until(lambda: queue.delivered_frames + queue.dropped_frames >= n, "the endpoint actor's fan-out")
            assert n < 5000, "the stalled viewer's queue never overflowed"
        assert alice.evaluate("() => window.cosession.state") == "active"
        live_gateway.clock.advance(live_gateway.settings.engine.stall_seconds)
        notice = alice.get_by_test_id("notice")
        expect(notice).to_have_attribute("data-reason", "participant_stalled", timeout=WAIT)
        expect(notice).to_have_text("bob stopped receiving and was disconnected.")
        expect(alice.get_by_test_id("viewer-count")).to_have_text("0")
        # the controller's terminal goes on
        connection.emit(b"\x1b[2J\x1b[Hstill here\r\n")
        alice.wait_for_function(f"() => ({TERMINAL_TEXT})().includes('still here')")
    finally:
        bob.close()

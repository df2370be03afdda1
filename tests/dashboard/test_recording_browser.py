"""Replaying a recorded session in headless Chromium (issue 12): an administrator finds the
session's Replay on Connections, the player (asciinema-player) shows the audit markers on its
timeline and in a list, seeking to the join marker shows the terminal exactly as the viewer got
it when joining (its keyframe, replayed with pyte), every replay is one audit row, and someone the
setting does not name is refused (audited) while anyone without access sees no such recording.
The session runs on the real gateway's engine with a synthetic endpoint, on an injected clock:
the recording's times are the test's."""

from __future__ import annotations

import re

import pyte
import pytest
from playwright.sync_api import expect

from dashboard.security import share
from engine.clock import ManualClock
from engine.messages import EndpointProtocol, ParticipantLeft, SessionEnded
from protocols.synthetic import SyntheticConnection
from tests.actors.conftest import wait_until
from tests.dashboard.test_csp_browser import RECORD_VIOLATIONS
from tests.fixtures.gateway import PASSWORD

pytestmark = pytest.mark.browser

WAIT = 30_000
COLS, ROWS = 80, 24

PLAYER_LINES = """() => Array.from(document.querySelectorAll('#player .ap-term-text .ap-line'))
  .map((line) => line.textContent.replace(/\\u00a0/g, ' ').replace(/\\s+$/, ''))"""


@pytest.fixture
def gateway_clock():
    return ManualClock()


def screen_of(data: bytes) -> list[str]:
    screen = pyte.Screen(COLS, ROWS)
    pyte.ByteStream(screen).feed(data)
    return [line.rstrip() for line in screen.display]


def audit(gateway, kind):
    gateway.engine.flush_audit()
    rows, _ = gateway.services.audit_reader.events(kind=kind, limit=100)
    return rows


def recorded_session(gateway, end: bool = True):
    """alice's recorded session; bob joins at 0:05 and leaves at 0:12; root terminates at 0:13.
    Returns the session id and the screen bob got when he joined."""
    clock, engine, services = gateway.clock, gateway.engine, gateway.services
    endpoint = gateway.create_endpoint("synth", EndpointProtocol.SYNTHETIC, host="")
    alice, bob = gateway.create_user("alice", PASSWORD), gateway.create_user("bob", PASSWORD)
    root = gateway.create_user("root", PASSWORD, admin=True)
    gateway.grant(endpoint, alice)
    services.grants.grant(endpoint.id, bob.id, "viewer", services.profiles.standard_profile().id)
    gateway.create_user("eve", PASSWORD)  # no access to the endpoint at all

    connection = SyntheticConnection(clock)
    controller = engine.open_session(endpoint.spec, alice, connection=connection, record=True, cols=COLS, rows=ROWS)
    assert controller.sink.wait_for(lambda s: any(getattr(e, "state", None) == "active" for e in s.events))
    connection.emit(b"\x1b[1mbefore\x1b[0m the viewer came\r\n  second line\r\n$ ")
    assert controller.wait_for_output(b"$ ")
    clock.advance(5)
    viewer = engine.join_session(controller.session_id, bob)
    assert viewer.sink.wait_for(lambda s: bool(s.keyframes))
    joined_screen = screen_of(viewer.sink.keyframes[0].data)
    assert "before the viewer came" in joined_screen[0]
    clock.advance(5)
    connection.emit(b"\x1b[2J\x1b[Hafter: a different screen\r\n$ ")
    assert viewer.wait_for_output(b"different screen")
    clock.advance(2)
    viewer.leave()
    assert controller.sink.wait_for(lambda s: bool(s.events_of(ParticipantLeft)))  # left at 0:12
    clock.advance(1)
    if not end:
        return controller.session_id, joined_screen
    engine.terminate(controller.session_id, root)
    assert controller.sink.wait_for(lambda s: any(isinstance(e, SessionEnded) for e in s.events))
    assert wait_until(lambda: engine.recordings.open_count() == 0)
    return controller.session_id, joined_screen


def test_an_administrator_replays_a_session_and_seeks_to_the_viewers_join(live_gateway, browser):
    gateway = live_gateway
    sid, joined_screen = recorded_session(gateway)

    context = browser.new_context(viewport={"width": 1200, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT)
        errors: list[str] = []
        page.add_init_script(RECORD_VIOLATIONS)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" and not
                (m.location or {}).get("url", "").endswith("/favicon.ico") else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        gateway.login(page, "root", PASSWORD)
        page.goto(gateway.url("/connections"))
        row = page.locator(f'tr[data-session-id="{sid}"]')
        with page.expect_response(f"**/sessions/{sid}/recording") as opened:
            row.get_by_test_id("replay").click()
        policy = opened.value.headers["content-security-policy"]
        assert "script-src 'self' 'wasm-unsafe-eval';" in policy and "'unsafe-eval'" not in policy

        labels = ["bob joined as viewer", "bob left", "terminated by root", "session ended (terminated)"]
        expect(page.get_by_test_id("marker")).to_have_count(len(labels))
        for button, label in zip(page.get_by_test_id("marker").all(), labels):
            expect(button).to_contain_text(label)
        expect(page.get_by_test_id("marker").first).to_contain_text("0:05")
        # the same markers on the player's timeline (but those at its very end, which it does not draw)
        expect(page.locator("#player .ap-marker-container")).to_have_count(2)
        expect(page.locator("#player .ap-marker-container .ap-tooltip").first).to_have_text("00:05 - bob joined as viewer")

        page.get_by_test_id("marker").first.click()
        page.wait_for_function("() => window.cosessionReplay.seeked && window.cosessionReplay.seeked.marker === 0")
        assert page.evaluate("() => window.cosessionReplay.seeked.time") == pytest.approx(5.0, abs=0.01)
        page.wait_for_function(f"() => ({PLAYER_LINES})().join('\\n').includes('before the viewer came')")
        lines = page.evaluate(PLAYER_LINES)
        assert lines + [""] * (ROWS - len(lines)) == joined_screen  # what bob got when he joined

        # and what is on the screen after it: the end
        page.get_by_test_id("marker").nth(2).click()
        page.wait_for_function("() => window.cosessionReplay.seeked.marker === 2")
        page.wait_for_function(f"() => ({PLAYER_LINES})().join('\\n').includes('a different screen')")
        # another speed: the player starts again where it was
        page.get_by_test_id("speed").select_option("2")
        page.wait_for_function("() => window.cosessionReplay.speed === 2")
        page.wait_for_function(f"() => ({PLAYER_LINES})().join('\\n').includes('a different screen')")
        assert not errors, errors
        assert page.evaluate("() => window.__violations") == []  # the player runs under its CSP
    finally:
        context.close()

    replayed = [r for r in audit(gateway, "recording_replayed") if r["session_id"] == sid]
    assert replayed and {(r["actor_name"], r["detail"]["state"]) for r in replayed} == {("root", "closed")}


def test_who_may_replay(live_gateway):
    gateway = live_gateway
    sid, _ = recorded_session(gateway)
    # bob is a viewer on the endpoint; the default setting names owners (and administrators)
    bob = gateway.api_session("bob", PASSWORD)
    refused = bob.get(f"/sessions/{sid}/recording")
    assert refused.status_code == 403 and "only administrators and the endpoint&#39;s owners" in refused.text
    assert bob.get(f"/sessions/{sid}/recording.cast").status_code == 403
    denied = [r for r in audit(gateway, "recording_replay_denied") if r["session_id"] == sid]
    assert [(r["actor_name"], r["detail"]["reason"]) for r in denied] == [("bob", "not_permitted")] * 2
    # eve has no access to the endpoint: as if there were no such recording
    eve = gateway.api_session("eve", PASSWORD)
    assert eve.get(f"/sessions/{sid}/recording").status_code == 404
    assert eve.get("/sessions/../etc/recording.cast").status_code == 404
    # the owner may; the bytes are the file, as the audit log says
    gateway.services.grants.grant(gateway.services.endpoints.get_by_name("synth").id,
                                  gateway.services.users.get_by_name("bob").id, "owner",
                                  gateway.services.profiles.standard_profile().id)
    cast = bob.get(f"/sessions/{sid}/recording.cast")
    assert cast.status_code == 200 and cast.headers["content-type"].startswith("application/x-asciicast")
    assert cast.content == (gateway.settings.recordings_path / f"{sid}.cast").read_bytes()
    assert [r["actor_name"] for r in audit(gateway, "recording_replayed") if r["session_id"] == sid] == ["bob"]


def test_an_altered_recording_is_refused_in_the_player_and_audited(live_gateway):
    gateway = live_gateway
    sid, _ = recorded_session(gateway)
    path = gateway.settings.recordings_path / f"{sid}.cast"
    path.chmod(0o640)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    root = gateway.api_session("root", PASSWORD)
    page = root.get(f"/sessions/{sid}/recording")
    assert page.status_code == 409 and "This recording is not what the audit log says" in page.text
    assert root.get(f"/sessions/{sid}/recording.cast").status_code == 409
    denied = [r["detail"]["reason"] for r in audit(gateway, "recording_replay_denied") if r["session_id"] == sid]
    assert denied == ["altered", "altered"]
    assert not [r for r in audit(gateway, "recording_replayed") if r["session_id"] == sid]


def test_a_live_recorded_session_replays_from_its_start(live_gateway):
    gateway = live_gateway
    sid, _ = recorded_session(gateway, end=False)
    root = gateway.api_session("root", PASSWORD)
    rows = root.get("/").text
    assert f'href="/sessions/{sid}/recording"' in rows  # the live row offers Replay from the start
    shared = gateway.api_session("bob", PASSWORD).get(share.share_path(gateway.services, sid)).text
    assert "This session is recorded" in shared  # what a share link opens says so before joining
    session_page = root.get(f"/sessions/{sid}").text  # the session's page says it is recorded
    badge = re.search(r'<span[^>]*data-testid="recorded"[^>]*>', session_page).group(0)
    assert not re.search(r"\shidden\b", badge)  # the Recorded badge shows
    path = gateway.settings.recordings_path / f"{sid}.cast"
    assert wait_until(lambda: path.exists() and b"bob left" in path.read_bytes())
    page = root.get(f"/sessions/{sid}/recording")
    assert page.status_code == 200 and "still being recorded" in page.text
    cast = root.get(f"/sessions/{sid}/recording.cast")
    assert cast.status_code == 200 and cast.content.endswith(b"\n") and b"bob left" in cast.content
    [row] = [r for r in audit(gateway, "recording_replayed") if r["session_id"] == sid]
    assert row["detail"]["state"] == "recording" and row["actor_name"] == "root"

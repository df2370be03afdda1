"""A recorded VNC session end to end (issue 12, the graphical half): a controller in headless
Chromium on a real Xvnc under a Record profile, ten minutes of a changing desktop on the
ManualClock (no sleeps), then an administrator's player (the same noVNC, fed by the gateway's
replay of the file) seeks to the middle and shows the desktop of that moment, compared with what
the X server showed then. One byte changed afterwards: both verifies name the file and the player
refuses it."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from engine.clock import ManualClock
from engine.recording_desktop import read_desktop
from tests.dashboard.test_csp_browser import Watched
from tests.dashboard.test_desktop_browser import Desk
from tests.fixtures.gateway import PASSWORD
from tests.fixtures.screenshots import save_screenshot
from tests.unit.test_audit_cli import cosession

pytestmark = [pytest.mark.browser, pytest.mark.xvnc]

COLOURS = ["#203040", "#a03020", "#20a040", "#2040c0", "#c0c020", "#c020c0", "#20c0c0", "#806040", "#404080",
           "#e0e0e0"]
STEP = 10.0  # seconds of the ManualClock per advance: every timer in between fires in order


@pytest.fixture
def gateway_clock():
    return ManualClock()


@pytest.fixture
def gateway_overrides():
    return {"engine": {"endpoint_retries": 0}}


def near(picture: np.ndarray | None, truth: np.ndarray) -> tuple[bool, object]:
    if picture is None or picture.shape != truth.shape:
        return False, None if picture is None else picture.shape
    diff = np.abs(picture.astype(np.int16) - truth.astype(np.int16))
    mean, off = float(diff.mean()), int((diff.max(axis=2) > 48).sum())
    return mean < 3.0 and off < 400, (mean, off)


def wait_picture(desk: Desk, page, truth: np.ndarray, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = near(desk.picture(page), truth)
        if ok:
            return
        page.wait_for_timeout(100)  # the canvas is still being painted: poll it
    raise AssertionError(f"the canvas never showed the expected desktop: {last}")


def test_a_recorded_desktop_replays_and_seeks_to_the_middle(live_gateway, browser, xvnc, tmp_path):
    clock = live_gateway.clock
    desk = Desk(live_gateway, browser, xvnc, tmp_path)
    try:
        services = live_gateway.services
        recorded = services.profiles.create_profile("Recorded", "record")
        alice = live_gateway.create_user("alice", PASSWORD)
        services.grants.grant(desk.endpoint.id, alice.id, "owner", recorded.id)
        root = live_gateway.create_user("root", PASSWORD, admin=True)
        desk.user("bob")
        xvnc.run("xterm", "-T", "clock", "-geometry", "40x10+100+100", "-bg", "black", "-fg", "white")
        xvnc.wait_for_window("clock")

        controller = desk.signed_in("alice")
        session_id = desk.start(controller)
        expect(controller.get_by_test_id("recorded")).to_be_visible()
        truths = []
        for minute, colour in enumerate(COLOURS):
            subprocess.run(["xsetroot", "-solid", colour], env=xvnc.env, check=True, timeout=10)
            truth = xvnc.screenshot()
            desk.wait_same(controller)  # the frame reached the session (so its recording) at this time
            truths.append(truth)
            if minute == 4:  # a viewer joins: a marker at this moment
                viewer = desk.join("bob", session_id)
                expect(viewer.get_by_test_id("recorded")).to_be_visible()  # every participant is told
            if minute == 6:
                viewer.locator("#leave").click()
                viewer.wait_for_function("() => window.cosession.ended || window.cosession.left")
            for _ in range(int(60 / STEP)):
                clock.advance(STEP)
        live_gateway.engine.terminate(session_id, root)
        deadline = time.monotonic() + 20
        while (info := services.audit_reader.recording(session_id)) is None or info.state != "closed":
            assert time.monotonic() < deadline, info
            time.sleep(0.05)  # the writer thread closes the file: poll the audit log for its row
        path = live_gateway.settings.recordings_path / info.file
        with open(path, "rb") as f:
            recording = read_desktop(f)
        assert recording.indexed and 590 <= recording.duration <= 610, recording.duration
        assert len(recording.keyframes) >= 9  # one at least every minute here (every 10 s of frames)

        admin = desk.signed_in("root")
        watched = Watched(admin)  # noVNC and the player run under the CSP with no error
        admin.goto(live_gateway.url(f"/sessions/{session_id}/recording"))
        expect(admin.get_by_test_id("marker").last).to_contain_text("session ended")
        markers = admin.get_by_test_id("marker").all_text_contents()
        assert any("bob joined as viewer" in m for m in markers) and any("bob left" in m for m in markers), markers
        expect(admin.locator(".timeline-marker")).to_have_count(len(markers))  # on the timeline too
        admin.wait_for_function("() => window.cosessionReplay.connected")
        wait_picture(desk, admin, truths[0])  # from the start: the first minute's desktop
        admin.get_by_test_id("play").click()  # pause: a seek then shows that moment and stays
        for minute in (5, 3, 8):
            started = time.monotonic()
            admin.evaluate(f"() => {{ const s = document.getElementById('seek'); s.value = '{minute * 60 + 30}';"
                           " s.dispatchEvent(new Event('change')); }")
            admin.wait_for_function("() => window.cosessionReplay.connected")
            wait_picture(desk, admin, truths[minute])
            assert time.monotonic() - started < 20
        assert admin.evaluate("() => window.cosessionReplay.playing") is False
        # a marker seeks to its moment: bob's join shows the desktop he joined, the end the last one
        admin.get_by_test_id("marker").filter(has_text="bob joined").click()
        admin.wait_for_function("() => window.cosessionReplay.connected")
        wait_picture(desk, admin, truths[4])
        save_screenshot(admin, "recording-desktop.png")
        admin.get_by_test_id("marker").last.click()
        admin.wait_for_function("() => window.cosessionReplay.connected")
        wait_picture(desk, admin, truths[-1])
        watched.assert_clean("the desktop player")

        with sa.create_engine(live_gateway.settings.database_url).connect() as db:
            replays = db.execute(sa.text("select detail from audit_events where kind = 'recording_replayed' "
                                         "and session_id = :s"), {"s": session_id}).scalars().all()
        positions = [json.loads(d)["position"] for d in replays]
        assert positions[:4] == [0.0, 330.0, 210.0, 510.0] and len(positions) == 6  # every play and seek

        exported = cosession("recordings", "export", session_id, "--data-dir", str(live_gateway.data_dir),
                             "-o", str(tmp_path / "export.rfbrec"))
        assert exported.returncode == 0 and (tmp_path / "export.rfbrec").read_bytes() == path.read_bytes()
        assert cosession("recordings", "verify", "--data-dir", str(live_gateway.data_dir)).returncode == 0

        # one byte changed: both verifies name it, and the player refuses it
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.chmod(0o640)
        path.write_bytes(bytes(data))
        data_dir = str(live_gateway.data_dir)
        verify = cosession("recordings", "verify", "--data-dir", data_dir)
        assert verify.returncode == 1 and f"its file {path.name} was altered" in verify.stdout, verify
        audit = cosession("audit", "verify", "--data-dir", data_dir)
        assert audit.returncode == 1 and f"its file {path.name} was altered" in audit.stdout, audit
        exported = cosession("recordings", "export", session_id, "--data-dir", data_dir, "-o", str(tmp_path / "x"))
        assert exported.returncode == 1 and not (tmp_path / "x").exists()
        answer = admin.goto(live_gateway.url(f"/sessions/{session_id}/recording"))
        assert answer.status == 409
    finally:
        desk.close()

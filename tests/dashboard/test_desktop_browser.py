"""Joint VNC sessions end to end: headless Chromium (Playwright) running noVNC on the real
gateway, a real Xvnc with real X clients. The X server is the witness: `xev` logs every key and
button event its window receives, and `xwd` reads its framebuffer to compare with a canvas."""

from __future__ import annotations

import base64
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect

from dashboard.repositories.model import Principal
from engine.messages import EndpointProtocol, User
from tests.dashboard.test_csp_browser import Watched
from tests.fixtures.browser import BrowserSite
from tests.fixtures.gateway import PASSWORD
from tests.fixtures.screenshots import save_screenshot

pytestmark = [pytest.mark.browser, pytest.mark.xvnc]

DESKTOP_SHOWN = "() => window.cosession.role === 'controller' && window.cosession.timings.desktop"
JOINED_OR_REFUSED = "() => window.cosession.role !== null || window.cosession.fatal"

CANVAS = """() => {
  const c = document.querySelector('#desktop canvas');
  if (!c || !c.width) return null;
  const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = '';
  for (let i = 0; i < data.length; i += 32768) s += String.fromCharCode.apply(null, data.subarray(i, i + 32768));
  return [c.width, c.height, btoa(s)];
}"""


@pytest.fixture
def gateway_overrides():
    return {"engine": {"endpoint_retries": 0}}


class Desk(BrowserSite):
    context_options = {"viewport": {"width": 1200, "height": 900}}

    def __init__(self, gateway: Any, browser: Browser, xvnc: Any, tmp: Path) -> None:
        super().__init__(gateway, browser)
        self.xvnc = xvnc
        self.endpoint = gateway.create_endpoint("desk", EndpointProtocol.VNC, xvnc.host, xvnc.port,
                                                password=xvnc.password)
        self.xev_log = tmp / "xev.log"

    def user(self, name: str, *, admin: bool = False) -> User:
        user = self.gateway.create_user(name, PASSWORD, admin=admin)
        self.gateway.grant(self.endpoint, user)
        return user

    def start(self, page: Page, endpoint: Any = None, **fields: Any) -> str:
        return super().start(page, endpoint, ready=DESKTOP_SHOWN, **fields)

    def join(self, name: str, session_id: str) -> Page:
        return self.open_session(name, session_id, ready=JOINED_OR_REFUSED)

    def picture(self, page: Page) -> np.ndarray | None:
        shot = page.evaluate(CANVAS)
        if shot is None:
            return None
        w, h, data = shot
        return np.frombuffer(base64.b64decode(data), np.uint8).reshape(h, w, 4)[:, :, :3]

    def wait_same(self, page: Page, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            picture, truth = self.picture(page), self.xvnc.screenshot()
            if picture is not None and picture.shape == truth.shape:
                diff = np.abs(picture.astype(np.int16) - truth.astype(np.int16))
                last = (float(diff.mean()), int((diff.max(axis=2) > 48).sum()))
                if last[0] < 3.0 and last[1] < 400:
                    return
            page.wait_for_timeout(100)  # the canvas is still being painted: poll it
        raise AssertionError(f"the canvas never matched the X server's framebuffer: {last}")

    def xev_events(self) -> list[str]:
        lines = self.xev_log.read_text().splitlines()
        return [line.split()[0] + " " + " ".join(lines[i + 1:i + 3]) for i, line in enumerate(lines)
                if line.startswith(("KeyPress", "KeyRelease", "ButtonPress", "ButtonRelease"))]


@pytest.fixture
def desk(live_gateway, browser, xvnc, tmp_path):
    with Desk(live_gateway, browser, xvnc, tmp_path) as d:
        yield d


def click_desktop(page: Page, x: int, y: int) -> None:
    """Click the canvas at desktop coordinates (it is scaled to the window)."""
    box = page.locator("#desktop canvas").bounding_box()
    width, height = page.evaluate("() => { const c = document.querySelector('#desktop canvas'); return [c.width, c.height]; }")
    page.mouse.click(box["x"] + x * box["width"] / width, box["y"] + y * box["height"] / height)


def test_a_joint_desktop_session(desk, live_gateway, xvnc):
    """The controller types into an xterm: its canvas and a viewer's show it; a viewer's keys and
    clicks (its noVNC forced out of view-only) never reach the X server; a late joiner sees the
    desktop as it is; the 11th viewer is refused in its page; terminate closes every page."""
    with open(desk.xev_log, "w") as out:
        xev = subprocess.Popen(["xev", "-geometry", "300x200+650+450", "-event", "keyboard", "-event", "button"],
                               env=xvnc.env, stdout=out, stderr=subprocess.DEVNULL)
    xvnc.clients.append(xev)
    xvnc.run("xterm", "-T", "typed", "-geometry", "70x16+10+10", "-bg", "black", "-fg", "white")
    xvnc.wait_for_window("Event Tester")
    xvnc.wait_for_window("typed")
    alice, bob, carol = desk.user("alice"), desk.user("bob"), desk.user("carol")
    root = live_gateway.create_user("root", PASSWORD, admin=True)
    others = [desk.user(f"v{n}") for n in range(8)]

    controller = desk.signed_in("alice")
    watched = Watched(controller)  # noVNC runs under the CSP with no violation and no error
    session_id = desk.start(controller)
    expect(controller.get_by_test_id("role")).to_have_text("you control this session")
    viewer = desk.join("bob", session_id)
    expect(viewer.get_by_test_id("readonly-note")).to_be_visible()
    viewer.wait_for_function("() => window.cosession.timings.desktop")

    click_desktop(controller, 200, 100)  # into the xterm (no window manager: focus follows the pointer)
    controller.keyboard.type("echo typed-in-the-browser")
    controller.keyboard.press("Enter")
    desk.wait_same(controller)
    desk.wait_same(viewer)
    save_screenshot(viewer, "desktop-viewer.png")
    desk.wait_same(viewer)  # scaled to the new window, the same pixels

    # a viewer whose page is tampered with: its noVNC sends keys and clicks; the gateway refuses them
    viewer.evaluate("() => { window.cosessionDesktop.viewOnly = false; }")
    click_desktop(viewer, 800, 550)  # over xev's window
    viewer.keyboard.type("viewer")
    viewer.wait_for_function("() => window.cosession.inputRefusals > 0 || "
                             "document.getElementById('notice').dataset.reason === 'not_controller'")
    # the controller's click and key on the same window do arrive: xev is listening
    click_desktop(controller, 800, 550)
    controller.keyboard.press("z")
    deadline = time.monotonic() + 10
    while not any("(keysym 0x7a, z)" in e for e in desk.xev_events()):
        assert time.monotonic() < deadline, desk.xev_events()
        time.sleep(0.05)  # polling xev's log file
    events = desk.xev_events()
    assert not any("keysym 0x76, v)" in e or "keysym 0x69, i)" in e for e in events), events
    assert sum(1 for e in events if e.startswith("ButtonPress")) == 1, events

    # the toolbar on a desktop: the viewer's has viewer items; its pointer is a marker for everyone,
    # never a click on the desktop
    viewer.evaluate("() => { window.cosessionDesktop.viewOnly = true; }")
    viewer.get_by_test_id("toolbar-handle").click()
    expect(viewer.get_by_test_id("toolbar-asset")).to_contain_text("desk")
    expect(viewer.get_by_test_id("toolbar-disconnect")).to_have_text("Leave")
    viewer.get_by_test_id("toolbar-point").click()
    canvas = viewer.locator("#desktop canvas").bounding_box()
    viewer.mouse.click(canvas["x"] + canvas["width"] * 0.75, canvas["y"] + canvas["height"] * 0.5)
    for page in (controller, viewer):
        marker = page.get_by_test_id("pointer")
        expect(marker).to_have_text("bob")
        expect(marker).to_have_class(re.compile("pointer-spot"))
    expect(viewer.get_by_test_id("toolbar-cad")).to_be_hidden()
    controller.get_by_test_id("toolbar-handle").click()
    expect(controller.get_by_test_id("toolbar-disconnect")).to_have_text("Disconnect")
    expect(controller.get_by_test_id("toolbar-point")).to_be_hidden()
    controller.get_by_test_id("toolbar-cad").click()  # the pointer is still over xev's window
    deadline = time.monotonic() + 10
    while not any("(keysym 0xffff, Delete)" in e for e in desk.xev_events()):
        assert time.monotonic() < deadline, desk.xev_events()
        time.sleep(0.05)  # polling xev's log file
    assert any("(keysym 0xffe3, Control_L)" in e for e in desk.xev_events())
    # the on-screen keyboard's keys reach the desktop as key presses
    controller.get_by_test_id("toolbar-keyboard").click()
    controller.get_by_test_id("osk").locator('[data-skbtn="x"]').first.click()
    deadline = time.monotonic() + 10
    while not any("(keysym 0x78, x)" in e for e in desk.xev_events()):
        assert time.monotonic() < deadline, desk.xev_events()
        time.sleep(0.05)  # polling xev's log file
    assert sum(1 for e in desk.xev_events() if e.startswith("ButtonPress")) == 1

    watched.assert_clean("the controller's desktop page")
    late = desk.join("carol", session_id)  # a late joiner: the desktop at once, as the server has it
    late.wait_for_function("() => window.cosession.timings.desktop")
    desk.wait_same(late)

    for user in others:  # eight more viewers through the engine's Python API: ten in all
        joined = live_gateway.engine.join_session(session_id, user)
        assert not hasattr(joined, "reason"), joined
    eleventh = desk.signed_in("root")
    eleventh.goto(live_gateway.url(f"/sessions/{session_id}"))
    expect(eleventh.get_by_test_id("notice")).to_contain_text("already has the most viewers")
    assert eleventh.evaluate("() => window.cosession.fatal")

    admin = live_gateway.api_session("root", PASSWORD)
    assert admin.post(f"/api/sessions/{session_id}/terminate").status_code == 200
    for page in (controller, viewer, late):
        expect(page.get_by_test_id("state")).to_have_text("ended")
        expect(page.get_by_test_id("notice")).to_contain_text("An administrator, root, ended this session")


def test_killing_the_vnc_server_ends_every_page(desk, live_gateway, xvnc):
    desk.user("alice"), desk.user("bob")
    controller = desk.signed_in("alice")
    session_id = desk.start(controller)
    viewer = desk.join("bob", session_id)
    viewer.wait_for_function("() => window.cosession.timings.desktop")
    xvnc.stop()
    for page in (controller, viewer):
        expect(page.get_by_test_id("notice")).to_contain_text("The connection to the endpoint failed")
        assert page.get_by_test_id("notice").get_attribute("data-reason") == "endpoint_failed"


def test_the_desktops_clipboard_both_ways_from_the_toolbar(desk, live_gateway, xvnc):
    """Paste clipboard puts the controller's text into the X server's clipboard (xclip -o) once its
    profile allows clipboard upload; text set on the X side (xclip -i) reaches the controller's
    page through Copy remote clipboard once its profile allows clipboard download. Each forbidden
    flag refuses with the reason in the toolbar, audited; the viewer's page has neither item."""
    services = live_gateway.services
    alice, _ = desk.user("alice"), desk.user("bob")
    controller = desk.signed_in("alice", permissions=["clipboard-read", "clipboard-write"])
    session_id = desk.start(controller)
    viewer = desk.join("bob", session_id)
    viewer.wait_for_function("() => window.cosession.timings.desktop")
    controller.get_by_test_id("toolbar-handle").click()
    controller.get_by_test_id("toolbar").hover()  # it stays open while the test works
    status = controller.get_by_test_id("toolbar-status")

    # upload: refused by the Standard profile, then into the X clipboard
    controller.evaluate("(text) => navigator.clipboard.writeText(text)", "to the desktop")
    controller.get_by_test_id("toolbar-paste").click()
    expect(status).to_have_text("Not pasted: Your access profile does not allow clipboard upload.")
    both = services.profiles.create_profile("Clipboard", "allow", clipboard_upload=True, clipboard_download=True)
    services.grants.grant(desk.endpoint.id, alice.id, "user", both.id)
    controller.get_by_test_id("toolbar-paste").click()
    deadline = time.monotonic() + 10
    while xvnc.clipboard() != "to the desktop":
        assert time.monotonic() < deadline, xvnc.clipboard()
        time.sleep(0.05)  # polling the X server's selection
    services.engine.flush_audit()  # the row is told before the page hears; committed by now
    assert len(services.audit_reader.events(kind="clipboard_upload")[0]) == 1

    # download: what the desktop's clipboard holds, on the controller's page and clipboard
    xvnc.set_clipboard("from the desktop")
    copy = controller.get_by_test_id("toolbar-copy")
    expect(copy).to_have_text(f"Copy remote clipboard ({len('from the desktop')})")
    copy.click()
    expect(status).to_have_text(f"Copied {len('from the desktop')} characters from the remote clipboard.")
    expect(controller.get_by_test_id("toolbar-remote-text")).to_have_value("from the desktop")
    assert controller.evaluate("() => navigator.clipboard.readText()") == "from the desktop"
    services.engine.flush_audit()
    assert [r["detail"]["size"] for r in services.audit_reader.events(kind="clipboard_download")[0]] == [16]

    # the profile taken away: refused with the reason, audited
    services.grants.unassign(desk.endpoint.id, Principal("user", alice.id, ""), both.id)
    xvnc.set_clipboard("second")
    expect(copy).to_have_text("Copy remote clipboard (6)")
    copy.click()
    expect(status).to_have_text("Not copied: Your access profile does not allow clipboard download.")
    services.engine.flush_audit()
    refused = [r["detail"]["reason"] for r in services.audit_reader.events(kind="message_refused")[0]
               if r["detail"]["message"] == "copy_clipboard"]
    assert refused == ["clipboard_download_not_allowed"]

    viewer.get_by_test_id("toolbar-handle").click()
    expect(viewer.get_by_test_id("toolbar-asset")).to_contain_text("desk")
    expect(viewer.get_by_test_id("toolbar-copy")).to_be_hidden()
    files = controller.get_by_test_id("toolbar-files")
    expect(files).to_be_disabled()
    expect(files).to_have_attribute("title", "Files is not available for this endpoint: VNC (RFB) carries no files")
    expect(viewer.get_by_test_id("toolbar-paste")).to_be_hidden()

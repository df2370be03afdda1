"""Joint RDP sessions end to end: headless Chromium (Playwright) running noVNC on the real
gateway, FreeRDP in the session's private display, FreeRDP's shadow server as the endpoint. The
server's xterm key recorder is the witness of what reached the server, its framebuffer (xwd) the
picture every canvas must converge on."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from playwright.sync_api import Page, expect

from engine.messages import EndpointProtocol
from tests.dashboard.test_desktop_browser import Desk
from tests.fixtures.browser import WAIT, BrowserSite
from tests.fixtures.rdp import PrivateDisplay, RdpServer, rdp_children, rdp_displays

pytestmark = [pytest.mark.browser, pytest.mark.rdp]


@pytest.fixture
def gateway_overrides():
    return {"engine": {"endpoint_retries": 0}}


class WindowsDesk(Desk):
    """The VNC browser tests' helpers, with an RDP endpoint on a shadow server."""

    def __init__(self, gateway, browser, server: RdpServer, *, stored: bool = True) -> None:
        BrowserSite.__init__(self, gateway, browser)
        self.server = server
        self.endpoint = gateway.create_endpoint(
            "windows", EndpointProtocol.RDP, server.host, server.port, username=server.username,
            password=server.password if stored else None)

    def wait_same(self, page: Page, timeout: float = 25.0) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            picture, truth = self.picture(page), self.server.screen()
            if picture is not None and picture.shape == truth.shape:
                diff = np.abs(picture.astype(np.int16) - truth.astype(np.int16))
                last = (float(diff.mean()), int((diff.max(axis=2) > 64).sum()))
                if last[0] < 3.0 and last[1] < 400:
                    return
            page.wait_for_timeout(100)  # the canvas is still being painted: poll it
        raise AssertionError(f"the canvas never matched the RDP server's framebuffer: {last}")

    def wait_typed(self, needle: bytes, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.server.typed():
            assert time.monotonic() < deadline, (needle, self.server.typed()[-200:])
            time.sleep(0.05)  # polling the recorder's file


def no_rdp_process_left(displays: list[PrivateDisplay] = ()) -> None:
    """No Xvnc or xfreerdp of the gateway's left, and the sessions' `displays` gone."""
    deadline = time.monotonic() + 10
    while rdp_children() or not all(d.gone() for d in displays):
        assert time.monotonic() < deadline, rdp_children()
        time.sleep(0.05)  # the gateway reaps the session's children as it ends it


def test_a_joint_rdp_session(live_gateway, browser, rdp_server_to_kill):
    """The controller types into the remote xterm: the server receives it and both canvases show
    it; a viewer's keys (its noVNC forced out of view-only) never reach the server; a late joiner
    sees the same desktop; Send Ctrl-Alt-Del reaches the server; killing the server ends the
    session endpoint_failed in every page, and no Xvnc or xfreerdp is left."""
    server = rdp_server_to_kill
    desk = WindowsDesk(live_gateway, browser, server)
    try:
        for name in ("alice", "bob", "carol"):
            desk.user(name)
        controller = desk.signed_in("alice")
        session_id = desk.start(controller)
        expect(controller.get_by_test_id("role")).to_have_text("you control this session")
        controller.get_by_test_id("toolbar-handle").click()
        controller.get_by_test_id("toolbar").hover()  # entered: it stays open until Close
        expect(controller.get_by_test_id("toolbar-cad")).to_be_visible()
        # one Ctrl-Alt-Del on the page: the toolbar's
        assert controller.get_by_role("button", name=re.compile("Ctrl-Alt-Del")).count() == 1
        # Files says why it is not there (docs/rdp.md: the shadow server has no drive redirection)
        expect(controller.get_by_test_id("toolbar-files")).to_be_disabled()
        expect(controller.get_by_test_id("toolbar-files")).to_have_attribute(
            "title", re.compile("not available for this endpoint: RDP moves files by the server's drive redirection"))
        viewer = desk.join("bob", session_id)
        expect(viewer.get_by_test_id("readonly-note")).to_be_visible()
        viewer.get_by_test_id("toolbar-handle").click()
        expect(viewer.get_by_test_id("toolbar-cad")).to_be_hidden()
        viewer.wait_for_function("() => window.cosession.timings.desktop")

        controller.locator("#desktop canvas").click()
        controller.keyboard.type("hello from chromium")
        controller.keyboard.press("Enter")
        desk.wait_typed(b"hello from chromium\r")
        desk.wait_same(controller)
        desk.wait_same(viewer)
        displays = rdp_displays()
        assert len(displays) == 1

        viewer.evaluate("() => { window.cosessionDesktop.viewOnly = false; }")
        viewer.locator("#desktop canvas").click()
        viewer.keyboard.type("VIEWER")
        viewer.wait_for_function("() => window.cosession.inputRefusals > 0 || "
                                 "document.getElementById('notice').dataset.reason === 'not_controller'")

        late = desk.join("carol", session_id)
        late.wait_for_function("() => window.cosession.timings.desktop")
        desk.wait_same(late)

        controller.get_by_test_id("toolbar-cad").click()
        desk.wait_typed(b"\x1b[3;7~")
        assert b"VIEWER" not in server.typed()

        server.kill()
        for page in (controller, viewer, late):
            expect(page.get_by_test_id("notice")).to_contain_text("The connection to the endpoint failed", timeout=WAIT)
            assert page.get_by_test_id("notice").get_attribute("data-reason") == "endpoint_failed"
            expect(page.get_by_test_id("state")).to_have_text("ended")
        expect(controller.get_by_test_id("toolbar-cad")).to_be_hidden()
        no_rdp_process_left(displays)
    finally:
        desk.close()


def test_a_wrong_password_from_the_launcher_is_refused_with_a_clear_message(live_gateway, browser, rdp_server_nla):
    server = rdp_server_nla
    desk = WindowsDesk(live_gateway, browser, server, stored=False)
    try:
        desk.user("alice")
        page = desk.signed_in("alice")
        page.goto(live_gateway.url(f"/launch/{desk.endpoint.id}"))
        expect(page.get_by_test_id("rdp-username")).to_have_value(server.username)
        page.get_by_test_id("rdp-password").fill("not-" + server.password)
        with page.context.expect_page() as opened:
            page.get_by_test_id("access").click()
        session = opened.value
        session.set_default_timeout(WAIT)
        expect(session.get_by_test_id("notice")).to_contain_text(
            f"The connection to the endpoint failed: authentication failed for user {server.username}", timeout=WAIT)
        assert session.get_by_test_id("notice").get_attribute("data-reason") == "endpoint_failed"
        assert server.password not in session.content()
        no_rdp_process_left()
    finally:
        desk.close()

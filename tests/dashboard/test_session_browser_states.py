"""The session page's states in Chromium, on a synthetic endpoint: the controller's return after
a reload (rule 8), an administrator's terminate with who did it, a viewer leaving, the join
dialog's refusals."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from dashboard.security import share
from engine.messages import EndpointProtocol
from tests.fixtures.browser import BrowserSite
from tests.fixtures.gateway import PASSWORD

pytestmark = pytest.mark.browser


class Site(BrowserSite):
    def __init__(self, gateway: Any, browser: Browser) -> None:
        super().__init__(gateway, browser)
        self.endpoint = gateway.create_endpoint("synth", EndpointProtocol.SYNTHETIC, host="")

    def user(self, name: str, *, admin: bool = False, grant: bool = True) -> Any:
        user = self.gateway.create_user(name, PASSWORD, admin=admin)
        if grant:
            self.gateway.grant(self.endpoint, user)
        return user


@pytest.fixture
def site(live_gateway, browser):
    with Site(live_gateway, browser) as s:
        yield s


def test_reloading_the_controllers_page_keeps_control(site):
    site.user("alice")
    site.user("bob")
    alice = site.signed_in("alice")
    sid = site.start(alice)
    bob = site.open_session("bob", sid)
    alice.reload()
    alice.wait_for_function("() => window.cosession && window.cosession.role === 'controller'")
    expect(alice.get_by_test_id("state")).to_have_text("active")
    expect(bob.get_by_test_id("state")).to_have_text("active")
    # typing still reaches the endpoint (the synthetic endpoint echoes it) and the viewer
    alice.locator(".xterm-helper-textarea").focus()
    alice.keyboard.type("back again")
    bob.wait_for_function("() => document.querySelector('.xterm-rows').textContent.includes('back again')")


def test_an_administrators_terminate_shows_who_ended_it(site):
    site.user("alice")
    site.user("bob")
    root = site.user("root", admin=True, grant=False)
    alice = site.signed_in("alice")
    sid = site.start(alice)
    bob = site.open_session("bob", sid)
    assert site.gateway.engine.terminate(sid, root).__class__.__name__ == "Accepted"
    for page in (alice, bob):
        notice = page.get_by_test_id("notice")
        expect(notice).to_have_attribute("data-reason", "terminated")
        expect(notice).to_contain_text("An administrator, root, ended this session")
        expect(page.get_by_test_id("state")).to_have_text("ended")


def test_a_viewer_who_leaves_disappears_from_the_controllers_list(site):
    site.user("alice")
    site.user("bob")
    alice = site.signed_in("alice")
    sid = site.start(alice)
    bob = site.open_session("bob", sid)
    expect(alice.get_by_test_id("viewers")).to_contain_text("bob")
    bob.get_by_role("button", name="Leave").click()
    expect(alice.get_by_test_id("viewer-count")).to_have_text("0")
    expect(alice.get_by_test_id("viewers")).not_to_contain_text("bob")


def test_the_join_dialog_refuses_a_forged_link_and_an_ended_session(site):
    site.user("alice")
    site.user("bob")
    alice = site.signed_in("alice")
    sid = site.start(alice)
    link = share.share_url(site.gateway.services, sid)
    bob = site.signed_in("bob")
    bob.goto(link[:-4] + "AAAA")
    expect(bob.get_by_role("heading", name="Invalid share link")).to_be_visible()
    alice.once("dialog", lambda dialog: dialog.accept())
    alice.get_by_role("button", name="End session").click()
    expect(alice.get_by_test_id("notice")).to_have_attribute("data-reason", "controller_left")
    bob.goto(link)
    expect(bob.get_by_role("heading", name="Session ended")).to_be_visible()


def test_viewers_see_the_expiry_countdown_and_the_controllers_grace_period(site):
    alice = site.user("alice")
    site.user("bob")
    engine = site.gateway.engine
    controller = engine.open_session(site.endpoint.spec, alice, deadline=engine.clock.now() + 3600)
    bob = site.open_session("bob", controller.session_id)
    countdown = bob.get_by_test_id("countdown")
    expect(countdown).to_have_attribute("data-kind", "deadline")
    expect(countdown).to_contain_text(re.compile(r"expires in (1:00:00|59:[0-5]\d)$"))  # an hour, or just under
    # the toolbar's Expiration shows the same countdown (a session with an end); a viewer has no Extend
    bob.get_by_test_id("toolbar-handle").click()
    expect(bob.get_by_test_id("toolbar-expiration")).to_be_visible()
    expect(bob.get_by_test_id("toolbar-countdown")).to_have_text(re.compile(r"^(1:00:00|59:[0-5]\d)$"))
    expect(bob.get_by_test_id("toolbar-extend")).to_be_hidden()
    controller.disconnect()  # as if the controller's tab closed
    expect(bob.get_by_test_id("state")).to_have_text("disconnected")
    expect(countdown).to_have_attribute("data-kind", "grace")
    expect(countdown).to_contain_text("controller away: ends in")
    expect(bob.get_by_test_id("notice")).to_have_attribute("data-reason", "disconnected")

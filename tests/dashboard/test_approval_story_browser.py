"""The issue's approval story in Chromium, on the injected clock (nothing waits for time to pass):
a user without an approval is led to the request screen; an approver approves; the session starts
under the approval and shows its countdown in every window; an approved extension moves the
countdown everywhere; at the window's end the session ends in every window."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from engine.clock import ManualClock
from engine.messages import EndpointProtocol
from tests.fixtures.browser import WAIT, BrowserSite
from tests.fixtures.gateway import PASSWORD
from tests.fixtures.screenshots import save_screenshot

pytestmark = pytest.mark.browser

HOUR = 3600


@pytest.fixture
def gateway_clock():
    return ManualClock()


class Site(BrowserSite):
    def __init__(self, gateway: Any, browser: Browser) -> None:
        super().__init__(gateway, browser)
        repos = gateway.services
        self.endpoint = gateway.create_endpoint("vault", EndpointProtocol.SYNTHETIC, host="")
        repos.approvers.set_requires_approval(self.endpoint.id, True)
        for name, role in (("alice", "user"), ("carol", "supervisor"), ("bob", "viewer")):
            gateway.create_user(name, PASSWORD)
            repos.grants.set_role(self.endpoint.id, repos.grants.principal("user", name), role)
        # alice may start web sessions (with an approval); bob only watches: a role, no profile
        repos.grants.assign(self.endpoint.id, repos.grants.principal("user", "alice"), repos.profiles.standard_profile().id)
        repos.approvers.add_approver(self.endpoint.id, repos.grants.principal("user", "carol"))


@pytest.fixture
def site(live_gateway, browser):
    with Site(live_gateway, browser) as s:
        yield s


def quick_access(page: Page) -> Any:
    return page.get_by_test_id("endpoint-list").get_by_test_id("quick-access")


def countdown(page: Page) -> Any:
    return page.get_by_test_id("countdown")


def test_request_approve_start_extend_expire(site, live_gateway):
    clock: ManualClock = live_gateway.clock
    alice = site.signed_in("alice")

    # no approval: no Access button, and Quick Access leads to the request screen
    expect(alice.get_by_test_id("endpoint-list").get_by_test_id("access")).to_have_count(0)
    expect(quick_access(alice)).to_have_attribute("data-outcome", "request")
    with alice.context.expect_page() as opened:
        quick_access(alice).click()
    screen = opened.value
    screen.set_default_timeout(WAIT)
    expect(screen.get_by_test_id("request-form")).to_be_visible()
    expect(screen.get_by_test_id("endpoint-name")).to_have_text("vault")
    screen.get_by_test_id("duration").fill("60")
    screen.get_by_test_id("reason").fill("replace the backup controller")
    screen.get_by_test_id("submit-request").click()
    expect(screen.get_by_test_id("awaiting")).to_be_visible()
    save_screenshot(screen, "access-request.png")

    # pending: Quick Access now opens the pending request
    alice.reload()
    expect(quick_access(alice)).to_have_attribute("data-outcome", "pending")

    carol = site.signed_in("carol")
    carol.goto(live_gateway.url("/approvals"))
    expect(carol.get_by_test_id("pending-request")).to_contain_text("replace the backup controller")
    save_screenshot(carol, "approvals.png")
    carol.get_by_test_id("pending-request").get_by_test_id("approve").click()
    expect(carol.get_by_test_id("no-pending-requests")).to_be_visible()

    # approved: Quick Access starts the session at once, under the approval's window
    [request] = live_gateway.services.approvals.requests_of(live_gateway.services.users.get_by_name("alice"))
    end = request.window_end
    assert end == clock.now() + HOUR
    alice.reload()
    expect(alice.get_by_test_id("endpoint-list").get_by_test_id("access")).to_have_count(1)
    expect(quick_access(alice)).to_have_attribute("data-outcome", "start")
    with alice.context.expect_page() as opened:
        quick_access(alice).click()
    controller = opened.value
    controller.set_default_timeout(WAIT)
    controller.wait_for_function("() => window.cosession && window.cosession.state === 'active'")
    session_id = controller.evaluate("() => window.cosession.sessionId")

    # bob, who has no approval of his own, watches under alice's
    bob = site.signed_in("bob")
    bob.goto(live_gateway.url(f"/sessions/{session_id}"))
    bob.wait_for_function("() => window.cosession && window.cosession.role === 'viewer'")
    for page in (controller, bob):
        expect(countdown(page)).to_be_visible()
        expect(countdown(page)).to_have_attribute("data-deadline", str(int(end)))
        # on the gateway's clock (this machine's runs on from the moment the page heard it)
        expect(countdown(page)).to_have_text(re.compile(r"expires in (1:00:00|59:[0-5]\d)"))

    # the controller's toolbar: Expiration with Extend, which goes to "Ask to extend"
    controller.get_by_test_id("toolbar-handle").click()
    expect(controller.get_by_test_id("toolbar-countdown")).to_have_text(re.compile(r"^(1:00:00|59:[0-5]\d)$"))
    controller.get_by_test_id("toolbar-extend").click()
    expect(controller.get_by_test_id("extension-reason")).to_be_focused()

    # alice asks for 30 more minutes, carol approves: the countdown moves in every window
    controller.get_by_test_id("extension-minutes").fill("30")
    controller.get_by_test_id("extension-reason").fill("the firmware upload is slow")
    controller.get_by_test_id("extension-submit").click()
    expect(controller.get_by_test_id("extension-result")).to_have_attribute("data-kind", "ok")
    expect(bob.get_by_test_id("session-extension")).to_be_hidden()  # a viewer cannot ask
    carol.reload()
    carol.get_by_test_id("pending-extension").get_by_test_id("approve-extension").click()
    expect(carol.get_by_test_id("no-pending-extensions")).to_be_visible()
    for page in (controller, bob):
        expect(countdown(page)).to_have_attribute("data-deadline", str(int(end) + 30 * 60))
        expect(countdown(page)).to_have_text(re.compile(r"expires in 1:(30:00|29:[0-5]\d)"))
    save_screenshot(controller, "session-countdown.png")

    # the window's end: the session ends in every window, by the injected clock
    clock.set(end + 30 * 60)
    for page in (controller, bob):
        expect(page.get_by_test_id("state")).to_have_text("ended")
        expect(page.get_by_test_id("notice")).to_have_attribute("data-reason", "expired")
        expect(page.get_by_test_id("notice")).to_contain_text("The session's time ran out")
    # and alice's approval has ended with it: Quick Access leads to a new request
    alice.reload()
    expect(quick_access(alice)).to_have_attribute("data-outcome", "request")

"""The Session Launcher and Quick Access in Chromium: the Access button opens the session in a
new tab or a new window with the launcher's parameters; a wrong token is refused in the launcher
and the next good one starts; Quick Access starts at once, or leads where the access model says."""

from __future__ import annotations

from typing import Any

import pyotp
import pytest
from playwright.sync_api import Browser, Page, expect

from engine.clock import ManualClock
from engine.messages import EndpointProtocol
from tests.fixtures.browser import WAIT, BrowserSite
from tests.fixtures.gateway import PASSWORD
from tests.fixtures.screenshots import save_screenshot

pytestmark = pytest.mark.browser


@pytest.fixture
def gateway_clock():
    return ManualClock()


class Site(BrowserSite):
    def __init__(self, gateway: Any, browser: Browser) -> None:
        super().__init__(gateway, browser)
        self.repos = gateway.services
        self.endpoint = gateway.create_endpoint("plc-line-3", EndpointProtocol.SYNTHETIC, host="")

    def user(self, name: str, **profile: Any) -> Any:
        user = self.gateway.create_user(name, PASSWORD)
        profile_id = self.repos.profiles.create_profile(f"profile of {name}", "allow", **profile).id
        self.repos.grants.grant(self.endpoint.id, user.id, profile_id=profile_id)
        return user


@pytest.fixture
def site(live_gateway, browser):
    with Site(live_gateway, browser) as s:
        yield s


def active(page: Page) -> None:
    page.wait_for_function("() => window.cosession && window.cosession.state === 'active'")


def test_access_opens_the_session_in_a_new_tab_with_the_launchers_parameters(site):
    site.user("alice")
    page = site.signed_in("alice")
    page.get_by_test_id("endpoint-list").get_by_test_id("access").click()
    expect(page.get_by_test_id("launcher")).to_be_visible()
    page.get_by_test_id("cols").fill("100")
    page.get_by_test_id("rows").fill("30")
    save_screenshot(page, "launcher.png")
    with page.context.expect_page() as opened:
        page.get_by_test_id("access").click()
    session = opened.value
    session.set_default_timeout(WAIT)
    active(session)
    assert session.evaluate("() => [window.cosession.role, term_size()]".replace(
        "term_size()", "document.querySelector('.xterm-rows').children.length")) == ["controller", 30]
    expect(session).to_have_url(f"{site.gateway.base_url}/sessions/{session.evaluate('() => window.cosession.sessionId')}")
    assert session.evaluate("() => window.toolbar.visible") is True  # a tab, not a popup window
    # the launcher stays where it was; the parameters are remembered for next time
    expect(page.get_by_test_id("launcher")).to_be_visible()
    page.reload()
    expect(page.get_by_test_id("cols")).to_have_value("100")


def test_a_new_window_and_a_wrong_then_a_good_token(site, live_gateway):
    alice = site.user("alice", mfa_required=True)
    totp = pyotp.TOTP(pyotp.parse_uri(site.repos.mfa.begin(alice, live_gateway.clock.now())).secret)
    site.repos.mfa.check(alice, totp.at(live_gateway.clock.now()), live_gateway.clock.now(), confirming=True)
    live_gateway.clock.advance(30)
    page = site.signed_in("alice")
    page.goto(site.gateway.url(f"/launch/{site.endpoint.id}"))
    page.get_by_test_id("open-in-window").check()
    good = totp.at(live_gateway.clock.now())
    page.get_by_test_id("mfa-token").fill("000000" if good != "000000" else "111111")
    with page.context.expect_page() as refused_popup:
        page.get_by_test_id("access").click()
    expect(page.get_by_test_id("launcher-error")).to_contain_text("Not started: wrong token")
    popup = refused_popup.value  # the blank window opened by the click is closed again
    if not popup.is_closed():
        popup.wait_for_event("close")
    expect(page.get_by_test_id("mfa-token")).to_have_value("")  # a token is good once
    page.get_by_test_id("mfa-token").fill(good)
    with page.context.expect_page() as opened:
        page.get_by_test_id("access").click()
    window = opened.value
    window.set_default_timeout(WAIT)
    active(window)
    # a window of its own: opened as a popup (no toolbar), not a tab
    assert window.evaluate("() => window.toolbar.visible") is False


def test_quick_access_starts_at_once_or_says_why_not(site):
    site.user("alice")
    page = site.signed_in("alice")
    quick = page.get_by_test_id("endpoint-list").get_by_test_id("quick-access")
    expect(quick).to_have_attribute("data-outcome", "start")
    with page.context.expect_page() as opened:
        quick.click()
    session = opened.value
    session.set_default_timeout(WAIT)
    active(session)
    # the administrator takes the profile away: the stale row now gets "Access denied"
    site.repos.grants.revoke(site.endpoint.id, site.repos.grants.principal("user", "alice").id)
    site.repos.grants.set_role(site.endpoint.id, site.repos.grants.principal("user", "alice"), "viewer")
    with page.context.expect_page() as opened:
        quick.click()
    denied = opened.value
    expect(denied.get_by_test_id("access-denied")).to_contain_text("Access denied")
    page.reload()
    expect(page.get_by_test_id("endpoint-list").get_by_test_id("access")).to_have_count(0)
    expect(page.get_by_test_id("endpoint-list").get_by_test_id("quick-access")).to_have_count(0)

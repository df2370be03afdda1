"""The Content-Security-Policy in Chromium: every page an administrator and a user can open loads
and runs its scripts with ``script-src 'self'`` (no inline script, only dashboard/static and
the pinned npm packages under /vendor), and the browser reports no CSP violation and no console
error on any of them; a session page's terminal works; an inline script is really blocked."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from engine.messages import EndpointProtocol
from tests.dashboard.test_session_browser import ALL_TEXT
from tests.fixtures.gateway import PASSWORD

pytestmark = pytest.mark.browser

WAIT = 30_000  # ms: a bound on waiting for the page, never a wait for time to pass

# Installed before any page script: every violation the browser reports, and every error.
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""


class Watched:
    """A page whose console errors, page errors and CSP violations are collected."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.set_default_timeout(WAIT)
        page.add_init_script(RECORD_VIOLATIONS)
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        where = (message.location or {}).get("url", "")
        if where.endswith("/favicon.ico"):  # the browser asks for one; there is none
            return
        self.errors.append(f"console {message.type}: {message.text} ({where})")

    def visit(self, path: str, base_url: str) -> Any:
        response = self.page.goto(base_url + path)
        assert response is not None and response.ok, (path, response and response.status)
        policy = response.headers.get("content-security-policy", "")
        assert "script-src 'self'" in policy, (path, policy)
        self.page.wait_for_load_state("load")
        self.assert_clean(path)
        return response

    def assert_clean(self, where: str) -> None:
        violations = self.page.evaluate("() => window.__violations")
        assert violations == [], (where, violations)
        assert self.errors == [], (where, self.errors)


def test_every_page_runs_its_scripts_under_the_csp_with_no_violation(live_gateway, page):
    gateway = live_gateway
    admin = gateway.create_user("root", PASSWORD, admin=True)
    gateway.create_user("alice", PASSWORD)
    endpoint = gateway.create_endpoint("synth", EndpointProtocol.SYNTHETIC, host="")
    gateway.grant(endpoint, "alice")
    gateway.grant(endpoint, admin)
    watched = Watched(page)
    watched.visit("/login", gateway.base_url)
    gateway.login(page, "root", PASSWORD)
    watched.assert_clean("sign-in")
    for path in ("/", "/connections", "/endpoints", f"/endpoints/{endpoint.id}", f"/endpoints/{endpoint.id}/edit",
                 "/endpoints/new", f"/launch/{endpoint.id}", "/audit", "/profiles", "/profiles/new", "/groups",
                 "/access-requests", f"/access-requests/new?endpoint={endpoint.id}", "/approvals", "/account"):
        watched.visit(path, gateway.base_url)
    # the scripts ran: the live lists connected to their event stream
    watched.visit("/", gateway.base_url)
    expect(page.get_by_test_id("live-status")).not_to_have_text("connecting…")
    # a session: xterm.js and session.js from /vendor and /static, the JSON data block
    gateway.launch(page, endpoint)
    page.wait_for_function("() => window.cosession && window.cosession.role === 'controller' "
                           "&& window.cosession.state === 'active'")
    page.locator(".xterm-helper-textarea").focus()
    page.keyboard.type("csp-ok")
    page.wait_for_function(f"(needle) => ({ALL_TEXT})().includes(needle)", arg="csp-ok")
    watched.assert_clean("the session page")


def test_an_inline_script_is_blocked_and_reported(live_gateway, page):
    """The policy is enforced, not only sent: a script injected inline does not run."""
    watched = Watched(page)
    watched.visit("/login", live_gateway.base_url)
    ran = page.evaluate("""() => new Promise((resolve) => {
        window.__inline = false;
        const s = document.createElement("script");
        s.textContent = "window.__inline = true;";
        document.body.appendChild(s);
        setTimeout(() => resolve(window.__inline), 100);
    })""")
    assert ran is False
    violations = page.evaluate("() => window.__violations")
    assert any(v.startswith("script-src") for v in violations), violations


def test_a_reconnect_after_signing_out_says_so_in_the_page(live_gateway, page):
    """A signed-out handshake gets a plain 403 the page cannot read: it asks /api/me and says
    that the user is signed out instead of retrying."""
    gateway = live_gateway
    gateway.create_user("alice", PASSWORD)
    endpoint = gateway.create_endpoint("synth", EndpointProtocol.SYNTHETIC, host="")
    gateway.grant(endpoint, "alice")
    page.set_default_timeout(WAIT)
    gateway.login(page, "alice", PASSWORD)
    gateway.launch(page, endpoint)
    page.wait_for_function("() => window.cosession && window.cosession.state === 'active'")
    page.context.clear_cookies()
    page.evaluate("() => window.cosession.ws.close()")  # as a lost network would
    expect(page.get_by_test_id("notice")).to_have_attribute("data-reason", "not_signed_in")
    expect(page.get_by_test_id("notice")).to_contain_text("signed out")

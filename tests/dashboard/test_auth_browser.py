"""Sign-in and sign-out in Chromium, through the live gateway."""

from __future__ import annotations

import pytest
from tests.fixtures.gateway import PASSWORD

pytestmark = pytest.mark.browser


def test_sign_in_and_out_in_the_browser(live_gateway, page):
    live_gateway.create_user("alice", PASSWORD)
    page.goto(live_gateway.url("/"))
    assert page.url.endswith("/login?next=/")

    page.fill("input[name=name]", "alice")
    page.fill("input[name=password]", "wrong password")
    page.click("button[type=submit]")
    assert page.locator(".error").inner_text() == "Wrong name or password."

    live_gateway.login(page, "alice", PASSWORD)
    assert page.url == live_gateway.url("/")
    assert page.get_by_test_id("current-user").inner_text() == "alice"
    assert page.get_by_test_id("no-sessions").is_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "cosession")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
    assert page.evaluate("document.cookie") == ""  # not readable from scripts

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login")
    page.goto(live_gateway.url("/"))
    assert "/login" in page.url


def test_administrator_sees_the_endpoints_link(live_gateway, page):
    live_gateway.create_user("root", PASSWORD, admin=True)
    live_gateway.login(page, "root", PASSWORD)
    page.get_by_role("link", name="Endpoints").click()
    page.wait_for_url("**/endpoints")
    assert page.get_by_test_id("no-endpoints").is_visible()


def test_user_does_not_see_admin_links(live_gateway, page):
    live_gateway.create_user("alice", PASSWORD)
    live_gateway.login(page, "alice", PASSWORD)
    assert page.get_by_role("link", name="Endpoints").count() == 0
    response = page.goto(live_gateway.url("/endpoints"))
    assert response.status == 403

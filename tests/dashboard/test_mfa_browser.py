"""Enrolling an authenticator in Chromium: a user opens Account, sets one up, reads the key shown
beside the QR code, types the code an authenticator would show and sees it enrolled. Also the
screenshot docs/screenshots/account-mfa.png."""

from __future__ import annotations

import re

import pyotp
import pytest
from playwright.sync_api import expect

from engine.clock import ManualClock
from tests.fixtures.gateway import PASSWORD
from tests.fixtures.screenshots import VIEWPORT, save_screenshot

pytestmark = pytest.mark.browser

START = 1_800_000_010.0
WAIT = 15_000  # ms: a bound on waiting for the page, never a wait for time to pass


@pytest.fixture
def gateway_clock():
    return ManualClock(START)


def test_a_user_enrols_an_authenticator_through_the_account_page(live_gateway, page):
    alice = live_gateway.create_user("alice", PASSWORD)
    page.set_default_timeout(WAIT)
    page.set_viewport_size(VIEWPORT)
    live_gateway.login(page, "alice", PASSWORD)
    page.get_by_role("link", name="Account").click()
    page.wait_for_url("**/account")
    expect(page.get_by_test_id("mfa-status")).to_have_text("none")

    page.get_by_role("button", name="Set up an authenticator").click()
    expect(page.get_by_test_id("mfa-status")).to_have_text("waiting for its first code")
    qr = page.get_by_test_id("mfa-qr").locator("svg")
    expect(qr).to_be_visible()
    box = qr.bounding_box()
    assert box is not None and box["width"] >= 200 and box["height"] >= 200  # big enough to scan
    shown = page.get_by_test_id("mfa-secret").inner_text()
    assert re.fullmatch(r"([A-Z2-7]{4} )+[A-Z2-7]{4}", shown), shown
    secret = shown.replace(" ", "")
    assert f"secret={secret}" in page.get_by_test_id("mfa-uri").get_attribute("href")
    save_screenshot(page, "account-mfa.png")

    # a code typed wrong first, then the right one, as an authenticator fed that key shows it
    totp = pyotp.TOTP(secret)
    now = live_gateway.services.now()
    wrong = next(f"{n:06d}" for n in range(1_000_000) if f"{n:06d}" not in
                 {totp.at(now - 30), totp.at(now), totp.at(now + 30)})
    page.get_by_test_id("mfa-token").fill(wrong)
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_test_id("mfa-error")).to_contain_text("That code is not right")
    expect(page.get_by_test_id("mfa-status")).to_have_text("waiting for its first code")

    page.get_by_test_id("mfa-token").fill(totp.at(now))
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_test_id("mfa-status")).to_have_text("enrolled")
    expect(page.locator(".flash")).to_contain_text("Your authenticator is enrolled")
    expect(page.get_by_test_id("mfa-qr")).to_have_count(0)
    assert secret not in page.content()
    assert live_gateway.services.mfa.status(alice) == "enrolled"

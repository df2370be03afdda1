"""The administrators' access pages in Chromium: an administrator builds a profile and a group,
gives the group a role and the profile on an endpoint, adds a member; the member then sees it."""

from __future__ import annotations

import pytest

from engine.access import StartGrant, may_start
from engine.messages import EndpointProtocol
from tests.fixtures.screenshots import save_screenshot

PASSWORD = "admin-password-1"
CAROL_PASSWORD = "carol-password"


@pytest.mark.browser
def test_a_group_with_a_role_and_a_profile_lets_its_member_in(live_gateway, page):
    live_gateway.create_user("root", PASSWORD, admin=True)
    carol = live_gateway.create_user("carol", CAROL_PASSWORD)
    box = live_gateway.create_endpoint("box", EndpointProtocol.SYNTHETIC, host="")
    services = live_gateway.services
    live_gateway.login(page, "root", PASSWORD)

    # a profile
    page.get_by_role("link", name="Profiles").click()
    page.get_by_role("link", name="New profile").click()
    page.fill("input[name=name]", "Operators")
    page.select_option("select[name=web_session]", "allow")
    page.get_by_label("Clipboard upload").check()
    page.get_by_role("button", name="Create profile").click()
    page.wait_for_url("**/profiles")
    assert "Profile Operators created." in page.locator(".flash").inner_text()
    row = page.locator("tr[data-profile='Operators']")
    assert "allow" in row.inner_text()

    # a group
    page.get_by_role("link", name="Groups").click()
    page.fill("input[name=name]", "operators")
    page.get_by_role("button", name="Create group").click()
    page.wait_for_url("**/groups")
    group = page.locator("section[data-group='operators']")
    assert "No members yet" in group.inner_text()

    # the group's role and profile on box
    page.get_by_role("link", name="Endpoints").click()
    page.locator("tr[data-endpoint='box']").get_by_role("link", name="Edit").click()
    form = page.get_by_test_id("role-form")
    form.locator("select[name=kind]").select_option("group")
    form.locator("input[name=name]").fill("operators")
    form.locator("select[name=role]").select_option("viewer")
    form.get_by_role("button", name="Set role").click()
    page.wait_for_url("**/edit")
    assert "operators is now viewer on box." in page.locator(".flash").inner_text()
    form = page.get_by_test_id("assign-form")
    form.locator("select[name=kind]").select_option("group")
    form.locator("input[name=name]").fill("operators")
    form.locator("select[name=profile]").select_option(label="Operators")
    form.get_by_role("button", name="Assign profile").click()
    page.wait_for_url("**/edit")
    assert page.get_by_test_id("assignments").locator("tr[data-principal='operators'][data-profile='Operators']") \
        .count() == 1
    card = page.get_by_test_id("endpoint-access")
    card.evaluate("element => element.scrollIntoView()")
    save_screenshot(page, "endpoint-access.png")
    assert may_start(services.access.facts(carol, box.id), services.now()).reason.value == "no_access"

    # carol joins the group
    page.get_by_role("link", name="Groups").click()
    group = page.locator("section[data-group='operators']")
    group.locator("input[name=user]").fill("carol")
    group.get_by_role("button", name="Add member").click()
    page.wait_for_url("**/groups")
    assert page.locator("section[data-group='operators'] li[data-member='carol']").count() == 1
    assert isinstance(may_start(services.access.facts(carol, box.id), services.now()), StartGrant)

    # carol's dashboard lists box
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login**")
    live_gateway.login(page, "carol", CAROL_PASSWORD)
    listed = page.get_by_test_id("endpoint-list").locator(f"li[data-endpoint-id='{box.id}']")
    assert "box" in listed.inner_text()

"""The API and the administrators' Endpoints page agree, in headless Chromium: endpoints made
and toggled through the API show on the page, a toggle clicked on the page shows in the API.
Screenshot (1280×800): docs/screenshots/endpoints.png."""

from __future__ import annotations

import pytest

from tests.fixtures.screenshots import VIEWPORT, save_screenshot

ROOT_PASSWORD = "root-password-1"
SECRET = "vnc-s3cret-1"

pytestmark = pytest.mark.browser


def test_endpoints_made_through_the_api_on_the_admin_page(live_gateway, page):
    gw = live_gateway
    gw.create_user("root", ROOT_PASSWORD, admin=True)
    for name in ("alice", "bob"):
        gw.create_user(name, f"{name}-password")
    api = gw.api_session("root", ROOT_PASSWORD)
    made = {}
    for body in (
        {"name": "build-server", "protocol": "ssh", "host": "10.20.0.12", "username": "ci"},
        {"name": "design-workstation", "protocol": "vnc", "host": "10.20.0.31", "port": 5901, "password": SECRET},
        {"name": "win-reporting", "protocol": "rdp", "host": "reports.internal", "username": "svc-report",
         "password": SECRET, "joint_session": False},
    ):
        answer = api.post("/api/endpoints", json=body)
        assert answer.status_code == 201, answer.text
        made[body["name"]] = answer.json()["endpoint"]["id"]
    gw.grant(made["build-server"], "alice")
    gw.grant(made["build-server"], "bob")
    gw.grant(made["design-workstation"], "alice")
    assert api.post(f"/api/endpoints/{made['design-workstation']}/joint-session",
                    json={"enabled": False}).json()["changed"]

    page.set_viewport_size(VIEWPORT)
    gw.login(page, "root", ROOT_PASSWORD)
    page.goto(gw.url("/endpoints"))
    toggles = {name: page.locator(f"tr[data-endpoint='{name}']").get_by_test_id("joint-toggle") for name in made}
    assert {name: t.inner_text() for name, t in toggles.items()} == \
        {"build-server": "On", "design-workstation": "Off", "win-reporting": "Off"}
    assert SECRET not in page.content()

    # clicked on the page: the API sees it at once
    toggles["win-reporting"].click()
    page.wait_for_url("**/endpoints")
    assert api.get(f"/api/endpoints/{made['win-reporting']}").json()["endpoint"]["joint_session"] is True
    assert page.locator("tr[data-endpoint='win-reporting']").get_by_test_id("joint-toggle").inner_text() == "On"
    save_screenshot(page, "endpoints.png")

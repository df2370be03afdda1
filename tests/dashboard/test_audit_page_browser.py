"""The audit page in headless Chromium: an administrator's terminate is listed with their name,
the export downloads, a user is refused. Screenshots (1280×800) of the audit page and the
sign-in page go to docs/screenshots/ (see `save_screenshot`)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from engine.messages import EndpointProtocol, SessionEnded
from tests.fixtures.screenshots import VIEWPORT, save_screenshot

ROOT_PASSWORD = "root-password-1"
PASSWORD = "user-password-1"

pytestmark = pytest.mark.browser


def test_the_audit_page_lists_an_administrators_terminate(live_gateway, page):
    gw = live_gateway
    gw.create_user("root", ROOT_PASSWORD, admin=True)
    alice = gw.create_user("alice", PASSWORD)
    bob = gw.create_user("bob", PASSWORD)
    endpoint = gw.create_endpoint("build-server", EndpointProtocol.SYNTHETIC, host="")
    gw.grant(endpoint, alice)
    gw.grant(endpoint, bob)
    gw.api_session("alice", PASSWORD)
    controller = gw.engine.open_session(endpoint.spec, alice)
    viewer = gw.engine.join_session(controller.session_id, bob)
    sid = controller.session_id

    page.set_viewport_size(VIEWPORT)
    gw.login(page, "root", ROOT_PASSWORD)
    # terminate as a script in the administrator's browser would: the API, with the page's token
    status = page.evaluate("""async (sid) => {
        const token = document.querySelector('meta[name="csrf-token"]').content;
        const answer = await fetch(`/api/sessions/${sid}/terminate`,
                                   {method: "POST", headers: {"X-CSRF-Token": token}});
        return [answer.status, await answer.json()];
    }""", sid)
    assert status[0] == 200 and status[1]["by"]["name"] == "root", status
    for participant in (controller, viewer):
        assert participant.sink.wait_for(lambda s: s.events_of(SessionEnded))
    gw.engine.flush_audit()

    page.get_by_role("link", name="Audit").click()
    page.wait_for_url("**/audit")
    assert page.get_by_test_id("chain-status").inner_text().startswith("Chain intact")
    page.select_option("select[name=kind]", "terminate")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/audit?*kind=terminate*")
    rows = page.locator("tr[data-kind]")
    assert rows.count() == 1
    row = rows.first
    assert row.get_attribute("data-kind") == "terminate"
    assert row.locator("td.actor").inner_text() == "root"
    assert sid[:8] in row.locator("td.session").inner_text()
    assert row.locator("td.when").inner_text().split("\n")[0].endswith(" UTC")

    # the session's own events, through the row's filter link
    row.locator("td.session a").click()
    page.wait_for_url(f"**/audit?session={sid}")
    assert [page.locator("tr[data-kind]").nth(i).get_attribute("data-kind") for i in range(4)] == \
        ["session_ended", "terminate", "join", "session_started"]
    ended = page.locator("tr[data-kind=session_ended] td.detail").inner_text()
    assert ended == "by=root reason=terminated"

    # the filtered set downloads as CSV
    with page.expect_download() as download:
        page.get_by_test_id("export-csv").click()
    path = download.value.path()
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))
    assert [r["kind"] for r in rows] == ["session_started", "join", "terminate", "session_ended"]
    assert download.value.suggested_filename.startswith("cosession-audit-")

    page.get_by_role("link", name="Clear filters").click()
    page.wait_for_url("**/audit")
    assert page.locator("tr[data-kind]").count() >= 6
    save_screenshot(page, "audit.png")


def test_a_user_gets_403_and_a_stranger_the_sign_in_page(live_gateway, page):
    gw = live_gateway
    gw.create_user("alice", PASSWORD)
    page.set_viewport_size(VIEWPORT)
    answer = page.goto(gw.url("/audit"))
    assert page.url.endswith("/login?next=/audit") and answer.status == 200
    save_screenshot(page, "login.png")

    gw.login(page, "alice", PASSWORD)
    assert page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit").count() == 0
    answer = page.goto(gw.url("/audit"))
    assert answer.status == 403
    assert "This page is for administrators." in page.content()
    assert page.locator("tr[data-kind]").count() == 0
    answer = page.goto(gw.url("/audit/export.csv"))
    assert answer.status == 403

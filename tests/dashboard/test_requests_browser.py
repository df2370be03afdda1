"""Requests for access in Chromium: a user fills the access request screen, an approver in
another browser approves it from the queue, the user's request page then says approved; and
the session page's "Ask to extend" (templates/_session_extension.html, static/extension.js)
asks through fetch and follows the approver's decision."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jinja2
import pytest
from markupsafe import Markup

from engine import access as rules
from engine.access import ApprovalState, StartGrant
from engine.messages import EndpointProtocol
from tests.fixtures.gateway import PASSWORD

TEMPLATES = Path(__file__).resolve().parents[2] / "dashboard" / "templates"


def vault(gateway: Any) -> Any:
    """vault requires approval; alice holds a role on it, carol approves it."""
    repos = gateway.services
    alice = gateway.create_user("alice", PASSWORD)
    gateway.create_user("carol", PASSWORD)
    endpoint = gateway.create_endpoint("vault", EndpointProtocol.SYNTHETIC, host="")
    repos.grants.grant(endpoint.id, alice.id)
    repos.approvers.set_requires_approval(endpoint.id, True)
    assert repos.approvers.add_approver(endpoint.id, repos.grants.principal("user", "carol"))
    return endpoint, alice


@pytest.mark.browser
def test_a_request_filed_in_the_browser_is_approved_by_an_approver_in_another(live_gateway, page, browser):
    endpoint, alice = vault(live_gateway)
    repos = live_gateway.services
    live_gateway.login(page, "alice", PASSWORD)
    page.goto(live_gateway.url(f"/access-requests/new?endpoint={endpoint.id}"))
    assert page.get_by_test_id("endpoint-name").inner_text() == "vault"
    assert page.get_by_test_id("window-start").input_value()  # now, by default
    page.get_by_test_id("duration").fill("45")
    page.get_by_test_id("reason").fill("renew the TLS certificate")
    page.get_by_test_id("submit-request").click()
    page.wait_for_url(re.compile(r".*/access-requests/[0-9a-f-]{36}$"))
    request_id = page.url.rsplit("/", 1)[1]
    assert page.get_by_test_id("request-state").get_attribute("data-state") == "pending"
    assert "Awaiting approval" in page.get_by_test_id("awaiting").inner_text()
    assert page.get_by_test_id("reason").inner_text() == "renew the TLS certificate"
    found = repos.approvals.request(request_id)
    assert found.state is ApprovalState.PENDING and found.window_end - found.window_start == 45 * 60

    approver = browser.new_context()
    try:
        carol = approver.new_page()
        live_gateway.login(carol, "carol", PASSWORD)
        carol.get_by_role("link", name="Approvals", exact=True).click()
        carol.wait_for_url("**/approvals")
        row = carol.locator(f"tr[data-request-id='{request_id}']")
        assert "alice" in row.inner_text() and "renew the TLS certificate" in row.inner_text()
        row.get_by_test_id("approve").click()
        carol.wait_for_url("**/approvals")
        assert "Approved: alice" in carol.locator(".flash").inner_text()
        assert carol.get_by_test_id("no-pending-requests").is_visible()
    finally:
        approver.close()

    page.reload()
    assert page.get_by_test_id("request-state").get_attribute("data-state") == "approved"
    assert page.get_by_test_id("open-window").is_visible()
    assert "approved by carol" in page.get_by_test_id("decided").inner_text()
    grant = rules.may_start(repos.access.facts(alice, endpoint.id), live_gateway.services.now())
    assert isinstance(grant, StartGrant) and grant.deadline == found.window_end
    page.get_by_role("link", name="Requests", exact=True).click()
    page.wait_for_url("**/access-requests")
    assert page.locator(f"tr[data-request-id='{request_id}']").get_attribute("data-state") == "approved"


def _partial(session_id: str) -> str:
    """_session_extension.html as session.html renders it (url_for and the CSRF field come from
    the real page it is put into)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    env.globals["csrf_field"] = lambda: Markup("")

    def url_for(name: str, **params: Any) -> str:
        return {"static": lambda path: f"/static/{path}",
                "session_extension": lambda session_id: f"/sessions/{session_id}/extension"}[name](**params)

    env.globals["url_for"] = url_for
    return env.get_template("_session_extension.html").render(config={"session_id": session_id})


@pytest.mark.browser
def test_the_controller_asks_to_extend_from_the_session_page(live_gateway, page):
    endpoint, alice = vault(live_gateway)
    repos = live_gateway.services
    services = live_gateway.services
    now = services.now()
    request = repos.approvals.create_request(alice, endpoint.id, now, now + 3600, "deploy", now)
    repos.approvals.decide(request.id, services.users.get_by_name("carol"), True, now)
    live_gateway.login(page, "alice", PASSWORD)
    live_gateway.launch(page, endpoint)  # the real session page, started under the approval
    page.wait_for_function("() => window.cosession && window.cosession.role === 'controller'")
    session_id = page.evaluate("() => window.cosession.sessionId")
    assert page.evaluate("() => window.cosession.deadline") == request.window_end
    page.evaluate("() => { document.getElementById('session-extension').dataset.pollMs = '100'; }")
    page.get_by_test_id("session-extension").wait_for(state="visible")
    page.get_by_test_id("extension-minutes").fill("30")
    page.get_by_test_id("extension-reason").fill("the deploy is slow")
    page.get_by_test_id("extension-submit").click()
    result = page.get_by_test_id("extension-result")
    result.wait_for(state="visible")
    assert "Asked to extend" in result.inner_text() and result.get_attribute("data-kind") == "ok"
    [extension] = repos.approvals.extensions_of_request(request.id)
    assert (extension.until, extension.reason, extension.session_id) == (
        request.window_end + 30 * 60, "the deploy is slow", session_id)

    approver = live_gateway.api_session("carol", PASSWORD)
    assert approver.post(f"/extensions/{extension.id}/decide", data={"decision": "approve"}).status_code == 303
    page.wait_for_function(
        "() => document.getElementById('extension-result').textContent.startsWith('Extension approved')")
    # the engine moved the deadline, and the page's countdown follows it
    page.wait_for_function(f"() => window.cosession.deadline === {request.window_end + 30 * 60}")
    assert live_gateway.engine.describe(session_id).deadline == request.window_end + 30 * 60

    # a refusal is shown with its reason: an end before the current one
    page.get_by_test_id("extension-reason").fill("again")
    page.get_by_test_id("extension-until").fill("2000-01-01T00:00")
    page.get_by_test_id("extension-submit").click()
    page.wait_for_function("() => document.getElementById('extension-result').dataset.kind === 'error'")
    assert result.get_attribute("data-reason") == "bad_window"
    assert "after the current window" in result.inner_text()


@pytest.mark.browser
def test_the_extension_form_stays_hidden_for_viewers_and_without_an_approval(live_gateway, page):
    endpoint, alice = vault(live_gateway)
    live_gateway.login(page, "alice", PASSWORD)
    page.goto(live_gateway.url("/access-requests"))
    other = {"id": "someone-else", "name": "bob", "admin": False}
    you = {"id": alice.id, "name": "alice", "admin": False}
    for config in ({"session_id": "s1", "approval_id": "r1", "you": you, "controller": other},
                   {"session_id": "s1", "approval_id": None, "you": you, "controller": you}):
        page.reload()
        page.evaluate("""([html, config]) => {
            const holder = document.createElement("div");
            holder.innerHTML = html;
            document.querySelector("main").appendChild(holder);
            const script = document.createElement("script");
            script.type = "application/json";
            script.id = "session-config";
            script.textContent = JSON.stringify(config);
            document.body.appendChild(script);
        }""", [_partial("s1"), config])
        page.add_script_tag(url="/static/extension.js")
        page.wait_for_function("() => document.getElementById('session-extension').dataset.checked === '1'")
        assert page.get_by_test_id("session-extension").is_hidden()

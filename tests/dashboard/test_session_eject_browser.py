"""The session page's Eject button in Chromium, on a synthetic endpoint: the controller (or an
administrator in the session) removes one viewer with a reason; that viewer's page says who did it
and why and stops; the others' lists follow and their terminals go on; a viewer has no button.

The page sends ``{"type": "eject", "participant_id", "reason"}`` on its websocket; the tests'
websocket route records those messages and forwards everything untouched to the real gateway."""

from __future__ import annotations

import json
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, WebSocketRoute, expect

from engine.messages import EndpointProtocol, User
from tests.fixtures.browser import BrowserSite
from tests.fixtures.gateway import PASSWORD

pytestmark = pytest.mark.browser

TERMINAL_TEXT = "() => document.querySelector('.xterm-rows').textContent"


class Site(BrowserSite):
    def __init__(self, gateway: Any, browser: Browser) -> None:
        super().__init__(gateway, browser)
        self.errors: list[str] = []  # uncaught exceptions in any page's scripts
        self.endpoint = gateway.create_endpoint("synth", EndpointProtocol.SYNTHETIC, host="")

    def user(self, name: str, *, admin: bool = False) -> User:
        user = self.gateway.create_user(name, PASSWORD, admin=admin)
        self.gateway.grant(self.endpoint, user)
        return user

    def prepare(self, page: Page) -> None:
        def record(opened: Page) -> None:  # this page and every window it opens
            opened.on("pageerror", lambda e: self.errors.append(str(e)))
        record(page)
        page.context.on("page", record)


class EjectRoute:
    """Routes a page's websocket through Playwright and records the eject messages it sends."""

    def __init__(self, page: Page) -> None:
        self.sent: list[dict[str, Any]] = []
        page.route_web_socket("**/ws/**", self._route)

    def _route(self, ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            if isinstance(message, str) and '"eject"' in message:
                request = json.loads(message)
                if request.get("type") == "eject":
                    self.sent.append(request)
            server.send(message)

        ws.on_message(from_page)
        server.on_message(ws.send)


@pytest.fixture
def site(live_gateway, browser):
    with Site(live_gateway, browser) as s:
        yield s
    assert s.errors == []


def participant_id(page: Page) -> str:
    return page.evaluate("() => window.cosession.participantId")


def test_the_controller_ejects_one_of_two_viewers_with_a_reason(site):
    site.user("alice")
    site.user("bob")
    site.user("carol")
    alice = site.signed_in("alice")
    route = EjectRoute(alice)
    sid = site.start(alice)
    bob = site.open_session("bob", sid)
    carol = site.open_session("carol", sid)
    expect(alice.get_by_test_id("viewer-count")).to_have_text("2")
    expect(carol.get_by_test_id("viewers")).to_contain_text("bob")
    bob_id = participant_id(bob)

    # a viewer has no Eject button; the controller has one next to each viewer
    for viewer in (bob, carol):
        expect(viewer.get_by_test_id("viewers").locator("li")).to_have_count(2)
        expect(viewer.get_by_test_id("eject")).to_have_count(0)
    expect(alice.get_by_test_id("eject")).to_have_count(2)

    # cancelling the prompt sends nothing
    alice.once("dialog", lambda dialog: dialog.dismiss())
    alice.get_by_role("button", name="Eject bob").click()
    expect(alice.get_by_test_id("viewer-count")).to_have_text("2")
    assert route.sent == []

    alice.once("dialog", lambda dialog: dialog.accept("  wrong ticket  "))
    alice.get_by_role("button", name="Eject bob").click()

    # the ejected viewer is told who and why, and its page stops
    notice = bob.get_by_test_id("notice")
    expect(notice).to_have_attribute("data-reason", "ejected")
    expect(notice).to_have_text("You were removed from this session by alice: wrong ticket")
    expect(bob.get_by_test_id("state")).to_have_text("ended")
    expect(bob.get_by_role("button", name="Leave")).to_be_hidden()
    bob.wait_for_function("() => window.cosession.ws === null && window.cosession.ended")
    assert route.sent == [{"type": "eject", "participant_id": bob_id, "reason": "wrong ticket"}]

    # the others' lists follow; the controller has a button only for who is left
    for page in (alice, carol):
        expect(page.get_by_test_id("viewer-count")).to_have_text("1")
        expect(page.get_by_test_id("viewers")).not_to_contain_text("bob")
        expect(page.get_by_test_id("notice")).to_have_text("bob was removed from this session by alice.")
    expect(carol.get_by_test_id("viewers")).to_contain_text("carol (you)")
    expect(alice.get_by_test_id("eject")).to_have_count(1)
    expect(alice.get_by_role("button", name="Eject carol")).to_be_visible()

    # the remaining viewer keeps receiving output; the ejected one does not
    alice.locator(".xterm-helper-textarea").focus()
    alice.keyboard.type("after the eject")
    carol.wait_for_function(f"() => ({TERMINAL_TEXT})().includes('after the eject')")
    assert "after the eject" not in bob.evaluate(TERMINAL_TEXT)
    expect(notice).to_have_attribute("data-reason", "ejected")  # no reconnect attempt replaced it

    # the audit log names who ejected whom, and why
    site.gateway.engine.flush_audit()
    rows, _ = site.gateway.services.audit_reader.events(kind="eject")
    assert len(rows) == 1
    assert rows[0]["actor_name"] == "alice"
    assert rows[0]["detail"]["user"] == "bob" and rows[0]["detail"]["reason"] == "wrong ticket"


def test_an_administrator_who_joined_as_a_viewer_may_eject_the_other_viewers(site):
    site.user("alice")
    site.user("bob")
    site.user("root", admin=True)
    alice = site.signed_in("alice")
    sid = site.start(alice)
    bob = site.open_session("bob", sid)
    root = site.signed_in("root")
    route = EjectRoute(root)
    root.goto(site.gateway.url(f"/sessions/{sid}"))
    root.wait_for_function("() => window.cosession && window.cosession.role === 'viewer'")
    expect(root.get_by_test_id("viewers")).to_contain_text("root (you)")

    # a button next to bob, none next to the administrator himself, none for the controller
    expect(root.get_by_test_id("eject")).to_have_count(1)
    expect(root.get_by_role("button", name="Eject bob")).to_be_visible()
    expect(bob.get_by_test_id("eject")).to_have_count(0)

    root.once("dialog", lambda dialog: dialog.accept(""))
    root.get_by_role("button", name="Eject bob").click()
    expect(bob.get_by_test_id("notice")).to_have_text("You were removed from this session by root.")
    expect(alice.get_by_test_id("viewers")).not_to_contain_text("bob")
    expect(alice.get_by_test_id("viewer-count")).to_have_text("1")  # root still watches


def test_a_refused_eject_is_shown_to_the_controller(site):
    site.user("alice")
    bob_user = site.user("bob")
    alice = site.signed_in("alice")
    route = EjectRoute(alice)
    sid = site.start(alice)
    bob = site.gateway.engine.join_session(sid, bob_user)  # a viewer outside the browser
    expect(alice.get_by_role("button", name="Eject bob")).to_be_visible()

    def bob_leaves_first(dialog: Any) -> None:
        bob.leave()  # while the controller types the reason
        # told after the leave, answered by the session actor once it has handled it
        assert [m.user.name for m in site.gateway.engine.describe(sid).viewers] == []
        dialog.accept("too late")

    alice.once("dialog", bob_leaves_first)
    alice.get_by_role("button", name="Eject bob").click()
    notice = alice.get_by_test_id("notice")
    expect(notice).to_have_attribute("data-of", "eject")
    expect(notice).to_have_attribute("data-reason", "not_a_participant")
    expect(notice).to_contain_text("Could not eject bob: That viewer is no longer in this session")
    expect(alice.get_by_test_id("viewer-count")).to_have_text("0")
    expect(alice.get_by_test_id("state")).to_have_text("active")  # nothing else changed

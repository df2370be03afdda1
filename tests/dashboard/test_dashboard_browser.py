"""The live dashboard in Chromium: a session shows on an administrator's dashboard within a second
of its start without a reload, a viewer joins from the dashboard's Join button, the viewer count
follows, the administrator terminates it and every session window says so. Also the
screenshots in docs/screenshots/."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from engine.messages import EndpointProtocol, SessionFinished
from protocols.synthetic import SyntheticConnection
from tests.fixtures.browser import WAIT, BrowserSite
from tests.fixtures.gateway import PASSWORD
from tests.fixtures.screenshots import save_screenshot

pytestmark = pytest.mark.browser

VIEWPORT = {"width": 1280, "height": 800}


class Site(BrowserSite):
    context_options = {"viewport": VIEWPORT}

    def synthetic_endpoint(self) -> None:
        self.endpoint = self.gateway.create_endpoint("synth", EndpointProtocol.SYNTHETIC, host="")

    def user(self, name: str, *, admin: bool = False, grant: bool = True) -> Any:
        user = self.gateway.create_user(name, PASSWORD, admin=admin)
        if grant and self.endpoint is not None:
            self.gateway.grant(self.endpoint, user)
        return user


@pytest.fixture
def site(live_gateway, browser):
    with Site(live_gateway, browser) as s:
        yield s


def live(page: Page) -> None:
    """The page's event stream is connected (its snapshot arrived)."""
    expect(page.get_by_test_id("live-status")).to_have_text("live")


def row(page: Page, session_id: str) -> Any:
    return page.locator(f"tr[data-session-id='{session_id}']")


def test_start_join_and_terminate_from_the_dashboard(site, live_gateway):
    site.synthetic_endpoint()
    root_user = site.user("root", admin=True, grant=False)
    site.user("alice")
    site.user("bob")
    root = site.signed_in("root")
    live(root)
    expect(root.get_by_test_id("no-sessions")).to_contain_text("No live sessions right now")
    save_screenshot(root, "dashboard-empty.png")
    root.evaluate("() => { window.notReloaded = true; }")

    # a controller starts a session: it shows on the administrator's dashboard within a second
    alice = site.signed_in("alice")
    sid = site.start(alice)
    expect(row(root, sid)).to_be_visible(timeout=1000)
    started_at = live_gateway.engine.session(sid).started_at
    seen_at = root.evaluate("(id) => window.cosessionLive.firstSeen[id]", sid) / 1000
    assert seen_at - started_at < 1.0, f"the row appeared {seen_at - started_at:.2f} s after the start"
    expect(row(root, sid).get_by_test_id("controller")).to_have_text("alice")
    expect(row(root, sid).get_by_test_id("state")).to_have_text("active")
    expect(row(root, sid).get_by_test_id("viewers")).to_have_text("0")
    expect(root.get_by_test_id("no-sessions")).to_be_hidden()

    # a viewer joins from his dashboard's Join button: the session opens in a new window
    bob = site.signed_in("bob")
    live(bob)
    expect(row(bob, sid).get_by_test_id("terminate")).to_have_count(0)  # not an administrator
    with bob.context.expect_page() as opened:
        row(bob, sid).get_by_test_id("join").click()
    watching = opened.value
    watching.set_default_timeout(WAIT)
    watching.wait_for_function("() => window.cosession && window.cosession.role === 'viewer'")
    assert bob.url == site.gateway.url("/")  # the dashboard stays where it was
    expect(row(root, sid).get_by_test_id("viewers")).to_have_text("1: bob")
    expect(row(bob, sid).get_by_test_id("viewers")).to_have_text("1: bob")

    # a dismissed confirmation changes nothing
    root.once("dialog", lambda dialog: dialog.dismiss())
    row(root, sid).get_by_test_id("terminate").click()
    expect(row(root, sid).get_by_test_id("terminate")).to_be_enabled()
    assert live_gateway.engine.session(sid) is not None

    # the administrator terminates it: every window says who ended it, the row goes
    messages: list[str] = []

    def accept(dialog: Any) -> None:
        messages.append(dialog.message)
        dialog.accept()

    root.once("dialog", accept)
    row(root, sid).get_by_test_id("terminate").click()
    for page in (alice, watching):
        notice = page.get_by_test_id("notice")
        expect(notice).to_have_attribute("data-reason", "terminated")
        expect(notice).to_contain_text("An administrator, root, ended this session")
        expect(page.get_by_test_id("state")).to_have_text("ended")
    assert messages and messages[0].startswith("Terminate alice's session on synth?")
    expect(row(root, sid)).to_have_count(0)
    expect(row(bob, sid)).to_have_count(0)
    expect(root.get_by_test_id("no-sessions")).to_be_visible()
    expect(root.get_by_test_id("toast")).to_contain_text("Terminated alice's session on synth")
    assert root.evaluate("() => window.notReloaded") is True

    live_gateway.engine.flush_audit()
    rows, _ = live_gateway.services.audit_reader.events(session_id=sid, kind="terminate")
    assert [(r["actor_id"], r["actor_name"]) for r in rows] == [(root_user.id, "root")]
    # nobody lost access: alice starts again, and it shows again
    again = site.start(alice)
    expect(row(root, again)).to_be_visible()


def test_connections_and_endpoint_pages_follow_the_engine(site, live_gateway):
    """Several sessions, live and ended, for the screenshots; the Connections page patches its
    live rows in place; countdowns tick in the page."""
    engine = live_gateway.engine
    clock = engine.clock
    users = {name: site.user(name, admin=(name == "root")) for name in ("root", "alice", "bob", "carol", "dave")}
    web = live_gateway.create_endpoint("web-01", EndpointProtocol.SSH, "10.0.2.15", username="deploy",
                                       password="not shown anywhere")
    db = live_gateway.create_endpoint("db-primary", EndpointProtocol.SSH, "10.0.2.31", 2222, username="postgres")
    for endpoint in (web, db):
        for name in ("alice", "bob", "carol", "dave"):
            live_gateway.grant(endpoint, name)

    def open_on(endpoint: Any, controller: str, *viewers: str, deadline: float | None = None) -> Any:
        p = engine.open_session(endpoint.spec, users[controller], connection=SyntheticConnection(clock),
                                deadline=deadline)
        for name in viewers:
            engine.join_session(p.session_id, users[name])
        return p

    def end(p: Any, *, terminate: bool = False) -> None:
        done = threading.Event()
        engine.watch(lambda c: done.set() if isinstance(c, SessionFinished) and c.session_id == p.session_id
                     else None)
        engine.describe("no-such-session")
        if terminate:
            engine.terminate(p.session_id, users["root"])
        else:
            p.leave()
        assert done.wait(5)

    end(open_on(web, "alice", "bob"))
    end(open_on(db, "carol", "alice", "dave"), terminate=True)
    end(open_on(web, "dave"))
    on_db = open_on(db, "bob", "carol", deadline=time.time() + 25 * 60)  # expiring
    on_web = open_on(web, "alice", "dave")
    engine.flush_audit()

    root = site.signed_in("root")
    live(root)
    expect(row(root, on_web.session_id).get_by_test_id("viewers")).to_have_text("1: dave")
    countdown = row(root, on_db.session_id).get_by_test_id("countdown")
    expect(row(root, on_db.session_id).get_by_test_id("state")).to_have_text("expiring")
    first = countdown.inner_text()
    expect(countdown).not_to_have_text(first, timeout=3000)  # it ticks in the page
    save_screenshot(root, "dashboard.png")

    root.goto(site.gateway.url("/connections"))
    live(root)
    expect(root.get_by_test_id("connection-row")).to_have_count(5)
    expect(root.get_by_test_id("end-reason").filter(has_text="terminated by an administrator (root)")) \
        .to_have_count(1)
    save_screenshot(root, "connections.png")
    # live rows follow the engine in place: a viewer joins, then the session ends
    engine.join_session(on_web.session_id, users["carol"])
    expect(row(root, on_web.session_id).get_by_test_id("viewers")).to_have_text("2: dave, carol")
    end(on_web)
    expect(row(root, on_web.session_id).get_by_test_id("state")).to_have_text("ended")
    expect(row(root, on_web.session_id).get_by_test_id("end-reason")).to_have_text("ended by the controller (alice)")
    expect(row(root, on_web.session_id).get_by_test_id("terminate")).to_have_count(0)
    open_on(web, "carol")  # a new session is announced, not slipped into a paged, filtered list
    expect(root.get_by_test_id("new-sessions")).to_contain_text("Sessions have started")

    alice = site.signed_in("alice")
    alice.goto(site.gateway.url(f"/endpoints/{db.id}"))
    live(alice)
    expect(row(alice, on_db.session_id).get_by_test_id("join")).to_be_visible()
    expect(alice.get_by_test_id("access")).to_have_attribute("href", site.gateway.url(f"/launch/{db.id}"))
    save_screenshot(alice, "endpoint.png")
    end(on_db, terminate=True)
    expect(row(alice, on_db.session_id)).to_have_count(0)  # it leaves the live list
    expect(alice.get_by_test_id("no-sessions")).to_contain_text("No live sessions on db-primary")
    alice.get_by_test_id("tab-settings").click()
    expect(alice.get_by_test_id("endpoint-settings")).to_contain_text("10.0.2.31:2222")


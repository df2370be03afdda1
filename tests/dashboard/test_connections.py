"""The Connections page: live and ended sessions from the audit log, filtered by endpoint, user,
dates and end reason, 25 a page; each user sees their endpoints' sessions and their own."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest

from engine.clock import ManualClock
from engine.messages import EndpointProtocol, SessionFinished
from tests.fixtures.gateway import PASSWORD

DAY = 86400.0
# 10 March 2027, noon, in this machine's time zone (the page's dates are the server's days)
START = time.mktime((2027, 3, 10, 12, 0, 0, 0, 0, -1))


@pytest.fixture
def gateway_clock():
    return ManualClock(START)


def ids(html: str) -> list[str]:
    return re.findall(r'<tr data-session-id="([0-9a-f]+)"', html)


def ended_and_listed(engine: Any, participant: Any) -> None:
    """Leave (the controller: the session ends) and wait until the engine no longer lists it."""
    finished = threading.Event()
    sid = participant.session_id
    engine.watch(lambda c: finished.set() if isinstance(c, SessionFinished) and c.session_id == sid else None)
    engine.describe("no-such-session")  # the watcher is in place from here on
    participant.leave()
    assert finished.wait(5)


class History:
    """box (alice, bob) and other (carol); sessions on several days with several endings."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.engine = gateway.engine
        self.clock: ManualClock = gateway.engine.clock
        self.root = gateway.create_user("root", PASSWORD, admin=True)
        self.alice = gateway.create_user("alice", PASSWORD)
        self.bob = gateway.create_user("bob", PASSWORD)
        self.carol = gateway.create_user("carol", PASSWORD)
        self.box = gateway.create_endpoint("box", EndpointProtocol.SYNTHETIC, host="")
        self.other = gateway.create_endpoint("other", EndpointProtocol.SYNTHETIC, host="")
        gateway.grant(self.box, self.alice)
        gateway.grant(self.box, self.bob)
        gateway.grant(self.other, self.carol)

    def ended(self, endpoint: Any, controller: Any, *, viewer: Any = None, terminate: bool = False) -> str:
        p = self.engine.open_session(endpoint.spec, controller)
        if viewer is not None:
            self.engine.join_session(p.session_id, viewer)
        self.clock.advance(60)
        if terminate:
            finished = threading.Event()
            self.engine.watch(lambda c: finished.set()
                              if isinstance(c, SessionFinished) and c.session_id == p.session_id else None)
            self.engine.describe("no-such-session")
            assert self.engine.terminate(p.session_id, self.root).__class__.__name__ == "Accepted"
            assert finished.wait(5)
        else:
            ended_and_listed(self.engine, p)
        return p.session_id

    def client(self, name: str) -> Any:
        return self.gateway.api_session(name, PASSWORD)


@pytest.fixture
def history(live_gateway) -> History:
    return History(live_gateway)


def test_filters_by_endpoint_user_dates_and_end_reason(history):
    h = history
    day1 = h.ended(h.box, h.alice, viewer=h.bob)  # 10 March: alice, watched by bob
    h.clock.advance(DAY)
    day2 = h.ended(h.box, h.bob, terminate=True)  # 11 March: bob, terminated by root
    h.clock.advance(DAY)
    theirs = h.ended(h.other, h.carol)  # 12 March, carol on other
    live = h.engine.open_session(h.box.spec, h.alice)  # 12 March, live
    h.engine.flush_audit()
    root = h.client("root")

    assert ids(root.get("/connections").text) == [live.session_id, theirs, day2, day1]
    assert ids(root.get(f"/connections?endpoint={h.box.id}").text) == [live.session_id, day2, day1]
    assert ids(root.get("/connections?user=bob").text) == [day2, day1]  # controlled, or joined
    assert ids(root.get("/connections?since=2027-03-11&until=2027-03-11").text) == [day2]
    assert ids(root.get("/connections?since=2027-03-12").text) == [live.session_id, theirs]
    assert ids(root.get("/connections?until=2027-03-10").text) == [day1]
    assert ids(root.get("/connections?reason=terminated").text) == [day2]
    assert ids(root.get("/connections?reason=live").text) == [live.session_id]
    assert ids(root.get("/connections?reason=ended&endpoint=" + h.box.id).text) == [day2, day1]

    page = root.get("/connections?reason=terminated").text
    assert "terminated by an administrator (root)" in page
    assert re.search(r'<option value="terminated" selected>', page)
    watched = root.get("/connections?until=2027-03-10").text
    assert 'data-testid="viewers">1: bob<' in watched  # who watched an ended session
    live_row = re.search(rf'<tr data-session-id="{live.session_id}".*?</tr>', root.get("/").text, re.S).group(0)
    assert 'data-testid="terminate"' in live_row

    nothing = root.get("/connections?user=nobody").text
    assert ids(nothing) == [] and "No sessions match these filters" in nothing
    bad = root.get("/connections?since=yesterday&reason=bored").text
    assert "is not a date" in bad and "is not an end reason" in bad
    assert len(ids(bad)) == 4  # the bad filters are ignored


def test_users_see_their_endpoints_sessions_and_their_own(history):
    h = history
    on_box = h.ended(h.box, h.alice)
    on_other = h.ended(h.other, h.carol, viewer=h.root)
    h.engine.flush_audit()
    assert ids(h.client("bob").get("/connections").text) == [on_box]
    assert ids(h.client("carol").get("/connections").text) == [on_other]
    # an endpoint that is not theirs, asked for by id: nothing
    assert ids(h.client("bob").get(f"/connections?endpoint={h.other.id}").text) == []
    page = h.client("bob").get("/connections").text
    assert 'data-testid="terminate"' not in page
    assert f'<option value="{h.other.id}"' not in page


def test_pages_of_twenty_five(history):
    h = history
    sessions = []
    for _ in range(27):
        sessions.append(h.ended(h.box, h.alice))
        h.clock.advance(60)
    h.engine.flush_audit()
    newest_first = sessions[::-1]
    alice = h.client("alice")
    first = alice.get(f"/connections?endpoint={h.box.id}").text
    assert ids(first) == newest_first[:25]
    assert "1–25 of 27" in first and "page 1 of 2" in first
    link = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    assert link == f"/connections?endpoint={h.box.id}&page=2"  # the filters are kept
    second = alice.get(link).text
    assert ids(second) == newest_first[25:] and "26–27 of 27" in second
    assert 'rel="next"' not in second and 'rel="prev"' in second
    assert ids(alice.get("/connections?page=99").text) == newest_first[25:]  # past the end: the last page
    assert ids(alice.get("/connections?page=zero").text) == newest_first[:25]
    # the endpoint page pages its past sessions the same way
    assert ids(alice.get(f"/endpoints/{h.box.id}?page=2").text) == newest_first[25:]


def test_no_sessions_yet_says_how_to_start_one(live_gateway):
    live_gateway.create_user("root", PASSWORD, admin=True)
    page = live_gateway.api_session("root", PASSWORD).get("/connections").text
    assert "No sessions yet" in page and "Access" in page

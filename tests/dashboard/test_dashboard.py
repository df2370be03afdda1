"""The dashboard (Current Remote Connections), the endpoint page and Terminate, over HTTP against
the live gateway: who sees which session, who may terminate, what the event stream sends."""

from __future__ import annotations

import gc
import json
import re
import threading
import time
from typing import Any, Iterator

import httpx
import pytest

from engine.messages import EndpointProtocol, SessionEnded, SessionFinished
from tests.fixtures.gateway import PASSWORD

SECRET = "the-endpoint-password-42"


class Site:
    """Users root (administrator), alice and bob; endpoints box (alice, bob) and other (carol)."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.root = gateway.create_user("root", PASSWORD, admin=True)
        self.alice = gateway.create_user("alice", PASSWORD)
        self.bob = gateway.create_user("bob", PASSWORD)
        self.carol = gateway.create_user("carol", PASSWORD)
        self.box = gateway.create_endpoint("box", EndpointProtocol.SYNTHETIC, host="")
        self.other = gateway.create_endpoint("other", EndpointProtocol.SYNTHETIC, host="")
        for user in (self.alice, self.bob):
            gateway.grant(self.box, user)
        gateway.grant(self.other, self.carol)
        self.clients: dict[str, httpx.Client] = {}

    def client(self, name: str) -> httpx.Client:
        if name not in self.clients:
            self.clients[name] = self.gateway.api_session(name, PASSWORD)
        return self.clients[name]

    def start(self, endpoint: Any, user: Any) -> Any:
        participant = self.gateway.engine.open_session(endpoint.spec, user)
        assert participant.role.value == "controller", participant
        settle(self.gateway.engine, participant.session_id)
        return participant

    def join(self, session_id: str, user: Any) -> Any:
        participant = self.gateway.engine.join_session(session_id, user)
        assert participant.role.value == "viewer", participant
        settle(self.gateway.engine, session_id)
        return participant


def gone(engine: Any, session_id: str) -> None:
    """Return once the engine's directory no longer lists the session (it has ended)."""
    finished = threading.Event()
    engine.watch(lambda change: finished.set()
                 if isinstance(change, SessionFinished) and change.session_id == session_id else None)
    engine.describe("no-such-session")  # the supervisor has the watcher from here on
    assert engine.session(session_id) is None or finished.wait(5), "the session is still listed"


def settle(engine: Any, session_id: str) -> None:
    """Return once the engine's directory (what the pages read) shows every change made to the
    session so far. A session publishes its summary to the supervisor after it answers, so the
    first Describe may overtake that summary; the second is queued behind it at the supervisor."""
    engine.describe(session_id)
    engine.describe(session_id)


@pytest.fixture
def site(live_gateway) -> Site:
    return Site(live_gateway)


def ended(participant: Any) -> SessionEnded:
    """The SessionEnded the participant's sink received (waits for it, at most 5 s)."""
    assert participant.sink.wait_for(lambda s: s.events_of(SessionEnded), 5), "the session did not end"
    return participant.sink.events_of(SessionEnded)[0]


def rows(html: str) -> list[str]:
    return re.findall(r'<tr data-session-id="([0-9a-f]+)"', html)


def row_html(html: str, session_id: str) -> str:
    match = re.search(rf'<tr data-session-id="{session_id}".*?</tr>', html, re.S)
    assert match, f"no row for {session_id}"
    return match.group(0)


# --- authorisation ------------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_sign_in(site):
    with httpx.Client(base_url=site.gateway.base_url) as anonymous:
        for path in ("/", "/connections", f"/endpoints/{site.box.id}", "/connections?page=2"):
            answer = anonymous.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/login?next=/"), path
        assert anonymous.get("/events/sessions").status_code == 401
        token = re.search(r'name="csrf-token" content="([^"]+)"', anonymous.get("/login").text).group(1)
        answer = anonymous.post("/sessions/abc/terminate", data={"csrf_token": token, "confirmed": "yes"})
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login")


def test_each_user_sees_the_sessions_of_their_endpoints_only(site):
    on_box = site.start(site.box, site.alice)
    on_other = site.start(site.other, site.carol)
    admin = site.client("root").get("/").text
    assert set(rows(admin)) == {on_box.session_id, on_other.session_id}
    bob = site.client("bob").get("/").text
    assert rows(bob) == [on_box.session_id]
    assert "other" not in bob  # neither the session nor the endpoint
    carol = site.client("carol").get("/").text
    assert rows(carol) == [on_other.session_id]


def test_join_where_allowed_and_terminate_for_administrators_only(site):
    session = site.start(site.box, site.alice)
    sid = session.session_id
    bob = row_html(site.client("bob").get("/").text, sid)
    assert f'href="/sessions/{sid}"' in bob and 'target="_blank"' in bob
    assert 'data-testid="join"' in bob and 'data-testid="terminate"' not in bob
    admin = row_html(site.client("root").get("/").text, sid)
    assert 'data-testid="join"' in admin and 'data-testid="terminate"' in admin
    assert 'name="csrf_token"' in admin
    # the controller's own window has the session already: no Join for her
    alice = row_html(site.client("alice").get("/").text, sid)
    assert 'data-testid="join"' not in alice and 'data-testid="terminate"' not in alice


def test_a_full_session_or_joint_sessions_off_disable_join_with_the_reason(site, live_gateway):
    session = site.start(site.box, site.alice)
    live_gateway.services.endpoints.set_joint_session(site.box.id, False)
    settle(live_gateway.engine, session.session_id)
    assert live_gateway.engine.session(session.session_id).endpoint.joint_session is False
    bob = row_html(site.client("bob").get("/").text, session.session_id)
    assert re.search(r'<button type="button" class="small" disabled title="joint sessions are turned off', bob)


def test_a_non_administrator_cannot_terminate(site, live_gateway):
    session = site.start(site.box, site.alice)
    answer = site.client("bob").post(f"/sessions/{session.session_id}/terminate",
                                     data={"confirmed": "yes", "next": "/"})
    assert answer.status_code == 403
    assert "Only an administrator may terminate" in answer.text
    assert live_gateway.engine.session(session.session_id) is not None  # still live
    live_gateway.engine.flush_audit()
    events, _ = live_gateway.services.audit_reader.events(kind="terminate_refused")
    assert [(e["actor_name"], e["detail"]["reason"]) for e in events] == [("bob", "not_administrator")]


def test_terminate_asks_for_confirmation_then_ends_the_session_for_everyone(site, live_gateway):
    session = site.start(site.box, site.alice)
    viewer = site.join(session.session_id, site.bob)
    sid = session.session_id
    root = site.client("root")
    # without the confirm dialog (no JavaScript): a confirmation page first, nothing ended
    answer = root.post(f"/sessions/{sid}/terminate", data={"next": "/connections"})
    assert answer.status_code == 200 and "Terminate this session?" in answer.text
    assert "alice" in answer.text and "with 1 viewer." in answer.text
    assert live_gateway.engine.session(sid) is not None
    answer = root.post(f"/sessions/{sid}/terminate", data={"next": "/connections", "confirmed": "yes"})
    assert answer.status_code == 303 and answer.headers["location"] == "/connections"
    assert "Terminated alice&#39;s session on box" in root.get("/connections").text  # the flash
    # committed before the answer: the audit log read next has it
    events, _ = live_gateway.services.audit_reader.events(session_id=sid, kind="terminate")
    assert [e["actor_name"] for e in events] == ["root"]
    gone(live_gateway.engine, sid)
    for participant in (session, viewer):
        end = ended(participant)
        assert end.reason.value == "terminated" and end.by.name == "root"
    assert sid not in rows(root.get("/").text)
    live_gateway.engine.flush_audit()
    events, _ = live_gateway.services.audit_reader.events(session_id=sid, kind="terminate")
    assert [e["actor_name"] for e in events] == ["root"]
    # no access right changed: alice starts again, bob joins again
    assert live_gateway.services.access.may_join(site.alice, site.box.id)
    again = site.start(site.box, site.alice)
    site.join(again.session_id, site.bob)


def test_terminate_answers_json_to_the_pages_script(site, live_gateway):
    session = site.start(site.box, site.alice)
    root = site.client("root")
    headers = {"accept": "application/json"}
    answer = root.post(f"/sessions/{session.session_id}/terminate", data={"next": "/"}, headers=headers)
    assert answer.status_code == 200 and answer.json()["result"] == "terminated"
    gone(live_gateway.engine, session.session_id)
    again = root.post(f"/sessions/{session.session_id}/terminate", data={"next": "/"}, headers=headers)
    assert again.status_code == 409 and again.json()["error"] == "session_ended"
    assert root.post("/sessions/nope/terminate", data={}, headers=headers).status_code == 404


def test_terminate_refuses_a_form_without_the_csrf_token(site):
    session = site.start(site.box, site.alice)
    with httpx.Client(base_url=site.gateway.base_url) as browser:
        assert browser.post("/api/login", json={"name": "root", "password": PASSWORD}).status_code == 200
        answer = browser.post(f"/sessions/{session.session_id}/terminate", data={"confirmed": "yes"})
        assert answer.status_code == 403
    assert site.gateway.engine.session(session.session_id) is not None


def test_terminate_redirects_only_to_this_site(site):
    session = site.start(site.box, site.alice)
    answer = site.client("root").post(f"/sessions/{session.session_id}/terminate",
                                      data={"confirmed": "yes", "next": "//evil.example/"})
    assert answer.status_code == 303 and answer.headers["location"] == "/"


def test_empty_dashboards_tell_a_newcomer_what_to_do(live_gateway):
    live_gateway.create_user("root", PASSWORD, admin=True)
    live_gateway.create_user("dave", PASSWORD)
    admin = live_gateway.api_session("root", PASSWORD).get("/").text
    assert "No live sessions right now" in admin and 'href="' + live_gateway.url("/endpoints") + '"' in admin
    assert "Add an endpoint" in admin
    user = live_gateway.api_session("dave", PASSWORD).get("/").text
    assert "ask an administrator to give you access" in user
    endpoint = live_gateway.create_endpoint("box", EndpointProtocol.SYNTHETIC, host="")
    live_gateway.grant(endpoint, "dave")
    user = live_gateway.api_session("dave", PASSWORD).get("/").text
    assert "press <strong>Access</strong>" in user
    assert f'href="{live_gateway.url(f"/launch/{endpoint.id}")}"' in user


# --- the endpoint page ----------------------------------------------------------------------------


def test_the_endpoint_page_shows_settings_never_credentials(live_gateway):
    live_gateway.create_user("root", PASSWORD, admin=True)
    alice = live_gateway.create_user("alice", PASSWORD)
    live_gateway.create_user("bob", PASSWORD)
    box = live_gateway.create_endpoint("box", EndpointProtocol.SSH, "10.0.0.7", 2222, username="deploy", password=SECRET)
    live_gateway.grant(box, alice)
    page = live_gateway.api_session("alice", PASSWORD).get(f"/endpoints/{box.id}?tab=settings")
    assert page.status_code == 200
    assert "10.0.0.7:2222" in page.text and "deploy" in page.text
    assert "a password is stored on the gateway" in page.text
    assert SECRET not in page.text and "Edit" not in page.text
    assert f'href="{live_gateway.url(f"/launch/{box.id}")}"' in page.text  # Access
    # no access: the same answer as an endpoint that does not exist
    bob = live_gateway.api_session("bob", PASSWORD)
    assert bob.get(f"/endpoints/{box.id}").status_code == 404
    assert bob.get("/endpoints/no-such-endpoint").status_code == 404
    # the administrators' pages under /endpoints/ still answer
    root = live_gateway.api_session("root", PASSWORD)
    assert "Edit" in root.get(f"/endpoints/{box.id}?tab=settings").text
    assert root.get("/endpoints/new").status_code == 200 and 'name="name"' in root.get("/endpoints/new").text
    assert root.get(f"/endpoints/{box.id}/edit").status_code == 200


def test_the_endpoint_connections_tab_lists_live_and_past_sessions(site, live_gateway):
    ended_one = site.start(site.box, site.alice)
    ended_one.leave()
    gone(live_gateway.engine, ended_one.session_id)
    live = site.start(site.box, site.bob)
    site.start(site.other, site.carol)
    live_gateway.engine.flush_audit()
    page = site.client("alice").get(f"/endpoints/{site.box.id}").text
    assert rows(page) == [live.session_id, ended_one.session_id]  # live table, then past sessions
    past = row_html(page, ended_one.session_id)
    assert "ended by the controller" in past and 'data-testid="join"' not in past
    assert 'data-testid="join"' in row_html(page, live.session_id)
    admin = site.client("root").get(f"/endpoints/{site.box.id}").text
    assert 'data-testid="terminate"' in row_html(admin, live.session_id)


# --- the event stream ---------------------------------------------------------------------------------


def events(client: httpx.Client, path: str = "/events/sessions") -> Iterator[tuple[str, Any]]:
    """(event, data) pairs from a server-sent event stream, as they arrive."""
    with client.stream("GET", path, timeout=10.0) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        kind, data = None, []
        for line in answer.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
            elif line == "" and kind is not None:
                yield kind, json.loads("".join(data))
                kind, data = None, []


def test_the_event_stream_sends_a_snapshot_then_each_change_for_this_user(site, live_gateway):
    engine = live_gateway.engine
    first = site.start(site.box, site.alice)
    bob_events = events(site.client("bob"))
    kind, data = next(bob_events)
    assert kind == "snapshot" and [r["id"] for r in data["rows"]] == [first.session_id]
    row = data["rows"][0]
    assert row["controller"] == "alice" and row["viewer_count"] == 0 and row["max_viewers"] == 10
    assert row["join"]["enabled"] and not row["can_terminate"] and "<tr" in row["html"]

    site.start(site.other, site.carol)  # not bob's: never sent to him
    engine.join_session(first.session_id, site.root)
    kind, data = next(bob_events)
    assert kind == "upsert" and data["row"]["id"] == first.session_id
    assert data["row"]["viewers"] == ["root"] and '1: root' in data["row"]["html"]

    engine.terminate(first.session_id, site.root)
    kind, data = next(bob_events)
    assert (kind, data["id"], data["reason"], data["by"]) == ("remove", first.session_id, "terminated", "root")
    bob_events.close()


def test_the_endpoint_pages_stream_has_that_endpoints_sessions_only(site):
    on_box = site.start(site.box, site.alice)
    site.start(site.other, site.carol)
    stream = events(site.client("root"), f"/events/sessions?endpoint={site.box.id}")
    kind, data = next(stream)
    assert kind == "snapshot" and [r["id"] for r in data["rows"]] == [on_box.session_id]
    assert data["rows"][0]["can_terminate"] is True
    stream.close()


def test_the_stream_pings_while_idle_and_ends_so_that_the_browser_reconnects(site, monkeypatch):
    from dashboard.pages import live

    monkeypatch.setattr(live, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(live, "STREAM_SECONDS", 0.4)
    with site.client("bob").stream("GET", "/events/sessions", timeout=10.0) as answer:
        lines = list(answer.iter_lines())  # the server ends it
    assert lines[:3] == ["retry: 1000", "", "event: snapshot"]
    assert lines.count(": ping") >= 2


def test_a_disconnected_session_shows_its_grace_period_and_offers_its_controller_a_return(site, live_gateway):
    session = site.start(site.box, site.alice)
    session.disconnect()  # as if alice's tab closed (rule 8)
    settle(live_gateway.engine, session.session_id)
    summary = live_gateway.engine.session(session.session_id)
    assert summary.state.value == "disconnected" and summary.grace_until is not None
    admin = row_html(site.client("root").get("/").text, session.session_id)
    assert 'data-testid="state">disconnected<' in admin
    assert f'data-until="{summary.grace_until}" data-testid="grace"' in admin
    alice = row_html(site.client("alice").get("/").text, session.session_id)
    assert re.search(r'href="/sessions/[0-9a-f]+" target="_blank" rel="noopener" title="Come back to your '
                     r'session as its controller" data-testid="join">Return<', alice)


def test_a_session_with_a_deadline_is_expiring_with_its_countdown(site, live_gateway):
    deadline = live_gateway.services.now() + 600
    session = live_gateway.engine.open_session(site.box.spec, site.alice, deadline=deadline)
    settle(live_gateway.engine, session.session_id)
    bob = row_html(site.client("bob").get("/").text, session.session_id)
    assert 'data-testid="state">expiring<' in bob
    assert f'data-until="{deadline}" data-testid="countdown"' in bob


def test_a_browser_that_goes_away_mid_send_leaves_no_subscription_behind(site, live_gateway, monkeypatch):
    from dashboard.pages import live

    # a first message far larger than the socket buffers: the server is still sending it when
    # the client goes away, so the response is cancelled while its generator waits at a yield
    monkeypatch.setattr(live._Stream, "snapshot", lambda self: ": " + "x" * 16_000_000 + "\n\n")
    with site.client("bob").stream("GET", "/events/sessions", timeout=10.0) as answer:
        received = answer.iter_raw()
        assert next(received).startswith(b"retry: 1000")
        hub: live.LiveHub = live_gateway.app.state.live_hub
        assert live_gateway.call_on_loop(lambda: len(hub.subscribers)) == 1
    deadline = time.monotonic() + 10
    while live_gateway.call_on_loop(lambda: len(hub.subscribers)) and time.monotonic() < deadline:
        pass  # each check is a round trip through the gateway's loop
    assert live_gateway.call_on_loop(lambda: len(hub.subscribers)) == 0
    gc.collect()  # and no generator left for the collector to finalise (trio would warn)

"""The JSON API (dashboard/api/) over HTTP against the live gateway: who may call what, the
sessions, terminate, endpoints, connections, the audit log, and the answers to bad input."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from engine.db import audit_events
from engine.messages import EndpointSpec, EndReason, EndpointProtocol, SessionEnded

ROOT_PASSWORD = "root-password-1"
PASSWORD = "user-password-1"
ENDPOINT_SECRET = "ep-s3cret-Passw0rd"


class Site:
    """A gateway with an administrator (root), a user with access to `synth` (alice), a user
    without (bob), a second endpoint nobody was given (`other`), and one live session of alice's."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw
        self.root = gw.create_user("root", ROOT_PASSWORD, admin=True)
        self.alice = gw.create_user("alice", PASSWORD)
        self.bob = gw.create_user("bob", PASSWORD)
        self.synth = gw.create_endpoint("synth", EndpointProtocol.SYNTHETIC, host="")
        self.other = gw.create_endpoint("other", EndpointProtocol.SSH, host="10.0.0.9", username="ops",
                                        password=ENDPOINT_SECRET)
        gw.grant(self.synth, self.alice)
        self.admin_api = gw.api_session("root", ROOT_PASSWORD)
        self.alice_api = gw.api_session("alice", PASSWORD)
        self.bob_api = gw.api_session("bob", PASSWORD)

    def start(self, user: Any = None) -> Any:
        participant = self.gw.engine.open_session(self.synth.spec, user or self.alice)
        assert not hasattr(participant, "reason"), participant
        return participant

    def wait_ended(self, session_id: str) -> dict[str, Any]:
        """The session's row once the store has written its end (the end is told to the store
        after the session's last message, so one flush may come before it)."""
        for _ in range(200):
            self.gw.engine.flush_audit()
            row = self.gw.services.audit_reader.session(session_id)
            if row is not None and not row["live"]:
                return row
        raise AssertionError(f"session {session_id} never ended in the audit log")

    def audit(self, kind: str | list[str]) -> list[dict[str, Any]]:
        self.gw.engine.flush_audit()
        rows, _ = self.gw.services.audit_reader.events(kind=kind, limit=1000)
        return rows


@pytest.fixture
def site(live_gateway) -> Site:
    return Site(live_gateway)


def anonymous(gw: Any, *, with_token: bool) -> httpx.Client:
    """A client that never signed in; `with_token`: with the CSRF token of its (anonymous)
    session, taken from a page, so that unsafe calls reach the route and get its 401."""
    client = httpx.Client(base_url=gw.base_url, timeout=10.0)
    gw._clients.append(client)
    if with_token:
        page = client.get("/login").text
        client.headers["X-CSRF-Token"] = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    return client


# --- who may call what -------------------------------------------------------------------------

# (method, path, body, anonymous, alice (a user with access), bob (a user without), root)
# {sid}: alice's live session on synth; {synth}/{other}: endpoint ids. Anonymous unsafe calls
# carry the CSRF token of their anonymous session (without one they are refused 403 "csrf"
# before any route runs: see test_anonymous_unsafe_calls_without_a_token).
TABLE = [
    ("GET", "/api/me", None, 401, 200, 200, 200),
    ("GET", "/api/sessions", None, 401, 200, 200, 200),
    ("GET", "/api/sessions/{sid}", None, 401, 200, 403, 200),
    ("GET", "/api/sessions/no-such-session", None, 401, 404, 404, 404),
    ("GET", "/api/connections", None, 401, 200, 200, 200),
    ("GET", "/api/endpoints", None, 401, 200, 200, 200),
    ("GET", "/api/endpoints/{synth}", None, 401, 200, 404, 200),
    ("GET", "/api/endpoints/{other}", None, 401, 404, 404, 200),
    ("POST", "/api/endpoints", {"name": "new-{who}", "protocol": "ssh", "host": "10.0.0.1"}, 401, 403, 403, 201),
    ("PUT", "/api/endpoints/{other}", {"port": 2222}, 401, 403, 403, 200),
    ("PATCH", "/api/endpoints/{other}", {"port": 2223}, 401, 403, 403, 200),
    ("POST", "/api/endpoints/{other}/joint-session", {"enabled": False}, 401, 403, 403, 200),
    ("DELETE", "/api/endpoints/{victim}", None, 401, 403, 403, 200),
    ("GET", "/api/audit", None, 401, 403, 403, 200),
    ("GET", "/api/audit/export", None, 401, 403, 403, 200),
    ("GET", "/api/audit/verify", None, 401, 403, 403, 200),
    ("POST", "/api/sessions/{sid}/terminate", None, 401, 403, 403, 200),  # last: it ends the session
]


def test_the_authorisation_table(site):
    gw = site.gw
    session = site.start()
    victim = gw.create_endpoint("victim", EndpointProtocol.SSH, host="10.0.0.5")
    ids = {"sid": session.session_id, "synth": site.synth.id, "other": site.other.id, "victim": victim.id}
    clients = {"anonymous": anonymous(gw, with_token=True), "alice": site.alice_api, "bob": site.bob_api,
               "root": site.admin_api}
    wrong = []
    for method, path, body, *expected in TABLE:
        for (who, client), status in zip(clients.items(), expected):
            url = path.format(**ids)
            payload = {k: (v.format(who=who) if isinstance(v, str) else v) for k, v in body.items()} if body else None
            answer = client.request(method, url, json=payload)
            if answer.status_code != status:
                wrong.append(f"{who} {method} {url}: {answer.status_code} {answer.text[:200]}, expected {status}")
            elif status >= 400:
                data = answer.json()  # every refusal is JSON with a reason and a detail
                if not (isinstance(data.get("error"), str) and isinstance(data.get("detail"), str)):
                    wrong.append(f"{who} {method} {url}: not a JSON error: {answer.text[:200]}")
    assert not wrong, "\n".join(wrong)


def test_anonymous_unsafe_calls_without_a_token(site):
    client = anonymous(site.gw, with_token=False)
    for method, path in (("POST", "/api/endpoints"), ("DELETE", f"/api/endpoints/{site.other.id}"),
                         ("POST", "/api/sessions/x/terminate")):
        answer = client.request(method, path, json={})
        assert answer.status_code == 403 and answer.json()["error"] == "csrf", (method, path, answer.text)
    assert site.gw.services.endpoints.get(site.other.id) is not None


def test_a_signed_in_client_without_the_csrf_header_is_refused(site):
    session = site.start()
    client = site.admin_api
    token = client.headers.pop("X-CSRF-Token")
    answer = client.post(f"/api/sessions/{session.session_id}/terminate")
    assert answer.status_code == 403 and answer.json()["error"] == "csrf"
    answer = client.post(f"/api/sessions/{session.session_id}/terminate", headers={"X-CSRF-Token": "forged"})
    assert answer.status_code == 403
    assert site.gw.engine.session(session.session_id) is not None
    client.headers["X-CSRF-Token"] = token


# --- sessions and terminate ---------------------------------------------------------------------


def test_sessions_lists_what_each_user_may_see(site):
    gw = site.gw
    mine = site.start()
    # a session on an endpoint alice has no access to (synthetic, so that no server is needed)
    theirs = gw.engine.open_session(EndpointSpec(site.other.id, "other", EndpointProtocol.SYNTHETIC), site.root)
    viewer = gw.engine.join_session(mine.session_id, site.bob, has_access=True)
    assert viewer.role.value == "viewer"

    everything = site.admin_api.get("/api/sessions").json()
    assert {s["id"] for s in everything["sessions"]} == {mine.session_id, theirs.session_id}
    assert everything["total"] == 2
    alice_sees = site.alice_api.get("/api/sessions").json()["sessions"]
    assert [s["id"] for s in alice_sees] == [mine.session_id]
    row = alice_sees[0]
    assert row["controller"] == {"id": site.alice.id, "name": "alice"}
    assert row["viewers"] == [{"id": site.bob.id, "name": "bob"}] and row["viewer_count"] == 1
    assert row["max_viewers"] == 10 and row["state"] == "active" and row["live"] is True
    assert row["endpoint"] == {"id": site.synth.id, "name": "synth", "protocol": "synthetic"}
    assert row["url"] == f"/sessions/{mine.session_id}"
    # bob has no access to synth, but takes part in alice's session: he sees that one only
    assert [s["id"] for s in site.bob_api.get("/api/sessions").json()["sessions"]] == [mine.session_id]


def test_session_detail_live_then_ended(site):
    session = site.start()
    site.gw.engine.join_session(session.session_id, site.root)
    site.gw.engine.flush_audit()
    live = site.alice_api.get(f"/api/sessions/{session.session_id}").json()["session"]
    assert live["live"] is True and live["state"] == "active" and live["ended_at"] is None
    assert [(m["name"], m["role"]) for m in live["members"]] == [("alice", "controller"), ("root", "viewer")]
    assert [p["name"] for p in live["participants"]] == ["alice", "root"]
    session.leave()
    site.wait_ended(session.session_id)
    ended = site.alice_api.get(f"/api/sessions/{session.session_id}").json()["session"]
    assert ended["state"] == "ended" and ended["end_reason"] == "controller_left" and ended["members"] == []
    assert ended["ended_at"] >= ended["started_at"] and ended["ended"].endswith("Z")
    assert site.bob_api.get(f"/api/sessions/{session.session_id}").status_code == 403


def test_a_users_terminate_is_refused_and_the_session_goes_on(site):
    session = site.start()
    viewer = site.gw.engine.join_session(session.session_id, site.bob)
    answer = site.alice_api.post(f"/api/sessions/{session.session_id}/terminate")
    assert answer.status_code == 403
    assert answer.json() == {"error": "forbidden", "detail": "Only an administrator may terminate a session."}
    assert site.gw.engine.session(session.session_id) is not None
    session.send_input("still here")
    assert viewer.wait_for_output("still here")
    assert not session.sink.events_of(SessionEnded)
    refused = site.audit("terminate_refused")
    assert [(r["actor_name"], r["session_id"], r["detail"]["reason"]) for r in refused] == \
        [("alice", session.session_id, "not_administrator")]
    assert not site.audit("terminate")


def test_an_administrators_terminate_ends_it_for_everyone(site):
    session = site.start()
    viewer = site.gw.engine.join_session(session.session_id, site.bob)
    answer = site.admin_api.post(f"/api/sessions/{session.session_id}/terminate")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"terminated": True, "session_id": session.session_id,
                             "by": {"id": site.root.id, "name": "root"}}
    for participant in (session, viewer):
        assert participant.sink.wait_for(lambda s: s.events_of(SessionEnded))
        ended = participant.sink.events_of(SessionEnded)[0]
        assert ended.reason is EndReason.TERMINATED and ended.by.name == "root"
    assert site.alice_api.get("/api/sessions").json()["sessions"] == []
    rows = site.audit("terminate")
    assert [(r["actor_name"], r["session_id"]) for r in rows] == [("root", session.session_id)]
    detail = site.admin_api.get(f"/api/sessions/{session.session_id}").json()["session"]
    assert (detail["end_reason"], detail["ended_by"]) == ("terminated", "root")
    # again: already ended; unknown: 404
    again = site.admin_api.post(f"/api/sessions/{session.session_id}/terminate")
    assert again.status_code == 409 and again.json()["error"] == "session_ended"
    unknown = site.admin_api.post("/api/sessions/0123456789abcdef/terminate")
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    # terminating changed no access right: alice starts a new session
    assert site.start().session_id != session.session_id


def test_terminate_of_a_session_ended_before_the_engine_started(site):
    """A session the log knows as ended but this engine never ran (after a restart): 409."""
    session = site.start()
    session.leave()
    site.wait_ended(session.session_id)
    with site.gw.services.db.begin() as db:  # as if the engine had forgotten it
        db.execute(sa.text("UPDATE sessions SET id = 'restarted-1' WHERE id = :id"), {"id": session.session_id})
    answer = site.admin_api.post("/api/sessions/restarted-1/terminate")
    assert answer.status_code == 409 and answer.json()["error"] == "session_ended"
    assert answer.json()["end_reason"] == "controller_left"


# --- connections --------------------------------------------------------------------------------


def test_connections_filters_and_pages(site):
    gw = site.gw
    ended = []
    for _ in range(3):
        s = site.start()
        s.leave()
        site.wait_ended(s.session_id)
        ended.append(s.session_id)
    live = site.start(site.root)
    gw.engine.flush_audit()

    everything = site.admin_api.get("/api/connections").json()
    assert everything["total"] == 4 and everything["limit"] == 50 and everything["offset"] == 0
    assert everything["connections"][0]["id"] == live.session_id  # newest first
    assert everything["connections"][0]["state"] == "active" and everything["connections"][0]["live"]

    first = site.admin_api.get("/api/connections?limit=2").json()
    second = site.admin_api.get("/api/connections?limit=2&offset=2").json()
    assert [c["id"] for c in first["connections"] + second["connections"]] == \
        [c["id"] for c in everything["connections"]]
    assert site.admin_api.get("/api/connections?limit=0").json() == {
        "connections": [], "total": 4, "limit": 0, "offset": 0}

    by_root = site.admin_api.get("/api/connections?user=root").json()
    assert [c["id"] for c in by_root["connections"]] == [live.session_id]
    reason = site.admin_api.get("/api/connections?end_reason=controller_left").json()
    assert sorted(c["id"] for c in reason["connections"]) == sorted(ended)
    assert all(c["ended_by"] == "alice" for c in reason["connections"])
    by_name = site.admin_api.get("/api/connections?endpoint=synth").json()
    by_id = site.admin_api.get(f"/api/connections?endpoint={site.synth.id}").json()
    assert by_name["total"] == by_id["total"] == 4
    assert site.admin_api.get(f"/api/connections?endpoint={site.other.id}").json()["total"] == 0
    assert site.admin_api.get("/api/connections?since=2999-01-01").json()["total"] == 1  # only the live one
    assert site.admin_api.get("/api/connections?until=2000-01-01").json()["total"] == 0
    assert site.admin_api.get("/api/connections?since=2000-01-01&until=2999-12-31").json()["total"] == 4

    # bob sees nothing (no access, took part in none); alice sees synth's, root's included
    assert site.bob_api.get("/api/connections").json()["total"] == 0
    assert site.alice_api.get("/api/connections").json()["total"] == 4
    assert site.alice_api.get("/api/connections?live=true").json()["total"] == 1
    assert site.alice_api.get(f"/api/connections?endpoint={site.other.id}").json()["total"] == 0


def test_a_user_sees_past_sessions_they_took_part_in(site):
    session = site.start(site.root)
    site.gw.engine.join_session(session.session_id, site.bob)  # bob has no access to synth
    session.leave()
    site.wait_ended(session.session_id)
    seen = site.bob_api.get("/api/connections").json()
    assert [c["id"] for c in seen["connections"]] == [session.session_id]


# --- endpoints ----------------------------------------------------------------------------------


def test_endpoints_never_show_credentials(site):
    for client in (site.admin_api, site.alice_api):
        answer = client.get("/api/endpoints")
        assert answer.status_code == 200
        assert ENDPOINT_SECRET not in answer.text and "secret" not in answer.text
    admin_view = {e["name"]: e for e in site.admin_api.get("/api/endpoints").json()["endpoints"]}
    assert set(admin_view) == {"synth", "other"}
    assert admin_view["other"]["credentials"] == "password" and admin_view["other"]["username"] == "ops"
    assert admin_view["synth"]["access"] == [{"kind": "user", "id": site.alice.id, "name": "alice", "role": "user"}]
    alice_view = site.alice_api.get("/api/endpoints").json()["endpoints"]
    assert [e["name"] for e in alice_view] == ["synth"]
    assert "credentials" not in alice_view[0] and "username" not in alice_view[0]
    assert site.bob_api.get("/api/endpoints").json() == {"endpoints": []}


def test_create_update_toggle_delete_an_endpoint(site):
    api = site.admin_api
    created = api.post("/api/endpoints", json={
        "name": "router-1", "protocol": "ssh", "host": "10.1.2.3", "port": 2222, "username": "ops",
        "password": ENDPOINT_SECRET, "joint_session": False})
    assert created.status_code == 201, created.text
    endpoint = created.json()["endpoint"]
    assert created.headers["location"] == f"/api/endpoints/{endpoint['id']}"
    assert (endpoint["address"], endpoint["credentials"], endpoint["joint_session"]) == ("10.1.2.3:2222", "password",
                                                                                          False)
    assert ENDPOINT_SECRET not in created.text
    stored = site.gw.services.endpoints.stored_credentials(endpoint["id"])
    assert stored.password == ENDPOINT_SECRET and stored.username == "ops"

    same_name = api.post("/api/endpoints", json={"name": "router-1", "protocol": "vnc", "host": "h"})
    assert same_name.status_code == 409 and same_name.json()["error"] == "name_taken"

    updated = api.put(f"/api/endpoints/{endpoint['id']}", json={"host": "10.1.2.4", "username": "admin"})
    assert updated.status_code == 200, updated.text
    assert updated.json()["endpoint"]["address"] == "10.1.2.4:2222"
    assert updated.json()["endpoint"]["credentials"] == "password"  # kept
    cleared = api.put(f"/api/endpoints/{endpoint['id']}", json={"clear_credentials": True})
    assert cleared.json()["endpoint"]["credentials"] is None

    on = api.post(f"/api/endpoints/{endpoint['id']}/joint-session", json={"enabled": True})
    assert on.status_code == 200 and on.json()["endpoint"]["joint_session"] is True and on.json()["changed"]
    again = api.post(f"/api/endpoints/{endpoint['id']}/joint-session", json={"enabled": True})
    assert again.json()["changed"] is False
    assert site.gw.services.endpoints.get(endpoint["id"]).joint_session is True

    deleted = api.delete(f"/api/endpoints/{endpoint['id']}")
    assert deleted.json() == {"deleted": True, "id": endpoint["id"], "name": "router-1"}
    assert api.get(f"/api/endpoints/{endpoint['id']}").status_code == 404
    assert api.delete(f"/api/endpoints/{endpoint['id']}").status_code == 404
    assert api.post(f"/api/endpoints/{endpoint['id']}/joint-session", json={"enabled": False}).status_code == 404

    kinds = [(r["kind"], r["detail"].get("via")) for r in site.audit(
        ["endpoint_created", "endpoint_updated", "joint_session_changed", "endpoint_deleted"])]
    assert kinds == [("endpoint_created", "api"), ("endpoint_updated", "api"), ("endpoint_updated", "api"),
                     ("joint_session_changed", "api"), ("endpoint_deleted", "api")]
    everything = site.admin_api.get("/api/audit?limit=500").text
    assert ENDPOINT_SECRET not in everything


# --- bad input ----------------------------------------------------------------------------------

BAD = [
    ("GET", "/api/audit?since=yesterday", None, "bad_request", "since"),
    ("GET", "/api/audit?until=2024-13-01", None, "bad_request", "until"),
    ("GET", "/api/audit?since=2024-05-02&until=2024-05-01", None, "bad_request", "until"),
    ("GET", "/api/audit?limit=-1", None, "bad_request", "limit"),
    ("GET", "/api/audit?limit=100000", None, "bad_request", "limit"),
    ("GET", "/api/audit?limit=ten", None, "bad_request", "limit"),
    ("GET", "/api/audit?offset=-5", None, "bad_request", "offset"),
    ("GET", "/api/audit?order=sideways", None, "bad_request", "order"),
    ("GET", "/api/audit?kind=drop%20table", None, "bad_request", "kind"),
    ("GET", "/api/audit?knd=terminate", None, "unknown_parameter", "knd"),
    ("GET", "/api/audit?limit=1&limit=2", None, "bad_request", "limit"),
    ("GET", "/api/audit/export?format=xml", None, "bad_request", "format"),
    ("GET", "/api/audit/export?since=soon", None, "bad_request", "since"),
    ("GET", "/api/connections?end_reason=bored", None, "bad_request", "end_reason"),
    ("GET", "/api/connections?live=maybe", None, "bad_request", "live"),
    ("GET", "/api/connections?since=1e999", None, "bad_request", "since"),
    ("GET", "/api/connections?page=2", None, "unknown_parameter", "page"),
    ("GET", "/api/sessions?all=1", None, "unknown_parameter", "all"),
    ("POST", "/api/endpoints", {"name": "x", "protocol": "telnet", "host": "h"}, "bad_field", "protocol"),
    ("POST", "/api/endpoints", {"name": "x", "protocol": "gopher", "host": "h"}, "bad_field", "protocol"),
    ("POST", "/api/endpoints", {"name": "x", "protocol": "ssh", "host": "h", "colour": "red"}, "unknown_field",
     "colour"),
    ("POST", "/api/endpoints", {"name": "x", "protocol": "ssh", "host": "h", "port": "22"}, "bad_field", "port"),
    ("POST", "/api/endpoints", {"name": "x", "protocol": "ssh", "host": "h", "port": True}, "bad_field", "port"),
    ("POST", "/api/endpoints", {"name": "x", "protocol": "ssh", "host": "h", "port": 70000}, "bad_request", None),
    ("POST", "/api/endpoints", {"name": "x", "protocol": "ssh", "host": "h", "port": -1}, "bad_request", None),
    ("POST", "/api/endpoints", {"name": "x", "protocol": "ssh", "host": "has space"}, "bad_request", None),
    ("POST", "/api/endpoints", {"name": "x", "protocol": "ssh", "host": "h", "joint_session": "yes"}, "bad_field",
     "joint_session"),
    ("POST", "/api/endpoints", {"protocol": "ssh", "host": "h"}, "missing_field", "name"),
    ("POST", "/api/endpoints", ["name", "x"], "malformed", None),
    ("PUT", "/api/endpoints/{other}", {"secret": "x"}, "unknown_field", "secret"),
    ("PUT", "/api/endpoints/{other}", {"protocol": "synthetic"}, "bad_field", "protocol"),
    ("POST", "/api/endpoints/{other}/joint-session", {"enabled": "false"}, "bad_field", "enabled"),
    ("POST", "/api/endpoints/{other}/joint-session", {"enabled": 0}, "bad_field", "enabled"),
    ("POST", "/api/endpoints/{other}/joint-session", {}, "missing_field", "enabled"),
    ("POST", "/api/endpoints/{other}/joint-session", {"enabled": False, "now": True}, "unknown_field", "now"),
]


def test_bad_input_is_answered_400_with_the_reason(site):
    wrong = []
    for method, path, body, error, name in BAD:
        url = path.format(other=site.other.id)
        answer = site.admin_api.request(method, url, json=body)
        data = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
        if answer.status_code != 400 or data.get("error") != error or not data.get("detail") or \
                (name is not None and name not in (data.get("parameter"), data.get("field"))):
            wrong.append(f"{method} {url} {body}: {answer.status_code} {answer.text[:300]}")
    assert not wrong, "\n".join(wrong)
    assert [e["name"] for e in site.admin_api.get("/api/endpoints").json()["endpoints"]] == ["other", "synth"]
    assert site.gw.services.endpoints.get(site.other.id).joint_session is True


def test_bodies_must_be_json(site):
    api = site.admin_api
    answer = api.post("/api/endpoints", content=b"name=x&protocol=ssh",
                      headers={"content-type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 415 and answer.json()["error"] == "unsupported_media_type"
    answer = api.post("/api/endpoints", content=b"{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"] == "malformed"
    answer = api.post("/api/endpoints", content=b'{"name": "' + b"x" * 70000 + b'"}',
                      headers={"content-type": "application/json"})
    assert answer.status_code == 413


# --- the audit log ------------------------------------------------------------------------------


def test_audit_filters_and_pages(site):
    gw = site.gw
    for _ in range(3):
        s = site.start()
        site.admin_api.post(f"/api/sessions/{s.session_id}/terminate")
    gw.engine.flush_audit()
    api = site.admin_api
    everything = api.get("/api/audit?limit=500").json()
    total = everything["total"]
    assert total == len(everything["events"]) and total >= 10
    ids = [e["id"] for e in everything["events"]]
    assert ids == sorted(ids, reverse=True)  # newest first
    oldest = api.get("/api/audit?limit=500&order=oldest").json()["events"]
    assert [e["id"] for e in oldest] == ids[::-1]

    pages = [api.get(f"/api/audit?limit=4&offset={o}").json() for o in range(0, total, 4)]
    assert [e["id"] for p in pages for e in p["events"]] == ids
    assert all(p["total"] == total for p in pages)

    terminates = api.get("/api/audit?kind=terminate").json()
    assert terminates["total"] == 3
    assert {e["actor_name"] for e in terminates["events"]} == {"root"}
    one = terminates["events"][0]["session_id"]
    of_one = api.get(f"/api/audit?session={one}&order=oldest").json()["events"]
    assert [e["kind"] for e in of_one] == ["session_started", "terminate", "session_ended"]
    by_id = api.get(f"/api/audit?actor={site.root.id}").json()
    assert sorted(e["kind"] for e in by_id["events"]) == ["login", "terminate", "terminate", "terminate"]
    # by name, also the session_ended rows, whose actor is the name of whoever ended the session
    by_name = api.get("/api/audit?actor=root").json()
    assert by_name["total"] == 7 and {e["kind"] for e in by_name["events"]} == {"login", "terminate", "session_ended"}
    at = everything["events"][-1]["at"]
    assert api.get(f"/api/audit?since={at + 3600}").json()["total"] == 0
    assert api.get(f"/api/audit?until={at}").json()["total"] == 0
    assert api.get(f"/api/audit?since={at}").json()["total"] == total
    wide = {"since": "2000-01-01T00:00:00Z", "until": "2999-01-01T00:00+02:00"}
    assert api.get("/api/audit", params=wide).json()["total"] == total
    row = everything["events"][0]
    assert set(row) == {"id", "at", "time", "kind", "session_id", "actor_id", "actor_name", "detail", "prev_hash",
                        "hash"}
    assert row["time"].endswith("Z") and re.fullmatch(r"[0-9a-f]{64}", row["hash"])


def test_audit_verify_reports_intact_then_the_broken_row(site):
    site.start().leave()
    site.gw.engine.flush_audit()
    report = site.admin_api.get("/api/audit/verify").json()
    assert report["ok"] is True and report["problem"] == "" and report["rows"] >= 3
    assert report["head"]["id"] == report["rows"] and len(report["head"]["hash"]) == 64
    with site.gw.services.db.begin() as db:
        db.execute(audit_events.update().where(audit_events.c.id == 2).values(actor_name="mallory"))
    broken = site.admin_api.get("/api/audit/verify").json()
    assert broken["ok"] is False and broken["first_bad_id"] == 2 and "row 2 was altered" in broken["problem"]

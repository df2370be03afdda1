"""Sign-in, sign-out, the session cookie, CSRF and origin checks, over real HTTP."""

from __future__ import annotations

import json
import re

import httpx
import pytest
import sqlalchemy as sa
from starlette.requests import HTTPConnection

from dashboard.security.auth import LoginThrottle
from dashboard.security.origin import check_origin, same_origin
from tests.fixtures.gateway import PASSWORD


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no csrf field in the page"
    return match.group(1)


def audit_rows(gateway, kind: str) -> list[tuple[str | None, dict]]:
    gateway.engine.flush_audit()
    with gateway.services.db.connect() as db:
        rows = db.execute(sa.text("select actor_name, detail from audit_events where kind = :k order by id"),
                          {"k": kind}).all()
    return [(actor, json.loads(detail) if detail else {}) for actor, detail in rows]


@pytest.fixture
def client(live_gateway):
    with httpx.Client(base_url=live_gateway.base_url, timeout=10) as client:
        yield client


def form_login(client: httpx.Client, name: str, password: str, next_: str = "/") -> httpx.Response:
    token = csrf_from(client.get("/login").text)
    return client.post("/login", data={"name": name, "password": password, "next": next_, "csrf_token": token})


def test_login_and_logout_with_the_form(live_gateway, client):
    live_gateway.create_user("alice", PASSWORD)
    answer = form_login(client, "alice", PASSWORD)
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    home = client.get("/")
    assert home.status_code == 200 and 'data-testid="current-user">alice<' in home.text
    assert client.get("/api/me").json()["user"]["name"] == "alice"

    token = csrf_from(home.text)
    answer = client.post("/logout", data={"csrf_token": token})
    assert answer.status_code == 303 and answer.headers["location"] == "/login"
    assert client.get("/api/me").status_code == 401
    assert client.get("/").status_code == 303


def test_session_cookie_flags(live_gateway, client):
    cookie = client.get("/login").headers["set-cookie"]
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert cookie.startswith("cosession=")
    assert "httponly" in flags
    assert "samesite=lax" in flags
    assert any(flag.startswith("max-age=") for flag in flags)
    assert "secure" not in flags  # plain http on loopback; https public URLs add it


def test_wrong_password_is_refused_and_audited(live_gateway, client):
    live_gateway.create_user("alice", PASSWORD)
    answer = form_login(client, "alice", "not the password")
    assert answer.status_code == 401
    assert "Wrong name or password" in answer.text
    assert client.get("/api/me").status_code == 401

    unknown = form_login(client, "mallory", "whatever-it-is")
    assert unknown.status_code == 401

    rows = audit_rows(live_gateway, "login_failed")
    assert [detail["name"] for _, detail in rows] == ["alice", "mallory"]
    assert all(detail["reason"] == "invalid_credentials" for _, detail in rows)
    text = json.dumps(rows)
    assert "not the password" not in text and "whatever-it-is" not in text


def test_successful_login_is_audited(live_gateway, client):
    live_gateway.create_user("alice", PASSWORD)
    form_login(client, "alice", PASSWORD)
    assert [actor for actor, _ in audit_rows(live_gateway, "login")] == ["alice"]


def test_form_post_without_csrf_token_is_refused(live_gateway, client):
    live_gateway.create_user("alice", PASSWORD)
    client.get("/login")
    answer = client.post("/login", data={"name": "alice", "password": PASSWORD})
    assert answer.status_code == 403
    answer = client.post("/login", data={"name": "alice", "password": PASSWORD, "csrf_token": "forged"})
    assert answer.status_code == 403
    assert client.get("/api/me").status_code == 401


def test_csrf_token_in_multipart_form(live_gateway, client):
    live_gateway.create_user("alice", PASSWORD)
    token = csrf_from(client.get("/login").text)
    answer = client.post("/login", files={"name": (None, "alice"), "password": (None, PASSWORD),
                                          "csrf_token": (None, token)})
    assert answer.status_code == 303


def test_logged_in_form_post_without_token_is_refused(live_gateway, client):
    live_gateway.create_user("alice", PASSWORD)
    form_login(client, "alice", PASSWORD)
    assert client.post("/logout").status_code == 403
    assert client.get("/api/me").status_code == 200  # still signed in


def test_cross_origin_post_is_refused(live_gateway, client):
    live_gateway.create_user("alice", PASSWORD)
    token = csrf_from(client.get("/login").text)
    answer = client.post("/login", data={"name": "alice", "password": PASSWORD, "csrf_token": token},
                         headers={"Origin": "http://evil.example"})
    assert answer.status_code == 403
    answer = client.post("/login", data={"name": "alice", "password": PASSWORD, "csrf_token": token},
                         headers={"Origin": live_gateway.base_url})
    assert answer.status_code == 303


def test_api_login(live_gateway, client):
    live_gateway.create_user("alice", PASSWORD)
    assert client.post("/api/login", data={"name": "alice", "password": PASSWORD}).status_code == 415
    assert client.post("/api/login", content=b"name=alice", headers={"content-type": "text/plain"}).status_code == 415
    assert client.post("/api/login", json=["alice"]).status_code == 400
    assert client.post("/api/login", json={"name": "alice", "password": "nope-nope"}).status_code == 401
    answer = client.post("/api/login", json={"name": "alice", "password": PASSWORD})
    assert answer.status_code == 200
    body = answer.json()
    assert body["user"]["name"] == "alice" and body["user"]["is_admin"] is False
    assert body["csrf_token"]
    assert client.get("/api/me").json()["csrf_token"] == body["csrf_token"]

    # JSON calls need the header; with it they work
    assert client.post("/api/logout").status_code == 403
    assert client.post("/api/logout", headers={"X-CSRF-Token": "wrong"}).status_code == 403
    assert client.post("/api/logout", headers={"X-CSRF-Token": body["csrf_token"]}).status_code == 204
    assert client.get("/api/me").status_code == 401


def test_api_session_helper(live_gateway):
    live_gateway.create_user("bob", PASSWORD, admin=True)
    api = live_gateway.api_session("bob", PASSWORD)
    assert api.get("/api/me").json()["user"] == {"id": api.get("/api/me").json()["user"]["id"],
                                                 "name": "bob", "is_admin": True}
    assert api.post("/api/logout").status_code == 204


def test_anonymous_and_non_admin_access(live_gateway, client):
    answer = client.get("/endpoints")
    assert answer.status_code == 303 and answer.headers["location"] == "/login?next=/endpoints"
    assert client.get("/").headers["location"] == "/login?next=/"
    assert client.get("/api/me").json()["error"] == "login_required"

    live_gateway.create_user("alice", PASSWORD)
    form_login(client, "alice", PASSWORD)
    answer = client.get("/endpoints")
    assert answer.status_code == 403 and "administrators" in answer.text
    assert client.get("/endpoints/new").status_code == 403


def test_login_redirects_only_to_local_paths(live_gateway, client):
    live_gateway.create_user("alice", PASSWORD)
    assert form_login(client, "alice", PASSWORD, next_="//evil.example/x").headers["location"] == "/"
    client.cookies.clear()
    assert form_login(client, "alice", PASSWORD, next_="https://evil.example").headers["location"] == "/"
    client.cookies.clear()
    assert form_login(client, "alice", PASSWORD, next_="/endpoints?x=1").headers["location"] == "/endpoints?x=1"


def test_tampered_cookie_is_anonymous(live_gateway, client):
    live_gateway.create_user("alice", PASSWORD)
    form_login(client, "alice", PASSWORD)
    value = client.cookies["cosession"]
    client.cookies.clear()
    client.cookies.set("cosession", value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
    assert client.get("/api/me").status_code == 401


def test_deleted_user_is_signed_out(live_gateway, client):
    live_gateway.create_user("alice", PASSWORD)
    form_login(client, "alice", PASSWORD)
    with live_gateway.services.db.begin() as db:
        db.execute(sa.text("delete from users where name = 'alice'"))
    assert client.get("/api/me").status_code == 401


def test_security_headers(live_gateway, client):
    headers = client.get("/login").headers
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


def test_static_and_vendor_files(live_gateway, client):
    assert client.get("/static/app.css").status_code == 200
    xterm = client.get("/vendor/@xterm/xterm/lib/xterm.js")
    assert xterm.status_code == 200 and "javascript" in xterm.headers["content-type"]
    assert client.get("/vendor/../pyproject.toml").status_code == 404


@pytest.mark.parametrize("gateway_overrides", [{"server": {"public_url": "https://gw.example"}}])
def test_cookie_is_secure_behind_an_https_public_url(live_gateway, client):
    assert live_gateway.services.public_url == "https://gw.example"
    flags = [part.strip().lower() for part in client.get("/login").headers["set-cookie"].split(";")]
    assert "secure" in flags


# --- units --------------------------------------------------------------------------------


class _App:
    class state:
        services = None


def _conn(headers: dict[str, str], scheme: str = "ws", public_url: str = "") -> HTTPConnection:
    app = _App()
    app.state = type("S", (), {"services": type("Svc", (), {"public_url": public_url})()})()
    scope = {"type": "websocket", "scheme": scheme, "path": "/ws", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "server": ("127.0.0.1", 8080), "app": app}
    return HTTPConnection(scope)


@pytest.mark.parametrize("origin, host, public_url, expected", [
    ("http://127.0.0.1:8080", "127.0.0.1:8080", "", True),
    ("http://127.0.0.1:8080", "127.0.0.1:8080", "https://gw.example", True),
    ("https://gw.example", "127.0.0.1:8080", "https://gw.example", True),
    ("https://gw.example:443", "127.0.0.1:8080", "https://gw.example/", True),
    ("http://LOCALHOST:8080", "localhost:8080", "", True),
    ("http://127.0.0.1:8081", "127.0.0.1:8080", "", False),
    ("https://127.0.0.1:8080", "127.0.0.1:8080", "", False),
    ("http://evil.example", "127.0.0.1:8080", "", False),
    ("null", "127.0.0.1:8080", "", False),
    (None, "127.0.0.1:8080", "", False),
    ("http://[::1]:8080", "[::1]:8080", "", True),
])
def test_check_origin(origin, host, public_url, expected):
    headers = {"host": host}
    if origin is not None:
        headers["origin"] = origin
    assert check_origin(_conn(headers, public_url=public_url)) is expected
    assert same_origin(_conn(headers, scheme="http", public_url=public_url)) is expected


def test_login_throttle():
    throttle = LoginThrottle(limit=3, window=60)
    for i in range(3):
        assert not throttle.blocked("1.2.3.4", "alice", now=i)
        throttle.failed("1.2.3.4", "alice", now=i)
    assert throttle.blocked("1.2.3.4", "alice", now=10)
    assert not throttle.blocked("5.6.7.8", "alice", now=10)  # no lock-out of the user from elsewhere
    assert not throttle.blocked("1.2.3.4", "alice", now=61)  # the window passed
    for i in range(15):
        throttle.failed("9.9.9.9", f"name{i}", now=100)
    assert throttle.blocked("9.9.9.9", "someone-else", now=100)  # per-address cap

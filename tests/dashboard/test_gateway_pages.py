"""The session pages and share links, over HTTP (the browser tests drive them in Chromium)."""

from __future__ import annotations

import httpx
import pytest

from dashboard.security import share
from engine.messages import EndpointProtocol
from tests.fixtures.gateway import PASSWORD


@pytest.fixture
def site(live_gateway):
    gw = live_gateway
    endpoint = gw.create_endpoint("synth", EndpointProtocol.SYNTHETIC, host="")
    alice = gw.create_user("alice", PASSWORD)
    bob = gw.create_user("bob", PASSWORD)
    gw.create_user("mallory", PASSWORD)
    gw.grant(endpoint, alice)
    gw.grant(endpoint, bob)
    answer = gw.engine.open_session(endpoint.spec, alice)
    return gw, endpoint, answer


def get(client: httpx.Client, path: str) -> httpx.Response:
    return client.get(path, follow_redirects=False)


def test_a_share_link_opens_the_join_dialog(site):
    gw, endpoint, alice = site
    url = share.share_url(gw.services, alice.session_id)
    assert url.startswith(gw.base_url + f"/sessions/{alice.session_id}?share=")
    page = get(gw.api_session("bob", PASSWORD), url[len(gw.base_url):])
    assert page.status_code == 200
    assert 'data-testid="join-dialog"' in page.text and "Join in a new window" in page.text
    assert "alice" in page.text and "synth" in page.text


@pytest.mark.parametrize("alter", [
    lambda token: token[:-3] + ("abc" if not token.endswith("abc") else "xyz"),  # signature altered
    lambda token: "x" + token,
    lambda token: "not-a-token",
    lambda token: "",
])
def test_a_forged_or_altered_share_link_is_refused(site, alter):
    gw, endpoint, alice = site
    token = share.make_token(gw.services, alice.session_id)
    page = get(gw.api_session("bob", PASSWORD), f"/sessions/{alice.session_id}?share={alter(token)}")
    assert page.status_code == 403
    assert "share link is not valid" in page.text
    assert 'data-testid="join-dialog"' not in page.text


def test_a_share_link_for_another_session_is_refused(site):
    gw, endpoint, alice = site
    other = share.make_token(gw.services, "some-other-session")
    page = get(gw.api_session("bob", PASSWORD), f"/sessions/{alice.session_id}?share={other}")
    assert page.status_code == 403


def test_a_share_link_is_refused_once_the_session_has_ended(site):
    gw, endpoint, alice = site
    url = share.share_url(gw.services, alice.session_id)[len(gw.base_url):]
    alice.leave()
    assert alice.sink.wait_for(lambda s: s.closed)
    page = get(gw.api_session("bob", PASSWORD), url)
    assert page.status_code == 410 and "This session has ended" in page.text


def test_a_share_link_is_refused_to_a_user_without_access(site):
    gw, endpoint, alice = site
    url = share.share_url(gw.services, alice.session_id)[len(gw.base_url):]
    page = get(gw.api_session("mallory", PASSWORD), url)
    assert page.status_code == 403 and "no access to the endpoint synth" in page.text
    gw.engine.flush_audit()
    rows, _ = gw.services.audit_reader.events(kind="share_link_refused")
    assert rows[-1]["actor_name"] == "mallory" and rows[-1]["detail"]["reason"] == "no_access"


def test_a_share_link_asks_a_signed_out_visitor_to_sign_in_first(site):
    gw, endpoint, alice = site
    path = share.share_path(gw.services, alice.session_id)
    with httpx.Client(base_url=gw.base_url) as anonymous:
        page = get(anonymous, path)
    assert page.status_code == 303 and page.headers["location"].startswith("/login?next=/sessions/")
    assert "share%3D" in page.headers["location"] or "share=" in page.headers["location"]


def test_the_launcher_asks_for_credentials_only_when_none_are_stored(live_gateway):
    gw = live_gateway
    user = gw.create_user("alice", PASSWORD)
    bare = gw.create_endpoint("bare", EndpointProtocol.SSH, host="127.0.0.1", port=2222, username="deploy")
    stored = gw.create_endpoint("stored", EndpointProtocol.SSH, host="127.0.0.1", port=2222, username="deploy",
                                password="s3cret-stored-password")
    for endpoint in (bare, stored):
        gw.grant(endpoint, user)
    client = gw.api_session("alice", PASSWORD)
    page = get(client, f"/launch/{bare.id}")
    assert page.status_code == 200 and 'name="password"' in page.text and 'value="deploy"' in page.text
    page = get(client, f"/launch/{stored.id}")
    assert page.status_code == 200 and 'name="password"' not in page.text
    assert "s3cret" not in page.text
    # the form posts (never a GET with the password in its URL)
    assert f'id="launcher" method="post" action="{gw.url(f"/launch/{stored.id}")}"' in page.text
    # the session page without a launch is the launcher; with a spent or forged one, a clear 410
    assert get(client, f"/connect/{stored.id}").headers["location"] == f"/launch/{stored.id}"
    page = get(client, f"/connect/{stored.id}?launch=forged")
    assert page.status_code == 410 and "Start the session again from the launcher" in page.text


def test_the_launcher_is_refused_without_access(live_gateway):
    gw = live_gateway
    gw.create_user("mallory", PASSWORD)
    endpoint = gw.create_endpoint("box", EndpointProtocol.SSH, host="127.0.0.1", port=22)
    client = gw.api_session("mallory", PASSWORD)
    # the same answer whether the endpoint exists or not
    assert get(client, f"/launch/{endpoint.id}").status_code == 404
    assert get(client, "/launch/no-such-endpoint").status_code == 404
    answer = client.post(f"/launch/{endpoint.id}", json={}, headers={"Accept": "application/json"})
    assert answer.status_code == 404 and answer.json()["error"] == "no_access"


def test_parse_share_url():
    assert share.parse_share_url("http://h:8080/sessions/abc?share=T.1") == ("http://h:8080", "abc", "T.1")
    assert share.parse_share_url("https://h/prefix/sessions/abc") == ("https://h/prefix", "abc", None)
    for bad in ("ftp://h/sessions/x", "http://h/other/x", "sessions/x"):
        with pytest.raises(ValueError):
            share.parse_share_url(bad)


def test_share_tokens_name_one_session(live_gateway):
    services = live_gateway.services
    token = share.make_token(services, "s1")
    assert share.check_token(services, token, "s1") is None
    assert share.check_token(services, token, "s2") == share.ShareProblem.INVALID
    # a token made for another purpose with the same key is not a share token
    other = services.secrets.signer("other").dumps({"s": "s1"})
    assert share.check_token(services, other, "s1") == share.ShareProblem.INVALID

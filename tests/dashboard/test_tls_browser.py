"""The gateway serving TLS itself, with a throwaway certificate (tests/fixtures/tls.py): a joint
SSH session against real OpenSSH in headless Chromium, every page on https:// and every
websocket on wss://, the share link on https://, the session cookie Secure and HSTS sent.

Chromium is told to accept the self-signed certificate per browser context
(``ignore_https_errors=True``), as a browser whose user accepted it would; the same certificate
is trusted exactly (`Certificate.client_context`) by the Python clients here."""

from __future__ import annotations

import ssl
import warnings
import httpx
import pytest
from playwright.sync_api import expect

from tests.dashboard.test_session_browser import Site, run, share_url, wait_for_text
from tests.fixtures.tls import make_certificate

pytestmark = [pytest.mark.browser, pytest.mark.openssh]


@pytest.fixture
def certificate(tmp_path):
    return make_certificate(tmp_path / "tls")


@pytest.fixture
def gateway_overrides(certificate):
    return {"server": {"certfile": str(certificate.certfile), "keyfile": str(certificate.keyfile)}}


class TlsSite(Site):
    context_options = {**Site.context_options, "ignore_https_errors": True}


@pytest.fixture
def site(live_gateway, browser, openssh):
    with TlsSite(live_gateway, browser, openssh) as s:
        yield s


def test_a_joint_ssh_session_over_wss_in_chromium(site, certificate):
    gateway = site.gateway
    assert gateway.base_url.startswith("https://")
    site.user("alice")
    site.user("bob")
    sockets: list[str] = []
    alice = site.signed_in("alice")
    alice.on("websocket", lambda ws: sockets.append(ws.url))
    site.start(alice)
    link = share_url(alice)
    assert link.startswith(gateway.base_url + "/sessions/") and "?share=" in link
    bob = site.join("bob", link)
    bob.on("websocket", lambda ws: sockets.append(ws.url))
    expect(bob.get_by_test_id("role")).to_have_attribute("data-role", "viewer")
    run(alice, "echo over-tls-$((6*7))", "over-tls-42")
    wait_for_text(bob, "over-tls-42")

    assert sockets and all(url.startswith("wss://") for url in sockets), sockets
    for page in (alice, bob):
        assert page.url.startswith("https://")
        cookies = [c for c in page.context.cookies() if c["name"] == "cosession"]
        assert cookies and all(c["secure"] and c["httpOnly"] for c in cookies)

    # a client that trusts exactly this certificate: HSTS, and no TLS older than 1.2
    answer = httpx.get(gateway.url("/login"), verify=certificate.client_context())
    assert answer.headers["strict-transport-security"] == "max-age=31536000"
    old = certificate.client_context()
    with warnings.catch_warnings():  # Python deprecates TLS 1.1 too: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, httpx.ConnectError)):
        httpx.get(gateway.url("/healthz"), verify=old)
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets nothing
        httpx.get(gateway.url("/healthz").replace("https://", "http://"), timeout=5)

"""The account page and TOTP enrolment over HTTP against the live gateway, with a ManualClock:
the QR code and the secret, the first token, a token accepted once, removal and replacement
only with a current token, the administrators' reset, and an audit row for every refusal."""

from __future__ import annotations

import html
import json
import logging
import re
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pyotp
import pytest
import qrcode
import sqlalchemy as sa

from engine.clock import ManualClock
from dashboard.repositories.tables import mfa_secrets
from tests.fixtures.gateway import PASSWORD

START = 1_800_000_010.0  # 10 seconds into a 30-second TOTP step


@pytest.fixture
def gateway_clock():
    return ManualClock(START)


class Site:
    """root (administrator), alice and bob, each with a signed-in client."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.clock: ManualClock = gateway.engine.clock
        self.root = gateway.create_user("root", PASSWORD, admin=True)
        self.alice = gateway.create_user("alice", PASSWORD)
        self.bob = gateway.create_user("bob", PASSWORD)
        self.clients: dict[str, Any] = {}

    def client(self, name: str) -> Any:
        if name not in self.clients:
            self.clients[name] = self.gateway.api_session(name, PASSWORD)
        return self.clients[name]

    def now(self) -> float:
        return self.gateway.services.now()

    def status(self, user: Any) -> str:
        return self.gateway.services.mfa.status(user)

    def begin(self, name: str) -> str:
        """Set up an authenticator for `name` through the page; the otpauth URI the page shows."""
        answer = self.client(name).post("/account/mfa/begin")
        assert answer.status_code == 303 and answer.headers["location"].endswith("/account")
        return shown_uri(self.client(name).get("/account").text)

    def enrol(self, name: str) -> tuple[str, str]:
        """Enrol `name` with the first token; the secret and that token."""
        secret = secret_of(self.begin(name))
        token = pyotp.TOTP(secret).at(self.now())
        answer = self.client(name).post("/account/mfa/confirm", data={"token": token})
        assert answer.status_code == 303, answer.text
        return secret, token

    def audit(self, *kinds: str) -> list[dict[str, Any]]:
        self.gateway.engine.flush_audit()
        rows, _ = self.gateway.services.audit_reader.events(kind=list(kinds), limit=1000)
        return rows


@pytest.fixture
def site(live_gateway):
    return Site(live_gateway)


def shown_uri(page: str) -> str:
    found = re.search(r'<a href="([^"]+)" data-testid="mfa-uri"', page)
    assert found, "no otpauth link on the page"
    return html.unescape(found.group(1))


def shown_secret(page: str) -> str:
    found = re.search(r'<code class="mfa-secret" data-testid="mfa-secret">([^<]*)</code>', page)
    assert found, "no secret on the page"
    return found.group(1)


def secret_of(uri: str) -> str:
    return parse_qs(urlsplit(uri).query)["secret"][0]


def status_shown(page: str) -> str:
    found = re.search(r'data-testid="mfa-status" data-state="(\w+)"', page)
    assert found, "no authenticator status on the page"
    return found.group(1)


def error_shown(page: str) -> str:
    found = re.search(r'data-testid="mfa-error">([^<]*)<', page)
    return html.unescape(found.group(1)) if found else ""


def wrong_token(secret: str, now: float) -> str:
    """Six digits that no step within the drift window of `now` produces."""
    totp = pyotp.TOTP(secret)
    valid = {totp.at(now + drift) for drift in (-30, 0, 30)}
    candidate = int(totp.at(now))
    while f"{candidate:06d}" in valid:
        candidate = (candidate + 1) % 1_000_000
    return f"{candidate:06d}"


def svg_modules(page: str) -> set[tuple[int, int]]:
    """The dark modules of the page's QR code, as (column, row) from its SVG path: the page draws
    each module as one 1-unit square ("M x,y H .. V .. H .. z") after 4 units of quiet zone."""
    svg = re.search(r'<figure class="qr" data-testid="mfa-qr"[^>]*>(<svg .*?</svg>)</figure>', page, re.S)
    assert svg, "no inline SVG QR code on the page"
    path = re.search(r'<path d="([^"]+)"', svg.group(1))
    assert path
    return {(round(float(x)) - 4, round(float(y)) - 4)
            for x, y in re.findall(r"M([\d.]+),([\d.]+)H", path.group(1))}


def qr_modules(uri: str) -> set[tuple[int, int]]:
    """The dark modules of the QR code of `uri` (error correction M, the qrcode package's default)."""
    code = qrcode.QRCode(border=0)
    code.add_data(uri)
    code.make(fit=True)
    return {(x, y) for y, line in enumerate(code.get_matrix()) for x, dark in enumerate(line) if dark}


# --- tests ------------------------------------------------------------------------------------------


def test_the_account_page_needs_a_signed_in_user_and_is_in_the_navigation(site, live_gateway):
    import httpx

    with httpx.Client(base_url=live_gateway.base_url) as anonymous:
        answer = anonymous.get("/account")
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=/account")
        assert anonymous.post("/account/mfa/begin").status_code == 403  # no CSRF token without a session
    page = site.client("alice").get("/account")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert re.search(r'<a href="[^"]*/account"[^>]*>Account</a>', page.text)  # in the navigation
    assert '<strong data-testid="account-name">alice</strong>' in page.text
    assert status_shown(page.text) == "none"
    assert 'data-testid="mfa-begin"' in page.text
    assert 'data-testid="mfa-users"' not in page.text  # the reset list is for administrators


def test_enrolment_shows_a_qr_code_of_the_secret_and_confirms_with_the_first_token(site, live_gateway, caplog):
    caplog.set_level(logging.DEBUG)
    alice = site.client("alice")
    uri = site.begin("alice")
    assert site.status(site.alice) == "unconfirmed"
    page = alice.get("/account")
    assert page.headers["cache-control"] == "no-store"
    assert status_shown(page.text) == "unconfirmed"

    # the otpauth URI: TOTP for alice, issued by cosession
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc, unquote(parts.path)) == ("otpauth", "totp", "/cosession:alice")
    assert parse_qs(parts.query)["issuer"] == ["cosession"]
    secret = secret_of(uri)
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    # the secret for manual entry, in groups of four
    shown = shown_secret(page.text)
    assert re.fullmatch(r"([A-Z2-7]{4} )*[A-Z2-7]{4}", shown)
    assert shown.replace(" ", "") == secret
    # the SVG is the QR code of exactly that URI
    modules = svg_modules(page.text)
    assert modules == qr_modules(uri)
    assert modules != qr_modules(uri.replace(secret, pyotp.random_base32()))
    # the secret is stored encrypted, not in clear
    with live_gateway.services.db.connect() as db:
        blob = db.execute(sa.select(mfa_secrets.c.secret).where(mfa_secrets.c.user_id == site.alice.id)).scalar_one()
    assert secret.encode() not in (blob if isinstance(blob, bytes) else str(blob).encode())

    # a wrong token: refused, said, audited; still waiting
    wrong = wrong_token(secret, site.now())
    answer = alice.post("/account/mfa/confirm", data={"token": wrong})
    assert answer.status_code == 400
    assert answer.headers["cache-control"] == "no-store"
    assert "That code is not right" in error_shown(answer.text)
    assert status_shown(answer.text) == "unconfirmed"
    assert shown_secret(answer.text).replace(" ", "") == secret  # the same enrolment, shown again
    assert site.status(site.alice) == "unconfirmed"
    answer = alice.post("/account/mfa/confirm", data={"token": "12ab56"})
    assert answer.status_code == 400 and "That code is not right" in error_shown(answer.text)

    # the first valid token (typed with a space, as authenticators show it): enrolled
    token = pyotp.TOTP(secret).at(site.now())
    answer = alice.post("/account/mfa/confirm", data={"token": f"{token[:3]} {token[3:]}"})
    assert answer.status_code == 303 and answer.headers["location"].endswith("/account")
    assert site.status(site.alice) == "enrolled"
    page = alice.get("/account")
    assert status_shown(page.text) == "enrolled"
    assert "Your authenticator is enrolled" in page.text
    assert secret not in page.text and shown not in page.text  # shown only until confirmed
    assert 'data-testid="mfa-qr"' not in page.text

    rows = site.audit("mfa_enrol_begun", "mfa_enrol_refused", "mfa_enrolled")
    assert [(r["kind"], r["actor_name"], r["detail"].get("reason")) for r in rows] == [
        ("mfa_enrol_begun", "alice", None),
        ("mfa_enrol_refused", "alice", "mfa_invalid"),
        ("mfa_enrol_refused", "alice", "mfa_invalid"),
        ("mfa_enrolled", "alice", None)]
    # never the secret nor a token in the audit log, nor in any log line
    everything, _ = live_gateway.services.audit_reader.events(limit=10_000)
    dumped = json.dumps(everything)
    assert everything and secret not in dumped and shown not in dumped
    assert token not in dumped and wrong not in dumped
    assert secret not in caplog.text and shown not in caplog.text


def test_a_token_is_accepted_once_even_within_the_drift_window(site):
    secret, token = site.enrol("alice")
    alice = site.client("alice")
    # the token that confirmed the enrolment cannot remove it: reused
    answer = alice.post("/account/mfa/remove", data={"token": token})
    assert answer.status_code == 400
    assert "That code was already used" in error_shown(answer.text)
    # 30 seconds later the same token is still within the drift window, and still reused
    site.clock.advance(30)
    assert pyotp.TOTP(secret).at(site.now()) != token
    assert pyotp.TOTP(secret).verify(token, for_time=site.now(), valid_window=1)
    answer = alice.post("/account/mfa/remove", data={"token": token})
    assert answer.status_code == 400 and "That code was already used" in error_shown(answer.text)
    assert site.status(site.alice) == "enrolled"
    # the next token removes it, once
    fresh = pyotp.TOTP(secret).at(site.now())
    answer = alice.post("/account/mfa/remove", data={"token": fresh})
    assert answer.status_code == 303
    assert site.status(site.alice) == "none"
    page = alice.get("/account").text
    assert status_shown(page) == "none" and "Your authenticator was removed" in page
    answer = alice.post("/account/mfa/remove", data={"token": fresh})
    assert answer.status_code == 400 and "No authenticator is enrolled" in error_shown(answer.text)

    rows = site.audit("mfa_removed", "mfa_remove_refused")
    assert [(r["kind"], r["detail"].get("reason")) for r in rows] == [
        ("mfa_remove_refused", "mfa_reused"), ("mfa_remove_refused", "mfa_reused"),
        ("mfa_removed", None), ("mfa_remove_refused", "mfa_required")]


def test_a_stolen_session_cookie_alone_cannot_remove_or_replace_the_authenticator(site):
    secret, _ = site.enrol("alice")
    alice = site.client("alice")  # whoever holds the cookie, without the phone
    for path in ("/account/mfa/remove", "/account/mfa/begin"):
        answer = alice.post(path, data={})
        assert answer.status_code == 400, path
        assert "type a current code from it" in error_shown(answer.text)
        answer = alice.post(path, data={"token": wrong_token(secret, site.now())})
        assert answer.status_code == 400, path
    assert site.status(site.alice) == "enrolled"
    # the enrolled secret is untouched: its next token still works, and replaces it
    site.clock.advance(30)
    answer = alice.post("/account/mfa/begin", data={"token": pyotp.TOTP(secret).at(site.now())})
    assert answer.status_code == 303
    assert site.status(site.alice) == "unconfirmed"
    replacement = shown_secret(alice.get("/account").text).replace(" ", "")
    assert replacement != secret

    rows = site.audit("mfa_remove_refused", "mfa_enrol_refused", "mfa_enrol_begun")
    assert [(r["kind"], r["detail"].get("reason"), r["detail"].get("replacing")) for r in rows][1:] == [
        ("mfa_remove_refused", "mfa_invalid", None), ("mfa_remove_refused", "mfa_invalid", None),
        ("mfa_enrol_refused", "mfa_invalid", True), ("mfa_enrol_refused", "mfa_invalid", True),
        ("mfa_enrol_begun", None, True)]
    assert (rows[0]["kind"], rows[0]["detail"]["replacing"]) == ("mfa_enrol_begun", False)


def test_a_new_enrolment_replaces_an_unconfirmed_one_and_can_be_cancelled(site):
    first = secret_of(site.begin("alice"))
    second = secret_of(site.begin("alice"))
    assert first != second
    alice = site.client("alice")
    # the first secret's token no longer confirms anything
    answer = alice.post("/account/mfa/confirm", data={"token": pyotp.TOTP(first).at(site.now())})
    assert answer.status_code == 400 and site.status(site.alice) == "unconfirmed"
    assert alice.post("/account/mfa/cancel").status_code == 303
    assert site.status(site.alice) == "none"
    answer = alice.post("/account/mfa/confirm", data={"token": pyotp.TOTP(second).at(site.now())})
    assert answer.status_code == 400
    assert "No enrolment is waiting" in error_shown(answer.text)
    # cancel never takes away an enrolled authenticator
    site.enrol("alice")
    assert alice.post("/account/mfa/cancel").status_code == 303
    assert site.status(site.alice) == "enrolled"
    rows = site.audit("mfa_enrol_cancelled", "mfa_enrol_refused")
    assert [(r["kind"], r["detail"].get("reason")) for r in rows] == [
        ("mfa_enrol_refused", "mfa_invalid"), ("mfa_enrol_cancelled", None), ("mfa_enrol_refused", "mfa_required")]


def test_only_an_administrator_resets_a_users_authenticator(site, live_gateway):
    site.enrol("alice")
    # bob is no administrator: refused and audited, alice keeps hers
    answer = site.client("bob").post(f"/admin/users/{site.alice.id}/mfa/reset")
    assert answer.status_code == 403
    assert "Only an administrator" in answer.text
    assert site.status(site.alice) == "enrolled"
    # root sees every user's authenticator, with Reset where there is one
    root = site.client("root")
    page = root.get("/account").text
    listed = re.search(r'data-testid="mfa-users">(.*?)</section>', page, re.S).group(1)
    rows = dict(re.findall(r'<tr data-user="(\w+)">(.*?)</tr>', listed, re.S))
    assert set(rows) == {"root", "alice", "bob"}
    assert "enrolled" in rows["alice"] and f"/admin/users/{site.alice.id}/mfa/reset" in rows["alice"]
    assert "Reset" not in rows["bob"]
    answer = root.post(f"/admin/users/{site.alice.id}/mfa/reset")
    assert answer.status_code == 303
    assert site.status(site.alice) == "none"
    assert "alice&#39;s authenticator was reset" in root.get("/account").text
    assert root.post("/admin/users/no-such-user/mfa/reset").status_code == 404
    # alice enrols again
    site.enrol("alice")
    assert site.status(site.alice) == "enrolled"

    rows = site.audit("mfa_reset", "mfa_reset_refused")
    assert [(r["kind"], r["actor_name"], r["detail"].get("user"), r["detail"].get("reason")) for r in rows] == [
        ("mfa_reset_refused", "bob", None, "not_administrator"), ("mfa_reset", "root", "alice", None)]
    assert rows[0]["detail"]["user_id"] == rows[1]["detail"]["user_id"] == site.alice.id

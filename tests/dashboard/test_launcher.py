"""The Session Launcher, Quick Access and the start websocket, against a real gateway: every
combination that changes who may start (role, web-session setting, approval, MFA token), the five
Quick Access outcomes, the one-time launch, and the approval's deadline on the session."""

from __future__ import annotations

from typing import Any

import pyotp
import pytest
import trio

from engine.access import AssetRole
from engine.clock import ManualClock
from engine.messages import EndpointProtocol
from tests.fixtures.gateway import PASSWORD
from tests.fixtures.websockets import Harness

HOUR = 3600.0


@pytest.fixture
def gateway_clock():
    return ManualClock()


class Site:
    """A gateway with one user per test case and the endpoints the cases need."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw
        self.repos = gw.services
        self.synth = gw.create_endpoint("synth-box", EndpointProtocol.SYNTHETIC, host="")
        self.bare_ssh = gw.create_endpoint("bare-ssh", EndpointProtocol.SSH, host="127.0.0.1", port=22)
        gw.create_user("root", PASSWORD, admin=True)
        self.approver = gw.create_user("approver", PASSWORD)
        self.repos.approvers.add_approver(self.synth.id, self.repos.grants.principal("user", "approver"))
        self.profiles: dict[str, Any] = {}
        self.requests: dict[str, str] = {}  # user name → their request for access

    @property
    def now(self) -> float:
        return self.gw.services.now()

    def profile(self, web: str, *, mfa: bool = False, upload: bool = False) -> str:
        name = f"{web}{' mfa' if mfa else ''}{' upload' if upload else ''}"
        if name not in self.profiles:
            self.profiles[name] = self.repos.profiles.create_profile(name, web, mfa_required=mfa, clipboard_upload=upload)
        return self.profiles[name].id

    def user(self, name: str, *, endpoint: Any = None, role: str | None = "user", web: str | None = "allow",
             mfa: bool = False, approval: str | None = None) -> Any:
        """A user with `role` and a `web` profile on the endpoint; `approval`: None (not
        required), "none", "pending", "approved", "denied" or "expired"."""
        endpoint = endpoint or self.synth
        user = self.gw.create_user(name, PASSWORD)
        principal = self.repos.grants.principal("user", name)
        if role is not None:
            self.repos.grants.set_role(endpoint.id, principal, role)
        if web is not None:
            self.repos.grants.assign(endpoint.id, principal, self.profile(web, mfa=mfa))
        if approval is not None:
            self.repos.approvers.set_requires_approval(endpoint.id, True)
        if approval in ("pending", "approved", "denied", "expired"):
            start = self.now - (2 * HOUR if approval == "expired" else 0)
            request = self.repos.approvals.create_request(user, endpoint.id, start, start + HOUR, "maintenance", self.now
                                                 if approval != "expired" else start)
            if approval in ("approved", "expired"):
                self.repos.approvals.decide(request.id, self.approver, True, start)
            elif approval == "denied":
                self.repos.approvals.decide(request.id, self.approver, False, self.now)
            self.requests[name] = request.id
        return user

    def client(self, name: str) -> Any:
        return self.gw.api_session(name, PASSWORD)

    def audit(self, kind: str) -> list[dict[str, Any]]:
        self.gw.engine.flush_audit()
        rows, _ = self.gw.services.audit_reader.events(kind=kind, limit=1000)
        return rows

    def enrol(self, user: Any) -> pyotp.TOTP:
        """An enrolled authenticator (its first token spent at the current step)."""
        totp = pyotp.TOTP(pyotp.parse_uri(self.repos.mfa.begin(user, self.now)).secret)
        assert not hasattr(self.repos.mfa.check(user, totp.at(self.now), self.now, confirming=True), "reason")
        return totp


@pytest.fixture
def site(live_gateway) -> Site:
    return Site(live_gateway)


# --- Quick Access: the five outcomes ---------------------------------------------------------------


@pytest.mark.parametrize("case, setup, outcome, where", [
    ("start", {}, "start", "/connect/{endpoint}?launch="),
    ("record", {"web": "record"}, "start", "/connect/{endpoint}?launch="),
    ("mfa", {"mfa": True}, "launcher", "/launch/{endpoint}"),
    ("credentials", {"endpoint": "bare_ssh"}, "launcher", "/launch/{endpoint}"),
    ("no-approval", {"approval": "none"}, "request", "/access-requests/new?endpoint={endpoint}"),
    ("denied-approval", {"approval": "denied"}, "request", "/access-requests/new?endpoint={endpoint}"),
    ("expired-approval", {"approval": "expired"}, "request", "/access-requests/new?endpoint={endpoint}"),
    ("pending", {"approval": "pending"}, "pending", "/access-requests/{request}"),
    ("approved", {"approval": "approved"}, "start", "/connect/{endpoint}?launch="),
    ("approved-mfa", {"approval": "approved", "mfa": True}, "launcher", "/launch/{endpoint}"),
    ("no-profile", {"web": None}, "denied", None),
    ("deny-profile", {"web": "deny"}, "denied", None),
    ("deny-beats-approval", {"web": "deny", "approval": "approved"}, "denied", None),
])
def test_quick_access_has_the_issues_five_outcomes(site, case, setup, outcome, where):
    setup = dict(setup)
    endpoint = getattr(site, setup.pop("endpoint", "synth"))
    site.user(case, endpoint=endpoint, **setup)
    client = site.client(case)
    answer = client.post(f"/quick/{endpoint.id}", follow_redirects=False)
    if where is None:
        assert answer.status_code == 403 and 'data-testid="access-denied"' in answer.text
        assert "Access denied" in answer.text
    else:
        expected = where.format(endpoint=endpoint.id, request=site.requests.get(case, ""))
        assert answer.status_code == 303 and answer.headers["location"].startswith(expected), answer.headers
    rows = [r for r in site.audit("quick_access") if r["actor_name"] == case]
    assert [r["detail"]["outcome"] for r in rows] == [outcome]
    # the row's Access button (the launcher) shows only where a web session may start
    home = client.get("/").text
    assert ('data-testid="access"' in home) == (outcome in ("start", "launcher")), home


def test_an_endpoint_without_a_role_is_not_there_at_all(site):
    site.user("nobody", role=None)
    client = site.client("nobody")
    assert site.synth.name not in client.get("/").text
    for answer in (client.post(f"/quick/{site.synth.id}"), client.get(f"/launch/{site.synth.id}")):
        assert answer.status_code == 404  # the same answer as for an endpoint that does not exist
    assert client.post("/quick/no-such-endpoint").status_code == 404


def test_quick_access_starts_with_the_last_used_parameters(site):
    site.user("alice")
    client = site.client("alice")
    answer = client.post(f"/launch/{site.synth.id}", json={"cols": 132, "rows": 43, "terminal": "vt100"},
                         headers={"Accept": "application/json"})
    assert answer.status_code == 200, answer.text
    page = client.post(f"/quick/{site.synth.id}", follow_redirects=True)
    assert page.status_code == 200 and '"cols": 132' in page.text and '"rows": 43' in page.text
    launcher = client.get(f"/launch/{site.synth.id}").text
    assert 'value="132"' in launcher and "<option selected>vt100</option>" in launcher


# --- the launcher: parameters, credentials, MFA ------------------------------------------------------


def launch(client: Any, endpoint: Any, **fields: Any) -> Any:
    return client.post(f"/launch/{endpoint.id}", json=fields, headers={"Accept": "application/json"})


@pytest.mark.parametrize("fields, status, error", [
    ({"cols": 19}, 400, "malformed"),
    ({"rows": "many"}, 400, "malformed"),
    ({"open_in": "iframe"}, 400, "malformed"),
    ({"terminal": "xterm\r\nevil"}, 400, "malformed"),
    ({"cols": 100, "open_in": "window"}, 200, None),
])
def test_the_launcher_checks_its_parameters(site, fields, status, error):
    site.user("alice")
    answer = launch(site.client("alice"), site.synth, **fields)
    assert answer.status_code == status, answer.text
    assert answer.json().get("error") == error


def test_the_launcher_asks_for_credentials_the_endpoint_does_not_store(site):
    site.user("alice", endpoint=site.bare_ssh)
    client = site.client("alice")
    assert launch(client, site.bare_ssh).json()["error"] == "credentials_required"
    assert launch(client, site.bare_ssh, username="ops").json()["error"] == "credentials_required"
    assert launch(client, site.bare_ssh, username="ops", password="typed-secret").status_code == 200


def test_mfa_good_wrong_reused_and_missing_tokens(site, live_gateway):
    user = site.user("alice", mfa=True)
    totp = site.enrol(user)
    client = site.client("alice")
    launcher = client.get(f"/launch/{site.synth.id}").text
    assert 'data-testid="mfa-token"' in launcher
    live_gateway.clock.advance(30)  # the enrolment spent this step's token
    good = totp.at(site.now)
    wrong = next(t for t in (f"{(int(good) + k) % 1_000_000:06d}" for k in range(1, 50))
                 if not totp.verify(t, for_time=site.now, valid_window=1))
    answers = [launch(client, site.synth), launch(client, site.synth, mfa_token=wrong),
               launch(client, site.synth, mfa_token=good), launch(client, site.synth, mfa_token=good)]
    assert [a.json().get("error") for a in answers] == ["mfa_required", "mfa_invalid", None, "mfa_reused"]
    refusals = [r["detail"]["reason"] for r in site.audit("start_refused") if r["actor_name"] == "alice"]
    assert refusals == ["mfa_required", "mfa_invalid", "mfa_reused"]
    assert [r["detail"]["mfa"] for r in site.audit("start_authorised")] == [True]
    # the token itself is never in the audit log
    assert good not in str(site.audit("start_refused") + site.audit("start_authorised"))


def test_mfa_required_without_an_authenticator_sends_the_user_to_enrol(site):
    site.user("alice", mfa=True)
    page = site.client("alice").get(f"/launch/{site.synth.id}").text
    assert 'data-testid="mfa-enrol"' in page and 'data-testid="mfa-token"' not in page
    assert 'data-testid="access" disabled' in page


@pytest.mark.parametrize("setup, reason", [
    ({"role": None}, "no_access"),
    ({"web": None}, "no_web_session"),
    ({"web": "deny"}, "no_web_session"),
    ({"approval": "none"}, "approval_required"),
    ({"approval": "pending"}, "approval_pending"),
    ({"approval": "denied"}, "approval_denied"),
    ({"approval": "expired"}, "approval_expired"),
])
def test_the_launcher_refuses_and_audits_every_start_that_may_not_happen(site, setup, reason):
    site.user("alice", **setup)
    answer = launch(site.client("alice"), site.synth)
    assert answer.status_code == (404 if reason == "no_access" else 403)
    if reason != "no_access":  # without a role the endpoint does not exist for the user
        assert answer.json()["error"] == reason
        assert [r["detail"]["reason"] for r in site.audit("start_refused")] == [reason]


# --- the start websocket: launches, deadlines, record ----------------------------------------------


async def launched(h: Harness, site: Site, name: str, **fields: Any) -> str:
    answer = await trio.to_thread.run_sync(lambda: launch(site.client(name), site.synth, **fields))
    assert answer.status_code == 200, answer.text
    return answer.json()["url"].split("launch=")[1]


async def test_a_start_under_an_approval_expires_at_its_end_and_records_as_its_profile_says(site, harness,
                                                                                           live_gateway):
    site.user("alice", web="record", approval="approved")
    token = await launched(harness, site, "alice")
    client = await harness.open("alice", f"/ws/endpoints/{site.synth.id}/start")
    await client.send({"type": "start", "launch": token, "cols": 80, "rows": 24})
    joined = await client.control("joined")
    approval = (await trio.to_thread.run_sync(site.repos.approvals.requests_of, live_gateway.services.users.get_by_name("alice")))[0]
    assert joined["deadline"] == approval.window_end and joined["now"] == site.now
    assert live_gateway.app.state.live_sessions.sessions[joined["session_id"]].approval_id == approval.id
    live_gateway.engine.flush_audit()
    assert live_gateway.services.audit_reader.session(joined["session_id"])["record"] is True
    live_gateway.clock.set(approval.window_end)
    ended = await client.control("ended")
    assert ended["reason"] == "expired"


async def test_a_launch_is_spent_once_and_only_by_its_user(site, harness):
    site.user("alice")
    site.user("mallory")
    token = await launched(harness, site, "alice")
    thief = await harness.open("mallory", f"/ws/endpoints/{site.synth.id}/start")
    await thief.send({"type": "start", "launch": token, "cols": 80, "rows": 24})
    assert (await thief.control("refused"))["reason"] == "launch_expired"
    first = await harness.open("alice", f"/ws/endpoints/{site.synth.id}/start")
    await first.send({"type": "start", "launch": token, "cols": 80, "rows": 24})
    await first.control("joined")
    again = await harness.open("alice", f"/ws/endpoints/{site.synth.id}/start")
    await again.send({"type": "start", "launch": token, "cols": 80, "rows": 24})
    assert (await again.control("refused"))["reason"] == "launch_expired"


async def test_a_launch_expires_and_a_lost_approval_stops_it(site, harness, live_gateway):
    site.user("alice", approval="approved")
    token = await launched(harness, site, "alice")
    live_gateway.clock.advance(HOUR)  # the approval's window has closed (and the launch expired)
    client = await harness.open("alice", f"/ws/endpoints/{site.synth.id}/start")
    await client.send({"type": "start", "launch": token, "cols": 80, "rows": 24})
    assert (await client.control("refused"))["reason"] == "launch_expired"
    site.user("bob", approval="approved")
    token = await launched(harness, site, "bob")
    await trio.to_thread.run_sync(site.repos.grants.set_role, site.synth.id, site.repos.grants.principal("user", "bob"),
                                  None)  # the role is taken away between the launch and the start
    client = await harness.open("bob", f"/ws/endpoints/{site.synth.id}/start")
    await client.send({"type": "start", "launch": token, "cols": 80, "rows": 24})
    assert (await client.control("refused"))["reason"] == "no_access"


async def test_api_clients_start_with_the_access_model_too(site, harness, live_gateway):
    user = site.user("alice", mfa=True)
    totp = await trio.to_thread.run_sync(site.enrol, user)
    live_gateway.clock.advance(30)
    client = await harness.open("alice", f"/ws/endpoints/{site.synth.id}/start")
    await client.send({"type": "start", "cols": 80, "rows": 24})
    assert (await client.control("refused"))["reason"] == "mfa_required"
    client = await harness.open("alice", f"/ws/endpoints/{site.synth.id}/start")
    await client.send({"type": "start", "cols": 80, "rows": 24, "mfa_token": totp.at(site.now)})
    await client.control("joined")
    site.user("nora", web="deny")
    client = await harness.open("nora", f"/ws/endpoints/{site.synth.id}/start")
    await client.send({"type": "start", "cols": 80, "rows": 24})
    assert (await client.control("refused"))["reason"] == "no_web_session"


async def test_a_viewer_inherits_the_controllers_approval_for_that_session_only(site, harness):
    site.user("alice", approval="approved")
    site.user("vera", role="viewer", web=None)  # a role, but no profile and no approval of her own
    token = await launched(harness, site, "alice")
    controller = await harness.open("alice", f"/ws/endpoints/{site.synth.id}/start")
    await controller.send({"type": "start", "launch": token, "cols": 80, "rows": 24})
    joined = await controller.control("joined")
    viewer, answer = await harness.join("vera", joined["session_id"])
    assert answer["type"] == "joined" and answer["role"] == "viewer" and answer["deadline"] == joined["deadline"]
    # ...and cannot start one of her own afterwards
    refused = await trio.to_thread.run_sync(lambda: launch(site.client("vera"), site.synth))
    assert refused.status_code == 403 and refused.json()["error"] == "no_web_session"
    site.user("walt", role=AssetRole.VIEWER.value, web="allow")  # with a profile, still no approval
    refused = await trio.to_thread.run_sync(lambda: launch(site.client("walt"), site.synth))
    assert refused.json()["error"] == "approval_required"

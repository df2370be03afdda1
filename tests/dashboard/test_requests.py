"""Requests for access, approvals and extensions over real HTTP (dashboard/pages/requests.py, extensions.py):
the request screen and its refusals, who may see a request, four eyes, the decisions and what
`engine.access.may_start` then says, expiry by the engine's clock (a ManualClock: no sleeps),
extensions that move a live session's deadline, and the audit row of every decision."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import trio

from engine import access as rules
from engine.access import ApprovalState, QuickOutcome, StartGrant
from engine.clock import ManualClock
from engine.messages import EndReason, EndpointProtocol, Reason, Refused, SessionEnded, SessionState
from tests.fixtures.gateway import PASSWORD
from tests.fixtures.websockets import Harness

# 10 March 2027, 09:00 in this machine's time zone (forms take the server's local time)
START = time.mktime((2027, 3, 10, 9, 0, 0, 0, 0, -1))
HOUR = 3600.0


@pytest.fixture
def gateway_clock():
    return ManualClock(START)


def local(at: float) -> str:
    """`at` as an <input type="datetime-local"> sends it (the server's time zone)."""
    return time.strftime("%Y-%m-%dT%H:%M", time.localtime(at))


def audit_rows(gateway: Any, kind: str) -> list[tuple[str | None, str | None, dict[str, Any]]]:
    """(actor, session, detail) of every audit row of `kind`, oldest first, once committed."""
    gateway.engine.flush_audit()
    with gateway.services.db.connect() as db:
        rows = db.execute(sa.text("select actor_name, session_id, detail from audit_events where kind = :k "
                                  "order by id"), {"k": kind}).all()
    return [(actor, session, json.loads(detail) if detail else {}) for actor, session, detail in rows]


class Site:
    """vault (requires approval; carol and dave approve it; alice and bob hold a role on it),
    open (no approval), secret (nobody but the administrator), root the administrator."""

    def __init__(self, gateway: Any) -> None:
        self.gw = gateway
        self.services = gateway.services
        self.repos = gateway.services
        self.clock: ManualClock = gateway.engine.clock
        self.root = gateway.create_user("root", PASSWORD, admin=True)
        self.alice = gateway.create_user("alice", PASSWORD)
        self.bob = gateway.create_user("bob", PASSWORD)
        self.carol = gateway.create_user("carol", PASSWORD)
        self.dave = gateway.create_user("dave", PASSWORD)
        self.vault = gateway.create_endpoint("vault", EndpointProtocol.SYNTHETIC, host="")
        self.open = gateway.create_endpoint("open", EndpointProtocol.SYNTHETIC, host="")
        self.secret = gateway.create_endpoint("secret", EndpointProtocol.SYNTHETIC, host="")
        for user in (self.alice, self.bob):
            self.repos.grants.grant(self.vault.id, user.id)
            self.repos.grants.grant(self.open.id, user.id)
        self.repos.approvers.set_requires_approval(self.vault.id, True)
        for name in ("carol", "dave"):
            assert self.repos.approvers.add_approver(self.vault.id, self.repos.grants.principal("user", name))
        self._clients: dict[str, httpx.Client] = {}

    def client(self, name: str) -> httpx.Client:
        if name not in self._clients:
            self._clients[name] = self.gw.api_session(name, PASSWORD)
        return self._clients[name]

    def ask(self, name: str = "alice", endpoint: Any = None, **form: Any) -> httpx.Response:
        data = {"endpoint": (endpoint or self.vault).id, "window_start": "", "duration": "60",
                "reason": "patch the kernel", **form}
        return self.client(name).post("/access-requests", data=data)

    def filed(self, name: str = "alice", **form: Any) -> str:
        """A pending request's id, filed through the form."""
        answer = self.ask(name, **form)
        assert answer.status_code == 303, answer.text
        match = re.fullmatch(r"/access-requests/([0-9a-f-]{36})", answer.headers["location"])
        assert match, answer.headers["location"]
        return match.group(1)

    def decide(self, name: str, request_id: str, decision: str, **headers: str) -> httpx.Response:
        return self.client(name).post(f"/access-requests/{request_id}/decide",
                                      data={"decision": decision}, headers=headers)

    def may_start(self, user: Any, endpoint: Any = None) -> Refused | StartGrant:
        return rules.may_start(self.repos.access.facts(user, (endpoint or self.vault).id), self.services.now())

    def quick(self, user: Any) -> rules.QuickAccess:
        return rules.quick_access(self.repos.access.facts(user, self.vault.id), self.services.now())


@pytest.fixture
def site(live_gateway) -> Site:
    return Site(live_gateway)


# --- the request screen ------------------------------------------------------------------------------


def test_the_request_screen_names_the_endpoint_and_defaults_to_now(site):
    page = site.client("alice").get(f"/access-requests/new?endpoint={site.vault.id}")
    assert page.status_code == 200
    assert 'data-testid="endpoint-name">vault<' in page.text
    assert f'name="window_start" value="{local(START)}"' in page.text
    assert 'name="duration" value="60"' in page.text
    assert 'data-testid="no-approval-needed"' not in page.text
    # an endpoint without approval says so
    page = site.client("alice").get(f"/access-requests/new?endpoint={site.open.id}")
    assert page.status_code == 200 and 'data-testid="no-approval-needed"' in page.text


def test_the_request_screen_answers_the_same_for_missing_and_forbidden_endpoints(site):
    alice = site.client("alice")
    forbidden = alice.get(f"/access-requests/new?endpoint={site.secret.id}")
    missing = alice.get("/access-requests/new?endpoint=no-such-endpoint")
    nothing = alice.get("/access-requests/new")
    assert forbidden.status_code == missing.status_code == nothing.status_code == 404
    assert forbidden.text.replace(site.secret.id, "X") == missing.text.replace("no-such-endpoint", "X")
    assert "secret" not in forbidden.text
    for endpoint_id in (site.secret.id, "no-such-endpoint"):
        answer = alice.post("/access-requests", data={"endpoint": endpoint_id, "duration": "60", "reason": "x"})
        assert answer.status_code == 404
    assert site.repos.approvals.requests_of(site.alice) == []
    refused = audit_rows(site.gw, "access_request_refused")
    assert [(actor, d["endpoint_id"], d["reason"]) for actor, _, d in refused] == [
        ("alice", site.secret.id, "no_access"), ("alice", "no-such-endpoint", "no_access")]


BAD_REQUESTS = [
    # (form fields, reason, words of the message)
    ({"reason": ""}, Reason.MALFORMED, "say why you need access"),
    ({"reason": "   "}, Reason.MALFORMED, "say why you need access"),
    ({"reason": "x" * 501}, Reason.MALFORMED, "at most 500 characters"),
    ({"window_start": local(START + 2 * HOUR), "window_end": local(START + HOUR)}, Reason.BAD_WINDOW,
     "must end after it starts"),
    ({"window_start": local(START - 3 * HOUR), "window_end": local(START - HOUR)}, Reason.BAD_WINDOW,
     "already ended"),
    ({"window_end": local(START + 8 * 24 * HOUR)}, Reason.BAD_WINDOW, "at most 7 days"),
    ({"duration": str(7 * 24 * 60 + 1)}, Reason.BAD_WINDOW, "the duration is 1 to 10080 minutes"),
    ({"duration": "0"}, Reason.BAD_WINDOW, "the duration is 1 to 10080 minutes"),
    ({"duration": "soon"}, Reason.BAD_WINDOW, "the duration is 1 to 10080 minutes"),
    ({"duration": ""}, Reason.BAD_WINDOW, "give an end or a duration"),
    ({"window_start": "tomorrow"}, Reason.BAD_WINDOW, "the start is not a date and time"),
    ({"window_end": "2027-13-45T10:00"}, Reason.BAD_WINDOW, "the end is not a date and time"),
]


@pytest.mark.parametrize(("form", "reason", "words"), BAD_REQUESTS)
def test_a_bad_window_or_reason_is_refused_in_the_form_and_audited(site, form, reason, words):
    answer = site.ask(**form)
    assert answer.status_code == 400
    assert f'data-reason="{reason.value}"' in answer.text and words in answer.text
    assert 'data-testid="request-form"' in answer.text  # the form again, to correct
    if form.get("reason", "").strip():
        assert form["reason"][:100] in answer.text  # what was typed is kept
    assert site.repos.approvals.requests_of(site.alice) == []
    rows = audit_rows(site.gw, "access_request_refused")
    assert [(actor, d["endpoint_id"], d["reason"]) for actor, _, d in rows] == [
        ("alice", site.vault.id, reason.value)]
    assert words in rows[0][2]["detail"]
    assert audit_rows(site.gw, "access_requested") == []


def test_a_request_is_refused_when_an_approval_would_not_help(site):
    """A profile that denies web sessions is not lifted by an approval: no request is filed."""
    deny = site.repos.profiles.create_profile("No web", "deny")
    site.repos.grants.revoke(site.vault.id, site.bob.id)
    bob = site.repos.grants.principal("user", "bob")
    site.repos.grants.set_role(site.vault.id, bob, "user")
    site.repos.grants.assign(site.vault.id, bob, deny.id)
    answer = site.ask("bob")
    assert answer.status_code == 403 and 'data-reason="no_web_session"' in answer.text
    assert site.repos.approvals.requests_of(site.bob) == []
    assert [d["reason"] for _, _, d in audit_rows(site.gw, "access_request_refused")] == ["no_web_session"]


def test_a_filed_request_awaits_approval_and_is_audited(site):
    assert site.quick(site.alice).outcome is QuickOutcome.REQUEST
    request_id = site.filed(window_start=local(START + HOUR), window_end=local(START + 3 * HOUR),
                            reason="rotate the keys")
    found = site.repos.approvals.request(request_id)
    assert (found.state, found.window_start, found.window_end, found.reason) == (
        ApprovalState.PENDING, START + HOUR, START + 3 * HOUR, "rotate the keys")
    # Quick Access now opens this pending request
    quick = site.quick(site.alice)
    assert (quick.outcome, quick.request_id) == (QuickOutcome.PENDING, request_id)
    assert site.may_start(site.alice).reason is Reason.APPROVAL_PENDING

    page = site.client("alice").get(f"/access-requests/{request_id}")
    assert page.status_code == 200
    assert 'data-testid="request-state" data-state="pending"' in page.text
    assert 'data-testid="awaiting"' in page.text and "Awaiting approval" in page.text
    assert f'data-testid="window-start" data-at="{START + HOUR}"' in page.text
    assert f'data-testid="window-end" data-at="{START + 3 * HOUR}"' in page.text
    assert time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(START + 3 * HOUR)) in page.text
    assert 'data-testid="cancel-request"' in page.text
    assert 'data-testid="approve"' not in page.text  # alice approves nothing

    [(actor, session, detail)] = audit_rows(site.gw, "access_requested")
    assert (actor, session) == ("alice", None)
    assert detail == {"request_id": request_id, "endpoint_id": site.vault.id, "endpoint_name": "vault",
                      "requester_id": site.alice.id, "requester": "alice", "window_start": START + HOUR,
                      "window_end": START + 3 * HOUR, "request_reason": "rotate the keys"}


def test_a_duration_counts_from_the_start(site):
    first = site.repos.approvals.request(site.filed(duration="90"))  # an empty start: now
    assert (first.window_start, first.window_end) == (START, START + 90 * 60)
    second = site.repos.approvals.request(site.filed(window_start=local(START + HOUR), duration="30"))
    assert (second.window_start, second.window_end) == (START + HOUR, START + 90 * 60)
    third = site.repos.approvals.request(site.filed(window_start=local(START - HOUR), duration="90"))
    assert (third.window_start, third.window_end) == (START - HOUR, START + 30 * 60)
    assert site.ask(window_start=local(START - HOUR), duration="60").status_code == 400  # already ended


def test_json_clients_file_a_request_with_epoch_seconds(site):
    answer = site.client("alice").post("/access-requests", headers={"Accept": "application/json"}, json={
        "endpoint": site.vault.id, "window_start": START + HOUR, "window_end": START + 2 * HOUR,
        "reason": "from a script"})
    assert answer.status_code == 201
    body = answer.json()["request"]
    assert (body["state"], body["window_start"], body["window_end"]) == ("pending", START + HOUR, START + 2 * HOUR)
    refused = site.client("alice").post("/access-requests", headers={"Accept": "application/json"}, json={
        "endpoint": site.vault.id, "window_start": START + HOUR, "window_end": START, "reason": "x"})
    assert refused.status_code == 400 and refused.json()["error"] == "bad_window"


# --- who sees a request --------------------------------------------------------------------------------


def test_only_the_requester_the_approvers_and_administrators_see_a_request(site):
    request_id = site.filed()
    seen = {name: site.client(name).get(f"/access-requests/{request_id}") for name in
            ("alice", "carol", "root", "bob")}
    assert seen["bob"].status_code == 404  # a role on the endpoint is not enough
    assert "patch the kernel" not in seen["bob"].text
    assert site.client("bob").get("/access-requests/no-such-request").status_code == 404
    for name in ("alice", "carol", "root"):
        assert seen[name].status_code == 200 and "patch the kernel" in seen[name].text
    # the approver decides; the requester and the administrator (not an approver) only read
    assert 'data-testid="approve"' in seen["carol"].text and 'data-testid="deny"' in seen["carol"].text
    for name in ("alice", "root"):
        assert 'data-testid="approve"' not in seen[name].text and 'data-testid="deny"' not in seen[name].text
    assert 'data-testid="cancel-request"' not in seen["carol"].text


def test_the_approvers_queue_lists_pending_requests_on_their_endpoints_only(site):
    request_id = site.filed()
    site.filed(endpoint=site.open, reason="not theirs")  # open has no approvers
    queue = site.client("carol").get("/approvals")
    assert queue.status_code == 200
    assert re.findall(r'data-testid="pending-request" data-request-id="([^"]+)"', queue.text) == [request_id]
    assert "patch the kernel" in queue.text and "not theirs" not in queue.text
    bob = site.client("bob").get("/approvals")
    assert bob.status_code == 200 and 'data-testid="not-an-approver"' in bob.text
    assert 'data-testid="pending-request"' not in bob.text
    # decided: gone from the queue
    assert site.decide("carol", request_id, "approve").status_code == 303
    queue = site.client("carol").get("/approvals")
    assert 'data-testid="pending-request"' not in queue.text and 'data-testid="no-pending-requests"' in queue.text


# --- decisions -------------------------------------------------------------------------------------------


def test_an_approval_grants_a_start_until_the_windows_end(site):
    request_id = site.filed(duration="120")
    answer = site.decide("carol", request_id, "approve")
    assert answer.status_code == 303 and answer.headers["location"] == "/approvals"
    assert "Approved: alice" in site.client("carol").get("/approvals").text  # the flash

    grant = site.may_start(site.alice)
    assert isinstance(grant, StartGrant) and grant.deadline == START + 2 * HOUR
    assert site.quick(site.alice).outcome in (QuickOutcome.START, QuickOutcome.LAUNCHER)
    found = site.repos.approvals.request(request_id)
    assert (found.state, found.approver_name) == (ApprovalState.APPROVED, "carol")
    page = site.client("alice").get(f"/access-requests/{request_id}")
    assert 'data-testid="request-state" data-state="approved"' in page.text
    assert 'data-testid="open-window"' in page.text and "approved by carol" in page.text
    # bob, who asked nothing, is still refused: an approval is its requester's only
    assert site.may_start(site.bob).reason is Reason.APPROVAL_REQUIRED

    [(actor, _, detail)] = audit_rows(site.gw, "access_approved")
    assert actor == "carol"
    assert (detail["request_id"], detail["requester"], detail["endpoint_name"], detail["window_end"],
            detail["request_reason"]) == (request_id, "alice", "vault", START + 2 * HOUR, "patch the kernel")


def test_a_denial_refuses_the_start_with_approval_denied(site):
    request_id = site.filed()
    answer = site.decide("dave", request_id, "deny", Accept="application/json")
    assert answer.status_code == 200 and answer.json()["request"]["state"] == "denied"
    refused = site.may_start(site.alice)
    assert isinstance(refused, Refused) and refused.reason is Reason.APPROVAL_DENIED
    assert site.quick(site.alice).outcome is QuickOutcome.REQUEST  # ask again
    page = site.client("alice").get(f"/access-requests/{request_id}")
    assert 'data-state="denied"' in page.text and "Denied by dave" in page.text
    listing = site.client("alice").get("/access-requests")
    assert f'data-request-id="{request_id}" data-state="denied"' in listing.text
    [(actor, _, detail)] = audit_rows(site.gw, "access_denied")
    assert (actor, detail["request_id"], detail["requester"]) == ("dave", request_id, "alice")


REFUSED_DECISIONS = [
    # (who decides, setup, status, reason)
    ("bob", None, 403, Reason.NOT_APPROVER),  # a role on the endpoint, no approver right
    ("root", None, 403, Reason.NOT_APPROVER),  # administrators read, approvers decide
    ("alice", "alice approves vault", 403, Reason.OWN_REQUEST),  # four eyes
    ("dave", "carol approved", 409, Reason.ALREADY_DECIDED),
    ("carol", "carol approved", 409, Reason.ALREADY_DECIDED),
    ("dave", "carol denied", 409, Reason.ALREADY_DECIDED),
    ("carol", "alice withdrew", 409, Reason.ALREADY_DECIDED),
    ("carol", "the window passed", 409, Reason.ALREADY_DECIDED),
]


REFUSAL_WORDS = {
    Reason.NOT_APPROVER: "you are not an approver for this endpoint",
    Reason.OWN_REQUEST: "nobody approves their own request",
    Reason.ALREADY_DECIDED: "this request is no longer pending",
}


@pytest.mark.parametrize(("who", "setup", "status", "reason"), REFUSED_DECISIONS)
@pytest.mark.parametrize("accept", ["text/html", "application/json"])
def test_a_decision_that_may_not_be_made_is_refused_clearly_and_audited(site, who, setup, status, reason, accept):
    request_id = site.filed(duration="30")
    if setup == "alice approves vault":
        site.repos.approvers.add_approver(site.vault.id, site.repos.grants.principal("user", "alice"))
    elif setup == "carol approved":
        assert site.decide("carol", request_id, "approve").status_code == 303
    elif setup == "carol denied":
        assert site.decide("carol", request_id, "deny").status_code == 303
    elif setup == "alice withdrew":
        assert site.client("alice").post(f"/access-requests/{request_id}/cancel").status_code == 303
    elif setup == "the window passed":
        site.clock.advance(31 * 60)
    before = site.repos.approvals.request(request_id)

    answer = site.decide(who, request_id, "approve", Accept=accept)
    assert answer.status_code == status
    if accept == "application/json":
        assert answer.json()["error"] == reason.value
    else:
        assert REFUSAL_WORDS[reason] in answer.text
        if who != "bob":  # they may see the request: its page, with the refusal on it
            assert f'data-testid="decision-error" data-reason="{reason.value}"' in answer.text
    after = site.repos.approvals.request(request_id)
    now = site.services.now()
    assert (after.effective_state(now), after.approver_name, after.decided_at) == (
        before.effective_state(now), before.approver_name, before.decided_at)  # nothing decided
    rows = audit_rows(site.gw, "decision_refused")
    assert [(actor, d["request_id"], d["reason"], d["decision"]) for actor, _, d in rows] == [
        (who, request_id, reason.value, "approve")]
    assert rows[0][2]["requester"] == "alice" and rows[0][2]["detail"]


def test_the_requester_sees_why_nobody_approves_their_own_request(site):
    site.repos.approvers.add_approver(site.vault.id, site.repos.grants.principal("user", "alice"))
    request_id = site.filed()
    page = site.client("alice").get(f"/access-requests/{request_id}")
    assert 'data-testid="four-eyes"' in page.text and 'data-testid="approve"' not in page.text
    refused = site.decide("alice", request_id, "approve")
    assert refused.status_code == 403
    assert 'data-testid="decision-error" data-reason="own_request"' in refused.text
    assert "nobody approves their own request" in refused.text
    queue = site.client("alice").get("/approvals")
    assert 'data-testid="four-eyes"' in queue.text and 'data-testid="approve"' not in queue.text


def test_a_decision_other_than_approve_or_deny_is_refused(site):
    request_id = site.filed()
    answer = site.decide("carol", request_id, "maybe", Accept="application/json")
    assert answer.status_code == 400 and answer.json()["error"] == "malformed"
    assert site.repos.approvals.request(request_id).state is ApprovalState.PENDING
    assert site.client("carol").post("/access-requests/no-such/decide", data={"decision": "approve"}).status_code \
        == 404
    assert [d["reason"] for _, _, d in audit_rows(site.gw, "decision_refused")] == ["malformed", "unknown_message"]


def test_the_requester_withdraws_a_pending_request(site):
    request_id = site.filed()
    assert site.client("bob").post(f"/access-requests/{request_id}/cancel").status_code == 404
    answer = site.client("alice").post(f"/access-requests/{request_id}/cancel")
    assert answer.status_code == 303 and answer.headers["location"].endswith(f"/access-requests/{request_id}")
    assert site.repos.approvals.request(request_id).state is ApprovalState.EXPIRED
    page = site.client("alice").get(f"/access-requests/{request_id}")
    assert "withdrawn by its requester" in page.text and 'data-testid="cancel-request"' not in page.text
    again = site.client("alice").post(f"/access-requests/{request_id}/cancel", headers={"Accept": "application/json"})
    assert again.status_code == 409
    assert [(a, d["request_id"]) for a, _, d in audit_rows(site.gw, "access_request_cancelled")] == [
        ("alice", request_id)]
    assert [d["reason"] for _, _, d in audit_rows(site.gw, "access_request_cancel_refused")] == ["already_decided"]


# --- expiry by the engine's clock ----------------------------------------------------------------------


def test_past_its_window_an_approval_expires_and_the_list_says_so(site):
    request_id = site.filed(duration="60")
    assert site.decide("carol", request_id, "approve").status_code == 303
    assert isinstance(site.may_start(site.alice), StartGrant)

    site.clock.advance(HOUR - 1)
    assert isinstance(site.may_start(site.alice), StartGrant)  # the window is half-open
    site.clock.advance(1)
    refused = site.may_start(site.alice)
    assert isinstance(refused, Refused) and refused.reason is Reason.APPROVAL_EXPIRED
    assert site.repos.approvals.request(request_id).state is ApprovalState.APPROVED  # as stored, until listed

    listing = site.client("alice").get("/access-requests")
    assert listing.status_code == 200
    assert f'data-request-id="{request_id}" data-state="expired"' in listing.text
    assert site.repos.approvals.request(request_id).state is ApprovalState.EXPIRED  # listing kept the store honest
    page = site.client("alice").get(f"/access-requests/{request_id}")
    assert 'data-testid="request-state" data-state="expired"' in page.text
    assert "its window has ended" in page.text and "approved by carol" in page.text


def test_a_pending_request_past_its_window_expires_and_leaves_the_queue(site):
    request_id = site.filed(duration="30")
    assert 'data-testid="pending-request"' in site.client("carol").get("/approvals").text
    site.clock.advance(30 * 60)
    queue = site.client("carol").get("/approvals")
    assert 'data-testid="pending-request"' not in queue.text
    assert site.repos.approvals.request(request_id).state is ApprovalState.EXPIRED
    assert site.may_start(site.alice).reason is Reason.APPROVAL_EXPIRED
    listing = site.client("alice").get("/access-requests", headers={"Accept": "application/json"})
    assert [(r["id"], r["state"]) for r in listing.json()["requests"]] == [(request_id, "expired")]


def test_an_approval_for_a_later_window_opens_at_its_start(site):
    request_id = site.filed(window_start=local(START + HOUR), window_end=local(START + 2 * HOUR))
    assert site.decide("carol", request_id, "approve").status_code == 303
    assert site.may_start(site.alice).reason is Reason.APPROVAL_PENDING
    page = site.client("alice").get(f"/access-requests/{request_id}")
    assert 'data-testid="not-yet-open"' in page.text
    site.clock.advance(HOUR)
    grant = site.may_start(site.alice)
    assert isinstance(grant, StartGrant) and grant.deadline == START + 2 * HOUR
    assert 'data-testid="open-window"' in site.client("alice").get(f"/access-requests/{request_id}").text


# --- extensions ------------------------------------------------------------------------------------------


class LiveUnderApproval:
    """alice's approved request and a live session on vault started under it: the engine's
    session with the approval's end as its deadline, and the gateway's record of it naming the
    approval (what the start socket leaves behind)."""

    def __init__(self, site: Site, minutes: int = 60) -> None:
        self.site = site
        self.request_id = site.filed(duration=str(minutes))
        assert site.decide("carol", self.request_id, "approve").status_code == 303
        grant = site.may_start(site.alice)
        assert isinstance(grant, StartGrant)
        self.deadline = grant.deadline
        self.controller = site.gw.engine.open_session(site.vault.spec, site.alice, deadline=grant.deadline)
        self.session_id = self.controller.session_id
        site.gw.call_on_loop(self._register)

    def _register(self) -> None:
        live = self.site.gw.app.state.live_sessions.live(self.session_id, self.site.vault.spec, self.site.alice)
        live.approval_id = self.request_id

    def ask(self, name: str = "alice", json_answer: bool = True, **body: Any) -> httpx.Response:
        headers = {"Accept": "application/json"} if json_answer else {}
        if json_answer:
            return self.site.client(name).post(f"/sessions/{self.session_id}/extension", json=body, headers=headers)
        return self.site.client(name).post(f"/sessions/{self.session_id}/extension", data=body)

    def deadline_now(self) -> float | None:
        return self.site.gw.engine.describe(self.session_id).deadline


def test_the_controller_asks_to_extend_and_an_approval_moves_the_sessions_deadline(site):
    live = LiveUnderApproval(site)
    assert live.deadline_now() == START + HOUR
    answer = live.ask(minutes=30, reason="the migration runs late")
    assert answer.status_code == 201, answer.text
    extension = answer.json()["extension"]
    assert (extension["until"], extension["state"], extension["session_id"]) == (
        START + 90 * 60, "pending", live.session_id)
    queue = site.client("carol").get("/approvals")
    assert f'data-extension-id="{extension["id"]}"' in queue.text and "the migration runs late" in queue.text
    assert site.client("alice").get(f"/extensions/{extension['id']}").json()["extension"]["state"] == "pending"
    assert site.client("bob").get(f"/extensions/{extension['id']}").status_code == 404

    decided = site.client("carol").post(f"/extensions/{extension['id']}/decide", data={"decision": "approve"})
    assert decided.status_code == 303 and decided.headers["location"] == "/approvals"
    assert "1 live session now ends then" in site.client("carol").get("/approvals").text
    assert live.deadline_now() == START + 90 * 60  # the engine's Extend
    assert site.repos.approvals.request(live.request_id).window_end == START + 90 * 60
    grant = site.may_start(site.alice)
    assert isinstance(grant, StartGrant) and grant.deadline == START + 90 * 60
    assert site.client("alice").get(f"/extensions/{extension['id']}").json()["extension"]["state"] == "approved"

    # the old end passes: the session goes on; the new one: it expires (the engine's Expire)
    site.clock.advance(HOUR)
    assert live.site.gw.engine.describe(live.session_id).state is not SessionState.ENDED
    site.clock.advance(30 * 60)
    assert live.controller.sink.wait_for(
        lambda s: [e.reason for e in s.events_of(SessionEnded)] == [EndReason.EXPIRED], 5)

    [(actor, session, detail)] = audit_rows(site.gw, "extension_requested")
    assert (actor, session, detail["until"], detail["current_end"], detail["request_reason"]) == (
        "alice", live.session_id, START + 90 * 60, START + HOUR, "the migration runs late")
    [(actor, session, detail)] = audit_rows(site.gw, "extension_approved")
    assert (actor, session, detail["sessions"], detail["extension_id"], detail["requester"]) == (
        "carol", live.session_id, [live.session_id], extension["id"], "alice")


def test_a_denied_extension_leaves_the_deadline(site):
    live = LiveUnderApproval(site)
    until = START + 3 * HOUR
    extension = live.ask(until=until, reason="more time").json()["extension"]
    assert extension["until"] == until
    answer = site.client("dave").post(f"/extensions/{extension['id']}/decide", data={"decision": "deny"},
                                      headers={"Accept": "application/json"})
    assert answer.status_code == 200 and answer.json()["extension"]["state"] == "denied"
    assert live.deadline_now() == START + HOUR
    assert site.repos.approvals.request(live.request_id).window_end == START + HOUR
    again = site.client("carol").post(f"/extensions/{extension['id']}/decide", data={"decision": "approve"})
    assert again.status_code == 409 and 'data-reason="already_decided"' in again.text
    assert live.deadline_now() == START + HOUR
    [(actor, _, detail)] = audit_rows(site.gw, "extension_denied")
    assert (actor, detail["extension_id"]) == ("dave", extension["id"])
    assert [(a, d["reason"]) for a, _, d in audit_rows(site.gw, "decision_refused")] == [
        ("carol", "already_decided")]


def test_nobody_approves_their_own_extension(site):
    site.repos.approvers.add_approver(site.vault.id, site.repos.grants.principal("user", "alice"))
    live = LiveUnderApproval(site)
    extension = live.ask(minutes=15, reason="a bit more").json()["extension"]
    answer = site.client("alice").post(f"/extensions/{extension['id']}/decide", data={"decision": "approve"},
                                       headers={"Accept": "application/json"})
    assert answer.status_code == 403 and answer.json()["error"] == "own_request"
    assert live.deadline_now() == START + HOUR
    bob = site.client("bob").post(f"/extensions/{extension['id']}/decide", data={"decision": "approve"},
                                  headers={"Accept": "application/json"})
    assert bob.status_code == 403 and bob.json()["error"] == "not_approver"
    assert [(a, d["reason"]) for a, _, d in audit_rows(site.gw, "decision_refused")] == [
        ("alice", "own_request"), ("bob", "not_approver")]


REFUSED_EXTENSIONS = [
    # (who, body, status, reason)
    ("bob", {"minutes": 30, "reason": "x"}, 403, Reason.NOT_CONTROLLER),
    ("alice", {"minutes": 30, "reason": ""}, 400, Reason.MALFORMED),
    ("alice", {"until": START + HOUR, "reason": "x"}, 400, Reason.BAD_WINDOW),  # not after the current end
    ("alice", {"until": START + 30 * 60, "reason": "x"}, 400, Reason.BAD_WINDOW),
    ("alice", {"minutes": 0, "reason": "x"}, 400, Reason.BAD_WINDOW),
    ("alice", {"reason": "x"}, 400, Reason.BAD_WINDOW),
    ("alice", {"until": "never", "reason": "x"}, 400, Reason.BAD_WINDOW),
    ("alice", {"until": START + 8 * 24 * HOUR, "reason": "x"}, 400, Reason.BAD_WINDOW),
]


@pytest.mark.parametrize(("who", "body", "status", "reason"), REFUSED_EXTENSIONS)
def test_an_extension_that_may_not_be_asked_is_refused_and_audited(site, who, body, status, reason):
    live = LiveUnderApproval(site)
    answer = live.ask(who, **body)
    assert answer.status_code == status and answer.json()["error"] == reason.value
    assert answer.json()["message"].startswith("Not asked:")
    assert site.repos.approvals.extensions_of_request(live.request_id) == []
    rows = audit_rows(site.gw, "extension_refused")
    assert [(actor, session, d["reason"]) for actor, session, d in rows] == [(who, live.session_id, reason.value)]
    assert audit_rows(site.gw, "extension_requested") == []


def test_an_extension_needs_a_live_session_under_an_approval(site):
    missing = site.client("alice").post("/sessions/no-such-session/extension", json={"minutes": 5, "reason": "x"},
                                        headers={"Accept": "application/json"})
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_session"
    # a session on an endpoint without approval: nothing to extend
    plain = site.gw.engine.open_session(site.open.spec, site.alice)

    def register() -> None:
        site.gw.app.state.live_sessions.live(plain.session_id, site.open.spec, site.alice)

    site.gw.call_on_loop(register)
    answer = site.client("alice").post(f"/sessions/{plain.session_id}/extension", data={"minutes": "5", "reason": "x"})
    assert answer.status_code == 303 and answer.headers["location"] == f"/sessions/{plain.session_id}"
    assert [d["reason"] for _, _, d in audit_rows(site.gw, "extension_refused")] == ["unknown_session", "no_deadline"]


def test_a_form_extension_redirects_to_the_request_page(site):
    live = LiveUnderApproval(site)
    answer = live.ask(json_answer=False, minutes="20", reason="one more step")
    assert answer.status_code == 303 and answer.headers["location"] == f"/access-requests/{live.request_id}"
    page = site.client("alice").get(answer.headers["location"])
    assert "Asked to extend to" in page.text
    assert 'data-testid="extension-row"' in page.text and "one more step" in page.text
    [extension] = site.repos.approvals.extensions_of_request(live.request_id)
    assert (extension.until, extension.state) == (START + 80 * 60, ApprovalState.PENDING)


async def test_through_the_start_socket_an_approved_extension_moves_the_deadline_everyone_sees(site, nursery):
    """The whole path: alice's approval, her start on the websocket (the gateway records the
    approval), a viewer who inherits it but may not extend, her extension, carol's approval,
    and the new deadline in the state message of both participants."""
    h = Harness(site.gw, nursery)
    try:
        request_id = await trio.to_thread.run_sync(lambda: site.filed(duration="60"))
        decided = await trio.to_thread.run_sync(lambda: site.decide("carol", request_id, "approve"))
        assert decided.status_code == 303
        controller = await h.open("alice", f"/ws/endpoints/{site.vault.id}/start")
        await controller.send({"type": "start", "cols": 80, "rows": 24})
        joined = await controller.control("joined")
        sid = joined["session_id"]
        assert joined["deadline"] == START + HOUR
        viewer, answer = await h.join("bob", sid)
        assert answer["type"] == "joined" and answer["deadline"] == START + HOUR

        def ask(name: str) -> httpx.Response:
            return site.client(name).post(f"/sessions/{sid}/extension", json={"minutes": 45, "reason": "late"},
                                          headers={"Accept": "application/json"})

        refused = await trio.to_thread.run_sync(ask, "bob")
        assert refused.status_code == 403 and refused.json()["error"] == "not_controller"
        asked = await trio.to_thread.run_sync(ask, "alice")
        assert asked.status_code == 201, asked.text
        extension_id = asked.json()["extension"]["id"]
        approved = await trio.to_thread.run_sync(lambda: site.client("carol").post(
            f"/extensions/{extension_id}/decide", data={"decision": "approve"}, headers={"Accept": "application/json"}))
        assert approved.status_code == 200 and approved.json()["sessions"] == [sid]
        until = START + HOUR + 45 * 60
        await controller.control("state", deadline=until)
        await viewer.control("state", deadline=until)
    finally:
        await h.close()

"""The administrators' access pages (dashboard/pages/access.py) over HTTP against the live
gateway: only administrators reach them, every change takes effect in the access model (as
engine.access decides it) and is audited, and bad input is refused with a message."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx
import pytest

from dashboard.pages import access as access_pages
from engine.access import StartGrant, may_start
from engine.messages import EndpointProtocol, Reason, Refused

PASSWORD = "admin-password-1"
USER_PASSWORD = "alice-password"


class Site:
    """root (administrator), alice and bob; the endpoint box; root's signed-in client."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.services = gateway.services
        self.root = gateway.create_user("root", PASSWORD, admin=True)
        self.alice = gateway.create_user("alice", USER_PASSWORD)
        self.bob = gateway.create_user("bob", USER_PASSWORD)
        self.box = gateway.create_endpoint("box", EndpointProtocol.SYNTHETIC, host="")
        self.admin = gateway.api_session("root", PASSWORD)

    def post(self, path: str, **data: str) -> str:
        """POST a form as root; answer the flash message of the page it redirects to."""
        answer = self.admin.post(path, data=data)
        assert answer.status_code == 303, (answer.status_code, answer.text[:500])
        page = self.admin.get(answer.headers["location"])
        assert page.status_code == 200
        found = re.search(r'<p class="flash" role="status">(.*?)</p>', page.text, re.S)
        return html.unescape(found.group(1)) if found else ""

    def decision(self, user: Any) -> StartGrant | Refused:
        return may_start(self.services.access.facts(user, self.box.id), self.services.now())

    def audited(self, kind: str) -> list[dict[str, Any]]:
        self.gateway.engine.flush_audit()
        events, _ = self.services.audit_reader.events(kind=kind)
        for event in events:
            assert event["actor_name"] == "root"
        return [event["detail"] for event in events]

    def profile_id(self, name: str) -> str:
        return self.services.profiles.profile(name).id


@pytest.fixture
def site(live_gateway) -> Site:
    return Site(live_gateway)


def refused(decision: Any) -> str | None:
    return decision.reason.value if isinstance(decision, Refused) else None


def test_every_route_is_for_administrators_only(site):
    profile = site.services.profiles.create_profile("Ops", "allow")
    group = site.services.groups.create_group("operators")
    params = {"endpoint_id": site.box.id, "profile_id": profile.id, "group_id": group.id,
              "user_id": site.alice.id}
    alice = site.gateway.api_session("alice", USER_PASSWORD)
    data = {"kind": "user", "name": "alice", "role": "owner", "profile": profile.id, "user": "alice",
            "required": "on", "web_session": "record"}
    checked = 0
    for route in access_pages.routes:
        path = route.path.format(**params)
        for method in route.methods - {"HEAD"}:
            answer = alice.request(method, path, data=data if method == "POST" else None)
            assert answer.status_code == 403, (method, path, answer.status_code)
            checked += 1
    assert checked == len(access_pages.routes) >= 19
    with httpx.Client(base_url=site.gateway.base_url) as anonymous:
        assert anonymous.get("/profiles").headers["location"].startswith("/login?next=")
    # nothing changed
    assert site.services.grants.roles_on(site.box.id) == []
    assert site.services.groups.group(group.id).members == ()
    assert site.services.profiles.profile(profile.id) == profile


def test_a_role_and_an_allow_profile_let_a_user_start(site):
    box = site.box.id
    assert refused(site.decision(site.alice)) == Reason.NO_ACCESS
    assert site.post(f"/endpoints/{box}/roles", kind="user", name="alice", role="viewer") \
        == "alice is now viewer on box."
    assert refused(site.decision(site.alice)) == Reason.NO_WEB_SESSION
    assert site.post("/profiles", name="Ops", web_session="allow", clipboard_upload="on") == "Profile Ops created."
    ops = site.profile_id("Ops")
    assert site.post(f"/endpoints/{box}/profiles", kind="user", name="alice", profile=ops) \
        == "alice has profile Ops on box."
    grant = site.decision(site.alice)
    assert isinstance(grant, StartGrant) and not grant.record and grant.deadline is None
    assert refused(site.decision(site.bob)) == Reason.NO_ACCESS

    # change the role (by id, as the card's own form does), then take everything away
    assert site.post(f"/endpoints/{box}/roles", kind="user", name=site.alice.id, role="supervisor") \
        == "alice is now supervisor on box."
    assert site.services.access.role(site.alice, box).value == "supervisor"
    assert site.post(f"/endpoints/{box}/profiles/remove", kind="user", name=site.alice.id, profile=ops) \
        == "alice no longer has profile Ops on box."
    assert refused(site.decision(site.alice)) == Reason.NO_WEB_SESSION
    assert site.post(f"/endpoints/{box}/roles/remove", kind="user", name=site.alice.id) \
        == "alice no longer has a role on box."
    assert refused(site.decision(site.alice)) == Reason.NO_ACCESS

    who = {"endpoint_id": box, "endpoint_name": "box", "principal_kind": "user", "principal_id": site.alice.id,
           "principal_name": "alice"}
    assert site.audited("role_set") == [{**who, "role": "viewer", "previous": None},
                                        {**who, "role": "supervisor", "previous": "viewer"}]
    assert site.audited("role_removed") == [{**who, "role": "supervisor"}]
    assert site.audited("profile_created") == [{
        "profile_id": ops, "profile_name": "Ops", "web_session": "allow", "clipboard_upload": True,
        "clipboard_download": False, "file_transfer": False, "mfa_required": False}]
    assert site.audited("profile_assigned") == [{**who, "profile_id": ops, "profile_name": "Ops"}]
    assert site.audited("profile_unassigned") == [{**who, "profile_id": ops, "profile_name": "Ops"}]


def test_the_pages_show_what_is_set(site):
    box = site.box.id
    site.post("/groups", name="operators")
    site.post(f"/endpoints/{box}/roles", kind="group", name="operators", role="owner")
    site.post(f"/endpoints/{box}/roles", kind="user", name="alice", role="user")
    site.post("/profiles", name="Audited", web_session="record", mfa_required="on")
    site.post(f"/endpoints/{box}/profiles", kind="group", name="operators", profile=site.profile_id("Audited"))
    listing = site.admin.get("/endpoints").text
    assert re.search(r'operators \(group\): owner</span>, <span data-role="alice">alice: user</span>', listing)
    card = site.admin.get(f"/endpoints/{box}/edit").text
    assert "Starting a session needs at least viewer and a profile" in card
    assert re.search(r'data-principal="operators" data-profile="Audited"', card)
    assert "web session: record" in card and "MFA required" in card
    profiles = site.admin.get("/profiles").text
    assert 'data-profile="Audited"' in profiles and "<td>record</td>" in profiles


def test_a_group_gives_its_members_what_it_holds(site):
    box = site.box.id
    assert site.post("/groups", name="operators") == "Group operators created."
    group = next(g for g in site.services.groups.groups() if g.name == "operators")
    site.post("/profiles", name="Recorded", web_session="record")
    recorded = site.profile_id("Recorded")
    site.post(f"/endpoints/{box}/roles", kind="group", name="operators", role="viewer")
    site.post(f"/endpoints/{box}/profiles", kind="group", name="operators", profile=recorded)
    assert refused(site.decision(site.alice)) == Reason.NO_ACCESS
    assert site.post(f"/groups/{group.id}/members", user="alice") == "alice joined operators."
    assert site.post(f"/groups/{group.id}/members", user="alice") == "alice is already in operators."
    grant = site.decision(site.alice)
    assert isinstance(grant, StartGrant) and grant.record
    assert site.services.endpoints.accessible(site.alice) == [site.services.endpoints.get(box)]
    assert site.post(f"/groups/{group.id}/members/{site.alice.id}/remove") == "alice left operators."
    assert refused(site.decision(site.alice)) == Reason.NO_ACCESS

    site.post(f"/groups/{group.id}/members", user="bob")
    confirm = site.admin.get(f"/groups/{group.id}/delete").text
    assert "box: role viewer, profile Recorded" in confirm
    assert site.post(f"/groups/{group.id}/delete") == "Group operators deleted."
    assert site.services.groups.groups() == [] and site.services.grants.roles_on(box) == []
    assert site.services.grants.assignments_on(box) == []

    ids = {"group_id": group.id, "group_name": "operators"}
    assert site.audited("group_created") == [ids]
    assert site.audited("group_member_added") == [{**ids, "user_id": site.alice.id, "user_name": "alice"},
                                                  {**ids, "user_id": site.bob.id, "user_name": "bob"}]
    assert site.audited("group_member_removed") == [{**ids, "user_id": site.alice.id, "user_name": "alice"}]
    assert site.audited("group_deleted") == [{**ids, "members": ["bob"]}]
    assert site.audited("role_set")[0]["principal_kind"] == "group"


def test_editing_and_deleting_a_profile(site):
    box = site.box.id
    site.post("/profiles", name="Ops", web_session="allow")
    ops = site.profile_id("Ops")
    site.post(f"/endpoints/{box}/roles", kind="user", name="alice", role="user")
    site.post(f"/endpoints/{box}/profiles", kind="user", name="alice", profile=ops)
    form = site.admin.get(f"/profiles/{ops}/edit").text
    assert 'value="Ops"' in form and '<option value="allow" selected>' in form

    assert site.post(f"/profiles/{ops}/edit", name="Ops 2", web_session="record", mfa_required="on") \
        == "Profile Ops 2 saved."
    grant = site.decision(site.alice)
    assert isinstance(grant, StartGrant) and grant.record and grant.mfa_required
    assert site.post(f"/profiles/{ops}/edit", name="Ops 2", web_session="record", mfa_required="on") \
        == "Profile Ops 2 unchanged."
    site.post(f"/profiles/{ops}/edit", name="Ops 2", web_session="deny")
    assert refused(site.decision(site.alice)) == Reason.NO_WEB_SESSION

    confirm = site.admin.get(f"/profiles/{ops}/delete").text
    assert "box: assigned to user alice" in confirm and "Delete profile Ops 2" in confirm
    assert site.post(f"/profiles/{ops}/delete") == "Profile Ops 2 deleted."
    assert site.services.profiles.profile(ops) is None and site.services.grants.assignments_on(box) == []
    assert site.admin.get(f"/profiles/{ops}/edit").status_code == 404

    updated = site.audited("profile_updated")
    assert [(u["previous_name"], u["profile_name"], u["changed"]) for u in updated] == [
        ("Ops", "Ops 2", ["mfa_required", "name", "web_session"]), ("Ops 2", "Ops 2", ["mfa_required", "web_session"])]
    assert site.audited("profile_deleted") == [{"profile_id": ops, "profile_name": "Ops 2", "assignments_removed": 1}]


def test_approval_policy_and_approvers(site):
    box = site.box.id
    site.services.grants.grant(box, site.alice.id)
    assert isinstance(site.decision(site.alice), StartGrant)
    assert site.post(f"/endpoints/{box}/approval", required="on") == "Starting a session on box requires approval."
    assert refused(site.decision(site.alice)) == Reason.APPROVAL_REQUIRED
    assert 'data-testid="approval-toggle">On</button>' in site.admin.get(f"/endpoints/{box}/edit").text
    site.post(f"/endpoints/{box}/approval", required="on")  # no change: not audited again

    site.post("/groups", name="approvers")
    group = site.services.groups.groups()[0]
    site.services.groups.add_member(group.id, site.bob.id)
    assert site.post(f"/endpoints/{box}/approvers", kind="group", name="approvers") \
        == "approvers now approves requests for box."
    assert site.post(f"/endpoints/{box}/approvers", kind="group", name="approvers") \
        == "approvers already approves requests for box."
    assert site.services.approvers.approver_of(site.bob) == {box}
    assert site.post(f"/endpoints/{box}/approvers/remove", kind="group", name=group.id) \
        == "approvers no longer approves requests for box."
    assert site.services.approvers.approver_of(site.bob) == set()
    assert site.post(f"/endpoints/{box}/approval", required="off") == "Starting a session on box needs no approval."
    assert isinstance(site.decision(site.alice), StartGrant)

    endpoint = {"endpoint_id": box, "endpoint_name": "box"}
    assert site.audited("approval_policy_changed") == [{**endpoint, "requires_approval": True},
                                                       {**endpoint, "requires_approval": False}]
    approver = {**endpoint, "principal_kind": "group", "principal_id": group.id, "principal_name": "approvers"}
    assert site.audited("approver_added") == [approver]
    assert site.audited("approver_removed") == [approver]


def test_bad_input_is_refused_with_a_message(site):
    box = site.box.id
    site.post("/groups", name="operators")
    site.post("/profiles", name="Ops", web_session="allow")
    group = site.services.groups.groups()[0]
    for path, data, message in [
        (f"/endpoints/{box}/roles", {"kind": "user", "name": "nobody", "role": "user"}, "No user named 'nobody'."),
        (f"/endpoints/{box}/roles", {"kind": "group", "name": "ghosts", "role": "user"}, "No group named 'ghosts'."),
        (f"/endpoints/{box}/roles", {"kind": "user", "name": "alice", "role": "emperor"},
         "Unknown role: choose one of viewer, user, supervisor, owner."),
        (f"/endpoints/{box}/roles", {"kind": "user", "name": " ", "role": "user"}, "Give a user name."),
        (f"/endpoints/{box}/roles", {"kind": "robot", "name": "alice", "role": "user"}, "Choose a user or a group."),
        (f"/endpoints/{box}/roles/remove", {"kind": "user", "name": "alice"}, "alice had no role here."),
        (f"/endpoints/{box}/profiles", {"kind": "user", "name": "alice", "profile": "no-such-id"},
         "No such profile."),
        (f"/endpoints/{box}/profiles", {"kind": "user", "name": "nobody", "profile": site.profile_id("Ops")},
         "No user named 'nobody'."),
        (f"/endpoints/{box}/approvers", {"kind": "user", "name": "nobody"}, "No user named 'nobody'."),
        (f"/endpoints/{box}/approvers/remove", {"kind": "user", "name": "alice"},
         "alice was not an approver of box."),
        ("/groups", {"name": "operators"}, "Group not created: a group named 'operators' already exists."),
        ("/groups", {"name": "  "}, "Group not created: a group name is 1 to 128 characters."),
        (f"/groups/{group.id}/members", {"user": "nobody"}, "No user named 'nobody'."),
        (f"/groups/{group.id}/members", {"user": ""}, "Give a user name."),
    ]:
        assert site.post(path, **data) == message, (path, data)
    for data, message in [
        ({"name": "Ops", "web_session": "allow"}, "a profile named &#39;Ops&#39; already exists"),
        ({"name": "", "web_session": "allow"}, "a profile name is 1 to 128 characters"),
        ({"name": "Odd", "web_session": "sometimes"}, "web session is deny, allow or record"),
    ]:
        answer = site.admin.post("/profiles", data=data)
        assert answer.status_code == 400 and message in answer.text, data
    answer = site.admin.post(f"/profiles/{site.profile_id('Ops')}/edit", data={"name": "", "web_session": "allow"})
    assert answer.status_code == 400 and "a profile name is 1 to 128 characters" in answer.text
    for path in (f"/endpoints/no-such/roles", "/groups/no-such/members", "/profiles/no-such/delete"):
        assert site.admin.post(path, data={"kind": "user", "name": "alice", "role": "user"}).status_code == 404
    assert site.services.grants.roles_on(box) == [] and site.services.approvers.approvers_on(box) == []
    assert [p.name for p in site.services.profiles.profiles()] == ["Ops"]
    for kind in ("role_set", "role_removed", "profile_assigned", "approver_added", "approver_removed",
                 "group_member_added", "profile_updated"):
        assert site.audited(kind) == [], kind

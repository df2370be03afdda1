"""The administrators' endpoint pages, driven in Chromium through the live gateway."""

from __future__ import annotations

import base64

import httpx
import pytest
import sqlalchemy as sa

from dashboard.repositories.tables import endpoints as t_endpoints

PASSWORD = "admin-password-1"
SECRET = "s3cr3t-endpoint-password"
NEW_SECRET = "an0ther-endpoint-password"
KEY_A = "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + b"A" * 36).decode()
KEY_B = "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + b"B" * 36).decode()


class Pages:
    """Every HTML page the browser received, to check that no secret was ever in one."""

    def __init__(self, page):
        self.bodies: list[str] = []
        page.on("response", self._seen)

    def _seen(self, response):
        if "text/html" in response.headers.get("content-type", ""):
            self.bodies.append(response.text())

    def assert_never_contains(self, *needles):
        assert self.bodies, "no page seen"
        for needle in needles:
            assert not any(needle in body for body in self.bodies), f"{needle!r} appeared in a page"


def stored_blob(gateway, name):
    with gateway.services.db.connect() as db:
        return db.execute(sa.select(t_endpoints.c.secret).where(t_endpoints.c.name == name)).scalar_one()


@pytest.mark.browser
def test_create_edit_toggle_remove(live_gateway, page):
    live_gateway.create_user("root", PASSWORD, admin=True)
    live_gateway.create_user("alice", "alice-password")
    pages = Pages(page)
    live_gateway.login(page, "root", PASSWORD)

    # create
    page.get_by_role("link", name="Endpoints").click()
    page.get_by_role("link", name="Add endpoint").click()
    page.fill("input[name=name]", "router-1")
    page.select_option("select[name=protocol]", "ssh")
    page.fill("input[name=host]", "10.1.2.3")
    page.fill("input[name=port]", "2222")
    page.fill("input[name=username]", "ops")
    page.fill("input[name=password]", SECRET)
    page.get_by_role("button", name="Add endpoint").click()
    page.wait_for_url("**/endpoints")
    row = page.locator("tr[data-endpoint='router-1']")
    assert "10.1.2.3:2222" in row.inner_text()
    assert "password stored" in row.inner_text()
    assert row.get_by_test_id("joint-toggle").inner_text() == "On"
    record = live_gateway.services.endpoints.get_by_name("router-1")
    assert (record.host, record.port, record.username, record.joint_session) == ("10.1.2.3", 2222, "ops", True)
    blob = stored_blob(live_gateway, "router-1")
    assert SECRET.encode() not in blob
    assert live_gateway.services.endpoints.stored_credentials(record.id).password == SECRET

    # toggle Joint Session off, and on again
    row.get_by_test_id("joint-toggle").click()
    page.wait_for_url("**/endpoints")
    assert page.locator("tr[data-endpoint='router-1']").get_by_test_id("joint-toggle").inner_text() == "Off"
    assert live_gateway.services.endpoints.get(record.id).joint_session is False
    page.locator("tr[data-endpoint='router-1']").get_by_test_id("joint-toggle").click()
    page.wait_for_url("**/endpoints")
    assert live_gateway.services.endpoints.get(record.id).joint_session is True

    # edit: the password field is empty (write-only); leaving it empty keeps the credential
    page.locator("tr[data-endpoint='router-1']").get_by_role("link", name="Edit").click()
    assert page.input_value("input[name=password]") == ""
    assert page.input_value("input[name=username]") == "ops"
    page.fill("input[name=name]", "router-one")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url("**/endpoints")
    assert page.locator("tr[data-endpoint='router-one']").count() == 1
    assert live_gateway.services.endpoints.stored_credentials(record.id).password == SECRET

    # edit: a new password replaces it; give alice a role (the access card: test_access_admin*.py)
    page.locator("tr[data-endpoint='router-one']").get_by_role("link", name="Edit").click()
    page.fill("input[name=password]", NEW_SECRET)
    page.get_by_role("button", name="Save").click()
    page.wait_for_url("**/endpoints")
    assert live_gateway.services.endpoints.stored_credentials(record.id).password == NEW_SECRET
    assert NEW_SECRET.encode() not in stored_blob(live_gateway, "router-one")
    page.locator("tr[data-endpoint='router-one']").get_by_role("link", name="Edit").click()
    role_form = page.get_by_test_id("role-form")
    role_form.locator("input[name=name]").fill("alice")
    role_form.locator("select[name=role]").select_option("viewer")
    role_form.get_by_role("button", name="Set role").click()
    page.wait_for_url("**/edit")
    assert "alice is now viewer on router-one." in page.locator(".flash").inner_text()
    assert page.get_by_test_id("roles").locator("tr[data-principal='alice'] select").input_value() == "viewer"
    alice = live_gateway.services.users.get_by_name("alice")
    assert live_gateway.services.access.may_join(alice, record.id)

    # remove (through a confirmation page)
    page.goto(live_gateway.url("/endpoints"))
    page.locator("tr[data-endpoint='router-one']").get_by_role("link", name="Remove").click()
    page.get_by_role("button", name="Remove router-one").click()
    page.wait_for_url("**/endpoints")
    assert page.get_by_test_id("no-endpoints").is_visible()
    assert live_gateway.services.endpoints.get(record.id) is None

    pages.assert_never_contains(SECRET, NEW_SECRET)


@pytest.mark.browser
def test_invalid_form_is_shown_again_without_the_secret(live_gateway, page):
    live_gateway.create_user("root", PASSWORD, admin=True)
    pages = Pages(page)
    live_gateway.login(page, "root", PASSWORD)
    page.goto(live_gateway.url("/endpoints/new"))
    page.fill("input[name=name]", "box")
    page.fill("input[name=host]", "h")
    page.fill("input[name=port]", "99999")
    page.fill("input[name=password]", SECRET)
    page.get_by_role("button", name="Add endpoint").click()
    assert "between 1 and 65535" in page.locator(".error").inner_text()
    assert page.input_value("input[name=name]") == "box"
    assert page.input_value("input[name=password]") == ""
    pages.assert_never_contains(SECRET)


@pytest.mark.browser
def test_accept_a_changed_host_key(live_gateway, page):
    live_gateway.create_user("root", PASSWORD, admin=True)
    record = live_gateway.create_endpoint("box", host_key=KEY_A)
    live_gateway.services.endpoints.note_changed_host_key(record.id, KEY_B)
    live_gateway.login(page, "root", PASSWORD)
    page.goto(live_gateway.url("/endpoints"))
    row = page.locator("tr[data-endpoint='box']")
    assert record.host_key_fingerprint.split()[1] in row.inner_text()
    warning = row.get_by_test_id("pending-host-key")
    new_fp = live_gateway.services.endpoints.get(record.id).pending_host_key_fingerprint
    assert new_fp.split()[1] in warning.inner_text()
    warning.get_by_role("button", name="Accept new host key").click()
    page.wait_for_url("**/endpoints")
    assert page.get_by_test_id("pending-host-key").count() == 0
    assert live_gateway.services.endpoints.get(record.id).host_key == KEY_B


def test_endpoint_pages_are_for_administrators(live_gateway):
    live_gateway.create_user("alice", "alice-password")
    record = live_gateway.create_endpoint("box", password=SECRET)
    with httpx.Client(base_url=live_gateway.base_url) as anonymous:
        for path in ("/endpoints", "/endpoints/new", f"/endpoints/{record.id}/edit"):
            answer = anonymous.get(path)
            assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")
    user = live_gateway.api_session("alice", "alice-password")
    for path in ("/endpoints", "/endpoints/new", f"/endpoints/{record.id}/edit", f"/endpoints/{record.id}/delete"):
        assert user.get(path).status_code == 403
    for path in ("/endpoints", f"/endpoints/{record.id}/joint-session", f"/endpoints/{record.id}/delete"):
        assert user.post(path, data={"enabled": "off"}).status_code == 403
    assert live_gateway.services.endpoints.get(record.id).joint_session is True


def test_admin_changes_are_audited_without_secrets(live_gateway):
    import json

    live_gateway.create_user("root", PASSWORD, admin=True)
    api = live_gateway.api_session("root", PASSWORD)
    answer = api.post("/endpoints", data={"name": "box", "protocol": "ssh", "host": "h", "port": "",
                                          "username": "u", "password": SECRET, "joint_session": "on"})
    assert answer.status_code == 303
    record = live_gateway.services.endpoints.get_by_name("box")
    assert record.port == 22
    api.post(f"/endpoints/{record.id}/joint-session", data={"enabled": "off"})
    api.post(f"/endpoints/{record.id}/delete")
    live_gateway.engine.flush_audit()
    with live_gateway.services.db.connect() as db:
        rows = db.execute(sa.text("select kind, actor_name, detail from audit_events order by id")).all()
    kinds = [kind for kind, _, _ in rows]
    assert ["endpoint_created", "joint_session_changed", "endpoint_deleted"] == \
        [k for k in kinds if k.startswith(("endpoint_", "joint_"))]
    assert all(actor == "root" for kind, actor, _ in rows if kind != "login")
    assert SECRET not in json.dumps([list(r) for r in rows])


def test_home_lists_accessible_endpoints(live_gateway):
    live_gateway.create_user("alice", "alice-password")
    mine = live_gateway.create_endpoint("mine")
    live_gateway.create_endpoint("not-mine")
    live_gateway.grant(mine, "alice")
    page = live_gateway.api_session("alice", "alice-password").get("/").text
    assert "mine" in page and "not-mine" not in page
    assert "No live sessions right now" in page


def test_home_lists_live_sessions(live_gateway):
    root = live_gateway.create_user("root", PASSWORD, admin=True)
    alice = live_gateway.create_user("alice", "alice-password")
    record = live_gateway.create_endpoint("synthetic-box", protocol="synthetic", host="")
    live_gateway.grant(record, alice)
    controller = live_gateway.engine.open_session(record.spec, root)
    viewer = live_gateway.engine.join_session(controller.session_id, alice)
    assert viewer.role.value == "viewer"
    html = live_gateway.api_session("alice", "alice-password").get("/").text
    assert f'data-session-id="{controller.session_id}"' in html
    assert "synthetic-box" in html and "1: alice" in html
    controller.leave()

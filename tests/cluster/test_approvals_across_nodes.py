"""An approval's changes reach every node (docs/cluster.md, "A session across nodes"): two real
`cosession serve` nodes on one PostgreSQL database and one NATS server, alice's SSH sessions
under one approved request for access, one on each node. Her extension, asked on the node that
does not run the session, and approved there, moves the deadline of both sessions (each told to
its controller); a new request of hers, filed on B, changes what Send Password offers on the
page of her session on A. The nodes sign in to NATS with a token (`[engine] bus_token`)."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import httpx
import pytest
import trio

from cosession.join import origin_of
from dashboard.repositories import Repositories
from dashboard.security.secrets import Secrets
from engine.messages import EndpointProtocol
from tests.cluster.test_three_nodes import CREDENTIAL_KEY, SECRET_KEY, _audit_rows, _node, _open, _sign_in
from tests.fixtures.gateway import PASSWORD
from tests.fixtures.nats import TOKEN

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.openssh]


def _populate(postgres_url: str, openssh: Any) -> tuple[str, str, float]:
    """vault (an SSH endpoint that requires approval; carol approves), alice's approved request
    for an hour from now. The endpoint's id, the request's id and its end."""
    repositories = Repositories.open(postgres_url, Secrets(SECRET_KEY, CREDENTIAL_KEY))
    try:
        endpoint = repositories.endpoints.create(
            "vault", EndpointProtocol.SSH, openssh.host, openssh.port, username=openssh.username,
            password=openssh.password, joint_session=True, host_key=openssh.host_key)
        alice = repositories.users.create("alice", PASSWORD)
        carol = repositories.users.create("carol", PASSWORD)
        repositories.grants.grant(endpoint.id, alice.id)
        repositories.approvers.set_requires_approval(endpoint.id, True)
        principal = repositories.grants.principal("user", "carol")
        assert principal is not None and repositories.approvers.add_approver(endpoint.id, principal)
        now = time.time()
        request = repositories.approvals.create_request(alice, endpoint.id, now - 60, now + 3600, "patch it", now)
        approved = repositories.approvals.decide(request.id, carol, True, now)
        return endpoint.id, approved.id, approved.window_end
    finally:
        repositories.close()


def _post(base_url: str, name: str, path: str, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=base_url, headers={"Origin": origin_of(base_url), "Accept": "application/json"}) as client:
        token = client.post("/api/login", json={"name": name, "password": PASSWORD}).json()["csrf_token"]
        return client.post(path, json=body, headers={"x-csrf-token": token})


async def test_an_extension_and_a_request_reach_every_node(tmp_path, postgres_url, nats_server_with_token, openssh):
    nats_server = nats_server_with_token  # the nodes sign in to the bus with [engine] bus_token
    a = _node(tmp_path, "a", postgres_url, nats_server.url, bus_token=TOKEN)
    nodes = [a]
    try:
        a.passwords()
        endpoint_id, request_id, end = await trio.to_thread.run_sync(_populate, postgres_url, openssh)
        b = await trio.to_thread.run_sync(_node, tmp_path, "b", postgres_url, nats_server.url, TOKEN)
        nodes.append(b)
        await _sign_in(nodes, ["alice", "carol"])
        async with trio.open_nursery() as nursery:
            sessions, controllers = [], []
            for node in (a, b):  # one session under the approval on each node
                controller = await _open(nursery, node, "alice", f"/ws/endpoints/{endpoint_id}/start")
                await controller.send({"type": "start", "cols": 100, "rows": 30})
                joined = await controller.control("joined")
                assert joined["deadline"] == pytest.approx(end), joined
                sessions.append(joined["session_id"])
                controllers.append(controller)
            on_a, on_b = sessions
            for controller in controllers:
                await controller.control("state", state="active")

            # asked on B, for the session that A runs (B learns its approval from A) ...
            with trio.fail_after(10):  # a bound on B hearing of A's session (announced every second)
                while (asked := await trio.to_thread.run_sync(
                        _post, b.url, "alice", f"/sessions/{on_a}/extension",
                        {"minutes": 30, "reason": "the migration runs late"})).status_code == 404:
                    await trio.sleep(0.1)
            assert asked.status_code == 201, asked.text
            extension = asked.json()["extension"]
            assert extension["until"] == pytest.approx(end + 1800)

            # ... approved on B: both sessions' deadlines move, A's through the bus
            decided = await trio.to_thread.run_sync(_post, b.url, "carol", f"/extensions/{extension['id']}/decide",
                                                    {"decision": "approve"})
            assert decided.status_code == 200, decided.text
            assert sorted(decided.json()["sessions"]) == sorted(sessions)
            for controller in controllers:
                state = await controller.control("state")
                assert state["deadline"] == pytest.approx(end + 1800), state

            # a new request of alice's, filed on B: her page on A is told what Send Password offers now
            filed = await trio.to_thread.run_sync(_post, b.url, "alice", "/access-requests", {
                "endpoint": endpoint_id, "window_start": "", "duration": "60", "reason": "and tomorrow"})
            assert filed.status_code in (200, 201), filed.text
            for controller in controllers:
                await controller.control("password_state")

            for controller in controllers:
                with trio.move_on_after(5):
                    await controller.ws.aclose()
            nursery.cancel_scope.cancel()

        extends = await trio.to_thread.run_sync(_audit_rows, postgres_url, "extend")
        assert sorted(r.session_id for r in extends) == sorted(sessions)
        [approved] = await trio.to_thread.run_sync(_audit_rows, postgres_url, "extension_approved")
        assert sorted(json.loads(approved.detail)["sessions"]) == sorted(sessions)
        assert request_id == extension["request_id"]
    finally:
        for node in reversed(nodes):
            code, out, err = node.stop(signal.SIGTERM)
            assert code == 0 and "Traceback" not in err, err
            assert TOKEN not in out + err

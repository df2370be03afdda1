"""The live gateway on PostgreSQL: a joint SSH session against a real OpenSSH server, with every
durable thing (users, endpoints, grants, the audit log, the node) in the throwaway cluster;
and what an unreachable PostgreSQL does to a running gateway: no new session starts (a clear
refusal), the running session goes on, and no audit row is lost."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
import trio
from trio_websocket import ConnectionRejected

from cosession.join import open_socket
from engine.audit import verify
from engine.db import nodes, sessions
from engine.messages import Accepted, EndpointProtocol
from tests.fixtures.websockets import Harness

pytestmark = [pytest.mark.postgres, pytest.mark.openssh]


def _leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for inner in group.exceptions for leaf in _leaves(inner)]
    return [group]


@pytest.fixture
def gateway_overrides(postgres_url):
    return {"engine": {"database_url": postgres_url, "node_id": "node-a"}}


async def _ssh_session_with_viewer(h: Harness, openssh):
    h.user("alice", grant=False)
    h.user("bob", grant=False)
    endpoint = h.gateway.create_endpoint("box", EndpointProtocol.SSH, openssh.host, openssh.port,
                                         username=openssh.username, password=openssh.password,
                                         host_key=openssh.host_key)
    h.gateway.grant(endpoint, "alice")
    h.gateway.grant(endpoint, "bob")
    controller = await h.open("alice", f"/ws/endpoints/{endpoint.id}/start")
    await controller.send({"type": "start", "cols": 100, "rows": 30})
    sid = (await controller.control("joined"))["session_id"]
    await controller.control("state", state="active")
    viewer, answer = await h.join("bob", sid)
    assert answer["type"] == "joined" and answer["role"] == "viewer", answer
    return controller, viewer, sid


async def test_a_joint_ssh_session_on_postgresql(harness, openssh, postgres_url):
    h = harness
    controller, viewer, sid = await _ssh_session_with_viewer(h, openssh)
    await controller.send(b"echo on-postgres-$((40+2))\r")
    await controller.output_contains(b"on-postgres-42")
    await viewer.output_contains(b"on-postgres-42")
    await viewer.send(b"touch /tmp/never\r")
    await viewer.control("refused", reason="not_controller", of="input")
    root = h.gateway.create_user("root", "root-password", admin=True)
    answer = await trio.to_thread.run_sync(h.gateway.engine.terminate, sid, root)
    assert isinstance(answer, Accepted), answer
    for client in (controller, viewer):
        ended = await client.control("ended")
        assert ended["reason"] == "terminated"
    assert [r["actor_name"] for r in await h.audit("input_refused")] == ["bob"]
    assert [r["session_id"] for r in await h.audit("terminate")] == [sid]
    db = sa.create_engine(postgres_url)
    try:
        with db.connect() as conn:
            row = conn.execute(sa.select(sessions).where(sessions.c.id == sid)).one()
            node = conn.execute(sa.select(nodes)).one()
    finally:
        db.dispose()
    assert (row.end_reason, row.node_id) == ("terminated", "node-a")
    assert node.node_id == "node-a" and node.stopped_at is None
    report = await trio.to_thread.run_sync(verify, postgres_url)
    assert report.ok and report.rows > 0, report.problem


async def test_an_unreachable_database_refuses_new_starts_and_loses_no_audit_row(harness, openssh, postgres,
                                                                                 postgres_url):
    h = harness
    controller, viewer, sid = await _ssh_session_with_viewer(h, openssh)
    carol = h.user("carol", grant=False)
    await h.cookie(carol)  # signed in before the outage
    await trio.to_thread.run_sync(postgres.stop)
    try:
        # the running session goes on: its endpoint connection and actors need no database
        await controller.send(b"echo still-$((6*7))\r")
        await viewer.output_contains(b"still-42")
        await viewer.send(b"echo nope\r")  # refused: an audit row the store must hold
        await viewer.control("refused", reason="not_controller", of="input")
        # a new start (or join) is refused before its handshake, with the reason
        cookie = await h.cookie(carol)
        with pytest.raises(BaseExceptionGroup) as refused:
            async with open_socket(h.gateway.base_url, f"/ws/sessions/{sid}", cookie):
                pass
        assert refused.group_contains(ConnectionRejected, match="503")
        rejected = next(e for e in _leaves(refused.value) if isinstance(e, ConnectionRejected))
        assert b"The database is unreachable" in rejected.body
        # pages and the API say so too, rather than failing with an internal error
        async with httpx.AsyncClient(base_url=h.gateway.base_url, headers={"Cookie": cookie}) as client:
            page, api = await client.get("/"), await client.get("/api/sessions")
        assert page.status_code == 503 and "The database is unreachable" in page.text
        assert api.status_code == 503 and api.json()["error"] == "database_unavailable"
    finally:
        await trio.to_thread.run_sync(postgres.start)
    # the rows written meanwhile reach the database once it is back (Flush waits for them)
    refusals = await h.audit("websocket_refused")
    assert [r["detail"]["reason"] for r in refusals] == ["database_unavailable"]
    assert [r["actor_name"] for r in await h.audit("input_refused")] == ["bob"]
    report = await trio.to_thread.run_sync(verify, postgres_url)
    assert report.ok, report.problem

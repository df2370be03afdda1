"""The API's actions as the participants of a live session see them, through the websocket
gateway: an administrator's terminate reaches every open session window, and turning joint
sessions off refuses the next join with its reason."""

from __future__ import annotations

from typing import Any

import trio
from tests.fixtures.gateway import PASSWORD
from tests.fixtures.websockets import session_with_viewer


async def call(client: Any, method: str, path: str, **kwargs: Any) -> Any:
    """An httpx call from a worker thread, so that the test's websockets keep reading."""
    return await trio.to_thread.run_sync(lambda: client.request(method, path, **kwargs))


async def test_terminate_through_the_api_ends_every_window_with_the_administrators_name(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    harness.user("root", admin=True)
    bob = harness.gateway.api_session("bob", PASSWORD)
    refused = await call(bob, "POST", f"/api/sessions/{sid}/terminate")
    assert refused.status_code == 403
    harness.connection(sid).emit(b"still on\r\n")
    await viewer.output_contains(b"still on")

    root = harness.gateway.api_session("root", PASSWORD)
    answer = await call(root, "POST", f"/api/sessions/{sid}/terminate")
    assert answer.status_code == 200, answer.text
    for client in (controller, viewer):
        ended = await client.control("ended")
        assert ended["reason"] == "terminated" and ended["by"]["name"] == "root"
        await client.until_closed()
    assert harness.gateway.engine.session(sid) is None
    terminates = await harness.audit("terminate")
    assert [(r["actor_name"], r["session_id"]) for r in terminates] == [("root", sid)]
    # access rights unchanged: alice starts again
    again, joined = await harness.start("alice")
    assert joined["session_id"] != sid


async def test_joint_session_off_through_the_api_refuses_the_next_join(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    harness.user("root", admin=True)
    harness.user("carol")
    root = harness.gateway.api_session("root", PASSWORD)
    endpoint = harness.endpoint.id
    answer = await call(root, "POST", f"/api/endpoints/{endpoint}/joint-session", json={"enabled": False})
    assert answer.status_code == 200 and answer.json()["endpoint"]["joint_session"] is False
    client, refusal = await harness.join("carol", sid)
    assert refusal["type"] == "refused" and refusal["reason"] == "joint_session_disabled", refusal
    # those already in stay in
    harness.connection(sid).emit(b"viewers stay\r\n")
    await viewer.output_contains(b"viewers stay")
    changes = await harness.audit("joint_session_changed")
    assert [(r["actor_name"], r["detail"]["enabled"], r["detail"]["via"]) for r in changes] == [("root", False, "api")]

    answer = await call(root, "POST", f"/api/endpoints/{endpoint}/joint-session", json={"enabled": True})
    assert answer.json()["endpoint"]["joint_session"] is True
    client, joined = await harness.join("carol", sid)
    assert joined["type"] == "joined" and joined["role"] == "viewer"

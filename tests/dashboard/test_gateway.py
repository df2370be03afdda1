"""The websocket gateway against the real application on Hypercorn's trio worker, with
synthetic endpoints: joining, the role checks, refusals and their audit, coalescing, slow viewers.
The clients (``harness``) are tests/fixtures/websockets.py.

The gateway runs in its own thread and trio loop (``live_gateway``); these tests are trio tests
with trio-websocket clients, exactly as `cosession join` talks to a gateway.
"""

from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import HandshakeError

from cosession.join import open_socket
from tests.fixtures.websockets import DEADLINE, session_with_viewer


# --- joining and output ---------------------------------------------------------------------------


async def test_controller_and_viewer_see_the_endpoint_output_as_binary(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    await controller.control("state", state="active")
    harness.connection(sid).emit(b"hello \xff\xfe binary-safe\r\n")
    await controller.output_contains(b"hello \xff\xfe binary-safe")
    await viewer.output_contains(b"hello \xff\xfe binary-safe")
    # the viewer's first delivery was the keyframe, announced by a reset
    assert viewer.controls[0]["type"] == "joined"
    assert viewer.controls[1]["type"] == "reset"
    await controller.control("participant_joined")


async def test_the_joined_message_describes_the_session(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    joined = viewer.controls[0]
    assert joined["role"] == "viewer" and joined["controller"]["name"] == "alice"
    assert joined["max_viewers"] == 3 and joined["endpoint"]["name"] == "synth"
    assert [m["role"] for m in joined["members"]] == ["controller", "viewer"]
    assert f"/sessions/{sid}?share=" in joined["share_url"]


async def test_controller_input_reaches_the_endpoint_and_its_echo_everyone(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    await controller.send(b"echo me\r")
    await viewer.output_contains(b"echo me")
    assert harness.connection(sid).inputs_received == 1


async def test_viewer_follows_the_controllers_terminal_size(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    for cols, rows in ((132, 40), (80, 24)):  # back to the start's size too
        await controller.send({"type": "resize", "cols": cols, "rows": rows})
        await viewer.control("size", cols=cols, rows=rows)
        # the PTY follows (the synthetic endpoint records its size)
        await controller.send({"type": "ping", "id": cols})
        await controller.control("pong", id=cols)
        with trio.fail_after(DEADLINE):
            while harness.connection(sid).size != (cols, rows):
                await trio.sleep(0.01)  # a poll interval: the resize crosses two actors
    # a viewer's resize never changes it
    await viewer.send({"type": "resize", "cols": 20, "rows": 5})
    await viewer.control("refused", reason="not_controller")
    assert harness.connection(sid).size == (80, 24)


async def test_a_viewer_can_join_after_a_private_sgr(harness):
    harness.user("alice")
    harness.user("bob")
    controller, joined = await harness.start("alice")
    await controller.control("state", state="active")  # the endpoint is open: its output counts
    harness.connection(joined["session_id"]).emit(b"\x1b[?4mvim was here\r\n")
    await controller.output_contains(b"vim was here")
    viewer, answer = await harness.join("bob", joined["session_id"])
    assert answer["type"] == "joined"
    await viewer.control("reset", deadline=3)
    await viewer.output_contains(b"vim was here", deadline=3)


# --- refusals -------------------------------------------------------------------------------------

OVERSIZED = 65536 + 1

CASES = [
    # (who sends, message, reason, audit kind)
    ("viewer", b"touch /tmp/pwned\r", "not_controller", "input_refused"),
    ("viewer", {"type": "resize", "cols": 10, "rows": 5}, "not_controller", "message_refused"),
    ("viewer", {"type": "stream", "rate": 100}, "not_controller", "message_refused"),
    ("viewer", {"type": "leave", "participant_id": "CONTROLLER"}, "malformed", "message_refused"),
    ("controller", {"type": "eject"}, "malformed", "message_refused"),
    ("controller", {"type": "eject", "participant_id": "VIEWER", "by": "CONTROLLER"}, "malformed", "message_refused"),
    ("controller", {"type": "resize", "cols": 100, "rows": 30, "participant_id": "VIEWER"}, "malformed",
     "message_refused"),
    ("controller", "{not json", "malformed", "message_refused"),
    ("controller", "[1, 2, 3]", "malformed", "message_refused"),
    ("controller", {"type": 7}, "malformed", "message_refused"),
    ("controller", {"kind": "resize"}, "malformed", "message_refused"),
    ("controller", {"type": "format_disk"}, "unknown_message", "message_refused"),
    ("controller", {"type": "resize", "cols": 0, "rows": 24}, "malformed", "message_refused"),
    ("controller", {"type": "resize", "cols": "80", "rows": 24}, "malformed", "message_refused"),
    ("controller", {"type": "resize", "cols": True, "rows": 24}, "malformed", "message_refused"),
    ("controller", {"type": "start", "cols": 80, "rows": 24}, "unexpected_message", "message_refused"),
    ("controller", "[" * 50_000, "malformed", "message_refused"),
    ("controller", "x" * OVERSIZED, "too_large", "message_refused"),
    ("controller", b"y" * OVERSIZED, "too_large", "message_refused"),
    ("viewer", json.dumps({"type": "resize", "cols": 1, "rows": 1, "pad": "z" * OVERSIZED}), "too_large",
     "message_refused"),
]


@pytest.mark.parametrize("who, message, reason, kind", CASES,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)])
async def test_a_refused_message_is_answered_audited_and_the_session_goes_on(harness, who, message, reason, kind):
    controller, viewer, sid = await session_with_viewer(harness)
    sender = controller if who == "controller" else viewer
    if isinstance(message, dict):
        message = {k: ({"CONTROLLER": controller.controls[0]["participant_id"],
                        "VIEWER": viewer.controls[0]["participant_id"]}.get(v, v) if isinstance(v, str) else v)
                   for k, v in message.items()}
    await sender.send(message)
    refusal = await sender.control("refused")
    assert refusal["reason"] == reason and not refusal.get("fatal")
    # the session goes on: the endpoint still reaches both, the controller still types
    harness.connection(sid).emit(b"still alive\r\n")
    await controller.output_contains(b"still alive")
    await viewer.output_contains(b"still alive")
    await controller.send(b"typed")
    await viewer.output_contains(b"typed")
    assert harness.connection(sid).inputs_received == 1  # only the controller's
    rows = await harness.audit(kind)
    assert any(r["detail"].get("reason") == reason and r["session_id"] == sid for r in rows), rows
    row = next(r for r in rows if r["detail"].get("reason") == reason)
    assert row["actor_name"] == ("alice" if who == "controller" else "bob")
    assert row["detail"]["role"] == who
    # the audit row never holds what was sent
    assert "pwned" not in json.dumps(rows) and "format_disk" not in json.dumps(rows)


async def test_viewer_input_is_refused_and_never_reaches_the_endpoint(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    for _ in range(5):
        await viewer.send(b"rm -rf /\r")
    for _ in range(5):
        await viewer.control("refused", reason="not_controller", of="input")
    assert harness.connection(sid).inputs_received == 0
    rows = await harness.audit("input_refused")
    # every refusal counted: the first in its own row, the four repeats in one (docs/audit.md)
    assert sum(r["detail"].get("count", 1) for r in rows) == 5
    assert [r["detail"].get("count") for r in rows] == [None, 4]


async def test_request_for_control_is_refused_by_the_engine(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    await viewer.send({"type": "request_control"})
    refusal = await viewer.control("refused", of="request_control")
    assert refusal["reason"] == "control_not_transferable"
    assert await harness.audit("transfer_refused")


@pytest.mark.parametrize("target, reason", [("CONTROLLER", "not_permitted"), ("VIEWER", "not_permitted"),
                                            ("nobody-1", "not_a_participant")])
async def test_a_viewer_cannot_eject_anyone(harness, target, reason):
    controller, viewer, sid = await session_with_viewer(harness)
    pid = {"CONTROLLER": controller.controls[0]["participant_id"],
           "VIEWER": viewer.controls[0]["participant_id"]}.get(target, target)
    await viewer.send({"type": "eject", "participant_id": pid, "reason": "mine now"})
    refusal = await viewer.control("refused", of="eject")
    assert refusal["reason"] == reason
    rows = await harness.audit("eject_refused")
    assert rows and rows[-1]["actor_name"] == "bob"
    harness.connection(sid).emit(b"both still here\r\n")
    await controller.output_contains(b"both still here")
    await viewer.output_contains(b"both still here")


async def test_the_controller_ejects_a_viewer_through_the_gateway(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    await controller.send({"type": "eject", "participant_id": viewer.controls[0]["participant_id"],
                           "reason": "wrong ticket"})
    ejected = await viewer.control("ejected")
    assert ejected["by"]["name"] == "alice" and ejected["reason"] == "wrong ticket"
    left = await controller.control("participant_left", reason="ejected")
    assert left["by"]["name"] == "alice"
    assert (await harness.audit("eject"))[-1]["actor_name"] == "alice"


async def test_too_many_refusals_close_the_connection_not_the_session(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    for _ in range(101):
        await viewer.send("{")
    await viewer.until_closed()
    await controller.control("participant_left")
    harness.connection(sid).emit(b"after the flood\r\n")
    await controller.output_contains(b"after the flood")


# --- who may open a websocket ---------------------------------------------------------------------


async def test_another_sites_origin_is_refused_at_the_handshake(harness):
    harness.user("alice")
    cookie = await harness.cookie("alice")
    with pytest.raises(BaseExceptionGroup) as refused:
        async with open_socket(harness.gateway.base_url, f"/ws/endpoints/{harness.endpoint.id}/start", cookie,
                               origin="http://evil.example"):
            pass
    assert refused.group_contains(HandshakeError, match="403")
    assert any(r["detail"]["reason"] == "bad_origin" for r in await harness.audit("websocket_refused"))


async def test_a_signed_out_client_is_refused_at_the_handshake(harness):
    """Refused before the websocket is accepted: an anonymous client never has an open websocket."""
    with pytest.raises(BaseExceptionGroup) as refused:
        async with open_socket(harness.gateway.base_url, f"/ws/endpoints/{harness.endpoint.id}/start", None):
            pass
    assert refused.group_contains(HandshakeError, match="403")
    assert any(r["detail"]["reason"] == "not_signed_in" for r in await harness.audit("websocket_refused"))


async def test_starting_without_access_is_refused(harness):
    harness.user("mallory", grant=False)
    client = await harness.open("mallory", f"/ws/endpoints/{harness.endpoint.id}/start")
    await client.send({"type": "start", "cols": 80, "rows": 24})
    refusal = await client.control("refused")
    assert refusal["reason"] == "no_access" and refusal["fatal"]


async def test_joining_without_access_is_refused_by_the_engine(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    harness.user("mallory", grant=False)
    client, answer = await harness.join("mallory", sid)
    assert answer["type"] == "refused" and answer["reason"] == "no_access" and answer["fatal"]
    rows = await harness.audit("join_refused")
    assert rows and rows[-1]["actor_name"] == "mallory"


async def test_a_forged_share_token_is_refused(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    token = controller.controls[0]["share_url"].split("share=")[1]
    harness.user("carol")
    for forged in (token[:-2] + ("AA" if not token.endswith("AA") else "BB"), "garbage", token + "x"):
        client, answer = await harness.join("carol", sid, share=forged)
        assert answer["reason"] == "invalid_share_link", answer
    client, answer = await harness.join("carol", sid, share=token)
    assert answer["type"] == "joined"


async def test_joining_an_ended_session_is_refused(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    await controller.send({"type": "leave"})
    ended = await viewer.control("ended")
    assert ended["reason"] == "controller_left" and ended["by"]["name"] == "alice"
    await viewer.until_closed()
    harness.user("carol")
    client, answer = await harness.join("carol", sid)
    assert answer["reason"] == "session_ended"


async def test_first_message_must_be_the_right_one(harness):
    harness.user("alice")
    client = await harness.open("alice", f"/ws/endpoints/{harness.endpoint.id}/start")
    await client.send({"type": "join"})
    assert (await client.control("refused"))["reason"] == "unexpected_message"
    await client.send(b"early input")
    assert (await client.control("refused"))["reason"] == "unexpected_message"
    await client.send({"type": "start", "cols": 80, "rows": 24})
    assert (await client.control("joined"))["role"] == "controller"


# --- viewers, the cap, leaving and coming back ----------------------------------------------------


@pytest.fixture
def gateway_overrides():
    return {"engine": {"max_viewers": 3}}


async def test_the_viewer_past_the_cap_is_refused_and_nothing_else_changes(harness):
    controller, first, sid = await session_with_viewer(harness)
    for name in ("v2", "v3"):
        harness.user(name)
        _, answer = await harness.join(name, sid)
        assert answer["type"] == "joined"
    harness.user("v4")
    client, answer = await harness.join("v4", sid)
    assert answer["type"] == "refused" and answer["reason"] == "viewer_cap" and answer["fatal"]
    assert "3 viewers" in answer["detail"]
    await client.until_closed()
    harness.connection(sid).emit(b"unchanged\r\n")
    await first.output_contains(b"unchanged")


async def test_a_viewer_who_leaves_is_seen_to_leave(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    await viewer.send({"type": "leave"})
    left = await controller.control("participant_left")
    assert left["member"]["user"]["name"] == "bob" and left["reason"] == "left"
    await viewer.until_closed()


async def test_the_controller_comes_back_within_the_grace_period(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    await controller.ws.aclose()
    await viewer.control("state", state="disconnected")
    back, answer = await harness.join("alice", sid)
    assert answer["type"] == "joined" and answer["role"] == "controller" and answer["rejoined"]
    await viewer.control("state", state="active")
    await back.send(b"i am back")
    await viewer.output_contains(b"i am back")


# --- output: coalescing, slow viewers ------------------------------------------------------------


async def test_every_frame_reaches_every_participant_once_in_order(harness):
    # the fan-out wakes every participant's sender in one call to the loop (engine.bridge
    # batched_calls): each still gets every frame, in order, once
    controller, first, sid = await session_with_viewer(harness)
    harness.user("carol")
    second, answer = await harness.join("carol", sid)
    assert answer["type"] == "joined"
    await second.control("reset")
    connection = harness.connection(sid)

    def emit_all() -> None:
        for i in range(500):
            connection.emit(b"<%04d>" % i)

    await trio.to_thread.run_sync(emit_all)
    expected = b"".join(b"<%04d>" % i for i in range(500))
    for client in (controller, first, second):
        await client.output_contains(b"<0499>")
        assert expected in client.output and client.output.count(b"<0250>") == 1


async def test_many_tiny_frames_go_out_as_few_websocket_messages(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    await viewer.control("reset")
    connection = harness.connection(sid)
    before = viewer.binary_messages

    def emit_many() -> None:
        for i in range(2000):
            connection.emit(b"%05d," % i)

    await trio.to_thread.run_sync(emit_many)
    await viewer.output_contains(b"01999,")
    received = viewer.binary_messages - before
    assert b"".join(b"%05d," % i for i in range(2000)) in viewer.output  # every byte, in order
    assert received < 200, f"{received} websocket messages for 2000 frames"


class TestTheLastMessagesAreNotHeldForTheWindow:
    """A participant's last messages (the output before the end, `ended`, the close) go as soon
    as it is gone from the session: the coalescing window holds back output only while more may
    come (before, they waited for the window: about 16 ms by default, here a minute). With one
    batch per window, once the viewer has its first batch the lines below are held."""

    @pytest.fixture
    def gateway_overrides(self):
        return {"gateway": {"flush_ms": 60_000, "flush_messages": 1}}

    async def test_output_and_ended_reach_the_viewer_when_the_controller_leaves(self, harness):
        controller, viewer, sid = await session_with_viewer(harness)
        await viewer.until(lambda message: True)  # the sender's first batch: the window's one is used
        connection = harness.connection(sid)
        for line in (b"first", b"second", b"third"):
            connection.emit(line + b"\r\n")
        await controller.send({"type": "leave"})
        ended = await viewer.control("ended")
        assert ended["reason"] == "controller_left"
        assert b"first\r\nsecond\r\nthird" in viewer.output  # all of it, before `ended`
        await viewer.until_closed()

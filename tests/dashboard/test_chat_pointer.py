"""Chat and the pointer on the real gateway, with a controller and two viewers on raw websockets
(trio-websocket, as `cosession join` talks), time on a ManualClock.

- Chat: everyone gets every message with the sender and the engine's time; each is one `chat`
  audit row with its text; the length and the rate per participant are bounded (refused with a
  reason, audited, the others unaffected).
- The pointer: everyone sees it with the pointer's name; it never reaches the endpoint (the
  synthetic endpoint counts every input byte); it is bounded in rate too.
- A viewer's forged endpoint messages (Send Password, resize, terminal bytes) stay refused and
  audited while chat and pointer work for it.
"""

from __future__ import annotations


import pytest

from engine import ManualClock, policy
from tests.fixtures.websockets import Client, Harness

pytestmark = pytest.mark.usefixtures("live_gateway")


@pytest.fixture
def gateway_clock() -> ManualClock:
    return ManualClock()


async def three(h: Harness) -> tuple[Client, Client, Client, str]:
    for name in ("alice", "bob", "carol"):
        h.user(name)
    alice, joined = await h.start("alice")
    sid = joined["session_id"]
    bob, answer = await h.join("bob", sid)
    assert answer["role"] == "viewer"
    carol, answer = await h.join("carol", sid)
    assert answer["role"] == "viewer"
    return alice, bob, carol, sid


async def test_chat_reaches_everyone_with_name_and_time_and_is_audited(harness):
    alice, bob, carol, sid = await three(harness)
    now = harness.gateway.clock.now()
    await bob.send({"type": "chat", "text": "  what is <b>that</b> process?  "})
    for client in (alice, bob, carol):
        message = await client.control("chat")
        assert message["from"]["user"]["name"] == "bob" and message["from"]["role"] == "viewer"
        assert message["text"] == "what is <b>that</b> process?"  # as written: the page shows it as text
        assert message["at"] == now
    await alice.send({"type": "chat", "text": "the backup"})
    for client in (alice, bob, carol):
        assert (await client.control("chat"))["from"]["user"]["name"] == "alice"

    rows = await harness.audit("chat")
    assert sorted((r["actor_name"], r["detail"]["text"], r["detail"]["role"]) for r in rows) == [
        ("alice", "the backup", "controller"), ("bob", "what is <b>that</b> process?", "viewer")]
    assert all(r["session_id"] == sid for r in rows)


async def test_chat_is_bounded_in_length_and_rate_per_participant(harness):
    alice, bob, carol, _ = await three(harness)
    clock: ManualClock = harness.gateway.clock

    await bob.send({"type": "chat", "text": "x" * (policy.CHAT_MAX_CHARS + 1)})
    refused = await bob.control("refused", of="chat")
    assert refused["reason"] == "too_large"
    await bob.send({"type": "chat", "text": "   "})
    assert (await bob.control("refused", of="chat"))["reason"] == "malformed"

    for n in range(policy.CHAT_LIMIT):
        await bob.send({"type": "chat", "text": f"line {n}"})
    await bob.send({"type": "chat", "text": "one too many"})
    refused = await bob.control("refused", of="chat")
    assert refused["reason"] == "too_many_messages" and "try again" in refused["detail"]
    # carol is not limited by bob's rate, and got none of bob's refused messages
    await carol.send({"type": "chat", "text": "carol speaks"})
    said = await alice.control("chat", text="carol speaks")
    texts = [m["text"] for m in alice.controls if m.get("type") == "chat"]
    assert texts == [f"line {n}" for n in range(policy.CHAT_LIMIT)] + ["carol speaks"], texts
    assert said["from"]["user"]["name"] == "carol"

    clock.advance(policy.CHAT_WINDOW)  # bob's window has passed
    await bob.send({"type": "chat", "text": "later"})
    await carol.control("chat", text="later")

    refusals = await harness.audit("message_refused")
    assert sorted(r["detail"]["reason"] for r in refusals if r["detail"]["message"] == "chat") == [
        "malformed", "too_large", "too_many_messages"]
    assert len(await harness.audit("chat")) == policy.CHAT_LIMIT + 2


async def test_the_pointer_is_seen_by_everyone_and_never_reaches_the_endpoint(harness):
    alice, bob, carol, sid = await three(harness)
    connection = harness.connection(sid)
    before = connection.input_bytes
    await carol.send({"type": "point", "x": 0.25, "y": 0.5})
    for client in (alice, bob, carol):
        point = await client.control("point")
        assert point["from"]["user"]["name"] == "carol" and (point["x"], point["y"]) == (0.25, 0.5)

    for bad in ({"x": 1.5, "y": 0}, {"x": "0.1", "y": 0}, {"x": 0.1}, {"x": 0, "y": 0, "to": "alice"}):
        await bob.send({"type": "point", **bad})
        assert (await bob.control("refused", of="point"))["reason"] == "malformed"
    for _ in range(policy.POINT_LIMIT):
        await bob.send({"type": "point", "x": 0.5, "y": 0.5})
    await bob.send({"type": "point", "x": 0.5, "y": 0.5})
    assert (await bob.control("refused", of="point"))["reason"] == "too_many_messages"
    for _ in range(policy.POINT_LIMIT):
        assert (await alice.control("point"))["from"]["user"]["name"] == "bob"

    # the controller's input still works, and was the only input the endpoint ever got
    await alice.send(b"typed")
    await alice.output_contains(b"typed")
    assert connection.input_bytes - before == len(b"typed")


async def test_a_viewer_keeps_chat_and_pointer_while_its_endpoint_messages_are_refused(harness):
    alice, bob, carol, sid = await three(harness)
    connection = harness.connection(sid)
    before = connection.input_bytes
    for forged in ({"type": "send_password"}, {"type": "resize", "cols": 10, "rows": 10}, b"rm -rf /\r"):
        await bob.send(forged)
        assert (await bob.control("refused"))["reason"] == "not_controller"
    await bob.send({"type": "chat", "text": "still here"})
    await alice.control("chat", text="still here")
    assert connection.input_bytes == before
    refused = await harness.audit("message_refused") + await harness.audit("input_refused")
    assert sorted(r["detail"]["message"] for r in refused if r["actor_name"] == "bob") == [
        "input", "resize", "send_password"]

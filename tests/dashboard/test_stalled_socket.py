"""A viewer's socket that takes nothing is cut by the gateway: a websocket send still blocked
`engine.stall_seconds` after it began means the client stopped reading, and Hypercorn cannot
cancel that send, so the gateway closes the TCP connection itself (the web server's
`ClientConnection.abort`), tells the session the participant stalled (disconnected, audited),
and the session goes on. Real OpenSSH, real websockets, real time: the setting is five seconds
here (the controller's client, which shares the gateway's process, must never look stalled),
and the bound on waiting for the gateway is generous."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from tests.dashboard.test_stalled_viewer import StalledViewer, channel_of

pytestmark = pytest.mark.openssh

BOUND = 60  # seconds: a bound on waiting for the gateway, never a measure of it


@pytest.fixture
def gateway_overrides():
    return {"engine": {"stall_seconds": 5.0}}


@contextlib.asynccontextmanager
async def a_stalled_viewer(h, openssh) -> AsyncIterator[tuple[Any, str, StalledViewer]]:
    """alice controls a session on OpenSSH, bob joins it and never reads again, and eight
    megabytes of output fill bob's socket buffers, so that the gateway's send to him blocks (the
    controller reads all of it meanwhile): alice's client, the session's id, bob's socket."""
    h.user("alice", grant=False)
    endpoint = h.openssh_endpoint(openssh, private_key=openssh.private_key, host_key=openssh.host_key)
    h.gateway.grant(endpoint, "alice")
    controller, joined = await h.start("alice", endpoint=endpoint)
    sid = joined["session_id"]
    await controller.control("state", state="active")
    h.gateway.grant(endpoint, h.user("bob", grant=False))
    stalled = StalledViewer()
    try:
        await stalled.join(h, "bob", sid)
        await controller.control("participant_joined")
        await controller.send(b"stty -echo; yes 'no one reads this' | head -c 8000000; echo END-$((6*7))\r")
        await controller.output_contains(b"END-42", deadline=BOUND)
        yield controller, sid, stalled
    finally:
        stalled.close()


async def cut(stalled: StalledViewer) -> None:
    with trio.fail_after(BOUND):
        while not stalled.closed_by_peer():
            await trio.sleep(0.05)  # polls the socket's TCP state: nothing reports it


async def test_the_gateway_cuts_a_socket_that_takes_nothing(harness, openssh):
    h = harness
    async with a_stalled_viewer(h, openssh) as (controller, sid, stalled):
        live = h.gateway.app.state.live_sessions.sessions[sid]
        await cut(stalled)
        left = await controller.control("participant_left", deadline=BOUND)
        assert (left["member"]["user"]["name"], left["reason"]) == ("bob", "stalled")
        rows = await h.audit("participant_stalled")
        assert [(r["actor_name"], r["detail"]["role"]) for r in rows] == [("bob", "viewer")]
        with trio.fail_after(BOUND):
            while any(c.user.name == "bob" for c in live.channels):
                await trio.sleep(0.05)  # a poll interval: the channel's handler ends on the loop
        await controller.send(b"echo still-$((20+1))\r")
        await controller.output_contains(b"still-21")


class TestAtTheSessionsEnd:
    """When the session ends, a socket that takes nothing is cut soon after (CLOSE_LINGER), not
    held until `stall_seconds` (an hour here) from its blocked send."""

    @pytest.fixture
    def gateway_overrides(self):
        return {"engine": {"stall_seconds": 3600.0}}

    async def test_a_stalled_socket_is_cut_when_its_session_ends(self, harness, openssh):
        h = harness
        async with a_stalled_viewer(h, openssh) as (controller, sid, stalled):
            bob = channel_of(h, sid, "bob")
            with trio.fail_after(BOUND):
                while bob._send_began is None:
                    await trio.sleep(0.05)  # a poll: the send to bob blocks once his buffers are full
            await controller.send({"type": "leave"})  # the controller leaving ends the session
            await controller.control("ended", deadline=BOUND)
            await cut(stalled)
            assert await h.audit("participant_stalled") == []  # the session had ended: nothing to tell it

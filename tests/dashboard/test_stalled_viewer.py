"""A viewer that stops reading costs the controller nothing, against real OpenSSH through real
websockets (issue 10, item 3): nothing is rendered for it however often its queue overflows,
the controller gets every byte of a large `cat`, and past `engine.stall_seconds` (the engine's
ManualClock) the stalled viewer is disconnected with the reason `stalled` and audited.

The stalled viewer is a TCP socket with a 4 KiB receive buffer that completes the websocket
handshake, joins, reads its `joined` answer and then never reads again."""

from __future__ import annotations

import json
import re
import socket

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from cosession.join import _headers
from engine.clock import ManualClock
from tests.fixtures.websockets import Harness

pytestmark = pytest.mark.openssh

LINES = 200_000  # a 16 MB file: the stalled socket's kernel buffers (~3 MB) and its queue, twice over
QUEUE_BYTES = 4 << 20
TCP_ESTABLISHED = 1
BOUND = 120  # seconds: a generous bound on the whole cat, never a measure of its speed


@pytest.fixture
def gateway_clock():
    return ManualClock()


@pytest.fixture
def gateway_overrides():
    # A controller whose client falls a whole queue behind is resynchronised too, and this
    # test's clients share the gateway's process and GIL: a queue of 4 MiB keeps the controller
    # within it, so that every byte it gets is a fact about the gateway, not about the client.
    return {"engine": {"queue_max_bytes": QUEUE_BYTES}}


class StalledViewer:
    def __init__(self) -> None:
        self.sock = trio.socket.socket()

    async def join(self, h: Harness, name: str, session_id: str) -> None:
        cookie = await h.cookie(name)
        host, port = h.gateway.base_url.split("//")[1].rsplit(":", 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await self.sock.connect((host, int(port)))
        ws = WSConnection(ConnectionType.CLIENT)
        headers = [(k.decode(), v.decode()) for k, v in _headers(h.gateway.base_url, cookie, None)]
        await self.sock.send(ws.send(Request(host=f"{host}:{port}", target=f"/ws/sessions/{session_id}",
                                             extra_headers=headers)))
        with trio.fail_after(30):
            while True:
                ws.receive_data(await self.sock.recv(4096))
                for event in ws.events():
                    if isinstance(event, AcceptConnection):  # only now: nothing after the upgrade request
                        await self.sock.send(ws.send(TextMessage(json.dumps({"type": "join"}))))
                    elif isinstance(event, TextMessage) and json.loads(event.data)["type"] == "joined":
                        return  # and never read again

    def closed_by_peer(self) -> bool:
        """Whether the gateway closed this connection (a FIN or an RST came), read from the
        socket's TCP state without reading any data."""
        return self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != TCP_ESTABLISHED

    def close(self) -> None:
        self.sock.close()


def channel_of(h: Harness, session_id: str, name: str):
    return next(c for c in h.gateway.app.state.live_sessions.sessions[session_id].channels if c.user.name == name)


async def test_a_viewer_that_never_reads_costs_the_controller_nothing_and_is_disconnected(harness, openssh):
    h = harness
    h.user("alice", grant=False)
    endpoint = h.openssh_endpoint(openssh, private_key=openssh.private_key, host_key=openssh.host_key)
    h.gateway.grant(endpoint, "alice")
    big = openssh.directory / "big.txt"
    big.write_bytes(b"".join(b"L%07d %s\n" % (n, b"x" * 70) for n in range(LINES)))
    big.chmod(0o644)

    controller, joined = await h.start("alice", endpoint=endpoint)
    sid = joined["session_id"]
    await controller.control("state", state="active")
    h.gateway.grant(endpoint, h.user("bob", grant=False))
    stalled = StalledViewer()
    try:
        await stalled.join(h, "bob", sid)
        await controller.control("participant_joined")
        queue = channel_of(h, sid, "bob").queue

        await controller.send(b"stty -echo; cat %s; echo END-$((6*7))\r" % str(big).encode())
        await controller.output_contains(b"END-42", deadline=BOUND)

        # the stalled viewer overflowed and owes a resync; nothing was rendered for it
        assert queue.dropped_frames > 0 and queue.resyncs == 0
        assert queue.owes_resync and queue.keyframes_requested == 0
        # the controller got every byte, in order
        numbers = [int(n) for n in re.findall(rb"L(\d{7}) x{70}\r\n", controller.output)]
        assert numbers == list(range(LINES))

        # past the stall setting the viewer is disconnected, with its reason, and audited
        h.gateway.clock.advance(h.gateway.settings.engine.stall_seconds)
        left = await controller.control("participant_left")
        assert (left["member"]["user"]["name"], left["reason"]) == ("bob", "stalled")
        rows = await h.audit("participant_stalled")
        assert [(r["actor_name"], r["detail"]["role"]) for r in rows] == [("bob", "viewer")]
        registry = h.gateway.engine.metrics.registry  # what /metrics says (docs/operations.md)
        assert registry.get_sample_value("cosession_participants_removed_total", {"reason": "stalled"}) == 1
        assert registry.get_sample_value("cosession_queue_overflows_total") == 1
        assert queue.closed
        # and the session goes on for the controller
        await controller.send(b"echo still-$((20+1))\r")
        await controller.output_contains(b"still-21")
    finally:
        stalled.close()

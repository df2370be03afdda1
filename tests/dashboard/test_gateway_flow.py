"""Output flow through the gateway: a viewer that stops reading costs nobody else anything, and
is resynchronised from a keyframe when it reads again."""

from __future__ import annotations

import socket

import pytest
import trio
from trio_websocket import wrap_client_stream

from cosession.join import GatewaySocket, _headers, send_json
from tests.fixtures.websockets import Client, Harness, session_with_viewer

QUEUE_BYTES = 65536


@pytest.fixture
def gateway_overrides():
    # a small outbound queue, so that a few hundred kilobytes overflow it
    return {"engine": {"queue_max_bytes": QUEUE_BYTES}}


async def stalled_viewer(h: Harness, name: str, session_id: str) -> Client:
    """A viewer whose socket takes almost nothing: a 4 KB receive buffer, and a client that
    reads one message and then stops (trio-websocket's queue of one message fills)."""
    h.user(name)
    cookie = await h.cookie(name)
    host, port = h.gateway.base_url.split("//")[1].rsplit(":", 1)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    ws = await wrap_client_stream(h.nursery, stream, f"{host}:{port}", f"/ws/sessions/{session_id}",
                                  extra_headers=_headers(h.gateway.base_url, cookie, None),
                                  message_queue_size=1, receive_buffer_size=4096)
    wrapped = GatewaySocket(ws, stream)
    h.sockets.append(wrapped)
    await send_json(wrapped, {"type": "join"})
    return Client(wrapped)


class Overflowed:
    """What `overflow_in_lockstep` did: how many frames it emitted, of which body."""

    def __init__(self, frames: int, body: bytes, queue) -> None:
        self.frames, self.body, self.queue = frames, body, queue


async def overflow_in_lockstep(h: Harness, session_id: str, name: str, controller: Client, viewer: Client,
                               fill: bytes = b"x") -> Overflowed:
    """Emit numbered frames in lockstep (each reaches the controller and the reading viewer
    before the next is emitted) until the stalled viewer `name`'s queue overflows."""
    directory = h.gateway.app.state.live_sessions
    connection = h.connection(session_id)

    def queue():
        channels = [c for c in directory.sessions[session_id].channels if c.user.name == name]
        return channels[0].queue if channels else None

    with trio.fail_after(10):
        while queue() is None:
            await trio.sleep(0.01)
    body = fill * 4000 + b"\r\n"
    n = 0
    with trio.fail_after(30):
        while not queue().owes_resync:
            connection.emit(b"<%06d>" % n + body)
            await controller.output_contains(b"<%06d>" % n)
            await viewer.output_contains(b"<%06d>" % n)
            n += 1
            assert n < 1000, "the stalled viewer's queue never overflowed"
    return Overflowed(n, body, queue)


async def test_a_stalled_viewer_never_slows_the_controller_or_the_others(harness):
    controller, viewer, sid = await session_with_viewer(harness)
    slow = await stalled_viewer(harness, "slow", sid)
    overflowed = await overflow_in_lockstep(harness, sid, "slow", controller, viewer)
    n, body, slow_queue = overflowed.frames, overflowed.body, overflowed.queue
    connection = harness.connection(sid)
    assert n * len(body) > QUEUE_BYTES
    assert slow_queue().dropped_frames > 0
    # the others got every frame, in order
    for client in (controller, viewer):
        positions = [client.output.find(b"<%06d>" % i) for i in range(n)]
        assert -1 not in positions and positions == sorted(positions)
    # once it reads again, the stalled viewer is told, then gets the screen as it is now
    connection.emit(b"\x1b[2J\x1b[Hafter the stall\r\n")
    await controller.output_contains(b"after the stall")
    resync = await slow.control("resync", deadline=15)
    assert resync["dropped"] >= 1
    reset = await slow.control("reset")
    assert (reset["cols"], reset["rows"]) == (80, 24)
    await slow.output_contains(b"after the stall", deadline=15)

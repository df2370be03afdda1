"""An RDP session in the engine, against FreeRDP's shadow server: the controller's keys reach the
server's xterm (Ctrl-Alt-Del too), a viewer's never do, every participant's picture (keyframe
and frames, as noVNC applies them) converges on the server's own screen, a late joiner included;
killing the server ends the session endpoint_failed for everyone and leaves no process."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from config.settings import load
from engine.connection import Credentials
from engine.messages import EndpointProtocol, EndpointSpec, EndReason, InputRefused, SessionEnded, User
from engine.runtime import Engine
from protocols.rdp import RdpConnection
from protocols.rfb_browser import FrameDecoder
from tests.fixtures.rdp import rdp_children
from tests.protocols.test_rdp_freerdp import CTRL_ALT_DEL, RETURN, close_to, keys

pytestmark = pytest.mark.rdp

ALICE = User("alice", "Alice")


def picture(sink):
    """What a participant shows: its keyframe and frames in order, as noVNC applies them."""
    decoder = FrameDecoder()
    decoder.feed(sink.keyframes[0].data)
    for frame in sink.frames:
        decoder.feed(frame.data)
    return decoder.framebuffer


async def test_an_rdp_session_for_a_controller_and_viewers(ssh_bridge, rdp_server_to_kill, tmp_path):
    server = rdp_server_to_kill
    spec = EndpointSpec("win", "windows-1", EndpointProtocol.RDP, host=server.host, port=server.port)
    settings = load(env={}, engine={"endpoint_retries": 0})
    engine = Engine(settings, database_url=f"sqlite:///{tmp_path / 'audit.db'}").start()
    try:
        connection = RdpConnection(ssh_bridge, server.host, server.port, Credentials(""))
        controller = await trio.to_thread.run_sync(lambda: engine.open_session(spec, ALICE, connection=connection))
        viewer = await trio.to_thread.run_sync(lambda: engine.join_session(controller.session_id, User("v1", "V1")))
        await trio.to_thread.run_sync(lambda: viewer.sink.wait_for(lambda s: len(s.frames) >= 1, 30))

        # the controller types; a viewer's keys are refused by the engine and never typed
        controller.send_input(keys("typed by the controller") + RETURN)
        viewer.send_input(keys("VIEWER") + RETURN)
        await server.wait_typed(b"typed by the controller\r")
        controller.send_input(CTRL_ALT_DEL)
        await server.wait_typed(b"\x1b[3;7~")
        assert await trio.to_thread.run_sync(lambda: viewer.sink.wait_for(lambda s: s.events_of(InputRefused), 5))

        # a late joiner; then every picture converges on the server's own screen
        late = await trio.to_thread.run_sync(lambda: engine.join_session(controller.session_id, User("v2", "V2")))
        await trio.to_thread.run_sync(lambda: late.sink.wait_for(lambda s: s.keyframes, 10))
        with trio.fail_after(20):
            while True:
                truth = await trio.to_thread.run_sync(server.screen)
                if all(close_to(picture(p.sink), truth)[0] for p in (controller, viewer, late)) and \
                        len(np.unique(truth.reshape(-1, 3), axis=0)) > 2:  # the server's xterm painted
                    break
                await trio.sleep(0.1)  # the server is still painting and sending
        assert b"VIEWER" not in server.typed()

        # killing the server ends the session for everyone, endpoint_failed
        server.kill()
        for p in (controller, viewer, late):
            await trio.to_thread.run_sync(lambda p=p: p.sink.wait_for(lambda s: s.events_of(SessionEnded), 30))
            ended = p.sink.events_of(SessionEnded)[0]
            assert ended.reason is EndReason.ENDPOINT_FAILED
            assert ended.detail == f"connection to {server.host}:{server.port} lost", ended.detail
        with trio.fail_after(10):
            await connection.stopped()
        assert rdp_children() == []
    finally:
        await trio.to_thread.run_sync(engine.stop)

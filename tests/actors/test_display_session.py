"""A VNC session in the engine, against a real Xvnc: the EndpointActor applies each decoded
update to the session's display model and fans out one encoding, the same Frame object, to every
participant; a late joiner's keyframe plus the frames after it show the X server's desktop;
a viewer's input never reaches the desktop; killing Xvnc ends the session endpoint_failed."""

from __future__ import annotations

import numpy as np
import trio

from config.settings import load
from engine.messages import EndpointProtocol, EndpointSpec, EndReason, InputRefused, SessionEnded, User
from engine.runtime import Engine
from protocols import rfb
from protocols.rfb_browser import FrameDecoder
from protocols.vnc import VncConnection

ALICE = User("alice", "Alice")
VNC = EndpointSpec("desk", "desktop-1", EndpointProtocol.VNC)


def picture(sink) -> np.ndarray:
    """What a participant shows: its keyframes and frames in order, as noVNC applies them."""
    decoder = FrameDecoder()
    decoder.feed(sink.keyframes[0].data)
    for frame in sink.frames:
        decoder.feed(frame.data)
    return decoder.framebuffer


def close_to(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return diff.mean() < 3.0 and int((diff.max(axis=2) > 48).sum()) < 200


async def test_one_encoding_for_everyone_and_late_joiners_see_the_desktop(vnc_bridge, xvnc, tmp_path):
    xvnc.run("xterm", "-T", "typed-here", "-geometry", "80x24+20+20", "-bg", "black", "-fg", "green", "-e", "sh")
    xvnc.wait_for_window("typed-here")
    settings = load(env={}, engine={"endpoint_retries": 0})
    engine = Engine(settings, database_url=f"sqlite:///{tmp_path / 'audit.db'}").start()
    try:
        connection = VncConnection(vnc_bridge, xvnc.host, xvnc.port, xvnc.password)
        controller = await trio.to_thread.run_sync(lambda: engine.open_session(VNC, ALICE, connection=connection))
        early = await trio.to_thread.run_sync(lambda: engine.join_session(controller.session_id, User("v1", "V1")))
        await trio.to_thread.run_sync(lambda: early.sink.wait_for(lambda s: len(s.frames) >= 1, 10))

        # the controller types into the xterm; a viewer's keys are refused by the engine
        keys = b"".join(rfb.pack(rfb.KeyEvent(d, ord(c))) for c in "echo typed-by-controller" for d in (True, False))
        pointer = rfb.pack(rfb.PointerEvent(0, 200, 150))  # without a window manager, focus follows the pointer
        controller.send_input(pointer + keys + rfb.pack(rfb.KeyEvent(True, 0xFF0D)) + rfb.pack(rfb.KeyEvent(False, 0xFF0D)))
        early.send_input(b"".join(rfb.pack(rfb.KeyEvent(d, ord("x"))) for d in (True, False)))

        # a late joiner, then every picture converges on the X server's own framebuffer
        late = await trio.to_thread.run_sync(lambda: engine.join_session(controller.session_id, User("v2", "V2")))
        await trio.to_thread.run_sync(lambda: late.sink.wait_for(lambda s: s.keyframes, 10))
        controller.send_input(b"".join(rfb.pack(rfb.KeyEvent(d, ord(c))) for c in " after" for d in (True, False)))
        assert await trio.to_thread.run_sync(lambda: late.sink.wait_for(lambda s: s.frames, 10))
        with trio.fail_after(15):
            while True:
                truth = xvnc.screenshot()
                if all(close_to(picture(p.sink), truth) for p in (controller, early, late)):
                    break
                await trio.sleep(0.05)  # the desktop is still being painted and sent
        # encoded once: every frame the early viewer got after the late one joined is the very
        # object the controller and the late joiner got
        shared = [f for f in early.sink.frames if any(f is g for g in late.sink.frames)]
        assert shared and all(any(f is g for g in controller.sink.frames) for f in shared)
        assert early.sink.events_of(InputRefused)  # the viewer's key: refused, never forwarded
        summary = await trio.to_thread.run_sync(lambda: engine.describe(controller.session_id))
        assert len(summary.members) == 3

        # killing the server ends the session for everyone, endpoint_failed
        xvnc.stop()
        for p in (controller, early, late):
            await trio.to_thread.run_sync(lambda p=p: p.sink.wait_for(lambda s: s.events_of(SessionEnded), 15))
            ended = p.sink.events_of(SessionEnded)[0]
            assert ended.reason is EndReason.ENDPOINT_FAILED and "127.0.0.1" in ended.detail
    finally:
        await trio.to_thread.run_sync(engine.stop)

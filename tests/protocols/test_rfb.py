"""protocols.rfb: client messages parsed and built in one place, and the browser leg's server
side of the handshake, by table; and the VNC client against scripted servers that break the
protocol (garbage, a rectangle outside the desktop, an absurd size, a truncated message): each
ends that connection with a clear, final reason."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import trio

from protocols import rfb
from protocols.rfb import BrowserLeg, ClientMessageReader, Encoding, HandshakeDone, LegState, RfbError
from protocols.rfb_browser import BrowserClient
from protocols.vnc import VncConnection
from tests.fixtures.xvnc import DisplayRecorder

MESSAGES = [
    rfb.KeyEvent(True, 0xFF0D),
    rfb.PointerEvent(5, 1919, 1079),
    rfb.ClientCutText(b"copied"),
    rfb.FramebufferUpdateRequest(True, 0, 0, 800, 600),
    rfb.SetEncodings((7, -260, 1, -223, -239)),
    rfb.SetPixelFormat(rfb.RGBX),
    rfb.SetDesktopSize(1280, 720, (rfb.Screen(1, 0, 0, 1280, 720),)),
    rfb.EnableContinuousUpdates(True, 0, 0, 10, 10),
    rfb.ClientFence(1, b"abc"),
]


def test_every_message_round_trips_in_any_split():
    stream = b"".join(rfb.pack(m) for m in MESSAGES)
    for chunk in (1, 3, 7, len(stream)):
        reader = ClientMessageReader()
        got = []
        for i in range(0, len(stream), chunk):
            got += reader.feed(stream[i:i + chunk])
        assert [m for m, _ in got] == MESSAGES
        assert b"".join(wire for _, wire in got) == stream
        assert reader.pending == 0


@pytest.mark.parametrize("data, error", [
    (b"\x63", "unknown client message type 99"),
    (struct.pack(">BBxxI", 4, 2, 65), "down-flag"),
    (struct.pack(">BxxxI", 6, 1 << 21), "ClientCutText of 2097152 bytes"),
    (struct.pack(">BxxxI", 6, 0x80000010), "extended clipboard"),
    (struct.pack(">BxH", 2, 5000), "5000 encodings"),
    (struct.pack(">BxHHBx", 251, 0, 600, 1), "SetDesktopSize to 0x600"),
    (struct.pack(">BxHHBx", 251, 800, 600, 0), "0 screens"),
    (b"\0\0\0\0" + rfb.PixelFormat(true_colour=False).pack(), "true-colour"),
])
def test_malformed_client_messages_are_refused(data, error):
    with pytest.raises(RfbError, match=error):
        ClientMessageReader().feed(data)


def handshake(leg: BrowserLeg) -> list:
    events = []
    assert leg.greeting() == b"RFB 003.008\n"
    reply, got = leg.receive(b"RFB 003.008\n")
    assert reply == b"\x01\x01"  # one security type: None
    events += got
    reply, got = leg.receive(b"\x01")
    assert reply == b"\0\0\0\0"
    reply, got2 = leg.receive(b"\x00" + rfb.pack(rfb.SetPixelFormat(rfb.RGBX)))
    return events + got + got2


def test_browser_leg_handshake_then_messages():
    leg = BrowserLeg()
    events = handshake(leg)
    assert events == [HandshakeDone(), rfb.SetPixelFormat(rfb.RGBX)]
    assert leg.state is LegState.READY
    noVNC = (1, 7, -260, 16, 21, 5, 2, 6, 0, -26, -254, -223, -224, -258, -261, -308, -309, -312,
             -313, -307, 0xC0A1E5CE - (1 << 32), -316, 0x574D5664, -239)
    _, got = leg.receive(rfb.pack(rfb.SetEncodings(noVNC)) + rfb.pack(rfb.KeyEvent(True, 97)))
    assert got == [rfb.SetEncodings(noVNC), rfb.KeyEvent(True, 97)]
    init = BrowserLeg.server_init(1920, 1080, "demo")
    assert init[:4] == struct.pack(">HH", 1920, 1080) and init[4:20] == rfb.RGBX.pack()
    assert init[20:] == struct.pack(">I", 4) + b"demo"


def test_browser_leg_handshake_in_one_message():
    leg = BrowserLeg()
    reply, events = leg.receive(b"RFB 003.008\n\x01\x01" + rfb.pack(rfb.KeyEvent(False, 98)))
    assert reply == b"\x01\x01\0\0\0\0"
    assert events == [HandshakeDone(), rfb.KeyEvent(False, 98)]


@pytest.mark.parametrize("sequence, error", [
    ([b"RFB 003.003\n"], "RFB 3.8"),
    ([b"RFB 003.008\n", b"\x02"], "security type 2"),
    ([b"RFB 003.008\n", b"\x01", b"\x01" + b"\0\0\0\0" + rfb.PixelFormat(bits_per_pixel=16, depth=16).pack()],
     "pixel format"),
    ([b"RFB 003.008\n", b"\x01", b"\x01" + rfb.pack(rfb.SetEncodings((0, 16)))], "does not accept"),
])
def test_browser_leg_refuses_what_the_shared_frames_cannot_serve(sequence, error):
    leg = BrowserLeg()
    with pytest.raises(RfbError, match=error):
        for data in sequence:
            leg.receive(data)


# --- scripted servers that break the protocol --------------------------------------------------

SERVER_INIT = struct.pack(">HH", 64, 48) + rfb.RGBX.pack() + struct.pack(">I", 4) + b"evil"


def fbu(*rects: bytes) -> bytes:
    return struct.pack(">BxH", 0, len(rects)) + b"".join(rects)


def rect(x, y, w, h, enc, body=b"") -> bytes:
    return struct.pack(">HHHHi", x, y, w, h, enc) + body


async def scripted(vnc_bridge, script: bytes):
    """A server that says its lines, reads whatever comes, and ends; the failure reported."""

    async def serve(stream):
        await stream.send_all(script)
        await stream.send_eof()  # the client still writes; it reads nothing more
        with trio.move_on_after(5):
            while await stream.receive_some(65536):
                pass
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(lambda task_status: trio.serve_tcp(
            serve, 0, host="127.0.0.1", task_status=task_status))
        port = listeners[0].socket.getsockname()[1]
        events = DisplayRecorder()
        conn = VncConnection(vnc_bridge, "127.0.0.1", port, None)
        conn.open(events, 80, 24)
        await events.wait_for(lambda: events.ended is not None)
        nursery.cancel_scope.cancel()
    return events


HELLO = b"RFB 003.008\n\x01\x01" + b"\0\0\0\0" + SERVER_INIT


@pytest.mark.parametrize("script, detail, retryable", [
    (b"SSH-2.0-OpenSSH_9.2\r\n", "does not speak RFB", False),
    (b"RFB 003.003\n", "speaks RFB 3.3; cosession needs 3.8", False),
    (b"RFB 003.008\n\x00" + struct.pack(">I", 9) + b"go away!!", "refused the connection: go away!!", True),
    (b"RFB 003.008\n\x01\x1e", "offers no security type cosession supports (30)", False),
    (b"RFB 003.008\n\x01\x01\0\0\0\0" + struct.pack(">HH", 0, 48), "a desktop of 0x48", False),
    (HELLO + fbu(rect(60, 40, 10, 10, Encoding.RAW, b"\0" * 400)), "rectangle at (60,40) lies outside", False),
    (HELLO + fbu(rect(0, 0, 4, 4, Encoding.COPY_RECT, struct.pack(">HH", 62, 0))), "CopyRect source", False),
    (HELLO + fbu(rect(0, 0, 60000, 60000, Encoding.DESKTOP_SIZE)), "a desktop of 60000x60000", False),
    (HELLO + fbu(rect(0, 0, 8, 8, Encoding.ZRLE, struct.pack(">I", 3) + b"xyz")), "broke the RFB protocol", False),
    (HELLO + fbu(rect(0, 0, 8, 8, 5)), "encoding 5, which was not asked for", False),
    (HELLO + fbu(rect(0, 0, 8, 8, Encoding.TIGHT, b"\xb0")), "control 0xb0 is not defined", False),
    (HELLO + fbu(rect(0, 0, 8, 8, Encoding.TIGHT, b"\x90\x05notjp")), "JPEG rectangle did not decode", False),
    (HELLO + b"\x07", "message type 7", False),
    (HELLO + fbu(rect(0, 0, 10, 10, Encoding.RAW, b"\0" * 100)), "closed the connection", True),  # truncated
])
async def test_a_server_that_breaks_the_protocol_ends_the_connection(vnc_bridge, script, detail, retryable):
    events = await scripted(vnc_bridge, script)
    kind, reported, was_retryable = events.ended
    assert kind == "failed" and detail in reported and was_retryable is retryable, events.ended


async def test_a_large_update_goes_on_in_parts_as_it_is_read(vnc_bridge):
    """Four 128x128 Raw rectangles of one update (64 KiB each) reach the display model as four
    reports, one a tile and in order; the picture is the server's."""
    tiles = [np.full((128, 128, 4), (40 * i, 255 - 40 * i, 7, 0), np.uint8) for i in range(4)]
    corners = [(0, 0), (128, 0), (0, 128), (128, 128)]
    script = (HELLO + fbu(rect(0, 0, 256, 256, Encoding.DESKTOP_SIZE))
              + fbu(*(rect(x, y, 128, 128, Encoding.RAW, t.tobytes()) for (x, y), t in zip(corners, tiles))))
    events = await scripted(vnc_bridge, script)  # then the server hangs up: what it sent is applied first
    assert events.ended[0] == "failed" and "closed the connection" in events.ended[1]
    assert len(events.frames) >= 4 and events.updates >= 4 + 1  # the size, then a part per tile
    parts = events.frames[-4:]
    for part, (x, y) in zip(parts, corners):
        assert struct.unpack_from(">HHHH", part, 4)[:2] == (x, y)  # one tile a part, in order
    picture = events.model.snapshot()
    for (x, y), tile in zip(corners, tiles):
        assert (picture[y:y + 128, x:x + 128] == tile[:, :, :3]).all()


def test_a_python_browser_and_the_browser_leg_shake_hands():
    """BrowserClient (what `cosession join --snapshot` speaks) against BrowserLeg (the gateway)."""
    from engine.display import DisplayModel
    from engine.messages import DisplayFill, DisplaySize, DisplayUpdate

    leg, client = BrowserLeg(), BrowserClient()
    to_leg = client.receive(leg.greeting())
    done = False
    while to_leg:
        back, events = leg.receive(to_leg)
        done = done or any(isinstance(e, HandshakeDone) for e in events)
        if done and not client.ready:
            back += BrowserLeg.server_init(64, 48, "desk")
        to_leg = client.receive(back) if back else b""
    assert done and client.ready and (client.width, client.height, client.name) == (64, 48, "desk")
    assert rfb.Encoding.TIGHT_PNG in leg.encodings
    model = DisplayModel()
    model.update(DisplayUpdate((DisplaySize(64, 48), DisplayFill(0, 0, 64, 48, (9, 8, 7)))))
    client.receive(model.keyframe().data)
    assert client.frames.updates == 1 and (client.frames.framebuffer == (9, 8, 7)).all()

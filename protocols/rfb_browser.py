"""A browser's side of the browser leg, in Python: what noVNC does, for the Python clients of the
gateway (`cosession join --snapshot`, the tests and the benchmark).

`BrowserClient` answers the gateway's RFB handshake as noVNC does (security type None, RGBX,
noVNC's encodings) and passes the session's frames to a `FrameDecoder`, which applies them to a
framebuffer as noVNC draws them on its canvas: Tight fill and JPEG, TightPNG, CopyRect,
DesktopSize and ExtendedDesktopSize (the display model's frames, engine/display.py).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import simplejpeg

from protocols.rfb import (
    RGBX, VERSION_3_8, Encoding, FramebufferUpdateRequest, RfbError, Security, ServerType, SetEncodings,
    SetPixelFormat, pack,
)


# What noVNC 1.7 asks for (core/rfb.js _sendEncodings), less what cosession never sends.
BROWSER_ENCODINGS = (Encoding.COPY_RECT, Encoding.TIGHT, Encoding.TIGHT_PNG, Encoding.ZRLE, Encoding.RAW,
                     Encoding.QUALITY_LEVEL_0 + 6, Encoding.COMPRESS_LEVEL_0 + 2, Encoding.DESKTOP_SIZE,
                     Encoding.LAST_RECT, Encoding.EXTENDED_DESKTOP_SIZE, Encoding.DESKTOP_NAME, Encoding.CURSOR)


class BrowserClient:
    """The client side of the browser leg without I/O, as noVNC speaks it: for Python clients
    of the gateway (`cosession join --snapshot`, tests). Feed it the gateway's binary messages;
    it answers the handshake and then passes the session's frames to `frames` (a FrameDecoder)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._step = "version"
        self.frames = FrameDecoder()
        self.width = self.height = 0
        self.name = ""

    @property
    def ready(self) -> bool:
        return self._step == "frames"

    def receive(self, data: bytes) -> bytes:
        """What to send back (empty once the handshake is done)."""
        if self._step == "frames":
            self.frames.feed(data)
            return b""
        self._buffer += data
        reply = bytearray()
        while True:
            buf = self._buffer
            if self._step == "version" and len(buf) >= 12:
                if bytes(buf[:12]) != VERSION_3_8:
                    raise RfbError("the gateway must speak RFB 3.8")
                del buf[:12]
                reply += VERSION_3_8
                self._step = "security"
            elif self._step == "security" and buf and len(buf) >= 1 + buf[0]:
                if buf[0] == 0 or Security.NONE not in buf[1:1 + buf[0]]:
                    raise RfbError("the gateway did not offer security type None")
                del buf[:1 + buf[0]]
                reply += bytes((Security.NONE,))
                self._step = "result"
            elif self._step == "result" and len(buf) >= 4:
                if bytes(buf[:4]) != b"\0\0\0\0":
                    raise RfbError("the gateway refused the handshake")
                del buf[:4]
                reply += b"\x01"  # ClientInit: shared
                self._step = "init"
            elif self._step == "init" and len(buf) >= 24:
                (length,) = struct.unpack_from(">I", buf, 20)
                if len(buf) < 24 + length:
                    break
                self.width, self.height = struct.unpack_from(">HH", buf)
                self.name = bytes(buf[24:24 + length]).decode("utf-8", "replace")
                rest = bytes(buf[24 + length:])
                self._buffer = bytearray()
                reply += pack(SetPixelFormat(RGBX)) + pack(SetEncodings(tuple(int(e) for e in BROWSER_ENCODINGS)))
                reply += pack(FramebufferUpdateRequest(False, 0, 0, self.width, self.height))
                self._step = "frames"
                self.frames.feed(rest)
                break
            else:
                break
        return bytes(reply)



class FrameDecoder:
    """Applies a session's frames (the display model's FramebufferUpdates: Tight fill and JPEG,
    TightPNG, CopyRect, DesktopSize, ExtendedDesktopSize, Cursor) to a framebuffer, as noVNC
    does in a browser. `cosession join --snapshot` and the tests use it to see what a
    participant sees. It takes the whole stream from a keyframe on, in any chunks."""

    def __init__(self) -> None:
        self.framebuffer = np.zeros((0, 0, 3), np.uint8)
        self._buffer = bytearray()
        self.updates = 0

    @property
    def width(self) -> int:
        return self.framebuffer.shape[1]

    @property
    def height(self) -> int:
        return self.framebuffer.shape[0]

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            consumed = self._update(memoryview(self._buffer))
            if consumed == 0:
                return
            del self._buffer[:consumed]
            self.updates += 1

    def _update(self, view: memoryview) -> int:
        """Apply one complete FramebufferUpdate from the start of `view`; 0 if incomplete.
        Parses first, applies after, so an incomplete update changes nothing."""
        if len(view) < 4:
            return 0
        if view[0] != ServerType.FRAMEBUFFER_UPDATE:
            raise RfbError(f"message type {view[0]} in a session's frames")
        (count,) = struct.unpack_from(">H", view, 2)
        pos = 4
        rects = []
        for _ in range(count):
            if len(view) < pos + 12:
                return 0
            x, y, w, h, enc = struct.unpack_from(">HHHHi", view, pos)
            pos += 12
            start = pos
            if enc in (Encoding.TIGHT, Encoding.TIGHT_PNG):
                if len(view) < pos + 1:
                    return 0
                control = view[pos]
                pos += 1
                if control >> 4 == 8:
                    pos += 3
                else:
                    length, pos = _compact(view, pos)
                    if length is None:
                        return 0
                    pos += length
            elif enc == Encoding.COPY_RECT:
                pos += 4
            elif enc == Encoding.CURSOR:
                pos += w * h * 4 + (w + 7) // 8 * h
            elif enc == Encoding.EXTENDED_DESKTOP_SIZE:
                if len(view) < pos + 1:
                    return 0
                pos += 4 + 16 * view[pos]
            elif enc != Encoding.DESKTOP_SIZE:
                raise RfbError(f"encoding {enc} in a session's frames")
            if len(view) < pos:
                return 0
            rects.append((x, y, w, h, enc, bytes(view[start:pos])))
        for rect in rects:
            self._apply(*rect)
        return pos

    def _apply(self, x: int, y: int, w: int, h: int, enc: int, data: bytes) -> None:
        if enc in (Encoding.DESKTOP_SIZE, Encoding.EXTENDED_DESKTOP_SIZE):
            if (h, w) != self.framebuffer.shape[:2]:
                old, self.framebuffer = self.framebuffer, np.zeros((h, w, 3), np.uint8)
                kh, kw = min(h, old.shape[0]), min(w, old.shape[1])
                self.framebuffer[:kh, :kw] = old[:kh, :kw]
            return
        if enc == Encoding.CURSOR:
            return
        if x + w > self.width or y + h > self.height:
            raise RfbError(f"a {w}x{h} rectangle at ({x},{y}) outside the desktop")
        target = self.framebuffer[y:y + h, x:x + w]
        if enc == Encoding.COPY_RECT:
            sx, sy = struct.unpack(">HH", data)
            target[:] = self.framebuffer[sy:sy + h, sx:sx + w].copy()
            return
        control = data[0] >> 4
        if control == 8:
            target[:] = np.frombuffer(data[1:4], np.uint8)
            return
        _, start = _compact(memoryview(data), 1)
        payload = data[start:]
        if control == 9:
            target[:] = simplejpeg.decode_jpeg(payload, colorspace="RGB")
        elif control == 10 and enc == Encoding.TIGHT_PNG:
            target[:] = decode_png(payload)
        else:
            raise RfbError(f"Tight control {data[0]:#04x} in a session's frames")


def _compact(view: memoryview, pos: int) -> tuple[int | None, int]:
    length = 0
    for i in range(3):
        if len(view) <= pos:
            return None, pos
        byte = view[pos]
        pos += 1
        if i < 2:
            length |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                break
        else:
            length |= byte << 14
    return length, pos


def decode_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB PNG as the display model writes it (filter None on every row), as
    (height, width, 3)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise RfbError("not a PNG")
    pos, idat, width, height = 8, bytearray(), 0, 0
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack_from(">IIBB", body)
            if (depth, colour) != (8, 2):
                raise RfbError("only 8-bit RGB PNGs")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    rows = np.frombuffer(zlib.decompress(bytes(idat)), np.uint8).reshape(height, width * 3 + 1)
    if rows[:, 0].any():
        raise RfbError("only PNG filter None")
    return rows[:, 1:].reshape(height, width, 3)

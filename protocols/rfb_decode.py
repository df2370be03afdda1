"""What a VNC server sends, read and decoded: the client side of RFB 3.8's FramebufferUpdate
(RFC 6143), for `protocols.vnc`.

- **Framing**, on the trio loop: `RfbReader` reads exact sizes from a stream; `read_update`
  reads one update's rectangles (headers, lengths and payloads, which is cheap) and checks each
  against the desktop, so that no decoder ever writes outside the framebuffer.
- **Decoding**, in a worker thread: `Decoder` turns the rectangles into `engine.messages`
  Display* items with zlib and numpy, never pixel by pixel in Python. A Tight JPEG rectangle
  only has its header checked (libjpeg-turbo through simplejpeg): it stays JPEG, which the
  display model passes on and decodes after the fan-out; `needs_worker` says whether an update
  holds anything heavier. It keeps the zlib streams (Tight's four, ZRLE's one), which span rectangles: one
  decoder per connection attempt, one update at a time, in order.

Anything malformed raises `RfbError` (from protocols.rfb); the end of the stream raises
`ServerClosed`.
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import numpy as np
import simplejpeg
import trio

from engine.messages import (
    DisplayCopy, DisplayCursor, DisplayFill, DisplayJpeg, DisplayName, DisplayPixels, DisplaySize,
)
from protocols import rfb
from protocols.rfb import Encoding, RfbError

log = logging.getLogger(__name__)

MAX_COMPACT_LENGTH = (1 << 22) - 1  # Tight's compact length has 22 bits
MAX_ZRLE_BYTES = 64 << 20
MAX_NAME = 4096
# A large update (a full screen is ~400 KB of JPEG) is handed on in parts of about this much data,
# as it is read: the participants get its first rectangles while the server still encodes the
# rest, instead of all of it after the last byte. The gateway flushes this much at once too.
PART_BYTES = 64 * 1024


class ServerClosed(Exception):
    """The server ended the stream; the text names it."""


# --- framing: what the loop reads -------------------------------------------------------------


class RfbReader:
    """Exact reads from a trio stream."""

    def __init__(self, stream: trio.abc.ReceiveStream, where: str) -> None:
        self.stream = stream
        self._where = where
        self._buffer = bytearray()

    async def read(self, n: int) -> bytes:
        buffer = self._buffer
        while len(buffer) < n:
            chunk = await self.stream.receive_some(max(65536, n - len(buffer)))
            if not chunk:
                raise ServerClosed(f"the VNC server at {self._where} closed the connection")
            buffer += chunk
        data = bytes(buffer[:n])
        del buffer[:n]
        return data

    async def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        return fmt.unpack(await self.read(fmt.size))

    async def compact_length(self) -> int:
        length = 0
        for i in range(3):
            (byte,) = await self.read(1)
            if i < 2:
                length |= (byte & 0x7F) << (7 * i)
                if not byte & 0x80:
                    return length
            else:
                length |= byte << 14
        return length


@dataclass(slots=True)
class Rect:
    """One rectangle as read from the wire, not yet decoded."""

    x: int
    y: int
    width: int
    height: int
    encoding: int
    data: bytes = b""
    control: int = 0  # Tight: the compression-control byte
    filter: int = 0  # Tight basic: the filter id
    palette: bytes = b""  # Tight basic: the palette filter's colours, 3 bytes each


_HEADER = struct.Struct(">HHHHi")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


@dataclass(slots=True)
class Framing:
    """What framing needs to know between updates: the desktop's current size."""

    width: int
    height: int
    resizable: bool = False


async def read_update(reader: RfbReader, framing: Framing, *, tight_png: bool = False,
                      part: Callable[[list[Rect]], Awaitable[None]] | None = None) -> list[Rect]:
    """The rectangles of one FramebufferUpdate (its type byte already read). Checks every
    rectangle against the desktop, so a decoder never writes outside the framebuffer.
    `tight_png`: also frame TightPNG (what the gateway sends browsers; the benchmark reads it).
    `part`: called, in order, with each run of rectangles holding PART_BYTES of data as soon as
    it is read; what it was not given is returned."""
    (_, count) = await reader.unpack(struct.Struct(">BH"))
    rects: list[Rect] = []
    data = 0
    for _ in range(count):
        x, y, w, h, encoding = await reader.unpack(_HEADER)
        if encoding == Encoding.LAST_RECT:
            break
        rect = Rect(x, y, w, h, encoding)
        if tight_png and encoding == Encoding.TIGHT_PNG:
            encoding = Encoding.TIGHT  # framed alike: PNG is Tight's control 0xA0
        if encoding in (Encoding.RAW, Encoding.COPY_RECT, Encoding.TIGHT, Encoding.ZRLE):
            if x + w > framing.width or y + h > framing.height:
                raise RfbError(f"a {w}x{h} rectangle at ({x},{y}) lies outside the "
                               f"{framing.width}x{framing.height} desktop")
        if encoding == Encoding.RAW:
            rect.data = await reader.read(w * h * 4)
        elif encoding == Encoding.COPY_RECT:
            rect.data = await reader.read(4)
            sx, sy = struct.unpack(">HH", rect.data)
            if sx + w > framing.width or sy + h > framing.height:
                raise RfbError("a CopyRect source lies outside the desktop")
        elif encoding == Encoding.TIGHT:
            await _read_tight(reader, rect, png=rect.encoding == Encoding.TIGHT_PNG)
        elif encoding == Encoding.ZRLE:
            (length,) = await reader.unpack(_U32)
            if length > MAX_ZRLE_BYTES:
                raise RfbError(f"a ZRLE rectangle of {length} bytes")
            rect.data = await reader.read(length)
        elif encoding == Encoding.CURSOR:
            if w > 256 or h > 256 or (w and x >= w) or (h and y >= h):
                raise RfbError(f"a {w}x{h} cursor with its hotspot at ({x},{y})")
            rect.data = await reader.read(w * h * 4 + (w + 7) // 8 * h)
        elif encoding == Encoding.DESKTOP_SIZE:
            check_size(w, h)
            framing.width, framing.height = w, h
        elif encoding == Encoding.EXTENDED_DESKTOP_SIZE:
            (screens,) = await reader.unpack(struct.Struct(">B3x"))
            rect.data = await reader.read(16 * screens)
            framing.resizable = True
            if y == 0:  # status 0: a size, not the refusal of a SetDesktopSize
                check_size(w, h)
                framing.width, framing.height = w, h
        elif encoding == Encoding.DESKTOP_NAME:
            (length,) = await reader.unpack(_U32)
            if length > MAX_NAME:
                raise RfbError(f"a desktop name of {length} bytes")
            rect.data = await reader.read(length)
        else:
            raise RfbError(f"the server sent encoding {encoding}, which was not asked for")
        rects.append(rect)
        data += len(rect.data)
        if part is not None and data >= PART_BYTES:
            await part(rects)
            rects, data = [], 0
    return rects


def check_size(w: int, h: int) -> None:
    if not (0 < w <= rfb.MAX_SIDE and 0 < h <= rfb.MAX_SIDE):
        raise RfbError(f"a desktop of {w}x{h}")


async def _read_tight(reader: RfbReader, rect: Rect, *, png: bool = False) -> None:
    (control,) = await reader.unpack(_U8)
    rect.control = control
    kind = control >> 4
    w, h = rect.width, rect.height
    if kind == 8:  # fill
        rect.data = await reader.read(3)
        return
    if kind == 9 or (kind == 10 and png):  # JPEG; TightPNG's PNG (framed, never decoded here)
        rect.data = await reader.read(await _tight_length(reader))
        return
    if kind & 8:
        raise RfbError(f"Tight compression control {control:#04x} is not defined")
    if w > 2048:
        raise RfbError("a Tight rectangle wider than 2048 pixels")
    rect.filter = (await reader.unpack(_U8))[0] if kind & 4 else 0
    if rect.filter == 0:
        size = w * h * 3
    elif rect.filter == 1:
        (colours,) = await reader.unpack(_U8)
        colours += 1
        if colours < 2:
            raise RfbError("a Tight palette of one colour")
        rect.palette = await reader.read(colours * 3)
        size = (w + 7) // 8 * h if colours == 2 else w * h
    elif rect.filter == 2:
        raise RfbError("the Tight gradient filter is not supported")
    else:
        raise RfbError(f"Tight filter {rect.filter} is not defined")
    if size < 12:
        rect.data = await reader.read(size)
        rect.control |= 0x100  # ours: uncompressed (below Tight's 12-byte threshold)
    else:
        rect.data = await reader.read(await _tight_length(reader))


async def _tight_length(reader: RfbReader) -> int:
    length = await reader.compact_length()
    if length > MAX_COMPACT_LENGTH:  # pragma: no cover - 22 bits cannot exceed it
        raise RfbError("a Tight length over 22 bits")
    return length


# --- decoding: what the worker thread does -----------------------------------------------------


def decode_work(rects: list[Rect]) -> tuple[int, int]:
    """(bytes, pixels) of the rectangles that `Decoder` must inflate or convert: not a Tight
    JPEG (only its header is read) or fill, a CopyRect or a pseudo-encoding."""
    data = pixels = 0
    for rect in rects:
        if rect.encoding in (Encoding.RAW, Encoding.ZRLE) or (
                rect.encoding == Encoding.TIGHT and (rect.control >> 4) & 0x0F not in (8, 9)):
            data += len(rect.data)
            pixels += rect.width * rect.height
    return data, pixels



def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _rgbx(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) → a new (h, w, 4) with X = 0."""
    out = np.zeros((*rgb.shape[:2], 4), np.uint8)
    out[:, :, :3] = rgb
    return out


def _palette(colours: np.ndarray) -> np.ndarray:
    """(n, 3) RGB → (n, 4) RGBX, for one fancy-indexing lookup per rectangle."""
    return _rgbx(colours.reshape(1, -1, 3))[0]


class Decoder:
    """Turns framed rectangles into display items. Keeps the zlib streams (Tight's four and
    ZRLE's one), so one decoder serves one connection attempt, one update at a time."""

    def __init__(self) -> None:
        self._tight = [zlib.decompressobj() for _ in range(4)]
        self._zrle = zlib.decompressobj()

    def decode(self, rects: list[Rect]) -> tuple[Any, ...]:
        items: list[Any] = []
        for rect in rects:
            try:
                item = self._decode(rect)
            except (zlib.error, ValueError) as exc:  # data that does not decode as it says
                raise RfbError(f"a rectangle of encoding {rect.encoding} did not decode "
                               f"({type(exc).__name__})") from None
            if item is not None:
                items.append(item)
        return tuple(items)

    def _decode(self, rect: Rect) -> Any:
        x, y, w, h = rect.x, rect.y, rect.width, rect.height
        enc = rect.encoding
        if enc == Encoding.RAW:
            rgbx = np.frombuffer(rect.data, np.uint8).reshape(h, w, 4).copy()
            rgbx[:, :, 3] = 0  # the padding byte is the server's to fill
            return DisplayPixels(x, y, w, h, _frozen(rgbx))
        if enc == Encoding.COPY_RECT:
            sx, sy = struct.unpack(">HH", rect.data)
            return DisplayCopy(x, y, w, h, sx, sy)
        if enc == Encoding.TIGHT:
            return self._tight_rect(rect)
        if enc == Encoding.ZRLE:
            return DisplayPixels(x, y, w, h, _frozen(self._zrle_rect(rect)))
        if enc == Encoding.CURSOR:
            return _cursor(rect)
        if enc == Encoding.DESKTOP_SIZE:
            return DisplaySize(w, h)
        if enc == Encoding.EXTENDED_DESKTOP_SIZE:
            if rect.y != 0:
                log.info("vnc: the server refused a desktop size change (status %d)", rect.y)
                return None
            return DisplaySize(w, h, resizable=True)
        if enc == Encoding.DESKTOP_NAME:
            return DisplayName(rect.data.decode("utf-8", "replace"))
        return None  # pragma: no cover - framing refuses every other encoding

    def _inflate(self, stream: Any, data: bytes, size: int) -> bytes:
        out = stream.decompress(data, size)
        if len(out) != size:
            raise RfbError(f"a compressed rectangle inflated to {len(out)} bytes, not {size}")
        return out

    def _tight_rect(self, rect: Rect) -> Any:
        x, y, w, h = rect.x, rect.y, rect.width, rect.height
        control = rect.control
        for i in range(4):
            if control & (1 << i):
                self._tight[i] = zlib.decompressobj()
        kind = (control >> 4) & 0x0F
        if kind == 8:
            return DisplayFill(x, y, w, h, (rect.data[0], rect.data[1], rect.data[2]))
        if kind == 9:
            # Only the header is read here (microseconds): the display model passes the bytes on
            # to the browsers first and decodes them after the fan-out (engine/display.py).
            try:
                height, width, _, _ = simplejpeg.decode_jpeg_header(rect.data)
            except ValueError as exc:
                raise RfbError(f"a Tight JPEG rectangle did not decode ({exc})") from None
            if (height, width) != (h, w):
                raise RfbError(f"a {w}x{h} Tight JPEG rectangle held a {width}x{height} image")
            return DisplayJpeg(x, y, w, h, rect.data)
        stream = self._tight[kind & 3]
        if rect.filter == 0:
            size = w * h * 3
            raw = rect.data if control & 0x100 else self._inflate(stream, rect.data, size)
            return DisplayPixels(x, y, w, h, _frozen(_rgbx(np.frombuffer(raw, np.uint8).reshape(h, w, 3))))
        palette = _palette(np.frombuffer(rect.palette, np.uint8))
        if len(palette) == 2:
            size = (w + 7) // 8 * h
            raw = rect.data if control & 0x100 else self._inflate(stream, rect.data, size)
            bits = np.unpackbits(np.frombuffer(raw, np.uint8).reshape(h, -1), axis=1)[:, :w]
            return DisplayPixels(x, y, w, h, _frozen(palette[bits]))
        size = w * h
        raw = rect.data if control & 0x100 else self._inflate(stream, rect.data, size)
        index = np.frombuffer(raw, np.uint8).reshape(h, w)
        if int(index.max()) >= len(palette):
            raise RfbError("a Tight palette index past the palette")
        return DisplayPixels(x, y, w, h, _frozen(palette[index]))

    def _zrle_rect(self, rect: Rect) -> np.ndarray:
        w, h = rect.width, rect.height
        tiles = ((w + 63) // 64) * ((h + 63) // 64)
        limit = tiles * (1 + 128 * 3) + w * h * 4  # the most any valid tile data can take
        data = self._zrle.decompress(rect.data, limit)
        if self._zrle.unconsumed_tail:
            raise RfbError("a ZRLE rectangle inflates past any valid size")
        out = np.zeros((h, w, 4), np.uint8)
        view = memoryview(data)
        pos = 0
        for ty in range(0, h, 64):
            th = min(64, h - ty)
            for tx in range(0, w, 64):
                tw = min(64, w - tx)
                pos = _zrle_tile(view, pos, out[ty:ty + th, tx:tx + tw, :3], tw, th)
        if pos != len(data):
            raise RfbError("a ZRLE rectangle with trailing data")
        return out


def _need(view: memoryview, pos: int, n: int) -> None:
    if pos + n > len(view):
        raise RfbError("a ZRLE tile is truncated")


def _zrle_tile(view: memoryview, pos: int, tile: np.ndarray, tw: int, th: int) -> int:
    _need(view, pos, 1)
    sub = view[pos]
    pos += 1
    count = tw * th
    if sub == 0:
        _need(view, pos, count * 3)
        tile[:] = np.frombuffer(view[pos:pos + count * 3], np.uint8).reshape(th, tw, 3)
        return pos + count * 3
    if sub == 1:
        _need(view, pos, 3)
        tile[:] = np.frombuffer(view[pos:pos + 3], np.uint8)
        return pos + 3
    if 2 <= sub <= 16:
        _need(view, pos, sub * 3)
        palette = np.frombuffer(view[pos:pos + sub * 3], np.uint8).reshape(sub, 3)
        pos += sub * 3
        bits = 1 if sub == 2 else 2 if sub <= 4 else 4
        row = (tw * bits + 7) // 8
        _need(view, pos, row * th)
        packed = np.frombuffer(view[pos:pos + row * th], np.uint8).reshape(th, row)
        if bits == 1:
            index = np.unpackbits(packed, axis=1)[:, :tw]
        elif bits == 2:
            index = np.stack([(packed >> s) & 3 for s in (6, 4, 2, 0)], axis=2).reshape(th, -1)[:, :tw]
        else:
            index = np.stack([packed >> 4, packed & 15], axis=2).reshape(th, -1)[:, :tw]
        if int(index.max()) >= sub:
            raise RfbError("a ZRLE palette index past the palette")
        tile[:] = palette[index]
        return pos + row * th
    if sub == 128 or sub >= 130:
        palette = None
        if sub >= 130:
            size = sub - 128
            _need(view, pos, size * 3)
            palette = np.frombuffer(view[pos:pos + size * 3], np.uint8).reshape(size, 3)
            pos += size * 3
        # Runs are parsed one by one (their lengths are variable-length); pixels are then
        # written with one numpy repeat, never one at a time.
        colours: list[int] = []
        lengths: list[int] = []
        total = 0
        end = len(view)
        while total < count:
            if palette is None:
                if pos + 3 > end:
                    raise RfbError("a ZRLE tile is truncated")
                colours.append(pos)
                pos += 3
                run = 1
                long_run = True
            else:
                if pos >= end:
                    raise RfbError("a ZRLE tile is truncated")
                byte = view[pos]
                pos += 1
                colours.append(byte & 0x7F)
                run = 1
                long_run = bool(byte & 0x80)
            if long_run:
                while True:
                    if pos >= end:
                        raise RfbError("a ZRLE tile is truncated")
                    byte = view[pos]
                    pos += 1
                    run += byte
                    if byte != 255:
                        break
            lengths.append(run)
            total += run
        if total != count:
            raise RfbError("a ZRLE run overflows its tile")
        if palette is None:
            starts = np.asarray(colours, np.intp)
            raw = np.frombuffer(view, np.uint8)
            pixels = np.stack([raw[starts], raw[starts + 1], raw[starts + 2]], axis=1)
        else:
            index = np.asarray(colours, np.intp)
            if int(index.max()) >= len(palette):
                raise RfbError("a ZRLE palette index past the palette")
            pixels = palette[index]
        tile[:] = np.repeat(pixels, lengths, axis=0).reshape(th, tw, 3)
        return pos
    raise RfbError(f"ZRLE tile subencoding {sub} is not defined")


def _cursor(rect: Rect) -> DisplayCursor:
    w, h = rect.width, rect.height
    if w == 0 or h == 0:
        return DisplayCursor(0, 0, 0, 0, b"")
    pixels = np.frombuffer(rect.data, np.uint8, w * h * 4).reshape(h, w, 4)
    mask = np.frombuffer(rect.data, np.uint8, offset=w * h * 4).reshape(h, -1)
    alpha = np.unpackbits(mask, axis=1)[:, :w] * np.uint8(255)
    rgba = np.concatenate([pixels[:, :, :3], alpha[:, :, None]], axis=2)
    return DisplayCursor(rect.x, rect.y, w, h, rgba.tobytes())



"""The display model of a graphical session: the framebuffer, the cursor and the desktop size,
and the one place where the browsers' frames are written.

A graphical endpoint connection (VNC; RDP through its VNC path) decodes what its server sends
into `engine.messages.Display*` items. The session's EndpointActor hands each `DisplayUpdate` to
`DisplayModel.update`, which applies it to the framebuffer (numpy) and encodes it **once** into
the frame every participant receives: an RFB FramebufferUpdate message whose rectangles are each
decodable alone, so that a late joiner or a resynchronised viewer can start at any keyframe:

- a solid rectangle is a Tight *fill* (3 bytes);
- pixels the endpoint sent as JPEG go on as the same Tight JPEG bytes (never encoded again)
  before they are decoded: *pending* (with what follows them) until `settle`, after the fan-out;
- other pixels become TightPNG's PNG (lossless: text stays sharp), or JPEG when PNG compresses
  them badly (a photograph from a server without Tight);
- CopyRect stays CopyRect (it reads the participant's own framebuffer, which the keyframe and
  the frames since have made equal to this one);
- the desktop size is an ExtendedDesktopSize (when the endpoint can resize) or DesktopSize
  rectangle.

The pointer is drawn into the frames, at the position the controller last moved it to, with the
shape the endpoint last sent (the endpoint is asked for the Cursor pseudo-encoding, so its
framebuffer, and the model's, never has the pointer in it): viewers see where the controller
points, and the frames stay the same bytes for everyone. Each frame that paints under the
pointer ends with a small patch of the pointer's box, composited; a CopyRect whose source holds
the pointer is sent as pixels instead (it would copy the pointer too).

No zlib stream or other state spans two messages: Tight's basic compression (stateful zlib) is
never used. Why RFB and not a format of our own: the browsers run noVNC, which decodes exactly
these rectangles; docs/vnc.md has the rest.

`keyframe()` writes the whole desktop (size, 256-pixel tiles, solid ones as fills, the pointer)
and keeps it until the next update, so any number of joiners and resyncs at one moment cost one
render; each tile's bytes are kept until something paints over it. A 1920x1080 keyframe costs
tens of milliseconds: the model is used from the EndpointActor's thread, never from the loop.

The framebuffer is RGBX, 4 bytes a pixel (X = 0): comparing pixels is one uint32 compare (solid
tiles are found ~15x faster); the frames use the one pixel format the gateway accepts from a
browser, 32-bit RGBX (protocols.rfb.RGBX).
"""

from __future__ import annotations

import logging
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import simplejpeg

from engine.messages import (
    DisplayCopy, DisplayCursor, DisplayFill, DisplayJpeg, DisplayName, DisplayPixels, DisplayPointer,
    DisplaySize, DisplayUpdate, Frame, Keyframe,
)

log = logging.getLogger(__name__)

# RFB encoding numbers the frames use (RFC 6143 and the community registry).
TIGHT = 7
TIGHT_PNG = -260
COPY_RECT = 1
DESKTOP_SIZE = -223
EXTENDED_DESKTOP_SIZE = -308
DESKTOP_NAME = -307

KEYFRAME_TILE = 256  # fewer, larger encodes: per-call costs dominated 128-pixel tiles
JPEG_QUALITY = 80
PNG_LEVEL = 1  # zlib effort: text compresses well at once, and a full screen must stay fast
PNG_MAX_RATIO = 0.5  # a PNG larger than this share of the raw pixels is re-encoded as JPEG
PNG_TRY_JPEG_AREA = 64 * 64  # below this, PNG whatever its size
FEW_COLOURS = 24  # of ~1024 pixels looked at: text and widgets, PNG
MANY_COLOURS = 320  # ... a photograph, JPEG
MAX_SIDE = 16384
PENDING_MAX_BYTES = 8 << 20  # pending past this is settled even while messages wait: bounded memory
FLUSH_BYTES = 16 * 1024  # a frame this large goes out at once, not at the end of a coalescing window

_RECT = struct.Struct(">HHHHi")
Box = tuple[int, int, int, int]  # x, y, width, height
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _compact_length(n: int) -> bytes:
    """Tight's 1-3 byte length."""
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0x400000:
        return bytes((n & 0x7F | 0x80, (n >> 7) & 0x7F | 0x80, n >> 14))
    raise ValueError(f"{n} bytes do not fit a Tight rectangle")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(pixels: np.ndarray, level: int = PNG_LEVEL) -> bytes:
    """An RGB PNG of (h, w, 3) RGB or (h, w, 4) RGBX pixels, filter None: numpy builds the
    rows, zlib compresses them."""
    h, w = pixels.shape[:2]
    rows = np.zeros((h, w * 3 + 1), np.uint8)
    rows[:, 1:] = pixels[:, :, :3].reshape(h, w * 3)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (_PNG_SIGNATURE + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + _png_chunk(b"IEND", b""))


def encode_jpeg(pixels: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """A JPEG of (h, w, 3) RGB or (h, w, 4) RGBX pixels (libjpeg-turbo reads either)."""
    colorspace = "RGBX" if pixels.shape[2] == 4 else "RGB"
    return simplejpeg.encode_jpeg(np.ascontiguousarray(pixels), quality=quality, colorspace=colorspace,
                                  colorsubsampling="420")


def _solid(pixels: np.ndarray) -> bool:
    """All pixels equal: one uint32 compare a pixel on an RGBX block."""
    words = pixels.view(np.uint32)
    return bool((words == words[0, 0]).all())


def _photographic(pixels: np.ndarray) -> bool:
    """Would PNG do badly here? First the colours of about a thousand pixels spread over the
    rectangle: text and widgets have a few (PNG), a photograph almost as many as pixels looked
    at (JPEG). Only in between, zlib on every eighth row answers for the whole rectangle, at an
    eighth of the cost of compressing all of it."""
    h, w = pixels.shape[:2]
    step = max(1, int((h * w / 1024) ** 0.5))
    colours = np.unique(pixels[::step, ::step].view(np.uint32)).size
    if colours <= FEW_COLOURS:
        return False
    if colours >= MANY_COLOURS:
        return True
    sample = np.ascontiguousarray(pixels[::8, :, :3])
    raw = sample.tobytes()
    return len(zlib.compress(raw, 1)) > PNG_MAX_RATIO * len(raw)


def _tight(x: int, y: int, w: int, h: int, control: int, payload: bytes, *, png: bool = False) -> bytes:
    return _RECT.pack(x, y, w, h, TIGHT_PNG if png else TIGHT) + bytes((control,)) + _compact_length(len(payload)) + payload


def _fill(x: int, y: int, w: int, h: int, colour: Any) -> bytes:
    return _RECT.pack(x, y, w, h, TIGHT) + b"\x80" + bytes(colour)


@dataclass(slots=True)
class _Pending:
    """A JPEG, a fill or pixels already sent to the participants, not yet in the framebuffer."""

    box: Box
    jpeg: bytes | None = None
    colour: tuple[int, int, int] | None = None
    rgbx: np.ndarray | None = None  # the pixels: decoded pixels, or the JPEG once something needed it

    def pixels(self) -> np.ndarray | None:
        """The JPEG's RGBX pixels (decoded once); None for a fill, or a JPEG that does not decode."""
        if self.jpeg is not None and self.rgbx is None:
            x, y, w, h = self.box
            try:
                rgbx = simplejpeg.decode_jpeg(self.jpeg, colorspace="RGBX")
                if rgbx.shape[:2] != (h, w):
                    raise ValueError(f"it holds a {rgbx.shape[1]}x{rgbx.shape[0]} image")
            except ValueError as exc:  # the participants got no picture either: keep what was there
                log.warning("display model: the endpoint's %dx%d JPEG at (%d,%d) did not decode (%s)", w, h, x, y, exc)
                self.jpeg = None
                return None
            rgbx[:, :, 3] = 0
            self.rgbx = rgbx
        return self.rgbx

    def paint(self, target: np.ndarray, tx: int, ty: int) -> None:
        """Paint into `target`, the framebuffer's region at (tx, ty), what of this falls in it."""
        x, y, w, h = self.box
        th, tw = target.shape[:2]
        x0, y0, x1, y1 = max(x, tx), max(y, ty), min(x + w, tx + tw), min(y + h, ty + th)
        if x1 <= x0 or y1 <= y0:
            return
        if self.colour is not None:
            target[y0 - ty:y1 - ty, x0 - tx:x1 - tx, :3] = self.colour
            return
        pixels = self.pixels()
        if pixels is not None:
            target[y0 - ty:y1 - ty, x0 - tx:x1 - tx] = pixels[y0 - y:y1 - y, x0 - x:x1 - x]


class DisplayModel:
    """The desktop as it is now, for one graphical session (the `ScreenModel` of a VNC or RDP
    session). `update` returns the frame for every participant; `keyframe` the whole desktop."""

    def __init__(self, *, jpeg_quality: int = JPEG_QUALITY, png_level: int = PNG_LEVEL) -> None:
        self.width = 0
        self.height = 0
        self.resizable = False
        self.name = ""
        self.framebuffer = np.zeros((0, 0, 4), np.uint8)  # RGBX, X = 0
        self.cursor: DisplayCursor | None = None
        self.pointer: tuple[int, int] | None = None  # where the controller's pointer is, if known
        self._cursor_rgba: np.ndarray | None = None  # (h, w, 4) of `cursor`
        self._tile_cache: dict[tuple[int, int], bytes] = {}  # a keyframe's tiles, by (row, column), still valid
        self._pending: list[_Pending] = []  # sent on, not yet in the framebuffer, in order (`settle`)
        self._pending_bytes = 0
        self._painted: list[Box] = []  # during an update: what its items painted (over the pointer?)
        self._repaint: list[Box] = []  # ... and where the pointer was or is, if it moved or changed
        self._jpeg_quality = jpeg_quality
        self._png_level = png_level
        self._lock = threading.Lock()
        self._version = 0
        self._keyframe: tuple[int, Keyframe] | None = None
        # counters, for tests and benchmarks
        self.updates = 0
        self.rects_passed = 0  # the endpoint's JPEG passed on as is
        self.rects_encoded = 0
        self.keyframes_rendered = 0

    # --- the ScreenModel interface ---------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes are terminal output; a desktop never gets any."""
        raise TypeError("a display model takes DisplayUpdates, not terminal bytes")

    def idle(self) -> None:
        pass

    def resize(self, cols: int, rows: int) -> None:
        """A terminal resize: the desktop's size comes from the endpoint, not the window."""

    def update(self, update: DisplayUpdate) -> Frame | None:
        """Apply `update`; the frame for every participant, or None if nothing shows."""
        with self._lock:
            rects: list[bytes] = []
            self._painted, self._repaint = [], []
            for item in update.items:
                rects += self._apply(item)
            self._invalidate(self._painted)
            rects += self._pointer_patches(self._painted, self._repaint)
            self.updates += 1
            if not rects:
                return None
            self._version += 1
            data = _update_message(rects)
            return Frame(data, update.emitted_ns, flush=len(data) >= FLUSH_BYTES)

    def keyframe(self) -> Keyframe:
        with self._lock:
            self._settle()
            cached = self._keyframe
            if cached is not None and cached[0] == self._version:
                return cached[1]
            rects = []
            if self.width and self.height:  # before the endpoint's first answer there is no desktop
                rects = [self._size_rect(), *self._keyframe_tiles(),
                         *self._pointer_patches([(0, 0, self.width, self.height)], [])]
            keyframe = Keyframe(_update_message(rects), self.width, self.height)
            self._keyframe = (self._version, keyframe)
            self.keyframes_rendered += 1
            return keyframe

    def snapshot(self) -> np.ndarray:
        """A copy of the framebuffer as (height, width, 3) RGB, for tests and snapshots."""
        with self._lock:
            self._settle()
            return self.framebuffer[:, :, :3].copy()

    def settle(self, *, idle: bool = True) -> None:
        """Decode into the framebuffer what the last updates passed on undecoded (the endpoint's
        JPEGs, and the fills among them). The EndpointActor calls it after each fan-out; when
        messages wait for its thread (`idle` false: the next part of a full-screen change, say)
        it is left for later, up to PENDING_MAX_BYTES."""
        with self._lock:
            if idle or self._pending_bytes > PENDING_MAX_BYTES:
                self._settle()

    def _settle(self) -> None:
        for pending in self._pending:
            pending.paint(self.framebuffer, 0, 0)
        self._pending.clear()
        self._pending_bytes = 0

    # --- applying one item --------------------------------------------------------------------

    def _apply(self, item: Any) -> list[bytes]:
        """Apply one item; the frame's rectangles for it (none, one, or the tiles of a large one)."""
        match item:
            case DisplayJpeg(x=x, y=y, width=w, height=h, jpeg=jpeg):
                if not self._inside(x, y, w, h):
                    return []
                self._pending.append(_Pending((x, y, w, h), jpeg=jpeg))
                self._pending_bytes += len(jpeg)
                self._painted.append((x, y, w, h))
                self.rects_passed += 1
                return [_tight(x, y, w, h, 0x90, jpeg)]
            case DisplayPixels(x=x, y=y, width=w, height=h, rgbx=rgbx, jpeg=jpeg):
                if not self._inside(x, y, w, h) or rgbx.shape != (h, w, 4):
                    return []
                self._painted.append((x, y, w, h))
                large = w * h > 4 * KEYFRAME_TILE * KEYFRAME_TILE  # tiles encode faster and smaller
                if self._pending and jpeg is None and not large:
                    # among pending JPEG (a server's mixed update): in order with it, not decoding it
                    self._pending.append(_Pending((x, y, w, h), rgbx=rgbx))
                    self._pending_bytes += rgbx.nbytes
                    return [self._encode(x, y, w, h, rgbx)]
                self._settle()
                self.framebuffer[y:y + h, x:x + w] = rgbx
                if jpeg is not None:
                    self.rects_passed += 1
                    return [_tight(x, y, w, h, 0x90, jpeg)]
                if large:
                    return self._tiles(x, y, w, h)
                return [self._encode(x, y, w, h, rgbx)]
            case DisplayFill(x=x, y=y, width=w, height=h, colour=colour):
                if not self._inside(x, y, w, h):
                    return []
                if self._pending:  # after a pending JPEG, and painted in order with it
                    self._pending.append(_Pending((x, y, w, h), colour=tuple(colour)))
                else:
                    self.framebuffer[y:y + h, x:x + w, :3] = colour
                self._painted.append((x, y, w, h))
                return [_fill(x, y, w, h, colour)]
            case DisplayCopy(x=x, y=y, width=w, height=h, src_x=sx, src_y=sy):
                if not (self._inside(x, y, w, h) and self._inside(sx, sy, w, h)):
                    return []
                self._settle()
                self.framebuffer[y:y + h, x:x + w] = self.framebuffer[sy:sy + h, sx:sx + w].copy()
                self._painted.append((x, y, w, h))
                if _overlap((sx, sy, w, h), self._pointer_box()):
                    # the participants' source holds the drawn pointer: send the pixels instead
                    return self._tiles(x, y, w, h)
                return [_RECT.pack(x, y, w, h, COPY_RECT) + struct.pack(">HH", sx, sy)]
            case DisplaySize(width=w, height=h, resizable=resizable):
                if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
                    return []
                if (w, h) != (self.width, self.height):
                    self._settle()
                    self._tile_cache.clear()
                    old = self.framebuffer
                    self.framebuffer = np.zeros((h, w, 4), np.uint8)
                    keep_h, keep_w = min(h, old.shape[0]), min(w, old.shape[1])
                    self.framebuffer[:keep_h, :keep_w] = old[:keep_h, :keep_w]
                    self.width, self.height = w, h
                self.resizable = self.resizable or resizable
                self._painted.append((0, 0, w, h))
                return [self._size_rect()]
            case DisplayCursor(width=w, height=h, rgba=rgba):
                old = self._pointer_box()
                self.cursor = item
                self._cursor_rgba = np.frombuffer(rgba, np.uint8).reshape(h, w, 4) if w and h else None
                self._repaint += [b for b in (old, self._pointer_box()) if b is not None]
                return []
            case DisplayPointer(x=px, y=py):
                if self.pointer != (px, py):
                    old = self._pointer_box()
                    self.pointer = (px, py)
                    self._repaint += [b for b in (old, self._pointer_box()) if b is not None]
                return []
            case DisplayName(name=name):
                self.name = name
                return []
        log.warning("display model ignored %s", type(item).__name__)
        return []

    def _inside(self, x: int, y: int, w: int, h: int) -> bool:
        # The connection checks every rectangle against the desktop; this keeps a buggy one
        # from corrupting the model (numpy would silently clip).
        return x >= 0 and y >= 0 and x + w <= self.width and y + h <= self.height

    def _encode(self, x: int, y: int, w: int, h: int, rgbx: np.ndarray) -> bytes:
        self.rects_encoded += 1
        if _solid(rgbx):
            return _fill(x, y, w, h, rgbx[0, 0, :3])
        if w * h >= PNG_TRY_JPEG_AREA and _photographic(rgbx):
            return _tight(x, y, w, h, 0x90, encode_jpeg(rgbx, self._jpeg_quality))
        return _tight(x, y, w, h, 0xA0, encode_png(rgbx, self._png_level), png=True)

    def _size_rect(self) -> bytes:
        if self.resizable:
            # one screen covering the desktop: what noVNC needs to offer the controller resizing
            screen = struct.pack(">IHHHHI", 0, 0, 0, self.width, self.height, 0)
            return _RECT.pack(0, 0, self.width, self.height, EXTENDED_DESKTOP_SIZE) + b"\x01\0\0\0" + screen
        return _RECT.pack(0, 0, self.width, self.height, DESKTOP_SIZE)

    def _pointer_box(self) -> Box | None:
        """(x, y, w, h) of the drawn pointer, clipped to the desktop; None if none is drawn."""
        cursor, pointer = self.cursor, self.pointer
        if cursor is None or pointer is None or self._cursor_rgba is None:
            return None
        x0, y0 = pointer[0] - cursor.hot_x, pointer[1] - cursor.hot_y
        x1, y1 = min(self.width, x0 + cursor.width), min(self.height, y0 + cursor.height)
        x0, y0 = max(0, x0), max(0, y0)
        if x1 <= x0 or y1 <= y0:
            return None
        return x0, y0, x1 - x0, y1 - y0

    def _pointer_patches(self, painted: list[Box], repaint: list[Box]) -> list[bytes]:
        """Rectangles that put the pointer back: over the pointer's box if anything was painted
        over it, and over every box the pointer left or took. Each is the framebuffer's pixels
        with the pointer drawn in (PNG: a few hundred bytes)."""
        box = self._pointer_box()
        regions = list(repaint)
        if box is not None and any(_overlap(p, box) for p in painted):
            regions.append(box)
        merged: list[Box] = []
        for region in regions:  # a few boxes at most: merge those that touch
            for i, other in enumerate(merged):
                if _overlap(region, other):
                    merged[i] = _union(region, other)
                    break
            else:
                merged.append(region)
        return [self._patch(region, box) for region in merged]

    def _patch(self, region: Box, box: Box | None) -> bytes:
        x, y, w, h = region
        pixels = self.framebuffer[y:y + h, x:x + w].copy()
        for pending in self._pending:  # what the participants have under the pointer already
            pending.paint(pixels, x, y)
        if box is not None and _overlap(region, box):
            assert self.cursor is not None and self.pointer is not None and self._cursor_rgba is not None
            # the part of the pointer's box inside the region, and where it is in the shape
            x0, y0 = max(x, box[0]), max(y, box[1])
            x1, y1 = min(x + w, box[0] + box[2]), min(y + h, box[1] + box[3])
            sx, sy = x0 - (self.pointer[0] - self.cursor.hot_x), y0 - (self.pointer[1] - self.cursor.hot_y)
            shape = self._cursor_rgba[sy:sy + (y1 - y0), sx:sx + (x1 - x0)]
            target = pixels[y0 - y:y1 - y, x0 - x:x1 - x]
            opaque = shape[:, :, 3] >= 128
            target[opaque, :3] = shape[opaque, :3]
        self.rects_encoded += 1
        return _tight(x, y, w, h, 0xA0, encode_png(pixels, self._png_level), png=True)

    def _invalidate(self, painted: list[Box]) -> None:
        """Forget the cached keyframe tiles under what was painted."""
        if not self._tile_cache:
            return
        tile = KEYFRAME_TILE
        for x, y, w, h in painted:
            for row in range(y // tile, (y + h - 1) // tile + 1):
                for column in range(x // tile, (x + w - 1) // tile + 1):
                    self._tile_cache.pop((row, column), None)

    def _keyframe_tiles(self) -> list[bytes]:
        """The whole desktop in KEYFRAME_TILE squares. A tile nothing painted since the last
        keyframe is the same bytes as then: a late joiner of a desktop where little moves costs
        the encoding of what moved, not of the whole screen."""
        tile, cache = KEYFRAME_TILE, self._tile_cache
        rects = []
        for row, y in enumerate(range(0, self.height, tile)):
            h = min(tile, self.height - y)
            for column, x in enumerate(range(0, self.width, tile)):
                cached = cache.get((row, column))
                if cached is None:
                    w = min(tile, self.width - x)
                    cached = cache[(row, column)] = self._encode(x, y, w, h, self.framebuffer[y:y + h, x:x + w])
                rects.append(cached)
        return rects

    def _tiles(self, x0: int = 0, y0: int = 0, w: int | None = None, h: int | None = None) -> list[bytes]:
        """A region of the framebuffer (the whole of it by default) in KEYFRAME_TILE squares:
        solid ones (found for a whole band of tiles at once) as fills, the rest encoded."""
        tile = KEYFRAME_TILE
        w = self.width if w is None else w
        h = self.height if h is None else h
        if h == 0 or w == 0:
            return []
        fb = self.framebuffer[y0:y0 + h, x0:x0 + w]
        rects = []
        for ty in range(0, h, tile):
            band = fb[ty:ty + tile]
            th = band.shape[0]
            full = (w // tile) * tile
            solid: list[bool] = []
            if full:
                words = band[:, :full].view(np.uint32).reshape(th, w // tile, tile)
                solid = list((words == words[:1, :, :1]).all(axis=(0, 2)))
            for i, tx in enumerate(range(0, w, tile)):
                tw = min(tile, w - tx)
                pixels = band[:, tx:tx + tw]
                if i < len(solid) and solid[i]:
                    rects.append(_fill(x0 + tx, y0 + ty, tw, th, pixels[0, 0, :3]))
                else:
                    rects.append(self._encode(x0 + tx, y0 + ty, tw, th, pixels))
        return rects


def _overlap(a: Box, b: Box | None) -> bool:
    if b is None:
        return False
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _union(a: Box, b: Box) -> Box:
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return x0, y0, x1 - x0, y1 - y0


def _update_message(rects: list[bytes]) -> bytes:
    """A FramebufferUpdate of `rects`. More than 65535 rectangles never happen in one update
    (the tiles of a 16384x16384 desktop are 16384)."""
    return struct.pack(">BxH", 0, len(rects)) + b"".join(rects)

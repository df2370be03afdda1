"""A graphical session's recording (VNC, RDP): the RFB update stream its participants received,
with keyframes at least every `recordings.keyframe_seconds` and, at close, an index to seek by
(docs/recordings.md, "The desktop file"). Written by `DesktopEncoder` (for engine/recorder.py),
read by `read_desktop`, `desktop_start` and `desktop_frames` (the desktop player's replay).
"""

from __future__ import annotations

import bisect
import json
import os
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

import numpy as np

from engine.messages import Keyframe
from engine.recordings import DESKTOP_FORMAT, DESKTOP_SUFFIX, CorruptRecording, RecordingMeta

# --- the RFB stream (graphical sessions) ---------------------------------------------------------
#
# A binary file (docs/recordings.md, "The desktop file"): an 8-byte magic, then records of
#   kind (1 byte) | time (uint64, microseconds since the session started) | length (uint32) | payload
# H header (JSON, first), U frames (RFB FramebufferUpdate messages, as every viewer got them),
# K keyframe (uint16 width, uint16 height, then one FramebufferUpdate of the whole desktop),
# M marker (UTF-8), and at close X the index: JSON {"keyframes": [[t, offset], ...],
# "markers": [[t, label], ...], "duration": t}, followed by the uint64 offset of the X record
# and the 8 bytes INDEX_MAGIC, so the last 16 bytes of a closed file find it.

DESKTOP_MAGIC = b"CSRFB\x00\x01\n"
INDEX_MAGIC = b"CSRFBIDX"
_RECORD = struct.Struct(">cQI")
_KEYFRAME_SIZE = struct.Struct(">HH")
_FOOTER = struct.Struct(">Q8s")
MAX_RECORD_BYTES = 64 << 20  # a 16384x16384 keyframe stays far below; more means a corrupt file


def _us(t: float) -> int:
    return max(0, int(round(t * 1_000_000)))


def _record(kind: bytes, t: float, payload: bytes) -> bytes:
    return _RECORD.pack(kind, _us(t), len(payload)) + payload


class DesktopEncoder:
    """A graphical session as the RFB stream its participants received (engine/display.py's
    frames, passed on as they are), with a keyframe of the whole desktop at least every
    `recordings.keyframe_seconds` (the recorder asks the endpoint for one), markers, and at
    close the index of the keyframes and markers. It counts the bytes it returns: the writer
    writes them all, in order, so that count is each record's offset in the file."""

    format = DESKTOP_FORMAT
    suffix = DESKTOP_SUFFIX
    wants_keyframes = True

    def __init__(self, meta: RecordingMeta) -> None:
        self._meta = meta
        self._offset = 0
        self._keyframes: list[list[Any]] = []
        self._markers: list[list[Any]] = []
        self._last_t = 0.0

    def _out(self, data: bytes, t: float | None = None) -> bytes:
        self._offset += len(data)
        if t is not None:
            self._last_t = max(self._last_t, t)
        return data

    def header(self) -> bytes:
        m = self._meta
        header = {"format": DESKTOP_FORMAT, "title": f"{m.endpoint_name}: {m.controller_name}",
                  "cosession": {"session_id": m.session_id, "endpoint_id": m.endpoint_id, "endpoint": m.endpoint_name,
                                "protocol": m.protocol, "controller_id": m.controller_id,
                                "controller": m.controller_name, "started_at": m.started_at}}
        return self._out(DESKTOP_MAGIC + _record(b"H", 0.0, json.dumps(header).encode()))

    def output(self, t: float, data: bytes) -> bytes:
        return self._out(_record(b"U", t, data), t) if data else b""

    def keyframe(self, t: float, keyframe: Keyframe) -> bytes:
        """Before the desktop's first answer a keyframe is empty (0x0): nothing to seek to."""
        if not (keyframe.cols and keyframe.rows):
            return b""
        self._keyframes.append([round(t, 6), self._offset])
        return self._out(_record(b"K", t, _KEYFRAME_SIZE.pack(keyframe.cols, keyframe.rows) + keyframe.data), t)

    def resize(self, t: float, cols: int, rows: int) -> bytes:
        return b""  # a desktop's size is in its frames (DesktopSize), not the browser window's

    def input(self, t: float, data: bytes) -> bytes:
        return b""  # a desktop's input is RFB key and pointer events: not recorded

    def marker(self, t: float, label: str) -> bytes:
        self._markers.append([round(t, 6), label])
        return self._out(_record(b"M", t, label.encode("utf-8")), t)

    def trailer(self) -> bytes:
        index = json.dumps({"keyframes": self._keyframes, "markers": self._markers,
                            "duration": round(self._last_t, 6)}).encode()
        at = self._offset
        return self._out(_record(b"X", self._last_t, index + _FOOTER.pack(at, INDEX_MAGIC)))


@dataclass(slots=True)
class DesktopRecording:
    """What a reader needs of a desktop recording: its header, where its keyframes are, its
    markers, how long it is, and how many of its bytes are whole records."""

    header: dict[str, Any]
    keyframes: list[tuple[float, int]]  # (time, offset of the K record)
    markers: list[tuple[float, str]]
    duration: float
    end: int  # the offset after the last whole record (before the index, if any)
    indexed: bool  # read from the index a closed file ends with (else by a walk over the records)
    truncated: bool = False  # a last record cut by a crash: left out
    width: int = 0  # the first keyframe's desktop, or 0 before any
    height: int = 0


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    return data if len(data) == n else b""


def _read_header(f: BinaryIO) -> tuple[dict[str, Any], int]:
    f.seek(0)
    if _read_exact(f, len(DESKTOP_MAGIC)) != DESKTOP_MAGIC:
        raise CorruptRecording("not a cosession desktop recording (bad magic)")
    raw = _read_exact(f, _RECORD.size)
    if not raw:
        raise CorruptRecording("the recording is empty: no header")
    kind, _, length = _RECORD.unpack(raw)
    if kind != b"H" or length > MAX_RECORD_BYTES:
        raise CorruptRecording("the first record is not a header")
    try:
        header = json.loads(_read_exact(f, length))
    except ValueError:
        raise CorruptRecording("the header is not JSON") from None
    if not isinstance(header, dict) or header.get("format") != DESKTOP_FORMAT:
        raise CorruptRecording(f"the header is not {DESKTOP_FORMAT}")
    return header, f.tell()


def _walk(f: BinaryIO, start: int, size: int) -> Iterator[tuple[bytes, float, int, int]]:
    """(kind, time, offset, length) of each whole record from `start`, payloads skipped."""
    offset = start
    while offset + _RECORD.size <= size:
        f.seek(offset)
        kind, t_us, length = _RECORD.unpack(_read_exact(f, _RECORD.size))
        if kind not in b"HUKMX" or len(kind) != 1 or length > MAX_RECORD_BYTES:
            raise CorruptRecording(f"the record at byte {offset} is not one (kind {kind!r}, {length} bytes)")
        if offset + _RECORD.size + length > size:
            return
        yield kind, t_us / 1_000_000, offset, length
        offset += _RECORD.size + length


def read_desktop(f: BinaryIO, size: int | None = None) -> DesktopRecording:
    """The header, keyframes and markers of a desktop recording (`f` open for binary reading,
    `size` the bytes to consider: all of the file by default). A closed recording is read from
    its index (the last 16 bytes find it); one being written, or left open by a crash, by a walk
    over its records' headers. Raises `CorruptRecording` naming what is wrong."""
    if size is None:
        f.seek(0, os.SEEK_END)
        size = f.tell()
    header, first = _read_header(f)
    if size >= first + _RECORD.size + _FOOTER.size:
        f.seek(size - _FOOTER.size)
        at, magic = _FOOTER.unpack(_read_exact(f, _FOOTER.size))
        if magic == INDEX_MAGIC:
            recording = _from_index(f, header, at, size)
            if recording is not None:
                _dimensions(f, recording)
                return recording
    keyframes: list[tuple[float, int]] = []
    markers: list[tuple[float, str]] = []
    end, duration, previous = first, 0.0, 0.0
    for kind, t, offset, length in _walk(f, first, size):
        if t < previous:
            raise CorruptRecording(f"the record at byte {offset} goes back in time ({t} after {previous})")
        previous = duration = t
        if kind == b"K":
            keyframes.append((t, offset))
        elif kind == b"M":
            f.seek(offset + _RECORD.size)
            markers.append((t, _read_exact(f, length).decode("utf-8", "replace")))
        elif kind == b"X":
            break
        end = offset + _RECORD.size + length
    recording = DesktopRecording(header, keyframes, markers, duration, end, indexed=False, truncated=end < size)
    _dimensions(f, recording)
    return recording


def _from_index(f: BinaryIO, header: dict[str, Any], at: int, size: int) -> DesktopRecording | None:
    f.seek(at)
    raw = _read_exact(f, _RECORD.size)
    if not raw:
        return None
    kind, _, length = _RECORD.unpack(raw)
    if kind != b"X" or at + _RECORD.size + length != size or length < _FOOTER.size:
        return None
    try:
        index = json.loads(_read_exact(f, length - _FOOTER.size))
        keyframes = [(float(t), int(o)) for t, o in index["keyframes"]]
        markers = [(float(t), str(label)) for t, label in index["markers"]]
        duration = float(index["duration"])
    except (ValueError, KeyError, TypeError):
        raise CorruptRecording(f"the index at byte {at} does not parse") from None
    if any(not 0 < o < at for _, o in keyframes):
        raise CorruptRecording(f"the index at byte {at} points outside the recording")
    return DesktopRecording(header, keyframes, markers, duration, at, indexed=True)


def _dimensions(f: BinaryIO, recording: DesktopRecording) -> None:
    if recording.keyframes:
        f.seek(recording.keyframes[0][1] + _RECORD.size)
        recording.width, recording.height = _KEYFRAME_SIZE.unpack(_read_exact(f, _KEYFRAME_SIZE.size))


@dataclass(frozen=True, slots=True)
class DesktopStart:
    """Where a replay from time `at` starts: the desktop's size, the keyframe at or before `at`
    with the frames after it up to `at` (one batch, shown at once), and the offset of the first
    record after `at` (then played on its time)."""

    width: int
    height: int
    catch_up: bytes
    next_offset: int


def desktop_start(f: BinaryIO, recording: DesktopRecording, at: float) -> DesktopStart:
    """Seek: the nearest keyframe at or before `at` (binary search of the index), then the frames
    from it to `at`, less what they paint over (`coalesce`). Before the first keyframe: the
    frames from the start."""
    times = [t for t, _ in recording.keyframes]
    i = bisect.bisect_right(times, at) - 1
    _, first = _read_header(f)
    start = recording.keyframes[i][1] if i >= 0 else first
    width, height = recording.width, recording.height
    parts: list[bytes] = []
    next_offset = recording.end
    for kind, t, offset, length in _walk(f, start, recording.end):
        if t > at:
            next_offset = offset
            break
        f.seek(offset + _RECORD.size)
        payload = _read_exact(f, length)
        if kind == b"K":
            width, height = _KEYFRAME_SIZE.unpack_from(payload)
            parts = [payload[_KEYFRAME_SIZE.size:]]
        elif kind == b"U":
            parts.append(payload)
    return DesktopStart(width, height, coalesce(b"".join(parts)), next_offset)


def desktop_frames(f: BinaryIO, start: int, end: int) -> Iterator[tuple[float, bytes, int]]:
    """(time, frames, offset of the next record) of each U and K record from offset `start` to
    `end`, to play on their times."""
    for kind, t, offset, length in _walk(f, start, end):
        if kind in (b"U", b"K"):
            f.seek(offset + _RECORD.size)
            payload = _read_exact(f, length)
            yield t, payload[_KEYFRAME_SIZE.size:] if kind == b"K" else payload, offset + _RECORD.size + length


# --- the catch-up of a seek, without what is painted over before it is seen ----------------------

_RECT = struct.Struct(">HHHHi")
_TIGHT, _TIGHT_PNG, _COPY_RECT, _CURSOR = 7, -260, 1, -239
_DESKTOP_SIZE, _EXTENDED_DESKTOP_SIZE = -223, -308


def _rects(data: bytes) -> list[tuple[int, int, int, int, int, int, int]] | None:
    """(x, y, w, h, encoding, start, end) of every rectangle of a run of FramebufferUpdate
    messages as the display model writes them; None if anything else is in it."""
    view, pos, out = memoryview(data), 0, []
    while pos < len(view):
        if len(view) < pos + 4 or view[pos] != 0:
            return None
        (count,) = struct.unpack_from(">H", view, pos + 2)
        pos += 4
        for _ in range(count):
            if len(view) < pos + 12:
                return None
            x, y, w, h, enc = _RECT.unpack_from(view, pos)
            start = pos
            pos += 12
            if enc in (_TIGHT, _TIGHT_PNG):
                if len(view) <= pos:
                    return None
                control = view[pos] >> 4
                pos += 1
                if control == 8:
                    pos += 3
                elif control in (9, 10):
                    length, shift = 0, 0
                    for i in range(3):
                        if len(view) <= pos:
                            return None
                        byte = view[pos]
                        pos += 1
                        length |= (byte & (0xFF if i == 2 else 0x7F)) << shift
                        shift += 7
                        if i < 2 and not byte & 0x80:
                            break
                    pos += length
                else:
                    return None  # basic compression: zlib state across rectangles
            elif enc == _COPY_RECT:
                pos += 4
            elif enc == _CURSOR:
                pos += w * h * 4 + (w + 7) // 8 * h
            elif enc == _EXTENDED_DESKTOP_SIZE:
                if len(view) <= pos:
                    return None
                pos += 4 + 16 * view[pos]
            elif enc != _DESKTOP_SIZE:
                return None
            if pos > len(view):
                return None
            out.append((x, y, w, h, enc, start, pos))
    return out


def coalesce(catch_up: bytes) -> bytes:
    """A seek's catch-up (a keyframe and the frames after it) without the rectangles that later
    ones paint over before anything reads them: the same picture at the end, for far fewer bytes
    to send and draw when a busy part of the desktop repaints many times between two keyframes.
    A backward pass keeps a mask of the pixels whose value is never seen again; a rectangle is
    dropped only if all of its pixels are such. CopyRect reads its source, which makes it seen.
    Anything it cannot follow (a size change after the start, a rectangle it does not parse)
    leaves the catch-up as it is."""
    rects = _rects(catch_up)
    if not rects or rects[0][4] not in (_DESKTOP_SIZE, _EXTENDED_DESKTOP_SIZE):
        return catch_up
    if any(r[4] in (_DESKTOP_SIZE, _EXTENDED_DESKTOP_SIZE) for r in rects[1:]):
        return catch_up
    width, height = rects[0][2], rects[0][3]
    dead = np.zeros((height, width), bool)
    keep = [False] * len(rects)
    keep[0] = True
    for i in range(len(rects) - 1, 0, -1):
        x, y, w, h, enc, start, end = rects[i]
        if enc == _CURSOR:
            keep[i] = True
            continue
        x1, y1 = min(x + w, width), min(y + h, height)
        if x >= x1 or y >= y1 or dead[y:y1, x:x1].all():
            continue
        keep[i] = True
        dead[y:y1, x:x1] = True
        if enc == _COPY_RECT:
            sx, sy = struct.unpack_from(">HH", catch_up, end - 4)
            dead[sy:sy + h, sx:sx + w] = False
    kept = [catch_up[r[5]:r[6]] for r, k in zip(rects, keep) if k]
    out = []
    for i in range(0, len(kept), 0xFFFF):
        chunk = kept[i:i + 0xFFFF]
        out.append(struct.pack(">BxH", 0, len(chunk)) + b"".join(chunk))
    return b"".join(out)

"""Session recordings: their files, their markers, and reading them back (docs/recordings.md).

What a recording *is* lives here, for the writer (engine/recorder.py) and for every reader (the
dashboard's player, `cosession recordings`, `engine.recording_log.verify_recordings`):

- where a session's file is (`recording_path`, `find_recording`): one file per session in the
  recordings directory, named after the session;
- which audit events become markers on its timeline, and their labels (`marker_label`);
- a terminal session's recording as asciicast v2 (`CastEncoder`, `read_cast`);
- a graphical session's (VNC, RDP) as the RFB update stream its viewers received, with periodic
  keyframes and an index to seek by (`DesktopEncoder`, `read_desktop`, `desktop_replay`).

A recording is written append-only and read while it is written, so a reader takes what is
there: a last line cut by a crash is left out (`Cast.truncated`), anything else that does not
parse is a `CorruptRecording` that names the line.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

from engine.messages import EndpointProtocol, Keyframe

CAST_SUFFIX = ".cast"
DESKTOP_SUFFIX = ".rfbrec"
SUFFIXES = (CAST_SUFFIX, DESKTOP_SUFFIX)
CAST_FORMAT = "asciicast-v2"
DESKTOP_FORMAT = "cosession-rfb-v1"
GRAPHICAL_PROTOCOLS = frozenset({"vnc", "rdp"})

_SESSION_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")  # what a session id may be in a file name


class CorruptRecording(Exception):
    """A recording that does not parse: the message says where."""


# --- where -------------------------------------------------------------------------------------


def valid_session_id(session_id: str) -> bool:
    """Whether `session_id` can name a file (ids come from URLs: nothing like ``../``)."""
    return bool(_SESSION_ID.match(session_id or ""))


def is_graphical(protocol: EndpointProtocol | str) -> bool:
    return str(getattr(protocol, "value", protocol)) in GRAPHICAL_PROTOCOLS


def suffix_for(protocol: EndpointProtocol | str) -> str:
    """The file suffix of a session's recording: asciicast for terminals, the RFB stream for
    desktops."""
    return DESKTOP_SUFFIX if is_graphical(protocol) else CAST_SUFFIX


def format_of(path: Path) -> str:
    return DESKTOP_FORMAT if path.name.endswith(DESKTOP_SUFFIX) else CAST_FORMAT


def recording_path(directory: Path, session_id: str, protocol: EndpointProtocol | str) -> Path:
    if not valid_session_id(session_id):
        raise ValueError(f"not a session id: {session_id!r}")
    return directory / f"{session_id}{suffix_for(protocol)}"


def find_recording(directory: Path, session_id: str) -> Path | None:
    """The file of a session's recording, if there is one."""
    if not valid_session_id(session_id):
        return None
    for suffix in SUFFIXES:
        path = directory / f"{session_id}{suffix}"
        if path.is_file():
            return path
    return None


def session_of(path: Path) -> str | None:
    """The session a file in the recordings directory belongs to, or None if it is not one."""
    for suffix in SUFFIXES:
        if path.name.endswith(suffix):
            session_id = path.name[:-len(suffix)]
            return session_id if valid_session_id(session_id) else None
    return None


# --- markers -------------------------------------------------------------------------------------

# The session's audit events that become markers on its recording's timeline, and how each is
# said. A refusal is marked once per repeat window, as the audit log writes it (engine/refusals.py).
_SAID = {
    "join": "{actor} joined as {role}",
    "chat": "{actor}: {text}",  # the chat is part of what happened (issue 13), and audited with its text
    "reconnect": "{actor} came back",
    "leave": "{actor} left",
    "disconnect": "{actor} disconnected",
    "participant_stalled": "{actor} stalled",
    "participant_failed": "{actor} failed",
    "eject": "{user} ejected by {by_user}",
    "extend": "extended by {actor}",
    "terminate": "terminated by {actor}",
    "expire": "expired",
    "endpoint_retry": "endpoint reconnecting (attempt {attempt})",
    "endpoint_failure": "endpoint failed",
    "recording_failed": "recording failed ({reason})",
    "session_ended": "session ended ({reason})",
}
SEND_PASSWORD = ("decrypt_field", "send_password")  # the audit kind and purpose of a Send Password


def marks(kind: str, detail: dict[str, Any]) -> bool:
    """Whether an audit event of this kind (and detail) is a marker on the session's recording."""
    if kind == SEND_PASSWORD[0]:
        return detail.get("purpose") == SEND_PASSWORD[1]
    return kind in _SAID or kind.endswith("_refused")


def marker_label(kind: str, actor_name: str | None, detail: dict[str, Any]) -> str | None:
    """The label of the marker for an audit event, or None if it is not one. Never a value
    that is not in the audit row itself (so never a password: rows hold none)."""
    if not marks(kind, detail):
        return None
    actor = actor_name or "someone"
    if kind == SEND_PASSWORD[0]:
        return f"{actor} used Send Password"
    if kind.endswith("_refused"):
        what = dict(detail).get("message") or kind[:-len("_refused")].replace("_", " ")
        return f"{actor}: {what} refused ({detail.get('reason', 'refused')})"
    values = {"actor": actor, **{k: ("?" if v is None else v) for k, v in detail.items()}}
    try:
        return _SAID[kind].format(**values)
    except (KeyError, IndexError, ValueError):
        return kind.replace("_", " ")


# --- asciicast v2 (terminal sessions) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordingMeta:
    """What a recording's header says about its session."""

    session_id: str
    endpoint_id: str
    endpoint_name: str
    protocol: str
    controller_id: str
    controller_name: str
    started_at: float  # the session's start on the engine's clock: time 0 of the recording
    cols: int = 80
    rows: int = 24


def _line(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": ")).encode("utf-8") + b"\n"


class CastEncoder:
    """A terminal session as asciicast v2 lines: output (``o``), size changes (``r``), the
    controller's input if asked (``i``) and markers (``m``), each with its time in seconds
    since the session started. Terminal bytes are decoded as UTF-8 across frames (a character
    split between two reads is kept whole); bytes that are not UTF-8 become U+FFFD, as
    asciinema's own recorder does."""

    format = CAST_FORMAT
    suffix = CAST_SUFFIX
    wants_keyframes = False  # a terminal replays from its start in milliseconds

    def __init__(self, meta: RecordingMeta) -> None:
        self._meta = meta
        self._output = codecs.getincrementaldecoder("utf-8")("replace")
        self._input = codecs.getincrementaldecoder("utf-8")("replace")
        self._size = (meta.cols, meta.rows)
        self._any_output = False

    def header(self) -> bytes:
        m = self._meta
        return _line({
            "version": 2, "width": m.cols, "height": m.rows, "timestamp": int(m.started_at),
            "title": f"{m.endpoint_name}: {m.controller_name}",
            "env": {"TERM": "xterm-256color"},
            "cosession": {"session_id": m.session_id, "endpoint_id": m.endpoint_id, "endpoint": m.endpoint_name,
                          "protocol": m.protocol, "controller_id": m.controller_id,
                          "controller": m.controller_name, "started_at": m.started_at},
        })

    def output(self, t: float, data: bytes) -> bytes:
        text = self._output.decode(data)
        if not text:
            return b""
        self._any_output = True
        return _line([t, "o", text])

    def keyframe(self, t: float, keyframe: Keyframe) -> bytes:
        """The screen as it is now, after frames that were lost (a recording that fell behind
        and goes on). Before any output the screen is blank: nothing to write."""
        out = b""
        if keyframe.cols and keyframe.rows and (keyframe.cols, keyframe.rows) != self._size:
            out += self.resize(t, keyframe.cols, keyframe.rows)
        if not self._any_output:
            return out
        pending = self._output.decode(b"", final=True)
        self._output.reset()
        text = pending + keyframe.data.decode("utf-8", "replace")
        return out + _line([t, "o", text])

    def resize(self, t: float, cols: int, rows: int) -> bytes:
        if (cols, rows) == self._size:
            return b""
        self._size = (cols, rows)
        return _line([t, "r", f"{cols}x{rows}"])

    def input(self, t: float, data: bytes) -> bytes:
        text = self._input.decode(data)
        return _line([t, "i", text]) if text else b""

    def marker(self, t: float, label: str) -> bytes:
        return _line([t, "m", label])


@dataclass(slots=True)
class Cast:
    header: dict[str, Any]
    events: list[list[Any]] = field(default_factory=list)  # [time, code, data]
    truncated: bool = False  # the last line was cut (a crash while it was written): left out

    @property
    def markers(self) -> list[tuple[float, str]]:
        return [(e[0], e[2]) for e in self.events if e[1] == "m"]

    @property
    def duration(self) -> float:
        return self.events[-1][0] if self.events else 0.0


def read_cast(data: bytes | Iterable[bytes]) -> Cast:
    """Parse an asciicast v2 recording (all of it, or what is written so far). Raises
    `CorruptRecording` naming the first line that is not asciicast v2."""
    lines = data.split(b"\n") if isinstance(data, (bytes, bytearray)) else list(data)
    if not lines or not lines[0].strip():
        raise CorruptRecording("the recording is empty: no asciicast header")
    header = _json(lines[0], 1)
    if not isinstance(header, dict) or header.get("version") != 2 \
            or not isinstance(header.get("width"), int) or not isinstance(header.get("height"), int):
        raise CorruptRecording("line 1 is not an asciicast v2 header")
    cast = Cast(header)
    last = len(lines)
    while last > 1 and not lines[last - 1].strip():
        last -= 1
    complete = isinstance(data, (bytes, bytearray)) and data.endswith(b"\n")
    previous = 0.0
    for number, line in enumerate(lines[1:last], start=2):
        if not line.strip():
            continue
        try:
            event = _json(line, number)
        except CorruptRecording:
            if number == last and not complete:
                cast.truncated = True
                break
            raise
        if (not isinstance(event, list) or len(event) != 3 or not isinstance(event[0], (int, float))
                or isinstance(event[0], bool) or event[1] not in ("o", "i", "r", "m") or not isinstance(event[2], str)):
            raise CorruptRecording(f"line {number} is not an asciicast v2 event")
        if event[0] < previous:
            raise CorruptRecording(f"line {number} goes back in time ({event[0]} after {previous})")
        previous = event[0]
        cast.events.append(event)
    return cast


def _json(line: bytes, number: int) -> Any:
    try:
        return json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise CorruptRecording(f"line {number} is not JSON") from None


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
    from it to `at`. Before the first keyframe: the frames from the start."""
    import bisect

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
    return DesktopStart(width, height, b"".join(parts), next_offset)


def desktop_frames(f: BinaryIO, start: int, end: int) -> Iterator[tuple[float, bytes, int]]:
    """(time, frames, offset of the next record) of each U and K record from offset `start` to
    `end`, to play on their times."""
    for kind, t, offset, length in _walk(f, start, end):
        if kind in (b"U", b"K"):
            f.seek(offset + _RECORD.size)
            payload = _read_exact(f, length)
            yield t, payload[_KEYFRAME_SIZE.size:] if kind == b"K" else payload, offset + _RECORD.size + length

"""Session recordings: their files, their markers, and reading them back (docs/recordings.md).

What a recording *is* lives here, for the writer (engine/recorder.py) and for every reader (the
dashboard's player, `cosession recordings`, `engine.recording_log.verify_recordings`):

- where a session's file is (`recording_path`, `find_recording`): one file per session in the
  recordings directory, named after the session;
- which audit events become markers on its timeline, and their labels (`marker_label`);
- a terminal session's recording as asciicast v2 (`CastEncoder`, `read_cast`);
- a graphical session's (VNC, RDP) file is engine/recording_desktop.py's.

A recording is written append-only and read while it is written, so a reader takes what is
there: a last line cut by a crash is left out (`Cast.truncated`), anything else that does not
parse is a `CorruptRecording` that names the line.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

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

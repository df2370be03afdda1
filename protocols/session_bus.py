"""The subjects and the wire format of a joint session between nodes, on the bus (protocols/bus.py).

The one place that knows how a session crosses NATS (docs/cluster.md, "A session across nodes"):

- ``cosession.s.<session>.ctl``: the owning node's inbox for the session. Requests: a join, a
  terminate, an eject, an approval's extension, the approval it runs under, a file operation
  (Files); one-way messages from a remote participant (leave, disconnected, chat, pointer,
  resync wanted...). Only the node that runs the session subscribes to it, so a request for a
  session nobody runs has no responder (`BusTimeout` → ``unknown_session``).
- ``cosession.access``: a user's requests for access to an endpoint changed (filed, decided,
  withdrawn): every node tells its controllers' pages what Send Password offers now.
- ``cosession.live.<node>``: a node's live sessions (`SessionSummary`), announced whenever
  one changes and every second, with the sessions it ended lately: every node's live dashboard
  lists every node's sessions.
- ``cosession.s.<session>.out.frame``: every frame of the session, published once by its
  owning node however many remote viewers and nodes there are.
- ``cosession.s.<session>.out.to.<token>``: what one remote participant gets alone (its
  keyframe, its control events, its end).

A node with viewers of the session holds ONE subscription, ``cosession.s.<session>.out.>``:
one subscription keeps the frames and the participant's keyframes in the order the owning
node published them (NATS keeps one publisher's order on one subscription), so a keyframe
covers exactly the frames before it.

The payloads: a frame is ``emitted_ns`` and its number in the session's publication (8 bytes
each, big-endian; the number lets a node see frames the bus lost: a gap resynchronises its
viewers), its ``flush`` flag (1 byte), then its bytes; anything
else is `encode`d: the engine's messages (frozen dataclasses of engine.messages, their enums,
users and members) as JSON, with their bytes appended raw. `decode` builds only classes of
engine.messages named in `_MESSAGES`: a payload cannot make a node build anything else.
"""

from __future__ import annotations

import enum
import json
import re
import struct
from dataclasses import fields, is_dataclass
from typing import Any

from engine import messages as m

PREFIX = "cosession.s"
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a NATS subject token: no dots, spaces or wildcards

# fields that only mean something inside one process (an actor's ref, a reply channel, a sink)
_LOCAL_FIELDS = frozenset({"session", "reply_to", "sink"})

_MESSAGES: dict[str, type] = {cls.__name__: cls for cls in (
    m.User, m.Member, m.EndpointSpec, m.Frame, m.Keyframe, m.Resync, m.Joined, m.Refused, m.Accepted,
    m.ParticipantJoined, m.ParticipantLeft, m.StateChanged, m.SessionEnded, m.InputRefused, m.Ejected,
    m.ChatPosted, m.Pointed, m.EndpointRetrying, m.Leave, m.Disconnected, m.ParticipantStalled, m.Say, m.Point,
    m.Input, m.Resize, m.Terminate, m.Eject, m.TransferControl, m.SessionSummary, m.SessionFinished,
    m.RemoteClipboard, m.Resized,
)}
_ENUMS: dict[str, type[enum.Enum]] = {cls.__name__: cls for cls in (
    m.Role, m.SessionState, m.EndReason, m.Reason, m.EndpointProtocol,
)}

_FRAME_HEADER = struct.Struct(">qQ?")  # emitted_ns, sequence number, flush


class WireError(ValueError):
    """A payload that is not in this format (another version, or not ours)."""


def safe_id(value: str) -> bool:
    """A session id or a token may name a subject: letters, digits, '-' and '_' only."""
    return bool(_SAFE_ID.match(value))


LIVE_PREFIX = "cosession.live"
ACCESS_SUBJECT = "cosession.access"  # a user's requests for access changed: every node's pages follow


def live_subject(node_id: str) -> str:
    """Where a node announces its live sessions (for every node's live dashboard)."""
    return f"{LIVE_PREFIX}.{node_id}"


def live_subjects() -> str:
    return f"{LIVE_PREFIX}.*"


def control_subject(session_id: str) -> str:
    return f"{PREFIX}.{session_id}.ctl"


def output_subjects(session_id: str) -> str:
    """What a node with viewers of the session subscribes to (once)."""
    return f"{PREFIX}.{session_id}.out.>"


def frame_subject(session_id: str) -> str:
    return f"{PREFIX}.{session_id}.out.frame"


def participant_subject(session_id: str, token: str) -> str:
    return f"{PREFIX}.{session_id}.out.to.{token}"


def token_of(subject: str) -> str | None:
    """The token of a participant's subject; None for the frames' subject."""
    head, sep, token = subject.rpartition(".to.")
    return token if sep else None


# --- frames -----------------------------------------------------------------------------------


def encode_frame(frame: m.Frame, seq: int) -> bytes:
    return _FRAME_HEADER.pack(frame.emitted_ns, seq, frame.flush) + frame.data


def decode_frame(payload: bytes) -> tuple[m.Frame, int]:
    """The frame and its sequence number."""
    if len(payload) < _FRAME_HEADER.size:
        raise WireError("a frame shorter than its header")
    emitted_ns, seq, flush = _FRAME_HEADER.unpack_from(payload)
    return m.Frame(payload[_FRAME_HEADER.size:], emitted_ns, flush), seq


# --- everything else ----------------------------------------------------------------------------


def encode(value: Any) -> bytes:
    """A message (or a dict of them) → bytes: a 4-byte JSON length, the JSON, the bytes fields."""
    blobs: list[bytes] = []
    head = json.dumps(_pack(value, blobs), separators=(",", ":")).encode()
    parts = [struct.pack(">I", len(head)), head]
    for blob in blobs:
        parts += [struct.pack(">I", len(blob)), blob]
    return b"".join(parts)


def decode(payload: bytes) -> Any:
    try:
        (size,) = struct.unpack_from(">I", payload)
        head = json.loads(payload[4:4 + size])
        blobs, at = [], 4 + size
        while at < len(payload):
            (n,) = struct.unpack_from(">I", payload, at)
            blobs.append(payload[at + 4:at + 4 + n])
            at += 4 + n
        return _unpack(head, blobs)
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as exc:
        raise WireError(f"not a session message: {exc}") from exc


def _pack(value: Any, blobs: list[bytes]) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)) and not isinstance(value, enum.Enum):
        return value
    if isinstance(value, enum.Enum):
        return {"__e": type(value).__name__, "v": value.value}
    if isinstance(value, (bytes, bytearray, memoryview)):
        blobs.append(bytes(value))
        return {"__b": len(blobs) - 1}
    if isinstance(value, tuple):
        return {"__t": [_pack(v, blobs) for v in value]}
    if isinstance(value, list):
        return [_pack(v, blobs) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if _MESSAGES.get(name) is not type(value):
            raise TypeError(f"{name} does not cross the bus")
        return {"__d": name, "f": {f.name: _pack(getattr(value, f.name), blobs) for f in fields(value)
                                   if f.name not in _LOCAL_FIELDS}}
    if isinstance(value, dict):
        return {"__m": {str(k): _pack(v, blobs) for k, v in value.items()}}
    raise TypeError(f"{type(value).__name__} does not cross the bus")


def _unpack(value: Any, blobs: list[bytes]) -> Any:
    if isinstance(value, list):
        return [_unpack(v, blobs) for v in value]
    if not isinstance(value, dict):
        return value
    if "__e" in value:
        return _ENUMS[value["__e"]](value["v"])
    if "__b" in value:
        return blobs[value["__b"]]
    if "__t" in value:
        return tuple(_unpack(v, blobs) for v in value["__t"])
    if "__d" in value:
        return _MESSAGES[value["__d"]](**{k: _unpack(v, blobs) for k, v in value["f"].items()})
    if "__m" in value:
        return {k: _unpack(v, blobs) for k, v in value["__m"].items()}
    raise WireError("an object of no known kind")

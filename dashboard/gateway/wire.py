"""The gateway's wire codec: what a client may send, checked field by field, and the JSON the
gateway sends back. No I/O here, so every rule of the protocol is tested by a table
(tests/dashboard/test_gateway_wire.py). docs/protocol.md is the prose version of this module.

Terminal data travels as binary websocket messages in both directions (output from the
endpoint, input from the controller) and is never decoded. Everything else is a small JSON
object with a ``type``.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field
from typing import Any

from engine.messages import (
    ChatPosted, EndpointRetrying, Ejected, InputRefused, Member, ParticipantJoined, ParticipantLeft, Pointed,
    Reason, RemoteClipboard, Resized, Resync, SessionEnded, StateChanged, User,
)

MAX_TERMINAL_SIDE = 1000  # columns or rows; a bigger PTY is a mistake or an attack
MAX_FRAME_BYTES = 1 << 20
MAX_PASTE_CHARS = 16384  # one paste; a bigger one is a file (and the message limit is bytes anyway)


class WireReason(enum.StrEnum):
    """Refusals that only the gateway gives; the engine's own reasons are `engine.messages.Reason`."""

    NOT_SIGNED_IN = "not_signed_in"
    UNKNOWN_ENDPOINT = "unknown_endpoint"
    CREDENTIALS_REQUIRED = "credentials_required"
    INVALID_SHARE_LINK = "invalid_share_link"
    UNEXPECTED_MESSAGE = "unexpected_message"
    TOO_MANY_REFUSALS = "too_many_refusals"
    TIMEOUT = "timeout"
    INTERNAL_ERROR = "internal_error"
    LAUNCH_EXPIRED = "launch_expired"


class WireError(Exception):
    """A client message that is refused; `reason` and `detail` go back to the client."""

    def __init__(self, reason: str, detail: str = "", kind: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = str(reason)
        self.detail = detail
        self.kind = kind  # the refused message's type, if it had a readable one


# --- client → gateway --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class StartCredentials:
    username: str = ""
    password: str | None = None
    private_key: str | None = None
    passphrase: str | None = None

    def __repr__(self) -> str:
        return f"StartCredentials(username={self.username!r}, secret=<hidden>)"


@dataclass(frozen=True, slots=True)
class Start:
    cols: int
    rows: int
    credentials: StartCredentials | None = field(default=None, repr=False)
    frame_bytes: int | None = None  # synthetic endpoints only
    launch: str | None = field(default=None, repr=False)  # a launch token from the Session Launcher
    mfa_token: str | None = field(default=None, repr=False)  # API clients, when the profile requires MFA


@dataclass(frozen=True, slots=True)
class JoinRequest:
    share: str | None = None


@dataclass(frozen=True, slots=True)
class ResizeRequest:
    cols: int
    rows: int


@dataclass(frozen=True, slots=True)
class LeaveRequest:
    pass


@dataclass(frozen=True, slots=True)
class RequestControl:
    pass


@dataclass(frozen=True, slots=True)
class EjectRequest:
    """Remove one viewer. The engine decides whether the sender may (controller or
    administrator) and audits either way."""

    participant_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """Synthetic endpoints only: emit `rate` frames per second from now on (0 stops) and
    answer with the endpoint's own counters."""

    rate: float


@dataclass(frozen=True, slots=True)
class SendPassword:
    """The controller asks for the endpoint's stored password on its own clipboard (Send
    Password). Only the controller, with at least supervisor and a profile that allows
    clipboard upload; the answer goes to that one websocket and never through the engine."""


@dataclass(frozen=True, slots=True)
class CopyClipboard:
    """The controller asks for the desktop's clipboard text (the toolbar's Copy remote
    clipboard): allowed by its profile's clipboard download, decided at each use; answered
    `clipboard` to that one websocket."""


@dataclass(frozen=True, slots=True, repr=False)
class PasteRequest:
    """The controller's local clipboard text, pasted into a terminal (Clipboard in the toolbar,
    or the browser's paste): allowed by its profile's clipboard upload, decided at each use.
    `bracketed`: the terminal asked for bracketed paste (DECSET 2004), so the text is wrapped."""

    text: str
    bracketed: bool = False

    def __repr__(self) -> str:
        return f"PasteRequest(<{len(self.text)} characters>, bracketed={self.bracketed})"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat message to everyone in the session (any participant; length and rate: engine.policy)."""

    text: str


@dataclass(frozen=True, slots=True)
class PointRequest:
    """Point at a spot for everyone to see (any participant; never input): fractions of the
    screen's width and height."""

    x: float
    y: float


@dataclass(frozen=True, slots=True)
class Ping:
    id: int | str | None = None


def _int(obj: dict[str, Any], name: str, low: int, high: int) -> int:
    value = obj.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise WireError(Reason.MALFORMED, f"{name} must be an integer from {low} to {high}")
    return value


def _str(obj: dict[str, Any], name: str, *, required: bool = False, limit: int = 16384) -> str | None:
    value = obj.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise WireError(Reason.MALFORMED, f"{name} must be a string of at most {limit} characters")
    return value


def _only(obj: dict[str, Any], kind: str, allowed: frozenset[str]) -> None:
    extra = sorted(set(obj) - allowed - {"type"})
    if extra:
        # A client never names itself or a session in a message: the gateway knows who is
        # speaking from the connection (eject names the viewer to remove, never the sender).
        # An extra field is refused, not ignored.
        raise WireError(Reason.MALFORMED, f"unexpected field {extra[0]!r} in {kind}", kind)


def _parse_start(obj: dict[str, Any]) -> Start:
    _only(obj, "start", frozenset({"cols", "rows", "credentials", "synthetic", "launch", "mfa_token"}))
    cols = _int(obj, "cols", 1, MAX_TERMINAL_SIDE)
    rows = _int(obj, "rows", 1, MAX_TERMINAL_SIDE)
    credentials = None
    raw = obj.get("credentials")
    if raw is not None:
        if not isinstance(raw, dict):
            raise WireError(Reason.MALFORMED, "credentials must be an object")
        _only(raw, "credentials", frozenset({"username", "password", "private_key", "passphrase"}))
        credentials = StartCredentials(
            username=_str(raw, "username", required=True, limit=256) or "",
            password=_str(raw, "password", limit=4096) or None,
            private_key=_str(raw, "private_key", limit=32768) or None,
            passphrase=_str(raw, "passphrase", limit=4096) or None)
    frame_bytes = None
    synthetic = obj.get("synthetic")
    if synthetic is not None:
        if not isinstance(synthetic, dict):
            raise WireError(Reason.MALFORMED, "synthetic must be an object")
        _only(synthetic, "synthetic", frozenset({"frame_bytes"}))
        frame_bytes = _int(synthetic, "frame_bytes", 1, 1 << 16)
    return Start(cols, rows, credentials, frame_bytes, _str(obj, "launch", limit=128),
                 _str(obj, "mfa_token", limit=16))


def _parse_join(obj: dict[str, Any]) -> JoinRequest:
    _only(obj, "join", frozenset({"share"}))
    return JoinRequest(_str(obj, "share", limit=1024))


def _parse_resize(obj: dict[str, Any]) -> ResizeRequest:
    _only(obj, "resize", frozenset({"cols", "rows"}))
    return ResizeRequest(_int(obj, "cols", 1, MAX_TERMINAL_SIDE), _int(obj, "rows", 1, MAX_TERMINAL_SIDE))


def _parse_empty(kind: str, make: Any) -> Any:
    def parse(obj: dict[str, Any]) -> Any:
        _only(obj, kind, frozenset())
        return make()

    return parse


def _parse_eject(obj: dict[str, Any]) -> EjectRequest:
    _only(obj, "eject", frozenset({"participant_id", "reason"}))
    return EjectRequest(_str(obj, "participant_id", required=True, limit=64) or "",
                        _str(obj, "reason", limit=200) or "")


def _parse_stream(obj: dict[str, Any]) -> StreamRequest:
    _only(obj, "stream", frozenset({"rate"}))
    rate = obj.get("rate")
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not math.isfinite(rate) \
            or not 0 <= rate <= 100_000:
        raise WireError(Reason.MALFORMED, "rate must be a number from 0 to 100000")
    return StreamRequest(float(rate))


def _parse_paste(obj: dict[str, Any]) -> PasteRequest:
    _only(obj, "paste", frozenset({"text", "bracketed"}))
    bracketed = obj.get("bracketed", False)
    if not isinstance(bracketed, bool):
        raise WireError(Reason.MALFORMED, "bracketed must be true or false")
    return PasteRequest(_str(obj, "text", required=True, limit=MAX_PASTE_CHARS) or "", bracketed)


def _parse_chat(obj: dict[str, Any]) -> ChatRequest:
    _only(obj, "chat", frozenset({"text"}))
    return ChatRequest(_str(obj, "text", required=True, limit=4096) or "")


def _fraction(obj: dict[str, Any], name: str) -> float:
    value = obj.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or not 0 <= value <= 1:
        raise WireError(Reason.MALFORMED, f"{name} must be a number from 0 to 1")
    return float(value)


def _parse_point(obj: dict[str, Any]) -> PointRequest:
    _only(obj, "point", frozenset({"x", "y"}))
    return PointRequest(_fraction(obj, "x"), _fraction(obj, "y"))


def _parse_ping(obj: dict[str, Any]) -> Ping:
    _only(obj, "ping", frozenset({"id"}))
    value = obj.get("id")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, str))
                              or (isinstance(value, str) and len(value) > 64)):
        raise WireError(Reason.MALFORMED, "id must be an integer or a short string")
    return Ping(value)


PARSERS: dict[str, Any] = {
    "start": _parse_start,
    "join": _parse_join,
    "resize": _parse_resize,
    "leave": _parse_empty("leave", LeaveRequest),
    "request_control": _parse_empty("request_control", RequestControl),
    "eject": _parse_eject,
    "stream": _parse_stream,
    "ping": _parse_ping,
    "send_password": _parse_empty("send_password", SendPassword),
    "paste": _parse_paste,
    "copy_clipboard": _parse_empty("copy_clipboard", CopyClipboard),
    "chat": _parse_chat,
    "point": _parse_point,
}


KINDS = frozenset(PARSERS) | {"input"}


@dataclass(frozen=True, slots=True)
class TerminalInput:
    """A binary message: bytes for the endpoint, if the sender is the controller."""

    data: bytes


def decode(message: dict[str, Any], max_bytes: int) -> Any:
    """One ASGI ``websocket.receive`` message → a request value, or `WireError`.

    Checks, in order: size (before any parsing), JSON, an object with a string ``type``, a
    known type, then the fields of that type. Whether the sender may send it is the
    connection's business (see gateway/rights.py), not the codec's."""
    data = message.get("bytes")
    if data is not None:
        if len(data) > max_bytes:
            raise WireError(Reason.TOO_LARGE, f"a message has at most {max_bytes} bytes", "binary")
        return TerminalInput(bytes(data))
    text = message.get("text")
    if text is None:
        raise WireError(Reason.MALFORMED, "an empty websocket message")
    if len(text) > max_bytes or (len(text) * 4 > max_bytes and len(text.encode("utf-8", "surrogatepass")) > max_bytes):
        raise WireError(Reason.TOO_LARGE, f"a message has at most {max_bytes} bytes")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise WireError(Reason.MALFORMED, "not JSON") from None
    if not isinstance(obj, dict):
        raise WireError(Reason.MALFORMED, "a control message is a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise WireError(Reason.MALFORMED, "a control message has a string type")
    parser = PARSERS.get(kind)
    if parser is None:
        raise WireError(Reason.UNKNOWN_MESSAGE, f"unknown message type {kind[:40]!r}", kind[:40])
    try:
        return parser(obj)
    except WireError as exc:
        exc.kind = kind
        raise


def kind_of(request: Any) -> str:
    """The wire type of a decoded request, or of a request class (for refusals and the audit log)."""
    cls = request if isinstance(request, type) else type(request)
    if cls is TerminalInput:
        return "input"
    for kind, request_class in _KINDS.items():
        if cls is request_class:
            return kind
    return cls.__name__


_KINDS: dict[str, type] = {
    "start": Start, "join": JoinRequest, "resize": ResizeRequest, "leave": LeaveRequest,
    "request_control": RequestControl, "eject": EjectRequest, "stream": StreamRequest, "ping": Ping,
    "send_password": SendPassword, "chat": ChatRequest, "point": PointRequest,
    "paste": PasteRequest, "copy_clipboard": CopyClipboard,
}


# --- gateway → client --------------------------------------------------------------------------


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def user_json(user: User | None) -> dict[str, Any] | None:
    if user is None:
        return None
    return {"id": user.id, "name": user.name, "admin": user.is_admin}


def member_json(member: Member) -> dict[str, Any]:
    return {"participant_id": member.participant_id, "user": user_json(member.user),
            "role": member.role.value}


def refused(reason: str, detail: str = "", of: str = "", *, fatal: bool = False) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "refused", "reason": str(reason)}
    if detail:
        message["detail"] = detail
    if of:
        message["of"] = of
    if fatal:
        message["fatal"] = True
    return message


def event_json(event: Any) -> dict[str, Any] | None:
    """An engine event → its wire form, or None for events clients do not see."""
    match event:
        case ParticipantJoined(member=member):
            return {"type": "participant_joined", "member": member_json(member)}
        case ParticipantLeft(member=member, reason=reason, by=by):
            return {"type": "participant_left", "member": member_json(member), "reason": reason,
                    "by": user_json(by)}
        case StateChanged(state=state, deadline=deadline, grace_until=grace_until):
            return {"type": "state", "state": state.value, "deadline": deadline, "grace_until": grace_until}
        case SessionEnded(reason=reason, by=by, detail=detail):
            return {"type": "ended", "reason": reason.value, "by": user_json(by), "detail": detail}
        case InputRefused(reason=reason):
            return {"type": "refused", "reason": reason.value, "of": "input"}
        case Ejected(by=by, reason=reason):
            return {"type": "ejected", "by": user_json(by), "reason": reason}
        case ChatPosted(member=member, text=text, at=at):
            return {"type": "chat", "from": member_json(member), "text": text, "at": at}
        case Pointed(member=member, x=x, y=y):
            return {"type": "point", "from": member_json(member), "x": x, "y": y}
        case RemoteClipboard(text=text):
            # its size only: the text reaches the page when the controller asks and may (Channel)
            return {"type": "remote_clipboard", "size": len(text)}
        case Resync(dropped=dropped):
            return {"type": "resync", "dropped": dropped}
        case Resized(cols=cols, rows=rows):  # the controller's terminal: a viewer's follows it
            return {"type": "size", "cols": cols, "rows": rows}
        case EndpointRetrying(attempt=attempt, delay=delay):
            return {"type": "reconnecting", "attempt": attempt, "delay": delay}
        case _:
            return None

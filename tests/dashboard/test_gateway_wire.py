"""The wire codec, by table: what a client may send and the JSON the gateway sends back."""

from __future__ import annotations

import json

import pytest

from dashboard.gateway import wire
from engine.messages import (
    EndpointRetrying, Ejected, EndReason, InputRefused, Member, ParticipantJoined, ParticipantLeft, Reason,
    Resync, Role, SessionEnded, SessionState, StateChanged, User,
)

LIMIT = 1024


def text(obj) -> dict:
    return {"type": "websocket.receive", "text": obj if isinstance(obj, str) else json.dumps(obj)}


ACCEPTED = [
    (text({"type": "start", "cols": 80, "rows": 24}), wire.Start(80, 24)),
    (text({"type": "start", "cols": 1, "rows": 1000, "credentials": {"username": "u", "password": "p"}}),
     wire.Start(1, 1000, wire.StartCredentials("u", "p"))),
    (text({"type": "start", "cols": 80, "rows": 24, "synthetic": {"frame_bytes": 512}}),
     wire.Start(80, 24, None, 512)),
    (text({"type": "join"}), wire.JoinRequest()),
    (text({"type": "join", "share": "abc.def"}), wire.JoinRequest("abc.def")),
    (text({"type": "resize", "cols": 132, "rows": 43}), wire.ResizeRequest(132, 43)),
    (text({"type": "leave"}), wire.LeaveRequest()),
    (text({"type": "request_control"}), wire.RequestControl()),
    (text({"type": "stream", "rate": 12.5}), wire.StreamRequest(12.5)),
    (text({"type": "stream", "rate": 0}), wire.StreamRequest(0.0)),
    (text({"type": "ping", "id": 7}), wire.Ping(7)),
    (text({"type": "chat", "text": "<b>hi</b>"}), wire.ChatRequest("<b>hi</b>")),
    (text({"type": "point", "x": 0, "y": 1}), wire.PointRequest(0.0, 1.0)),
    (text({"type": "paste", "text": "ls\n", "bracketed": True}), wire.PasteRequest("ls\n", True)),
    (text({"type": "paste", "text": ""}), wire.PasteRequest("", False)),
    (text({"type": "copy_clipboard"}), wire.CopyClipboard()),
    ({"type": "websocket.receive", "bytes": b"\x00\xff ls\r"}, wire.TerminalInput(b"\x00\xff ls\r")),
]


@pytest.mark.parametrize("message, expected", ACCEPTED)
def test_accepted(message, expected):
    assert wire.decode(message, LIMIT) == expected


REFUSED = [
    ({"type": "websocket.receive", "bytes": b"x" * (LIMIT + 1)}, "too_large", "binary"),
    (text("x" * (LIMIT + 1)), "too_large", ""),
    (text("\u00e9" * (LIMIT // 2 + 1)), "too_large", ""),  # counted in bytes, not characters
    (text("{"), "malformed", ""),
    (text("[" * 800), "malformed", ""),
    (text("null"), "malformed", ""),
    (text('"start"'), "malformed", ""),
    (text({"type": None}), "malformed", ""),
    (text({"cols": 80}), "malformed", ""),
    (text({"type": "nope"}), "unknown_message", "nope"),
    (text({"type": "start", "cols": 80}), "malformed", "start"),
    (text({"type": "start", "cols": 0, "rows": 24}), "malformed", "start"),
    (text({"type": "start", "cols": 1001, "rows": 24}), "malformed", "start"),
    (text({"type": "start", "cols": 80.0, "rows": 24}), "malformed", "start"),
    (text({"type": "start", "cols": False, "rows": 24}), "malformed", "start"),
    (text({"type": "start", "cols": 80, "rows": 24, "credentials": "root:root"}), "malformed", "start"),
    (text({"type": "start", "cols": 80, "rows": 24, "credentials": {"password": "p"}}), "malformed", "start"),
    (text({"type": "start", "cols": 80, "rows": 24, "credentials": {"username": "u", "token": "t"}}),
     "malformed", "start"),
    (text({"type": "start", "cols": 80, "rows": 24, "session_id": "s"}), "malformed", "start"),
    (text({"type": "resize", "cols": 80, "rows": 24, "participant_id": "p-1"}), "malformed", "resize"),
    (text({"type": "leave", "participant_id": "p-1"}), "malformed", "leave"),
    (text({"type": "join", "share": 5}), "malformed", "join"),
    (text({"type": "stream", "rate": -1}), "malformed", "stream"),
    (text({"type": "stream", "rate": "fast"}), "malformed", "stream"),
    (text('{"type": "stream", "rate": 1e999}'), "malformed", "stream"),
    (text({"type": "ping", "id": [1]}), "malformed", "ping"),
    (text({"type": "chat"}), "malformed", "chat"),
    (text({"type": "chat", "text": "hi", "from": "alice"}), "malformed", "chat"),
    (text({"type": "point", "x": -0.1, "y": 0.5}), "malformed", "point"),
    (text({"type": "paste", "text": "ls", "bracketed": "yes"}), "malformed", "paste"),
    (text({"type": "copy_clipboard", "text": "x"}), "malformed", "copy_clipboard"),
    (text('{"type": "point", "x": NaN, "y": 0.5}'), "malformed", "point"),
    ({"type": "websocket.receive"}, "malformed", ""),
]


@pytest.mark.parametrize("message, reason, kind", REFUSED)
def test_refused(message, reason, kind):
    with pytest.raises(wire.WireError) as refused:
        wire.decode(message, LIMIT)
    assert refused.value.reason == reason
    assert refused.value.kind == kind


def test_a_start_never_shows_its_credentials():
    start = wire.decode(text({"type": "start", "cols": 80, "rows": 24,
                              "credentials": {"username": "u", "password": "hunter2-secret"}}), LIMIT)
    assert "hunter2" not in repr(start) and "hunter2" not in str(start)


def test_kind_of():
    assert wire.kind_of(wire.ResizeRequest(1, 1)) == "resize"
    assert wire.kind_of(wire.JoinRequest) == "join"
    assert wire.kind_of(wire.TerminalInput(b"")) == "input"
    assert wire.kind_of(wire.EjectRequest("p1")) == "eject"
    assert wire.KINDS == {"start", "join", "resize", "leave", "request_control", "eject", "stream", "ping", "input",
                          "send_password", "chat", "point", "paste", "copy_clipboard"}


ALICE = User("a1", "alice")
ROOT = User("r1", "root", is_admin=True)
BOB = Member("s-2", User("b1", "bob"), Role.VIEWER)


@pytest.mark.parametrize("event, expected", [
    (ParticipantJoined(BOB), {"type": "participant_joined", "member": {
        "participant_id": "s-2", "user": {"id": "b1", "name": "bob", "admin": False}, "role": "viewer"}}),
    (ParticipantLeft(BOB, "ejected", ROOT), {"type": "participant_left", "member": {
        "participant_id": "s-2", "user": {"id": "b1", "name": "bob", "admin": False}, "role": "viewer"},
        "reason": "ejected", "by": {"id": "r1", "name": "root", "admin": True}}),
    (StateChanged(SessionState.DISCONNECTED, None, 1234.5),
     {"type": "state", "state": "disconnected", "deadline": None, "grace_until": 1234.5}),
    (SessionEnded(EndReason.TERMINATED, ROOT),
     {"type": "ended", "reason": "terminated", "by": {"id": "r1", "name": "root", "admin": True}, "detail": ""}),
    (SessionEnded(EndReason.ENDPOINT_FAILED, None, "connection lost"),
     {"type": "ended", "reason": "endpoint_failed", "by": None, "detail": "connection lost"}),
    (InputRefused(Reason.NOT_CONTROLLER), {"type": "refused", "reason": "not_controller", "of": "input"}),
    (Ejected(ALICE, "enough"), {"type": "ejected", "by": {"id": "a1", "name": "alice", "admin": False},
                                "reason": "enough"}),
    (Resync(12), {"type": "resync", "dropped": 12}),
    (EndpointRetrying(2, 1.0, "connection refused"), {"type": "reconnecting", "attempt": 2, "delay": 1.0}),
    (object(), None),
])
def test_events(event, expected):
    assert wire.event_json(event) == expected


def test_a_paste_is_bounded_in_characters_and_never_shows_its_text():
    big = {"type": "websocket.receive", "text": json.dumps({"type": "paste", "text": "x" * (wire.MAX_PASTE_CHARS + 1)})}
    with pytest.raises(wire.WireError) as refused:
        wire.decode(big, 1 << 20)
    assert (refused.value.reason, refused.value.kind) == ("malformed", "paste")
    paste = wire.decode(text({"type": "paste", "text": "hunter2-secret"}), LIMIT)
    assert "hunter2" not in repr(paste)

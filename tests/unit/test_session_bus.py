"""The wire format of a session between nodes (protocols/session_bus.py): the engine's messages
cross the bus and come back equal, bytes raw; nothing else is built from a payload."""

from __future__ import annotations

import pytest

from engine.messages import (
    EndReason, Frame, Joined, Keyframe, Member, Reason, Refused, RemoteClipboard, Resized, Role, SessionEnded,
    SessionState, User,
)
from protocols import session_bus as sb


def test_messages_cross_and_come_back_equal():
    alice = User("u1", "alice", is_admin=True)
    joined = Joined("s1", "s1-2", Role.VIEWER, (Member("s1-1", alice, Role.CONTROLLER),), SessionState.ACTIVE,
                    deadline=12.5, session=object(), recorded=True)
    body = {"joined": joined, "ended": SessionEnded(EndReason.TERMINATED, alice, "d"),
            "keyframe": Keyframe(b"\x00\xffscreen", 80, 24), "refused": Refused(Reason.VIEWER_CAP)}
    back = sb.decode(sb.encode(body))
    assert back["joined"] == Joined("s1", "s1-2", Role.VIEWER, joined.members, SessionState.ACTIVE, 12.5,
                                    recorded=True)  # the actor's ref stays on its node
    assert back["joined"].session is None and isinstance(back["joined"].members, tuple)
    assert back["ended"] == body["ended"] and back["keyframe"] == body["keyframe"]
    assert back["refused"].reason is Reason.VIEWER_CAP


def test_a_frame_is_its_time_its_number_its_flag_and_its_bytes():
    frame = Frame(b"\x1b[2Jhello", 123456789, flush=True)
    assert sb.decode_frame(sb.encode_frame(frame, 42)) == (frame, 42)
    with pytest.raises(sb.WireError):
        sb.decode_frame(b"\x00")


def test_only_the_engines_messages_are_built():
    with pytest.raises(TypeError):
        sb.encode({"x": object()})
    forged = b'{"__d":"Popen","f":{}}'
    with pytest.raises(sb.WireError):
        sb.decode(len(forged).to_bytes(4, "big") + forged)
    with pytest.raises(sb.WireError):
        sb.decode(b"\x00\x00\x00\x09not json!")


def test_subjects_take_only_safe_ids():
    assert sb.safe_id("6626217c454d4843aecaa21c3e0b69e5")
    assert not sb.safe_id("a.b") and not sb.safe_id("*") and not sb.safe_id(">") and not sb.safe_id("")
    assert sb.token_of(sb.participant_subject("s1", "t1")) == "t1"
    assert sb.token_of(sb.frame_subject("s1")) is None


def test_what_a_controller_on_another_node_is_told_crosses():
    """A returned controller served by another node gets the desktop's clipboard, and every
    viewer the controller's new terminal size (docs/cluster.md)."""
    body = {"event": RemoteClipboard("copied text"), "size": Resized(90, 20)}
    assert sb.decode(sb.encode(body)) == body

"""Slow and stalled participants cost nobody else anything: a sink that overflows owes a
resync and refuses frames cheaply; its keyframe is rendered only when its consumer comes back
for it, at most once per resync interval for a whole session; a participant that does not come
back within `stall_seconds` is disconnected and audited. Time is the ManualClock's."""

import pytest

from engine.messages import ParticipantLeft, Resync, SessionState, StateChanged
from engine.screen import TerminalScreen
from engine.sinks import OutboundQueue
from tests.actors.conftest import ALICE, SSH, audit_rows, viewer, wait_until

LINE = 100  # bytes per emitted line
QUEUE = 1000  # a queue of ten lines


@pytest.fixture
def renders(monkeypatch):
    """Every keyframe the screen models render, whoever asks for it."""
    rendered = []
    original = TerminalScreen.keyframe

    def keyframe(self):
        rendered.append(self)
        return original(self)

    monkeypatch.setattr(TerminalScreen, "keyframe", keyframe)
    return rendered


def flood(connection, lines, tag=b"line"):
    for n in range(lines):
        connection.emit(b"%s %05d " % (tag, n) + b"." * (LINE - 13 - len(tag)) + b"\r\n")


def settled(connection, *participants, marker=b"settled"):
    """Emit a marker and wait until every participant (collecting sinks) has it: the endpoint
    actor has handled everything told before it, in order."""
    connection.emit(marker + b"\r\n")
    return all(p.wait_for_output(marker) for p in participants)


def take_all(queue, taken):
    taken.extend(queue.take())
    return taken


def test_a_stalled_viewer_costs_no_keyframe_however_often_its_queue_overflows(engine, session, connection, renders):
    stalled = OutboundQueue(max_bytes=QUEUE)  # never taken: a client that stopped reading
    engine.join_session(session.session_id, viewer(1), sink=stalled)
    fast = engine.join_session(session.session_id, viewer(2))
    assert settled(connection, session, fast, marker=b"joined")
    joined = len(renders)  # one keyframe per join
    flood(connection, 500)  # fifty queues' worth
    assert settled(connection, session, fast)
    assert len(renders) == joined  # nothing rendered for the stalled viewer
    assert stalled.owes_resync and stalled.resyncs == 0 and stalled.keyframes_requested == 0
    assert stalled.dropped_frames >= 490
    # the others got every frame, in order
    assert len(fast.sink.frames) == 502 and len(session.sink.frames) == 502


def test_the_keyframe_is_rendered_when_the_consumer_comes_back_then_frames_flow_again(
        engine, session, connection, renders):
    slow = OutboundQueue(max_bytes=QUEUE)
    engine.join_session(session.session_id, viewer(1), sink=slow)
    fast = engine.join_session(session.session_id, viewer(2))
    flood(connection, 100)
    connection.emit(b"\x1b[2J\x1b[Hthe screen now\r\n")
    assert settled(connection, session, fast)
    joined = len(renders)
    taken = slow.take()  # the consumer is back for more: the queue asks for its keyframe
    assert slow.keyframes_requested == 1
    assert wait_until(lambda: any(i.kind == "keyframe" for i in take_all(slow, taken)))
    assert len(renders) == joined + 1
    kinds = [i.kind for i in taken]
    at = kinds.index("keyframe")
    resync = taken[at - 1].value
    assert isinstance(resync, Resync) and resync.dropped >= 90  # announced, with what it missed
    assert b"the screen now" in taken[at].value.data
    assert not slow.owes_resync
    slow.take()
    connection.emit(b"after the resync\r\n")
    assert wait_until(lambda: any(i.kind == "data" and any(b"after the resync" in f.data for f in i.value)
                                  for i in take_all(slow, taken)))
    assert len(renders) == joined + 1 and slow.resyncs == 1


def test_resyncs_are_rendered_at_most_once_per_interval_and_shared(engine, session, connection, clock, renders):
    slow = [OutboundQueue(max_bytes=QUEUE) for _ in range(3)]
    for n, queue in enumerate(slow):
        engine.join_session(session.session_id, viewer(n + 1), sink=queue)
    flood(connection, 50)
    assert settled(connection, session)
    assert all(queue.owes_resync for queue in slow)
    joined = len(renders)
    first = slow[0].take()  # the first one back gets its keyframe at once
    assert wait_until(lambda: any(i.kind == "keyframe" for i in take_all(slow[0], first)))
    assert len(renders) == joined + 1
    for queue in slow[1:]:  # the two others come back within the interval
        queue.take()
    assert settled(connection, session, marker=b"asked")  # their requests are handled, in order
    assert len(renders) == joined + 1 and not any(q.resyncs for q in slow[1:])
    clock.advance(engine.settings.engine.resync_interval_seconds)
    later = [[], []]
    assert wait_until(lambda: all(any(i.kind == "keyframe" for i in take_all(q, t)) for q, t in zip(slow[1:], later)))
    assert len(renders) == joined + 2  # one render for both


def test_a_viewer_stalled_longer_than_the_setting_is_disconnected_and_audited(engine, session, connection, clock):
    stall = engine.settings.engine.stall_seconds
    stalled = OutboundQueue(max_bytes=QUEUE)
    gone = engine.join_session(session.session_id, viewer(1), sink=stalled)
    fast = engine.join_session(session.session_id, viewer(2))
    flood(connection, 50)
    assert settled(connection, session, fast)
    clock.advance(stall - 1)
    assert settled(connection, session, fast, marker=b"not yet")
    assert [m.user.name for m in engine.describe(session.session_id).viewers] == ["Viewer 1", "Viewer 2"]
    clock.advance(1)
    for p in (session, fast):
        assert p.sink.wait_for(lambda s: any(e.reason == "stalled" and e.member.user.name == "Viewer 1"
                                             for e in s.events_of(ParticipantLeft)))
    assert wait_until(lambda: stalled.closed)
    assert [m.user.name for m in engine.describe(session.session_id).viewers] == ["Viewer 2"]
    rows = [r for r in audit_rows(engine) if r[0] == "participant_stalled"]
    assert rows == [("participant_stalled", "Viewer 1",
                     {"participant": gone.participant_id, "role": "viewer", "seconds": float(stall)})]
    assert settled(connection, session, fast, marker=b"the session goes on")


def test_a_viewer_that_comes_back_in_time_stays(engine, session, connection, clock):
    stall = engine.settings.engine.stall_seconds
    slow = OutboundQueue(max_bytes=QUEUE)
    engine.join_session(session.session_id, viewer(1), sink=slow)
    flood(connection, 50)
    assert settled(connection, session)
    clock.advance(stall / 2)
    taken = slow.take()  # back for its resync
    assert wait_until(lambda: any(i.kind == "keyframe" for i in take_all(slow, taken)))
    clock.advance(stall)
    assert settled(connection, session, marker=b"later")
    assert [m.user.name for m in engine.describe(session.session_id).viewers] == ["Viewer 1"]
    assert "participant_stalled" not in [r[0] for r in audit_rows(engine)]


def test_a_stalled_controller_is_disconnected_and_may_come_back(engine, connection, clock):
    stalled = OutboundQueue(max_bytes=QUEUE)
    controller = engine.open_session(SSH, ALICE, connection=connection, sink=stalled)
    bob = engine.join_session(controller.session_id, viewer(1))
    assert wait_until(lambda: engine.describe(controller.session_id).state is SessionState.ACTIVE)
    flood(connection, 50)
    assert settled(connection, bob)
    clock.advance(engine.settings.engine.stall_seconds)
    assert bob.sink.wait_for(lambda s: any(e.state is SessionState.DISCONNECTED for e in s.events_of(StateChanged)))
    assert ("participant_stalled", "Alice") in [(r[0], r[1]) for r in audit_rows(engine)]
    back = engine.join_session(controller.session_id, ALICE)  # within the grace period (rule 8)
    assert back.role.value == "controller"

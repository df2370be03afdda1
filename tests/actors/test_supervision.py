"""Failures anywhere in the tree: the session goes on, or ends cleanly; nothing is orphaned."""

import pytest

from engine import policy
from engine.messages import EndpointRetrying, EndReason, ParticipantJoined, ParticipantLeft, Resync, SessionEnded
from engine.runtime import Participant, actor_threads
from engine.sinks import CollectingSink, OutboundQueue
from config.settings import load
from tests.actors.conftest import (
    make_engine, wait_until, ALICE, SSH, assert_nothing_left, audit_rows, census, kinds, tree, viewer,
)


class ExplodingSink(CollectingSink):
    def offer(self, frame):
        if b"boom" in frame.data:
            raise RuntimeError("viewer's client broke")
        return super().offer(frame)


def test_a_crashing_participant_is_removed_and_the_session_goes_on(engine, session, connection):
    fragile = engine.join_session(session.session_id, viewer(1), sink=ExplodingSink())
    steady = engine.join_session(session.session_id, viewer(2))
    connection.emit(b"boom\r\n")
    assert steady.sink.wait_for(lambda s: any(e.reason == "failed" and e.member.user.name == "Viewer 1"
                                              for e in s.events_of(ParticipantLeft)))
    session.send_input(b"after\r")
    assert steady.wait_for_output(b"after") and session.wait_for_output(b"after")
    assert [m.user.name for m in engine.describe(session.session_id).viewers] == ["Viewer 2"]
    assert ("participant_failed", "Viewer 1", {"error": "RuntimeError", "participant": fragile.participant_id}) \
        in audit_rows(engine)
    assert wait_until(lambda: census(engine) == tree(sessions=1, participants=2)), census(engine)
    assert fragile.sink.closed  # its actor stopped, and closed its sink


def test_a_participant_whose_actor_fails_is_removed_and_its_actor_is_gone(engine, session):
    class BrokenEvents(CollectingSink):
        def event(self, event):
            if isinstance(event, ParticipantJoined):
                raise RuntimeError("viewer's event handling broke")
            return super().event(event)

    fragile = engine.join_session(session.session_id, viewer(1), sink=BrokenEvents())
    engine.join_session(session.session_id, viewer(2))  # told to viewer 1's actor, which fails
    assert session.sink.wait_for(lambda s: any(e.reason == "failed" and e.member.user.name == "Viewer 1"
                                               for e in s.events_of(ParticipantLeft)))
    assert wait_until(lambda: census(engine) == tree(sessions=1, participants=2)), census(engine)
    assert fragile.sink.closed
    assert ("participant_failed", "Viewer 1", {"error": "RuntimeError", "participant": fragile.participant_id}) \
        in audit_rows(engine)


def test_a_failing_endpoint_is_retried_with_backoff_then_ends_the_session(engine, session, connection, clock):
    bob = engine.join_session(session.session_id, viewer(1))
    for attempt, backoff in ((1, 1.0), (2, 2.0)):
        connection.fail("connection reset")
        # everyone is told, and the retry timer is set before anyone is told
        assert bob.sink.wait_for(lambda s: len(s.events_of(EndpointRetrying)) == attempt)
        assert bob.sink.events_of(EndpointRetrying)[-1] == EndpointRetrying(attempt, backoff, "connection reset"), bob.sink.events
        clock.advance(backoff - 0.1)
        assert connection.opens == attempt
        clock.advance(0.1)
        assert wait_until(lambda: connection.opens == attempt + 1)
    connection.fail("connection reset")  # third failure: past the bound of 2 retries
    for p in (session, bob):
        assert p.sink.wait_for(lambda s: any(isinstance(e, SessionEnded) and e.reason is EndReason.ENDPOINT_FAILED
                                             and e.detail == "connection reset" for e in s.events))
    assert wait_until(lambda: connection.closed)
    assert kinds(engine).count("endpoint_retry") == 2 and "endpoint_failure" in kinds(engine)
    assert wait_until(lambda: census(engine) == tree()), census(engine)


def test_a_non_retryable_endpoint_error_ends_the_session_at_once(engine, session, connection):
    connection.fail("host key changed", retryable=False)
    assert session.sink.wait_for(lambda s: any(isinstance(e, SessionEnded) and e.reason is EndReason.ENDPOINT_FAILED
                                               for e in s.events))
    assert connection.opens == 1
    assert wait_until(lambda: census(engine) == tree()), census(engine)


def test_the_endpoint_ending_normally_ends_the_session(engine, session, connection):
    connection.finish("exit status 0")
    assert session.sink.wait_for(lambda s: any(isinstance(e, SessionEnded) and e.reason is EndReason.ENDPOINT_CLOSED
                                               for e in s.events))
    assert wait_until(lambda: census(engine) == tree()), census(engine)


def test_a_crashing_session_actor_is_cleaned_up_by_the_root(engine, session, connection, monkeypatch):
    bob = engine.join_session(session.session_id, viewer(1))

    def broken(role):
        raise RuntimeError("bug in a rule")

    monkeypatch.setattr(policy, "check_input", broken)
    session.send_input(b"x")
    for p in (session, bob):
        assert p.sink.wait_for(lambda s: s.closed and any(
            isinstance(e, SessionEnded) and e.reason is EndReason.SESSION_FAILED for e in s.events))
        assert "bug in a rule" not in repr(p.sink.events)  # the detail goes to the log, not the client
    assert wait_until(lambda: connection.closed)
    assert wait_until(lambda: engine.live_sessions() == [])
    rows = audit_rows(engine)
    assert rows[-2][0] == "session_failure" and rows[-1][0] == "session_ended"
    assert rows[-1][2]["reason"] == "session_failed"
    assert wait_until(lambda: census(engine) == tree()), census(engine)
    monkeypatch.undo()
    assert isinstance(engine.open_session(SSH, ALICE), Participant)  # the engine goes on


def test_a_slow_viewer_is_resynchronised_and_slows_nobody(engine, session, connection):
    slow_queue = OutboundQueue(max_bytes=1000)  # not drained yet: a viewer that cannot keep up
    slow = engine.join_session(session.session_id, viewer(1), sink=slow_queue)
    fast = engine.join_session(session.session_id, viewer(2))
    for n in range(100):
        connection.emit(b"line %03d ".ljust(100, b".") % n + b"\r\n")
    connection.emit(b"last line\r\n")
    assert fast.wait_for_output(b"last line") and session.wait_for_output(b"last line")
    assert len(fast.sink.frames) == 101
    assert slow_queue.owes_resync  # it overflowed; its keyframe waits for the client to be ready
    # Now the slow client reads, as a websocket sender would, until its screen is current.
    taken = []

    def screen_after_last_keyframe():
        taken.extend(slow_queue.take())
        kinds = [i.kind for i in taken]
        if "keyframe" not in kinds:
            return b""
        last = len(kinds) - 1 - kinds[::-1].index("keyframe")
        return taken[last].value.data + b"".join(f.data for i in taken[last + 1:] if i.kind == "data"
                                                  for f in i.value)

    assert wait_until(lambda: b"last line" in screen_after_last_keyframe())
    assert any(i.kind == "event" and isinstance(i.value, Resync) for i in taken)
    assert slow_queue.dropped_frames > 0 and slow_queue.resyncs == 1


def test_a_late_joiner_gets_the_screen_first_then_the_live_stream(engine, session, connection):
    connection.emit(b"$ make\r\nbuilding...\r\n")
    session.wait_for_output(b"building")
    bob = engine.join_session(session.session_id, viewer(1))
    assert bob.sink.wait_for(lambda s: s.keyframes)
    assert b"building..." in bob.sink.keyframes[0].data and bob.sink.frames == []
    connection.emit(b"done\r\n")
    assert bob.wait_for_output(b"done")
    assert len(session.sink.keyframes) == 1  # the joiner's keyframe went to the joiner only


def test_stop_ends_every_session_and_leaves_no_thread(tmp_path, clock):
    engine = make_engine(load(env={}, engine={"actor_workers": 3}), clock, tmp_path).start()
    participants = []
    for n in range(5):
        controller = engine.open_session(SSH, ALICE)
        participants += [controller] + [engine.join_session(controller.session_id, viewer(v)) for v in range(3)]
    assert census(engine) == tree(sessions=5, participants=20)
    # 31 actors on the pool's 3 threads, plus the store's own thread
    assert sorted(t.name.rsplit("-", 1)[0] for t in actor_threads()) == ["StoreActor"] + [engine.actor_pool.name] * 3
    engine.stop()
    assert_nothing_left(engine)
    assert all(any(isinstance(e, SessionEnded) and e.reason is EndReason.ENGINE_STOPPED for e in p.sink.events)
               for p in participants)


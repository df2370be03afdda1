"""The rules of DESIGN.md, through real actors: a synthetic endpoint, a manual clock."""

from dataclasses import replace

from engine.messages import (
    Accepted, EndReason, InputRefused, ParticipantJoined, ParticipantLeft, EndpointProtocol, Reason, Refused, Role,
    RemoteClipboard, SessionEnded, SessionState, StateChanged, Ejected,
)
from engine.runtime import Participant
from config.settings import load
from tests.actors.conftest import make_engine, wait_until, ADMIN, ALICE, SSH, audit_rows, kinds, viewer


def ended(participant, reason):
    return participant.sink.wait_for(lambda s: any(isinstance(e, SessionEnded) and e.reason is reason
                                                   for e in s.events))


def test_controller_input_reaches_the_endpoint_and_is_echoed(session, connection):
    session.send_input(b"uptime\r")
    assert session.wait_for_output(b"uptime\r")
    assert connection.inputs_received == 1


def test_a_viewers_input_is_refused_counted_audited_and_never_forwarded(engine, session, connection):
    bob = engine.join_session(session.session_id, viewer(1))
    assert isinstance(bob, Participant) and bob.role is Role.VIEWER
    bob.send_input(b"rm -rf /\r")
    assert bob.sink.wait_for(lambda s: s.events_of(InputRefused))
    assert bob.sink.events_of(InputRefused)[0].reason is Reason.NOT_CONTROLLER
    session.send_input(b"ok\r")  # ordered after the viewer's input in the session's inbox
    assert session.wait_for_output(b"ok\r")
    assert connection.inputs_received == 1 and b"rm -rf" not in bytes(session.sink.output)
    refused = [row for row in audit_rows(engine) if row[0] == "input_refused"]
    assert refused == [("input_refused", "Viewer 1",
                        {"participant": bob.participant_id, "reason": "not_controller", "size": 9})]


def test_the_eleventh_viewer_is_refused_and_nothing_else_changes(engine, session):
    viewers = [engine.join_session(session.session_id, viewer(n)) for n in range(10)]
    assert all(isinstance(v, Participant) for v in viewers)
    refused = engine.join_session(session.session_id, viewer(10))
    assert refused == Refused(Reason.VIEWER_CAP, "this session already has 10 viewers")
    summary = engine.describe(session.session_id)
    assert len(summary.viewers) == 10 and summary.state is SessionState.ACTIVE
    assert kinds(engine).count("join") == 10 and kinds(engine).count("join_refused") == 1


def test_a_lowered_cap_is_enforced(tmp_path, clock):
    with make_engine(load(env={}, engine={"max_viewers": 2}), clock, tmp_path) as engine:
        controller = engine.open_session(SSH, ALICE)
        assert [type(engine.join_session(controller.session_id, viewer(n))).__name__ for n in range(3)] == [
            "Participant", "Participant", "Refused"]


def test_joint_session_off_refuses_joins_but_the_controller_works(engine, connection):
    controller = engine.open_session(replace(SSH, joint_session=False), ALICE, connection=connection)
    assert engine.join_session(controller.session_id, viewer(1)).reason is Reason.JOINT_SESSION_DISABLED
    controller.send_input(b"still here\r")
    assert controller.wait_for_output(b"still here")


def test_the_toggle_applies_to_the_next_join_of_a_live_session(engine, session):
    assert isinstance(engine.join_session(session.session_id, viewer(1)), Participant)
    engine.set_joint_session(SSH.id, False)
    assert engine.join_session(session.session_id, viewer(2)).reason is Reason.JOINT_SESSION_DISABLED
    assert len(engine.describe(session.session_id).viewers) == 1  # who already watches stays


def test_unshareable_protocol_and_no_access_are_refused(engine):
    telnet = engine.open_session(replace(SSH, id="t", protocol=EndpointProtocol.TELNET), ALICE)
    assert engine.join_session(telnet.session_id, viewer(1)).reason is Reason.PROTOCOL_NOT_SHAREABLE
    ssh = engine.open_session(SSH, ALICE)
    assert engine.join_session(ssh.session_id, viewer(1), has_access=False).reason is Reason.NO_ACCESS
    assert engine.join_session("no-such-session", viewer(1)).reason is Reason.UNKNOWN_SESSION


def test_everyone_is_told_who_joins_and_leaves(engine, session):
    bob = engine.join_session(session.session_id, viewer(1))
    carol = engine.join_session(session.session_id, viewer(2))
    assert [m.user.name for m in carol.joined.members] == ["Alice", "Viewer 1", "Viewer 2"]
    assert session.sink.wait_for(lambda s: len(s.events_of(ParticipantJoined)) == 2)
    bob.leave()
    for p in (session, carol):
        assert p.sink.wait_for(lambda s: [(e.member.user.name, e.reason) for e in s.events_of(ParticipantLeft)]
                               == [("Viewer 1", "left")])


def test_administrator_terminates_for_everyone_at_once(engine, session, connection):
    bob = engine.join_session(session.session_id, viewer(1))
    assert engine.terminate(session.session_id, ALICE) == Refused(
        Reason.NOT_ADMINISTRATOR, "only an administrator may terminate a session")
    assert engine.terminate(session.session_id, ADMIN) == Accepted()
    for p in (session, bob):
        assert ended(p, EndReason.TERMINATED)
        assert p.sink.events_of(SessionEnded)[0].by == ADMIN
        assert p.sink.wait_for(lambda s: s.closed)
    assert wait_until(lambda: connection.closed) and wait_until(lambda: engine.live_sessions() == [])
    assert engine.join_session(session.session_id, viewer(2)).reason is Reason.SESSION_ENDED
    rows = audit_rows(engine)
    assert ("terminate_refused", "Alice", {"reason": "not_administrator"}) in rows
    assert ("terminate", "Root", {}) in rows
    assert rows[-1][0] == "session_ended" and rows[-1][2]["reason"] == "terminated"
    # access rights are unchanged: the controller starts a new session at once
    assert isinstance(engine.open_session(SSH, ALICE), Participant)


def test_expiry_at_the_deadline_and_extension(engine, clock):
    controller = engine.open_session(SSH, ALICE, deadline=clock.now() + 60)
    bob = engine.join_session(controller.session_id, viewer(1))
    assert bob.joined.deadline == clock.now() + 60  # viewers see the countdown
    clock.advance(30)
    assert engine.extend(controller.session_id, clock.now() + 60, ALICE) == Accepted()
    assert bob.sink.wait_for(lambda s: any(isinstance(e, StateChanged) and e.deadline == clock.now() + 60
                                           for e in s.events))
    clock.advance(45)  # the old deadline passes: its timer fires and is ignored
    assert engine.describe(controller.session_id).state is SessionState.ACTIVE
    clock.advance(16)
    assert ended(controller, EndReason.EXPIRED) and ended(bob, EndReason.EXPIRED)
    assert kinds(engine)[-3:] == ["extend", "expire", "session_ended"]


def test_extend_is_refused_without_a_deadline_or_by_a_viewer(engine, session, clock):
    assert engine.extend(session.session_id, clock.now() + 60, ALICE).reason is Reason.NO_DEADLINE
    timed = engine.open_session(SSH, ALICE, deadline=clock.now() + 60)
    assert engine.extend(timed.session_id, clock.now() + 90, viewer(1)).reason is Reason.NOT_PERMITTED


def test_controller_disconnect_grace_and_return(engine, session, clock):
    bob = engine.join_session(session.session_id, viewer(1))
    session.disconnect()
    assert bob.sink.wait_for(lambda s: any(isinstance(e, StateChanged) and e.state is SessionState.DISCONNECTED
                                           for e in s.events))
    clock.advance(29)
    back = engine.join_session(session.session_id, ALICE)
    assert back.role is Role.CONTROLLER and back.joined.rejoined
    back.send_input(b"back\r")
    assert back.wait_for_output(b"back")
    clock.advance(5)  # the first grace timer fires now and is ignored
    assert engine.describe(session.session_id).state is SessionState.ACTIVE
    back.disconnect()
    assert bob.sink.wait_for(lambda s: [e.state for e in s.events_of(StateChanged)].count(
        SessionState.DISCONNECTED) == 2)
    clock.advance(29)
    assert engine.describe(session.session_id).state is SessionState.DISCONNECTED
    clock.advance(2)
    assert ended(bob, EndReason.ABANDONED)
    assert wait_until(lambda: engine.live_sessions() == [])
    assert ["disconnect", "reconnect", "disconnect"] == [k for k in kinds(engine) if k in ("disconnect", "reconnect")]


def test_viewers_cannot_take_control(engine, session):
    bob = engine.join_session(session.session_id, viewer(1))
    assert bob.request_control().reason is Reason.CONTROL_NOT_TRANSFERABLE
    session.disconnect()  # not even while the controller is away
    assert engine.join_session(session.session_id, viewer(2)).role is Role.VIEWER


def test_eject_one_viewer(engine, session):
    bob = engine.join_session(session.session_id, viewer(1))
    carol = engine.join_session(session.session_id, viewer(2))
    assert carol.eject(bob.participant_id, viewer(2)).reason is Reason.NOT_PERMITTED
    assert session.eject(carol.participant_id, ALICE, "not on this ticket") == Accepted()
    assert carol.sink.wait_for(lambda s: s.closed and s.events_of(Ejected))
    assert carol.sink.events_of(Ejected)[0] == Ejected(ALICE, "not on this ticket")
    assert bob.sink.wait_for(lambda s: any(e.reason == "ejected" and e.by == ALICE
                                           for e in s.events_of(ParticipantLeft)))
    assert session.eject(session.participant_id, ADMIN).reason is Reason.NOT_PERMITTED
    assert [len(engine.describe(session.session_id).viewers)] == [1]
    # every eject row names both sides: the target and the sender (participant and user)
    rows = [(kind, detail) for kind, _, detail in audit_rows(engine) if kind.startswith("eject")]
    assert rows == [
        ("eject_refused", {"participant": bob.participant_id, "user": "Viewer 1",
                           "by_participant": carol.participant_id, "by_user": "Viewer 2", "reason": "not_permitted"}),
        ("eject", {"participant": carol.participant_id, "user": "Viewer 2", "by_participant": session.participant_id,
                   "by_user": "Alice", "reason": "not on this ticket"}),
        ("eject_refused", {"participant": session.participant_id, "user": "Alice", "by_participant": None,
                           "by_user": "Root", "reason": "not_permitted"}),  # an administrator outside the session
    ]


def test_joins_per_user_and_session_are_bounded(tmp_path, clock):
    settings = load(env={}, engine={"max_joins_per_user": 3, "joins_window_seconds": 60.0},
                    audit={"refusal_interval_seconds": 10.0})
    with make_engine(settings, clock, tmp_path) as engine:
        controller = engine.open_session(SSH, ALICE)
        bob = viewer(1)
        for _ in range(3):  # a viewer that reconnects in a loop
            joined = engine.join_session(controller.session_id, bob)
            assert isinstance(joined, Participant)
            joined.disconnect()
            clock.advance(1)
        refusals = [engine.join_session(controller.session_id, bob) for _ in range(20)]
        assert set(refusals) == {Refused(Reason.TOO_MANY_JOINS,
                                         "you joined this session 3 times in the last 60 s; try again in 57 s")}
        # another user, and another session, are not affected
        assert isinstance(engine.join_session(controller.session_id, viewer(2)), Participant)
        other = engine.open_session(SSH, ALICE)
        assert isinstance(engine.join_session(other.session_id, bob), Participant)
        refused = [d for k, _, d in audit_rows(engine) if k == "join_refused"]
        assert refused[0] == {"reason": "too_many_joins"}  # the first at once, the repeats counted
        assert sum(d.get("count", 1) for d in refused) == 20 and len(refused) == 2
        clock.advance(57)  # the first join leaves the window
        assert isinstance(engine.join_session(controller.session_id, bob), Participant)


def test_the_endpoints_clipboard_is_told_to_the_controller_only_and_again_when_it_returns(engine, session,
                                                                                         connection, clock):
    bob = engine.join_session(session.session_id, viewer(1))
    connection._events.clipboard("copied on the desktop")  # as a desktop's ServerCutText reports it
    assert session.sink.wait_for(lambda s: s.events_of(RemoteClipboard))
    assert session.sink.events_of(RemoteClipboard) == [RemoteClipboard("copied on the desktop")]
    assert "copied" not in repr(session.sink.events_of(RemoteClipboard)[0])  # logs see its size only
    session.disconnect()
    assert bob.sink.wait_for(lambda s: any(isinstance(e, StateChanged) and e.state is SessionState.DISCONNECTED
                                           for e in s.events))
    back = engine.join_session(session.session_id, ALICE)
    assert back.sink.wait_for(lambda s: s.events_of(RemoteClipboard))
    assert back.sink.events_of(RemoteClipboard) == [RemoteClipboard("copied on the desktop")]
    bob.send_input(b"x")  # ordered after everything told before it: nothing about the clipboard came
    assert bob.sink.wait_for(lambda s: s.events_of(InputRefused))
    assert not bob.sink.events_of(RemoteClipboard)
    assert not [k for k in kinds(engine) if "clipboard" in k]  # audited where the page is given it, not here

"""Recorded sessions in the engine (synthetic endpoints; time is the ManualClock's): the recording
is one more consumer of the fan-out, from the first byte to the end, with the session's audit
events as markers; closing it puts its size and SHA-256 into the audit log; a recording that
falls behind or cannot write is audited and the profile's policy decides."""

import hashlib
import json
import os
import threading

import pytest

from config.settings import load
from engine.messages import EndReason, RecordingPolicy, Say, SessionEnded
from engine.recordings import marker_label, read_cast
from engine.runtime import actor_threads, tell_session
from tests.actors.conftest import ADMIN, ALICE, SSH, audit_rows, make_engine, viewer, wait_until
from tests.fixtures.desktops import PaintedDesktop


@pytest.fixture
def recordings_dir(tmp_path):
    return tmp_path / "recordings"


def recorded_engine(tmp_path, clock, recordings_dir, **recordings):
    settings = load(env={}, recordings={"directory": str(recordings_dir), **recordings})
    return make_engine(settings, clock, tmp_path).start()


@pytest.fixture
def engine(tmp_path, clock, recordings_dir):
    assert actor_threads() == []
    engine = recorded_engine(tmp_path, clock, recordings_dir)
    yield engine
    engine.stop()
    assert actor_threads() == []


def closed_rows(engine, session_id=None):
    return [d for kind, _, d in audit_rows(engine) if kind == "recording_closed"]


def wait_closed(engine, count=1):
    assert wait_until(lambda: engine.recordings.open_count() == 0 and len(closed_rows(engine)) >= count)
    return closed_rows(engine)


def start_recorded(engine, connection, **kw):
    controller = engine.open_session(SSH, ALICE, connection=connection, record=True, **kw)
    assert controller.sink.wait_for(lambda s: any(getattr(e, "state", None) == "active" for e in s.events))
    return controller


def test_a_recorded_session_is_an_asciicast_from_its_first_byte_to_its_end(engine, connection, clock, recordings_dir):
    controller = start_recorded(engine, connection)
    assert controller.joined.recorded is True
    connection.emit(b"first bytes \xe2\x82")  # a euro sign split across two reads
    assert controller.wait_for_output(b"first bytes")  # offered to the recording first (subscribed first)
    clock.advance(1.5)
    connection.emit(b"\xac and more\r\n")
    joined = engine.join_session(controller.session_id, viewer(1))
    assert joined.wait_for_output(b"more")
    clock.advance(1.0)
    controller.resize(100, 30)
    assert wait_until(lambda: connection.size == (100, 30))  # the endpoint has handled it
    connection.emit(b"after resize\r\n")
    assert controller.wait_for_output(b"after resize")
    joined.leave()
    engine.terminate(controller.session_id, ADMIN)
    [row] = wait_closed(engine)

    path = recordings_dir / f"{controller.session_id}.cast"
    data = path.read_bytes()
    cast = read_cast(data)
    assert cast.header["width"] == 80 and cast.header["height"] == 24
    assert cast.header["cosession"]["session_id"] == controller.session_id
    output = "".join(e[2] for e in cast.events if e[1] == "o")
    assert output == "first bytes € and more\r\nafter resize\r\n"
    assert [e for e in cast.events if e[1] == "r"] == [[2.5, "r", "100x30"]]
    assert [e[0] for e in cast.events if e[1] == "o"] == [0.0, 1.5, 2.5]
    labels = [label for _, label in cast.markers]
    assert labels == ["Viewer 1 joined as viewer", "Viewer 1 left", "terminated by Root", "session ended (terminated)"]
    # size and SHA-256 of exactly the file, into the audit chain
    assert row["bytes"] == len(data) and row["sha256"] == hashlib.sha256(data).hexdigest()
    assert row["file"] == path.name and row["complete"] is True and row["end"] == "terminated"
    assert not os.access(path, os.W_OK) or os.geteuid() == 0
    assert path.stat().st_mode & 0o777 == 0o440


def test_the_markers_are_the_sessions_audit_rows(engine, connection, clock):
    controller = start_recorded(engine, connection)
    v = engine.join_session(controller.session_id, viewer(1))
    for _ in range(3):  # counted into one row after the first: one marker
        v.send_input(b"x")
    tell_session(v.joined, Say(v.joined.participant_id, "look at PID 1"))
    clock.advance(2)
    v.disconnect()
    engine.extend(controller.session_id, clock.now() + 600, ADMIN)  # refused: no deadline
    clock.advance(1)
    engine.terminate(controller.session_id, ADMIN)
    wait_closed(engine)
    cast = read_cast((engine.recordings.directory / f"{controller.session_id}.cast").read_bytes())
    started = cast.header["cosession"]["started_at"]
    rows = [(kind, actor, d) for kind, actor, d in audit_rows(engine) if "count" not in d]
    import sqlalchemy as sa
    with sa.create_engine(engine._database_url).connect() as db:
        ats = db.execute(sa.text("select kind, at, actor_name, detail from audit_events order by id")).all()
    expected = []
    for kind, at, actor, detail in ats:
        detail = json.loads(detail)
        label = marker_label(kind, actor, detail)
        if label is not None and "count" not in detail:
            expected.append((round(at - started, 3), label))
    assert [(round(t, 3), label) for t, label in cast.markers] == expected
    assert "Viewer 1: look at PID 1" in [label for _, label in cast.markers]
    assert any("input refused" in label for _, label in cast.markers)
    assert sum("input refused" in label for _, label in cast.markers) == 1
    assert rows  # the rows were read


def test_a_recording_that_falls_behind_ends_the_session_by_default(tmp_path, clock, recordings_dir, connection):
    engine = recorded_engine(tmp_path, clock, recordings_dir, queue_max_bytes=1000)
    blocked = threading.Event()
    try:
        controller = start_recorded(engine, connection)
        writers = engine.recordings.writers
        writers.submit(blocked.wait)  # every writer busy: the recording cannot keep up
        writers.submit(blocked.wait)
        for n in range(30):
            connection.emit(b"%03d" % n + b"." * 97)
        assert controller.sink.wait_for(lambda s: s.events_of(SessionEnded))
        [ended] = controller.sink.events_of(SessionEnded)
        assert ended.reason is EndReason.RECORDING_FAILED
        blocked.set()
        [row] = wait_closed(engine)
        assert row["complete"] is False and row["end"] == "recording_failed"
        failed = [d for kind, _, d in audit_rows(engine) if kind == "recording_failed"]
        assert failed and failed[0]["reason"] == "behind" and failed[0]["policy"] == "end_session"
        cast = read_cast((recordings_dir / f"{controller.session_id}.cast").read_bytes())
        assert cast.markers[-2][1] == "recording failed (behind)"
    finally:
        blocked.set()
        engine.stop()


def test_a_recording_that_falls_behind_goes_on_from_a_keyframe_when_the_profile_says_continue(
        tmp_path, clock, recordings_dir, connection):
    engine = recorded_engine(tmp_path, clock, recordings_dir, queue_max_bytes=1000)
    blocked = threading.Event()
    try:
        controller = start_recorded(engine, connection, recording_policy=RecordingPolicy.CONTINUE)
        writers = engine.recordings.writers
        writers.submit(blocked.wait)
        writers.submit(blocked.wait)
        connection.emit(b"before\r\n")
        for n in range(30):
            connection.emit(b"%03d" % n + b"." * 97)
        connection.emit(b"\r\nlast line\r\n")
        assert controller.wait_for_output(b"last line")
        blocked.set()
        connection.emit(b"after\r\n")
        path = recordings_dir / f"{controller.session_id}.cast"  # created by a writer, blocked until now
        assert wait_until(lambda: path.exists() and b"after" in path.read_bytes())
        engine.terminate(controller.session_id, ADMIN)
        [row] = wait_closed(engine)
        assert row["complete"] is False and row["end"] == "terminated"
        cast = read_cast((recordings_dir / f"{controller.session_id}.cast").read_bytes())
        output = "".join(e[2] for e in cast.events if e[1] == "o")
        assert "last line" in output  # from the keyframe: the screen as it was when the writer caught up
        assert "recording failed (behind)" in [label for _, label in cast.markers]
    finally:
        blocked.set()
        engine.stop()


def test_a_file_deleted_under_a_live_recording_is_audited_and_ends_the_session(engine, connection, clock, recordings_dir):
    controller = start_recorded(engine, connection)
    connection.emit(b"hello\r\n")
    path = recordings_dir / f"{controller.session_id}.cast"
    assert wait_until(lambda: path.exists() and b"hello" in path.read_bytes())  # a writer creates it
    path.unlink()
    clock.advance(engine.settings.recordings.check_seconds)
    assert controller.sink.wait_for(lambda s: s.events_of(SessionEnded))
    assert controller.sink.events_of(SessionEnded)[0].reason is EndReason.RECORDING_FAILED
    [row] = wait_closed(engine)
    assert row["failure"] == "file_deleted"
    assert [d["reason"] for k, _, d in audit_rows(engine) if k == "recording_failed"] == ["file_deleted"]


def test_a_recording_that_cannot_be_created_ends_the_session(tmp_path, clock, connection):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    engine = recorded_engine(tmp_path, clock, blocker)
    try:
        controller = engine.open_session(SSH, ALICE, connection=connection, record=True)
        assert controller.sink.wait_for(lambda s: s.events_of(SessionEnded))  # the start itself is recorded
        assert controller.sink.events_of(SessionEnded)[0].reason is EndReason.RECORDING_FAILED
        [row] = wait_closed(engine)
        assert row["file"] is None and row["failure"] == "cannot_create"
    finally:
        engine.stop()


def test_an_unrecorded_session_writes_no_file(engine, session, recordings_dir):
    session.leave()
    assert wait_until(lambda: engine.live_sessions() == [])
    assert not recordings_dir.exists() or not list(recordings_dir.iterdir())


def test_stopping_the_engine_closes_every_recording_before_the_store(tmp_path, clock, recordings_dir, connection):
    engine = recorded_engine(tmp_path, clock, recordings_dir)
    try:
        controller = start_recorded(engine, connection)
        connection.emit(b"bye\r\n")
        assert controller.wait_for_output(b"bye")
    finally:
        engine.stop()
    data = (recordings_dir / f"{controller.session_id}.cast").read_bytes()
    cast = read_cast(data)
    assert cast.markers[-1][1] == "session ended (engine_stopped)"
    import sqlalchemy as sa
    with sa.create_engine(engine._database_url).connect() as db:
        detail = db.execute(sa.text("select detail from audit_events where kind = 'recording_closed'")).scalar_one()
    assert json.loads(detail)["sha256"] == hashlib.sha256(data).hexdigest()


def test_retention_deletes_old_recordings_each_deletion_audited(tmp_path, clock, recordings_dir):
    from engine.audit import verify
    from protocols.synthetic import SyntheticConnection

    engine = recorded_engine(tmp_path, clock, recordings_dir, retention_days=1.0)
    try:
        ids = []
        for wait in (1.5, 0.75):  # days after each session ends: the first ends 2.25 days before the last look
            controller = start_recorded(engine, SyntheticConnection(clock))
            engine.terminate(controller.session_id, ADMIN)
            wait_closed(engine, len(ids) + 1)
            ids.append(controller.session_id)
            clock.advance(wait * 86400)  # the hourly sweeps run meanwhile, on the writer threads
        old, young = (recordings_dir / f"{sid}.cast" for sid in ids)
        assert wait_until(lambda: not old.exists())
        assert wait_until(lambda: any(k == "recording_deleted" for k, _, _ in audit_rows(engine)))
        deleted = [d for kind, _, d in audit_rows(engine) if kind == "recording_deleted"]
        assert deleted == [{"file": old.name, "bytes": deleted[0]["bytes"], "reason": "retention",
                            "retention_days": 1.0}] and deleted[0]["bytes"] > 0
        assert young.exists()  # within the retention
    finally:
        engine.stop()
    # a deletion the log tells is no tampering; the one kept is intact
    report = verify(engine._database_url, recordings=recordings_dir)
    assert report.ok, report


def colour_at(minute: int) -> tuple[int, int, int]:
    return (minute * 20 % 256, 255 - minute * 20 % 256, 128)


def test_a_desktop_is_recorded_as_its_rfb_stream_with_keyframes_to_seek_by(engine, clock, recordings_dir):
    """Ten minutes on the ManualClock: a frame every second; a keyframe at least every
    keyframe_seconds; seeking to any time shows the desktop of that time; the file's index,
    size and SHA-256 are what the audit log says; the markers are the session's audit rows."""
    from engine.messages import DisplayFill, DisplaySize, EndpointProtocol, EndpointSpec
    from engine.recording_desktop import desktop_start, read_desktop
    from engine.recordings import DESKTOP_FORMAT
    from protocols.rfb_browser import FrameDecoder

    desk = PaintedDesktop()
    spec = EndpointSpec("ep2", "desk-1", EndpointProtocol.VNC)
    controller = engine.open_session(spec, ALICE, connection=desk, record=True)
    assert controller.joined.recorded is True
    assert controller.sink.wait_for(lambda s: any(getattr(e, "state", None) == "active" for e in s.events))
    desk.paint(DisplaySize(64, 48))
    for second in range(600):
        minute = second // 60
        desk.paint(DisplayFill(0, 0, 64, 48, colour_at(minute)), DisplayFill(second % 60, 0, 1, 1, (255, 255, 255)))
        clock.advance(1.0)
    assert wait_until(lambda: recordings_dir.exists() and len(list(recordings_dir.iterdir())) == 1), audit_rows(engine)
    engine.join_session(controller.session_id, viewer(1))
    clock.advance(1.0)
    engine.terminate(controller.session_id, ADMIN)
    [closed] = wait_closed(engine)
    [path] = recordings_dir.iterdir()
    assert path.suffix == ".rfbrec" and closed["format"] == DESKTOP_FORMAT and closed["complete"] is True
    data = path.read_bytes()
    assert closed["bytes"] == len(data) and closed["sha256"] == hashlib.sha256(data).hexdigest()
    with open(path, "rb") as f:
        recording = read_desktop(f)
        assert recording.indexed and (recording.width, recording.height) == (64, 48)
        times = [t for t, _ in recording.keyframes]
        assert len(times) >= 55, times  # about one every 10 s of the 600
        assert max(b - a for a, b in zip([0.0, *times], times)) <= 12.0
        labels = [label for _, label in recording.markers]
        assert "Viewer 1 joined as viewer" in labels and labels[-1].startswith("session ended")
        assert labels[-1].startswith("session ended")
        for at in (30.5, 299.5, 305.5, 599.5):
            start = desktop_start(f, recording, at)
            decoder = FrameDecoder()
            decoder.feed(start.catch_up)
            minute = int(at) // 60
            assert tuple(decoder.framebuffer[20, 20]) == colour_at(minute), at
            assert tuple(decoder.framebuffer[0, int(at) % 60]) == (255, 255, 255), at
        # the same from a walk over the records, as a live or crash-left file is read
        walked = read_desktop(f, size=recording.end)
        assert not walked.indexed and walked.keyframes == recording.keyframes
        assert [label for _, label in walked.markers] == labels
    assert not os.access(path, os.W_OK) or os.geteuid() == 0



@pytest.mark.parametrize("protocol", ["vnc", "rdp"])
def test_a_desktop_recording_that_cannot_write_ends_the_session_recording_failed(tmp_path, clock, connection, protocol):
    """The shared display pipeline records VNC and RDP alike; a file that cannot be written
    (here: the recordings directory is a file) is audited and ends the session (fail closed)."""
    from engine.messages import EndpointProtocol, EndpointSpec

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    engine = recorded_engine(tmp_path, clock, blocker)
    try:
        spec = EndpointSpec("ep2", "desk-1", EndpointProtocol(protocol))
        controller = engine.open_session(spec, ALICE, connection=PaintedDesktop(), record=True)
        assert controller.sink.wait_for(lambda s: any(isinstance(e, SessionEnded) for e in s.events))
        ended = [e for e in controller.sink.events if isinstance(e, SessionEnded)][0]
        assert ended.reason is EndReason.RECORDING_FAILED
        [failed] = [d for k, _, d in audit_rows(engine) if k == "recording_failed"]
        assert failed["reason"] == "cannot_create" and failed["policy"] == "end_session"
    finally:
        engine.stop()

"""The desktop replay's websocket (dashboard/gateway/replay.py) with a Python client that speaks
RFB as noVNC does: a seek starts at the desktop of that time, paused; speed and play run it to
its end; who may not replay gets the handshake's 403, audited. The recording is made by the
engine on the ManualClock from a desktop the test paints."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
import trio
from trio_websocket import HandshakeError

from cosession.join import connect_socket, login, open_socket
from engine.clock import ManualClock
from engine.messages import DisplayFill, DisplaySize, EndpointProtocol, EndpointSpec, User
from engine.recording_desktop import read_desktop
from tests.fixtures.desktops import PaintedDesktop, RfbParticipant
from tests.fixtures.gateway import PASSWORD

SECONDS = 30


@pytest.fixture
def gateway_clock():
    return ManualClock()


def colour(second: int) -> tuple[int, int, int]:
    return (second * 8 % 256, 100, 200)


def record(gateway, end: bool = True) -> str:
    endpoint = gateway.create_endpoint("desk", EndpointProtocol.VNC, "127.0.0.1", 5999)
    gateway.create_user("root", PASSWORD, admin=True)
    bob = gateway.create_user("bob", PASSWORD)
    gateway.services.grants.grant(endpoint.id, bob.id, "viewer")
    desk = PaintedDesktop()
    spec = EndpointSpec(endpoint.id, endpoint.name, EndpointProtocol.VNC)
    alice = User("alice", "alice")
    controller = gateway.engine.open_session(spec, alice, connection=desk, record=True)
    assert controller.sink.wait_for(lambda s: any(getattr(e, "state", None) == "active" for e in s.events))
    desk.paint(DisplaySize(32, 24))
    for second in range(SECONDS):
        desk.paint(DisplayFill(0, 0, 32, 24, colour(second)))
        gateway.clock.advance(1.0)
    if end:
        gateway.engine.terminate(controller.session_id, User("root", "root", is_admin=True))
    return controller.session_id


async def audit_rows(gateway, kind: str) -> list[dict]:
    def read():
        gateway.engine.flush_audit()  # the rows told to the store so far are written
        with sa.create_engine(gateway.settings.database_url).connect() as db:
            rows = db.execute(sa.text("select actor_name, detail from audit_events where kind = :k order by id"),
                              {"k": kind}).all()
        return [{"actor": a, **json.loads(d)} for a, d in rows]
    return await trio.to_thread.run_sync(read)


async def recorded(gateway) -> str:
    """A closed recording's session id (`record`, then its `recording_closed` row)."""
    session_id = await trio.to_thread.run_sync(record, gateway)
    with trio.fail_after(20):
        while (info := gateway.services.audit_reader.recording(session_id)) is None or info.state != "closed":
            await trio.sleep(0.02)  # the writer thread closes the file: poll the audit log for its row
    return session_id


async def seek(nursery, gateway, cookie: str, session_id: str, at: float) -> tuple[object, RfbParticipant]:
    """A paused replay at `at`, once its picture is that second's colour."""
    socket = await connect_socket(nursery, gateway.base_url, f"/ws/recordings/{session_id}?at={at}&play=0",
                                  cookie, message_queue_size=64)
    r = RfbParticipant(socket)
    nursery.start_soon(r.read)
    await r.wait(lambda: r.control and r.pixel() == colour(int(at)))
    return socket, r


async def test_a_seek_starts_paused_at_its_desktop_and_plays_to_the_end(live_gateway, nursery):
    session_id = await recorded(live_gateway)
    cookie = await trio.to_thread.run_sync(login, live_gateway.base_url, "root", PASSWORD)
    socket, r = await seek(nursery, live_gateway, cookie, session_id, 12.5)
    assert r.control[0] == {"type": "time", "t": 12.5, "playing": False}
    assert (r.client.width, r.client.height) == (32, 24)  # ServerInit: the desktop's size at that time

    await socket.send_message(json.dumps({"type": "speed", "speed": 16}))
    await socket.send_message(json.dumps({"type": "play"}))
    await r.wait(lambda: any(m["type"] == "end" for m in r.control))
    assert r.pixel() == colour(SECONDS - 1)
    times = [m["t"] for m in r.control if m["type"] == "time"]
    assert times == sorted(times) and times[-1] > 12.5
    await socket.aclose()

    replays = await audit_rows(live_gateway, "recording_replayed")
    assert [(row["actor"], row["position"]) for row in replays] == [("root", 12.5)]


async def test_who_may_not_replay_gets_403_and_a_row(live_gateway):
    session_id = await recorded(live_gateway)
    cookie = await trio.to_thread.run_sync(login, live_gateway.base_url, "bob", PASSWORD)
    for who in (cookie, None):  # bob below the replay role; anyone signed out (refused at the edge)
        with pytest.raises(BaseExceptionGroup) as refused:
            async with open_socket(live_gateway.base_url, f"/ws/recordings/{session_id}", who):
                pass
        assert refused.group_contains(HandshakeError, match="403")
    denied = await audit_rows(live_gateway, "recording_replay_denied")
    assert [(row["actor"], row["reason"]) for row in denied] == [("bob", "not_permitted")]


async def test_a_live_desktop_replays_from_its_start_what_is_written_so_far(live_gateway, nursery):
    """Watch from the start: the session runs, its file has no index yet and is read record by record."""
    session_id = await trio.to_thread.run_sync(lambda: record(live_gateway, end=False))
    path = live_gateway.settings.recordings_path / f"{session_id}.rfbrec"

    def written() -> float:
        with open(path, "rb") as f:
            return read_desktop(f).duration

    with trio.fail_after(20):
        while await trio.to_thread.run_sync(written) < SECONDS - 1:
            await trio.sleep(0.02)  # the writer thread appends what the session fanned out: poll the file
    cookie = await trio.to_thread.run_sync(login, live_gateway.base_url, "root", PASSWORD)
    socket = await connect_socket(nursery, live_gateway.base_url, f"/ws/recordings/{session_id}?at=20&play=0",
                                  cookie, message_queue_size=64)
    r = RfbParticipant(socket)
    nursery.start_soon(r.read)
    await r.wait(lambda: r.control and r.pixel() == colour(20))
    replays = await audit_rows(live_gateway, "recording_replayed")
    assert [(row["state"], row["position"]) for row in replays] == [("recording", 20.0)]
    await socket.aclose()


async def test_the_recording_gateway_does_not_hash_the_file_again_until_it_changes(live_gateway, nursery,
                                                                                   monkeypatch):
    """The recorder hashed every byte it wrote: its gateway's first replay reads no hash of its
    own; a file changed afterwards (another inode's times) is hashed, found altered, refused."""
    from dashboard.services import replays

    session_id = await recorded(live_gateway)
    hashed: list[str] = []
    check_file = replays.check_file
    monkeypatch.setattr(replays, "check_file", lambda info, directory: hashed.append(info.file)
                        or check_file(info, directory))
    cookie = await trio.to_thread.run_sync(login, live_gateway.base_url, "root", PASSWORD)
    socket, _ = await seek(nursery, live_gateway, cookie, session_id, 3)
    await socket.aclose()
    assert hashed == []

    path = live_gateway.settings.recordings_path / f"{session_id}.rfbrec"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # one byte of the first frames, in place: same size
    path.chmod(0o640)
    path.write_bytes(bytes(data))
    with pytest.raises(BaseExceptionGroup) as refused:
        async with open_socket(live_gateway.base_url, f"/ws/recordings/{session_id}?at=3", cookie):
            pass
    assert refused.group_contains(HandshakeError, match="403")  # a refusal is the handshake's 403
    assert hashed == [f"{session_id}.rfbrec"]
    denied = await audit_rows(live_gateway, "recording_replay_denied")
    assert [row["reason"] for row in denied] == ["altered"]

"""Graphical (VNC) sessions through the real gateway and real websockets, against a real Xvnc:
Python clients that speak RFB as noVNC does (tests.fixtures.desktops.RfbParticipant). The browser itself
is in test_desktop_browser.py; here, what the gateway lets through and refuses, by message.

The X server is the witness of what reached the desktop: `xev` logs every key and button event
its full-screen window receives."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trio

from cosession.join import connect_socket, login
from engine.messages import EndpointProtocol
from protocols import rfb
from protocols.rfb_browser import decode_png
from tests.fixtures.desktops import RfbParticipant, rfb_participant
from tests.fixtures.gateway import PASSWORD

pytestmark = pytest.mark.xvnc

@pytest.fixture
def gateway_overrides():
    return {"engine": {"endpoint_retries": 0}}


@pytest.fixture
def desk(live_gateway, xvnc):
    record = live_gateway.create_endpoint("desk", EndpointProtocol.VNC, xvnc.host, xvnc.port, password=xvnc.password)
    for name in ("alice", "bob", "carol"):
        live_gateway.create_user(name, PASSWORD)
        live_gateway.grant(record, name)
    return record


def close_to(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return diff.mean() < 3.0 and int((diff.max(axis=2) > 48).sum()) < 300


async def converge(p: RfbParticipant, xvnc, timeout: float = 15.0) -> None:
    with trio.move_on_after(timeout):
        while True:
            changed = p.changed  # before looking: a change while we look wakes the wait
            truth = await trio.to_thread.run_sync(xvnc.screenshot)
            if close_to(p.client.frames.framebuffer, truth):
                return
            await changed.wait()
    picture, truth = p.client.frames.framebuffer, xvnc.screenshot()
    diff = np.abs(picture.astype(np.int16) - truth.astype(np.int16)) if picture.shape == truth.shape else None
    raise AssertionError(f"never the X server's picture: updates {p.client.frames.updates}, ready {p.client.ready}, "
                         f"{picture.shape}, diff {None if diff is None else (diff.mean(), (diff.max(axis=2) > 48).sum())}, "
                         f"control {p.control[-3:]}")


def xev_events(path: Path) -> list[str]:
    """The key and button events xev logged: ('KeyPress', keysym name) ... one line each."""
    out = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("KeyPress", "KeyRelease", "ButtonPress", "ButtonRelease")):
            kind = line.split()[0]
            detail = " ".join(lines[i + 1:i + 4])
            out.append(f"{kind} {detail}")
    return out


async def test_controller_input_arrives_viewer_input_never_does(live_gateway, xvnc, desk, tmp_path):
    log = tmp_path / "xev.log"
    with open(log, "w") as out:
        xev = subprocess.Popen(["xev", "-geometry", f"{xvnc.width}x{xvnc.height}+0+0", "-event", "keyboard",
                                "-event", "button"], env=xvnc.env, stdout=out, stderr=subprocess.DEVNULL)
    xvnc.clients.append(xev)
    xvnc.wait_for_window("Event Tester")
    async with trio.open_nursery() as nursery:
        alice = await rfb_participant(nursery, live_gateway, "alice", f"/ws/endpoints/{desk.id}/start",
                                  {"type": "start", "cols": 80, "rows": 24})
        assert alice.of("joined")[0]["role"] == "controller"
        session_id = alice.of("joined")[0]["session_id"]
        bob = await rfb_participant(nursery, live_gateway, "bob", f"/ws/sessions/{session_id}", {"type": "join"})
        await bob.wait(lambda: bob.client.frames.updates > 0)
        # the viewer tries every input message there is (a clipboard, Ctrl-Alt-Del): none reaches the X server
        for message in (rfb.KeyEvent(True, ord("v")), rfb.KeyEvent(False, ord("v")),
                        rfb.PointerEvent(1, 100, 100), rfb.PointerEvent(0, 100, 100),
                        rfb.ClientCutText(b"from the viewer"),
                        # Ctrl-Alt-Del as noVNC's Send Ctrl-Alt-Del sends it
                        rfb.KeyEvent(True, 0xFFE3), rfb.KeyEvent(True, 0xFFE9), rfb.KeyEvent(True, 0xFFFF),
                        rfb.SetDesktopSize(800, 600, (rfb.Screen(0, 0, 0, 800, 600),))):
            await bob.socket.send_message(rfb.pack(message))
        await bob.wait(lambda: len([r for r in bob.of("refused") if r["reason"] == "not_controller"]) == 9)
        # the controller's keys and click do
        await alice.socket.send_message(rfb.pack(rfb.PointerEvent(0, 200, 200)) + rfb.pack(rfb.PointerEvent(1, 200, 200))
                                        + rfb.pack(rfb.PointerEvent(0, 200, 200)))
        await alice.socket.send_message(rfb.pack(rfb.KeyEvent(True, ord("c"))) + rfb.pack(rfb.KeyEvent(False, ord("c"))))
        with trio.fail_after(10):
            while not any("keysym 0x63, c)" in e for e in xev_events(log)):
                await trio.sleep(0.02)  # polling xev's log file
        events = xev_events(log)
        assert not any("keysym 0x76, v)" in e for e in events), events
        assert sum(1 for e in events if e.startswith("ButtonPress")) == 1, events  # only alice's click
        rows = await audit(live_gateway, "input_refused")
        assert rows and all(r["detail"]["role"] == "viewer" for r in rows)
        assert not any("Delete" in e for e in events), events
        assert sum(r["detail"].get("count", 1) for r in rows) == 9  # each refusal audited (repeats counted)
        await close_all(nursery, alice, bob)


async def close_all(nursery, *participants: RfbParticipant) -> None:
    for p in participants:
        with trio.move_on_after(5):
            await p.socket.aclose()
    nursery.cancel_scope.cancel()


async def audit(gateway, kind: str) -> list[dict]:
    def read() -> list[dict]:
        gateway.engine.flush_audit()
        rows, _ = gateway.services.audit_reader.events(kind=kind, limit=10_000)
        return rows

    return await trio.to_thread.run_sync(read)


async def start_and_join(nursery, gateway, desk, *viewers: str) -> tuple[RfbParticipant, list[RfbParticipant]]:
    alice = await rfb_participant(nursery, gateway, "alice", f"/ws/endpoints/{desk.id}/start",
                              {"type": "start", "cols": 80, "rows": 24})
    session_id = alice.of("joined")[0]["session_id"]
    joined = [await rfb_participant(nursery, gateway, name, f"/ws/sessions/{session_id}", {"type": "join"})
              for name in viewers]
    return alice, joined


async def test_everyone_and_a_late_joiner_see_the_desktop_and_a_snapshot_saves_it(live_gateway, xvnc, desk, tmp_path):
    xvnc.run("xterm", "-T", "shown", "-geometry", "70x20+20+20", "-bg", "darkgreen", "-fg", "white",
             "-e", "sh", "-c", "ls -l /usr/bin | head -30; sleep 60")
    xvnc.run("xclock", "-geometry", "150x150+700+400")
    xvnc.wait_for_window("shown")
    async with trio.open_nursery() as nursery:
        alice, (bob,) = await start_and_join(nursery, live_gateway, desk, "bob")
        assert bob.of("joined")[0]["endpoint"]["protocol"] == "vnc"
        await converge(alice, xvnc)
        await converge(bob, xvnc)
        session_id = alice.of("joined")[0]["session_id"]
        carol = await rfb_participant(nursery, live_gateway, "carol", f"/ws/sessions/{session_id}", {"type": "join"})
        await converge(carol, xvnc)  # the late joiner: its keyframe, then the frames after it
        assert (carol.client.width, carol.client.height) == (xvnc.width, xvnc.height)
        assert carol.client.name == "desk"
        # cosession join --snapshot, as a viewer would run it
        snapshot = tmp_path / "desk.png"
        code = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "cosession.cli", "join", f"{live_gateway.base_url}/sessions/{session_id}",
             "--user", "bob", "--password-stdin", "--snapshot", str(snapshot)], input=PASSWORD + "\n",
            capture_output=True, text=True, timeout=60))
        assert code.returncode == 0, code.stderr
        assert f"saved the {xvnc.width}x{xvnc.height} desktop to {snapshot}" in code.stderr
        assert close_to(decode_png(snapshot.read_bytes()), xvnc.screenshot())
        plain = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "cosession.cli", "join", f"{live_gateway.base_url}/sessions/{session_id}",
             "--user", "bob", "--password-stdin"], input=PASSWORD + "\n", capture_output=True, text=True, timeout=60))
        assert plain.returncode == 1 and "cosession join shows terminals only" in plain.stderr
        await close_all(nursery, alice, bob, carol)


@pytest.mark.parametrize("garbage, detail", [
    (b"\x63\x00\x00\x00", "unknown client message type 99"),
    (b"\0\0\0\0" + rfb.PixelFormat(bits_per_pixel=16, depth=16, red_max=31, green_max=63, blue_max=31,
                                   red_shift=11, green_shift=5, blue_shift=0).pack(), "pixel format"),
    (struct.pack(">BxH", 2, 2) + struct.pack(">2i", 0, 16), "does not accept"),
])
async def test_a_browser_that_breaks_rfb_is_closed_and_the_session_goes_on(live_gateway, xvnc, desk, garbage, detail):
    async with trio.open_nursery() as nursery:
        alice, (bob,) = await start_and_join(nursery, live_gateway, desk, "bob")
        await bob.wait(lambda: bob.client.frames.updates > 0)
        await bob.socket.send_message(garbage)
        await bob.wait(lambda: bob.closed)
        refused = bob.of("refused")[-1]
        assert refused["reason"] == "malformed" and detail in refused["detail"]
        rows = await audit(live_gateway, "input_refused")
        assert any(r["detail"]["reason"] == "malformed" for r in rows)
        # the controller goes on: its key still reaches the desktop, its picture still follows it
        updates = alice.client.frames.updates
        xvnc.run("xclock", "-geometry", "100x100+10+10", "-update", "1")
        await alice.wait(lambda: alice.client.frames.updates > updates)
        assert not alice.of("ended")
        await close_all(nursery, alice, bob)


async def test_joiners_before_the_desktop_answers_never_get_an_empty_screen(live_gateway, xvnc, desk):
    # A desktop slow to send its first update (here: its X server stopped) gives early joiners an
    # empty keyframe; a later joiner's ServerInit must still carry a real size, never 0x0.
    os.kill(xvnc.process.pid, signal.SIGSTOP)
    try:
        async with trio.open_nursery() as nursery:
            alice, (bob,) = await start_and_join(nursery, live_gateway, desk, "bob")
            await bob.wait(lambda: bob.client.ready)
            session_id = alice.of("joined")[0]["session_id"]
            carol = await rfb_participant(nursery, live_gateway, "carol", f"/ws/sessions/{session_id}", {"type": "join"})
            await carol.wait(lambda: carol.client.ready)
            assert (carol.client.width, carol.client.height) != (0, 0)
            os.kill(xvnc.process.pid, signal.SIGCONT)
            for p in (alice, bob, carol):
                await converge(p, xvnc)
            await close_all(nursery, alice, bob, carol)
    finally:
        os.kill(xvnc.process.pid, signal.SIGCONT)


async def test_killing_the_vnc_server_ends_the_session_for_everyone(live_gateway, xvnc, desk):
    async with trio.open_nursery() as nursery:
        alice, viewers = await start_and_join(nursery, live_gateway, desk, "bob", "carol")
        xvnc.stop()
        for p in (alice, *viewers):
            await p.wait(lambda p=p: p.of("ended"))
            ended = p.of("ended")[0]
            assert ended["reason"] == "endpoint_failed" and f"{xvnc.host}:{xvnc.port}" in ended["detail"]
        await close_all(nursery, alice, *viewers)


async def test_terminal_messages_are_refused_on_a_desktop(live_gateway, xvnc, desk):
    async with trio.open_nursery() as nursery:
        alice, (bob,) = await start_and_join(nursery, live_gateway, desk, "bob")
        await alice.socket.send_message(json.dumps({"type": "resize", "cols": 100, "rows": 40}))
        await bob.socket.send_message(json.dumps({"type": "resize", "cols": 100, "rows": 40}))
        await alice.wait(lambda: alice.of("refused"))
        await bob.wait(lambda: bob.of("refused"))
        assert alice.of("refused")[0]["reason"] == "not_permitted"
        assert bob.of("refused")[0]["reason"] == "not_controller"
        await close_all(nursery, alice, bob)


async def test_a_browser_that_answers_the_greeting_wrongly_is_closed(live_gateway, xvnc, desk):
    """Refused during the RFB handshake itself (before any frame): refused, audited, closed."""
    async with trio.open_nursery() as nursery:
        alice, _ = await start_and_join(nursery, live_gateway, desk)
        session_id = alice.of("joined")[0]["session_id"]
        cookie = await trio.to_thread.run_sync(login, live_gateway.base_url, "bob", PASSWORD)
        socket = await connect_socket(nursery, live_gateway.base_url, f"/ws/sessions/{session_id}", cookie,
                                      message_queue_size=64)
        await socket.send_message(json.dumps({"type": "join"}))
        got = []
        with trio.fail_after(15):
            while not any(isinstance(m, bytes) for m in got):
                got.append(await socket.get_message())
        assert got[-1] == b"RFB 003.008\n"
        await socket.send_message(b"RFB 003.003\n")
        with trio.fail_after(15):
            refusal = json.loads(await socket.get_message())
        assert refusal["type"] == "refused" and refusal["reason"] == "malformed" and "3.8" in refusal["detail"]
        rows = await audit(live_gateway, "input_refused")
        assert any(r["detail"]["reason"] == "malformed" and r["detail"]["role"] == "viewer" for r in rows)
        with trio.move_on_after(5):
            await socket.aclose()
        assert not alice.of("ended")
        await close_all(nursery, alice)


async def test_the_controllers_clipboard_is_decided_by_its_profile_and_audited_with_its_size(live_gateway, xvnc,
                                                                                           desk):
    """A desktop's clipboard upload (noVNC's ClientCutText, the toolbar's Paste clipboard):
    refused `clipboard_not_allowed` with the Standard profile, forwarded and audited with its
    size (never its content) once a profile allows it, decided at each use."""
    async with trio.open_nursery() as nursery:
        alice = await rfb_participant(nursery, live_gateway, "alice", f"/ws/endpoints/{desk.id}/start",
                                  {"type": "start", "cols": 80, "rows": 24})
        assert alice.of("joined")[0]["role"] == "controller"
        await alice.wait(lambda: alice.client.frames.updates > 0)
        await alice.socket.send_message(rfb.pack(rfb.ClientCutText(b"secret-ish clip")))
        await alice.wait(lambda: any(r.get("reason") == "clipboard_not_allowed" for r in alice.of("refused")))

        services = live_gateway.services
        upload = services.profiles.create_profile("Upload", "allow", clipboard_upload=True)
        user = services.users.get_by_name("alice")
        services.grants.grant(desk.id, user.id, "user", upload.id)
        await alice.socket.send_message(rfb.pack(rfb.ClientCutText(b"secret-ish clip")))
        with trio.fail_after(10):
            while not (rows := await audit(live_gateway, "clipboard_upload")):
                await trio.sleep(0.02)  # polling the audit log
        assert [(r["actor_name"], r["detail"]["size"]) for r in rows] == [("alice", len(b"secret-ish clip"))]
        with trio.fail_after(10):  # it is the X server's clipboard now
            while await trio.to_thread.run_sync(xvnc.clipboard) != "secret-ish clip":
                await trio.sleep(0.05)  # polling the X server's selection
        refused = await audit(live_gateway, "input_refused")
        assert [r["detail"]["reason"] for r in refused] == ["clipboard_not_allowed"]
        assert "secret-ish" not in json.dumps(await audit(live_gateway, None))
        await close_all(nursery, alice)


async def test_the_desktops_clipboard_reaches_the_controller_only_when_its_profile_allows_download(live_gateway, xvnc,
                                                                                                  desk):
    """Text set on the X side (xclip -i) reaches the controller's websocket as its size; its text
    only on `copy_clipboard`, refused `clipboard_download_not_allowed` with the Standard profile
    and given once a profile allows clipboard download, each use audited with the size and never
    the text. A viewer hears nothing of it, and its forged `copy_clipboard` is refused."""
    async with trio.open_nursery() as nursery:
        alice, (bob,) = await start_and_join(nursery, live_gateway, desk, "bob")
        await bob.wait(lambda: bob.client.frames.updates > 0)
        await trio.to_thread.run_sync(xvnc.set_clipboard, "from the desktop: ümlaut")
        await alice.wait(lambda: alice.of("remote_clipboard"))
        assert alice.of("remote_clipboard")[-1] == {"type": "remote_clipboard", "size": len("from the desktop: ümlaut")}

        await alice.socket.send_message(json.dumps({"type": "copy_clipboard"}))
        await alice.wait(lambda: any(r.get("of") == "copy_clipboard" for r in alice.of("refused")))
        assert [r["reason"] for r in alice.of("refused")] == ["clipboard_download_not_allowed"]
        assert not alice.of("clipboard")

        services = live_gateway.services
        download = services.profiles.create_profile("Download", "allow", clipboard_download=True)
        services.grants.grant(desk.id, services.users.get_by_name("alice").id, "user", download.id)
        await alice.socket.send_message(json.dumps({"type": "copy_clipboard"}))
        await alice.wait(lambda: alice.of("clipboard"))
        assert alice.of("clipboard") == [{"type": "clipboard", "text": "from the desktop: ümlaut"}]

        await bob.socket.send_message(json.dumps({"type": "copy_clipboard"}))
        await bob.wait(lambda: bob.of("refused"))
        assert [r["reason"] for r in bob.of("refused")] == ["not_controller"]
        assert not bob.of("remote_clipboard") and not bob.of("clipboard")

        rows = await audit(live_gateway, "clipboard_download")
        assert [(r["actor_name"], r["detail"]["size"]) for r in rows] == [("alice", len("from the desktop: ümlaut"))]
        refused = await audit(live_gateway, "message_refused")
        assert sorted((r["actor_name"], r["detail"]["reason"], r["detail"]["message"]) for r in refused) == [
            ("alice", "clipboard_download_not_allowed", "copy_clipboard"), ("bob", "not_controller", "copy_clipboard")]
        assert "from the desktop" not in json.dumps(await audit(live_gateway, None))
        await close_all(nursery, alice, bob)

"""RDP sessions through the real gateway and real websockets, against FreeRDP's shadow server:
Python clients that speak RFB as noVNC does (`tests.fixtures.desktops.RfbParticipant`). The browser
itself is in test_rdp_browser.py; here, what reaches the server and what every participant sees.

The server's xterm key recorder (tests/fixtures/rdp.py) is the witness of what reached the RDP
server; its own framebuffer is the picture every participant must converge on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import trio

from engine.messages import EndpointProtocol
from protocols import rfb
from protocols.freerdp import certificate_fingerprint
from tests.dashboard.test_desktop_gateway import audit, close_all
from tests.fixtures.desktops import RfbParticipant, rfb_participant
from tests.fixtures.gateway import PASSWORD
from tests.fixtures.rdp import PrivateDisplay, RdpServer, rdp_children, rdp_displays
from tests.protocols.test_rdp_freerdp import CTRL_ALT_DEL, RETURN, close_to, keys

pytestmark = pytest.mark.rdp


@pytest.fixture
def gateway_overrides():
    return {"engine": {"endpoint_retries": 0}}


def rdp_endpoint(gateway, server: RdpServer, *, password: str | None = None, host_key: str | None = None):
    record = gateway.create_endpoint("windows", EndpointProtocol.RDP, server.host, server.port,
                                     username=server.username,
                                     password=server.password if password is None else password,
                                     host_key=host_key)
    for name in ("alice", "bob", "carol"):
        if gateway.services.users.get_by_name(name) is None:
            gateway.create_user(name, PASSWORD)
        gateway.grant(record, name)
    return record


async def converge(p: RfbParticipant, server: RdpServer, timeout: float = 20.0) -> None:
    last = 255.0
    with trio.move_on_after(timeout):
        while True:
            changed = p.changed  # before looking: a change while we look wakes the wait
            truth = await trio.to_thread.run_sync(server.screen)
            same, last = close_to(p.client.frames.framebuffer, truth)
            if same and len(np.unique(truth.reshape(-1, 3), axis=0)) > 2:  # the server's xterm painted
                return
            await changed.wait()
    raise AssertionError(f"never the RDP server's picture (mean difference {last:.1f}); control {p.control[-3:]}")


async def leave(controller: RfbParticipant) -> None:
    """The controller leaves: the session ends (closing the websocket alone would leave it
    waiting for the controller's return, rule 8)."""
    await controller.socket.send_message(json.dumps({"type": "leave"}))
    await controller.wait(lambda: controller.of("ended") or controller.closed)


async def no_rdp_process_left(gateway, displays: list[PrivateDisplay] = ()) -> None:
    """No Xvnc or xfreerdp of the gateway's left, and the sessions' `displays` gone."""
    with trio.fail_after(10):
        while rdp_children() or not all(d.gone() for d in displays):
            await trio.sleep(0.02)  # the gateway's loop reaps the session's children as it ends it


async def test_a_joint_rdp_session(live_gateway, rdp_server_nla):
    server = rdp_server_nla
    windows = rdp_endpoint(live_gateway, server)
    async with trio.open_nursery() as nursery:
        alice = await rfb_participant(nursery, live_gateway, "alice", f"/ws/endpoints/{windows.id}/start",
                                  {"type": "start", "cols": 80, "rows": 24})
        joined = alice.of("joined")[0]
        assert joined["role"] == "controller" and joined["endpoint"]["protocol"] == "rdp"
        session_id = joined["session_id"]
        bob = await rfb_participant(nursery, live_gateway, "bob", f"/ws/sessions/{session_id}", {"type": "join"})
        await converge(alice, server)
        await converge(bob, server)
        displays = rdp_displays()
        assert len(displays) == 1

        # the controller's keys reach the server's xterm, Ctrl-Alt-Del too; a viewer's never do
        await alice.socket.send_message(keys("typed by alice") + RETURN)
        await bob.socket.send_message(keys("BOB") + rfb.pack(rfb.PointerEvent(1, 10, 10)))
        await server.wait_typed(b"typed by alice\r")
        await alice.socket.send_message(CTRL_ALT_DEL)
        await server.wait_typed(b"\x1b[3;7~")
        await bob.wait(lambda: any(r["reason"] == "not_controller" for r in bob.of("refused")))
        assert b"BOB" not in server.typed()
        refusals = await audit(live_gateway, "input_refused")
        assert refusals and all(r["detail"]["role"] == "viewer" for r in refusals)

        # a late joiner sees the same desktop: its keyframe, then the frames after it
        carol = await rfb_participant(nursery, live_gateway, "carol", f"/ws/sessions/{session_id}", {"type": "join"})
        await converge(carol, server)
        assert (carol.client.frames.width, carol.client.frames.height) == (1280, 800)
        # the ServerInit before the keyframe: a placeholder size if no keyframe had a desktop yet
        # (alice's and bob's came while FreeRDP was connecting), never 0x0
        assert carol.client.width and carol.client.height
        for p in (alice, bob):
            await converge(p, server)

        # the certificate was recorded on first use, the credential's use audited (never the password)
        record = await trio.to_thread.run_sync(live_gateway.services.endpoints.get, windows.id)
        assert certificate_fingerprint(record.host_key) == record.host_key
        uses = await audit(live_gateway, "credential_use")
        assert [u["detail"]["username"] for u in uses] == [server.username]
        assert server.password not in repr(uses)
        await leave(alice)
        await close_all(nursery, alice, bob, carol)
    await no_rdp_process_left(live_gateway, displays)


async def test_a_wrong_password_is_refused_with_a_clear_reason(live_gateway, rdp_server_nla):
    server = rdp_server_nla
    windows = rdp_endpoint(live_gateway, server, password="not-" + server.password)
    async with trio.open_nursery() as nursery:
        alice = await rfb_participant(nursery, live_gateway, "alice", f"/ws/endpoints/{windows.id}/start",
                                  {"type": "start", "cols": 80, "rows": 24})
        await alice.wait(lambda: alice.of("ended"))
        ended = alice.of("ended")[0]
        assert ended["reason"] == "endpoint_failed"
        assert ended["detail"].startswith(f"authentication failed for user {server.username}")
        failures = await audit(live_gateway, "endpoint_failure")
        assert failures and failures[0]["detail"]["error"] == ended["detail"]
        assert server.password not in repr(failures) + repr(alice.control)
        await close_all(nursery, alice)
    await no_rdp_process_left(live_gateway)


async def test_a_changed_certificate_is_refused_until_an_administrator_accepts_it(live_gateway, rdp_server):
    server = rdp_server
    wrong = ":".join(["00"] * 32)
    windows = rdp_endpoint(live_gateway, server, host_key=wrong)
    async with trio.open_nursery() as nursery:
        alice = await rfb_participant(nursery, live_gateway, "alice", f"/ws/endpoints/{windows.id}/start",
                                  {"type": "start", "cols": 80, "rows": 24})
        await alice.wait(lambda: alice.of("ended"))
        ended = alice.of("ended")[0]
        assert ended["reason"] == "endpoint_failed" and "certificate" in ended["detail"]
        assert "an administrator must accept the new certificate" in ended["detail"]
        endpoints = live_gateway.services.endpoints
        with trio.fail_after(10):
            while (await trio.to_thread.run_sync(endpoints.get, windows.id)).pending_host_key is None:
                await trio.sleep(0.02)  # the gateway writes it in a worker thread
        record = await trio.to_thread.run_sync(endpoints.get, windows.id)
        assert record.host_key == wrong and record.pending_host_key in ended["detail"]
        assert record.pending_host_key_fingerprint == f"SHA-256 {record.pending_host_key}"
        # the administrator sees it on the endpoints page and accepts it there
        live_gateway.create_user("root", PASSWORD, admin=True)
        admin = await trio.to_thread.run_sync(live_gateway.api_session, "root", PASSWORD)
        page = (await trio.to_thread.run_sync(admin.get, "/endpoints")).text
        assert "The certificate changed." in page and "Accept new certificate" in page
        assert f"SHA-256 {record.pending_host_key}" in page
        accepted = await trio.to_thread.run_sync(admin.post, f"/endpoints/{windows.id}/host-key/accept")
        assert accepted.status_code in (200, 303), accepted.text
        assert (await trio.to_thread.run_sync(endpoints.get, windows.id)).host_key == record.pending_host_key
        rows = await audit(live_gateway, "host_key_accepted")
        assert rows[-1]["detail"]["fingerprint"] == f"SHA-256 {record.pending_host_key}"
        again = await rfb_participant(nursery, live_gateway, "alice", f"/ws/endpoints/{windows.id}/start",
                                  {"type": "start", "cols": 80, "rows": 24})
        await converge(again, server)
        assert not again.of("ended")
        await leave(again)
        await close_all(nursery, alice, again)
    await no_rdp_process_left(live_gateway)


@pytest.mark.parametrize("killed", ["the server", "xfreerdp"])
async def test_a_dead_server_or_child_ends_the_session_for_everyone(live_gateway, rdp_server_to_kill, killed):
    server = rdp_server_to_kill
    windows = rdp_endpoint(live_gateway, server)
    where = f"{server.host}:{server.port}"
    async with trio.open_nursery() as nursery:
        alice = await rfb_participant(nursery, live_gateway, "alice", f"/ws/endpoints/{windows.id}/start",
                                  {"type": "start", "cols": 80, "rows": 24})
        session_id = alice.of("joined")[0]["session_id"]
        bob = await rfb_participant(nursery, live_gateway, "bob", f"/ws/sessions/{session_id}", {"type": "join"})
        await converge(bob, server)
        children = dict((name, pid) for pid, name in rdp_children())
        assert sorted(children) == ["Xvnc", "xfreerdp"]  # the session's
        displays = rdp_displays()
        assert len(displays) == 1 and displays[0].directory.is_dir() and displays[0].x_socket.exists()
        if killed == "the server":
            server.kill()
            reason = f"connection to {where} lost"
        else:
            os.kill(children[killed], signal.SIGKILL)
            reason = f"the RDP client for {where} was killed by SIGKILL"
        for p in (alice, bob):
            await p.wait(lambda p=p: p.of("ended"))
            ended = p.of("ended")[0]
            assert (ended["reason"], ended["detail"]) == ("endpoint_failed", reason)
        failures = await audit(live_gateway, "endpoint_failure")
        assert [f["detail"]["error"] for f in failures] == [reason]
        await close_all(nursery, alice, bob)
    await no_rdp_process_left(live_gateway, displays)


async def test_the_clipboard_reaches_the_private_display_and_comes_back_from_it(live_gateway, rdp_server):
    """With a profile that allows the clipboard both ways, FreeRDP runs with its clipboard channel
    and the private display with cut text: the controller's ClientCutText becomes that display's
    X clipboard (where xfreerdp's clipboard channel takes it to the server), and text on that
    display's clipboard (where xfreerdp puts the server's) reaches the controller on
    `copy_clipboard`, audited with its size. FreeRDP's shadow server has no clipboard channel
    (docs/rdp.md), so the server's side of it is not tested here."""
    windows = rdp_endpoint(live_gateway, rdp_server)
    services = live_gateway.services
    both = services.profiles.create_profile("Clipboard", "allow", clipboard_upload=True, clipboard_download=True)
    services.grants.grant(windows.id, services.users.get_by_name("alice").id, "user", both.id)
    async with trio.open_nursery() as nursery:
        alice = await rfb_participant(nursery, live_gateway, "alice", f"/ws/endpoints/{windows.id}/start",
                                  {"type": "start", "cols": 80, "rows": 24})
        await converge(alice, rdp_server)
        (display,) = rdp_displays()
        argv = " ".join(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
                        for pid, name in rdp_children() if name == "xfreerdp")
        assert "+clipboard" in argv

        await alice.socket.send_message(rfb.pack(rfb.ClientCutText(b"into the RDP display")))

        def private_clipboard() -> str:
            out = subprocess.run(["xclip", "-o", "-selection", "clipboard"], env=display.env, capture_output=True,
                                 timeout=10)
            return out.stdout.decode() if out.returncode == 0 else ""

        with trio.fail_after(10):
            while await trio.to_thread.run_sync(private_clipboard) != "into the RDP display":
                await trio.sleep(0.05)  # polling the private display's selection

        owner = subprocess.Popen(["xclip", "-quiet", "-i", "-selection", "clipboard"], env=display.env,
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            owner.communicate(b"from the RDP side", timeout=0.1)
        except subprocess.TimeoutExpired:
            pass  # it serves the selection until another client takes it
        try:
            await alice.wait(lambda: alice.of("remote_clipboard"))
            await alice.socket.send_message(json.dumps({"type": "copy_clipboard"}))
            await alice.wait(lambda: alice.of("clipboard"))
            assert alice.of("clipboard") == [{"type": "clipboard", "text": "from the RDP side"}]
        finally:
            owner.kill()
            owner.wait()
        rows = await audit(live_gateway, "clipboard_download")
        assert [r["detail"]["size"] for r in rows] == [len("from the RDP side")]
        await leave(alice)
        await close_all(nursery, alice)
    await no_rdp_process_left(live_gateway)

"""RdpConnection against FreeRDP's shadow server (tests/fixtures/rdp.py): xfreerdp in the
session's private Xvnc reaches the server, the VNC path reads that display into a display model
(as a session keeps it) and carries the controller's keys to it; the children end with the
attempt, and nothing leaks."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from engine.connection import Credentials
import numpy as np

from protocols import rfb
from protocols.freerdp import DRIVE_NAME, RdpOptions, certificate_fingerprint
from protocols.rdp import RdpConnection
from tests.fixtures.rdp import RdpServer, rdp_children, read_xwd
from tests.fixtures.xvnc import DisplayRecorder as EventRecorder

pytestmark = pytest.mark.rdp


def connect(bridge, server: RdpServer, *, password: str | None | bool = True, **kwargs) -> RdpConnection:
    creds = Credentials(server.username, password=server.password if password is True else password or None)
    return RdpConnection(bridge, server.host, server.port, creds, **kwargs)


async def open_desktop(bridge, server: RdpServer, **kwargs) -> tuple[RdpConnection, EventRecorder]:
    events = EventRecorder()
    conn = connect(bridge, server, **kwargs)
    conn.open(events, 80, 24)
    await events.wait_for(lambda: events.kinds() != [], timeout=30)
    assert events.kinds() == ["opened"], events.events
    return conn, events


async def the_end(events: EventRecorder) -> tuple:
    await events.wait_for(lambda: events.ended is not None, timeout=30)
    return events.ended


async def ended_and_gone(conn: RdpConnection) -> None:
    """After the end: every child reaped, the display and the working directory gone."""
    display = conn.display
    with trio.fail_after(10):
        await conn.stopped()
    assert rdp_children() == []
    assert conn.child_pids() == []
    if display is not None:
        assert not Path(display.socket_path).parent.exists()
        assert not stale_x_socket(display.display)


def stale_x_socket(number: int) -> bool:
    """The display's socket file is there but nothing listens on it (another X server may have
    taken the number since: its socket is not ours to count)."""
    path = f"/tmp/.X11-unix/X{number}"
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
            return False
        except OSError:
            return True


def keys(text: str) -> bytes:
    """RFB KeyEvents (down, up) for `text`, as a browser's noVNC sends them."""
    return b"".join(rfb.pack(rfb.KeyEvent(down, ord(c))) for c in text for down in (True, False))


CTRL_ALT_DEL = b"".join(rfb.pack(rfb.KeyEvent(down, sym)) for down, sym in (
    (True, 0xFFE3), (True, 0xFFE9), (True, 0xFFFF), (False, 0xFFFF), (False, 0xFFE9), (False, 0xFFE3)))
RETURN = rfb.pack(rfb.KeyEvent(True, 0xFF0D)) + rfb.pack(rfb.KeyEvent(False, 0xFF0D))


def close_to(a: np.ndarray, b: np.ndarray) -> tuple[bool, float]:
    """RemoteFX (the shadow server's codec) and JPEG on the way are lossy: close, not equal."""
    if a.shape != b.shape:
        return False, 255.0
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return bool(diff.mean() < 3.0 and (diff.max(axis=2) > 64).sum() < 400), float(diff.mean())


async def wait_same_screen(events: EventRecorder, server: RdpServer, timeout: float = 15.0) -> None:
    """Until the session's display model shows what the server's own display shows."""
    last = 255.0
    with trio.move_on_after(timeout):
        while True:
            truth = await trio.to_thread.run_sync(server.screen)
            same, last = close_to(events.model.snapshot(), truth)
            if same and len(np.unique(truth.reshape(-1, 3), axis=0)) > 2:
                return
            await events.wait_for(lambda n=events.updates: events.updates > n, timeout)
    raise AssertionError(f"the session's picture differs from the server's by {last:.1f} on average")


async def test_private_display_shows_the_servers_desktop(ssh_bridge, rdp_server):
    conn, events = await open_desktop(ssh_bridge, rdp_server, options=RdpOptions(width=1280, height=800))
    display = conn.display
    assert (display.width, display.height) == (1280, 800)
    assert "TLS" in events.events[0][1]
    await wait_same_screen(events, rdp_server)
    assert close_to(read_xwd(display.name, display.xauthority), rdp_server.screen())[0]
    # the X server and the RFB socket are private to the gateway
    assert oct(Path(display.socket_path).stat().st_mode & 0o777) == "0o600"
    assert oct(Path(display.socket_path).parent.stat().st_mode & 0o777) == "0o700"
    env = {"PATH": os.environ["PATH"], "DISPLAY": display.name}  # no cookie
    refused = subprocess.run(["xdpyinfo"], env=env, capture_output=True, timeout=10)
    assert refused.returncode != 0
    # no clipboard and no drive unless the profile allows them (RdpOptions' defaults)
    argv = children_argv(conn)
    assert "-clipboard" in argv["xfreerdp"] and not any(a.startswith("/drive:") for a in argv["xfreerdp"])
    assert "-AcceptCutText=0" in argv["Xvnc"] and "-SendCutText=0" in argv["Xvnc"] and conn.drive is None
    conn.close()
    await ended_and_gone(conn)
    assert [e[0] for e in events.events] == ["opened"]  # nothing reported after close()


async def test_the_controllers_keys_reach_the_server_and_its_screen_comes_back(ssh_bridge, rdp_server):
    conn, events = await open_desktop(ssh_bridge, rdp_server)
    conn.send_input(keys("hello rdp") + RETURN)
    await rdp_server.wait_typed(b"hello rdp\r")
    await wait_same_screen(events, rdp_server)  # the echo, on the server's screen and in the model
    conn.send_input(CTRL_ALT_DEL)  # what the page's Send Ctrl-Alt-Del sends
    await rdp_server.wait_typed(b"\x1b[3;7~")
    conn.close()
    await ended_and_gone(conn)


async def test_nla_with_the_right_password(ssh_bridge, rdp_server_nla):
    conn, events = await open_desktop(ssh_bridge, rdp_server_nla)
    assert events.events[0][1].startswith(f"{rdp_server_nla.username}@")
    assert "NLA" in events.events[0][1]
    conn.send_input(keys("nla"))
    await rdp_server_nla.wait_typed(b"nla")
    conn.close()
    await ended_and_gone(conn)


async def test_wrong_password_is_a_clear_final_refusal(ssh_bridge, rdp_server_nla):
    events = EventRecorder()
    conn = connect(ssh_bridge, rdp_server_nla, password="not-" + rdp_server_nla.password)
    conn.open(events, 80, 24)
    kind, detail, retryable = await the_end(events)
    assert (kind, retryable) == ("failed", False)
    assert detail.startswith(f"authentication failed for user {rdp_server_nla.username}")
    assert events.kinds() == ["failed"]
    await ended_and_gone(conn)


async def test_no_password_for_an_nla_server(ssh_bridge, rdp_server_nla):
    events = EventRecorder()
    conn = connect(ssh_bridge, rdp_server_nla, password=None)
    conn.open(events, 80, 24)
    kind, detail, retryable = await the_end(events)
    assert (kind, retryable) == ("failed", False)
    assert "authentication failed" in detail
    await ended_and_gone(conn)


async def test_killing_the_server_fails_the_attempt_retryably(ssh_bridge, rdp_server_to_kill):
    rdp_server = rdp_server_to_kill
    conn, events = await open_desktop(ssh_bridge, rdp_server)
    rdp_server.kill()
    kind, detail, retryable = await the_end(events)
    assert (kind, detail, retryable) == ("failed", f"connection to {rdp_server.host}:{rdp_server.port} lost", True)
    await ended_and_gone(conn)
    # the engine retries: the server is gone, so the next attempt is refused before any child starts
    retry = EventRecorder()
    conn.open(retry, 80, 24)
    kind, detail, retryable = await the_end(retry)
    assert (kind, detail, retryable) == ("failed", f"connection to {rdp_server.host}:{rdp_server.port} refused", True)
    assert conn.display is None
    await ended_and_gone(conn)


def children_argv(conn: RdpConnection) -> dict[str, list[str]]:
    """The command lines of the connection's children, by program name."""
    found = {}
    for pid in conn.child_pids():
        argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
        found[Path(argv[0]).name] = argv
    return found


async def test_the_password_is_in_no_command_line_environment_file_or_log(ssh_bridge, rdp_server_nla, caplog):
    """... with the clipboard and a drive allowed (the first test: neither, by default)."""
    caplog.set_level(logging.DEBUG)
    conn, _ = await open_desktop(ssh_bridge, rdp_server_nla, options=RdpOptions(clipboard=True, drive=True))
    argv = children_argv(conn)
    assert "+clipboard" in argv["xfreerdp"] and f"/drive:{DRIVE_NAME},{conn.drive}" in argv["xfreerdp"]
    assert "-AcceptCutText=1" in argv["Xvnc"] and Path(conn.drive).is_dir()
    secret = rdp_server_nla.password.encode()
    scanned = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        for what in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{entry}/{what}").read_bytes()
            except OSError:
                continue
            scanned += 1
            assert secret not in data, f"the password is in /proc/{entry}/{what}"
    assert scanned > 20
    work = Path(conn.display.socket_path).parent
    files = [p for p in work.rglob("*") if p.is_file()]
    assert any(p.name == "connection.rdp" for p in files)
    for path in files:
        assert secret not in path.read_bytes(), f"the password is in {path}"
    pids = conn.child_pids()
    assert len(pids) == 2
    conn.close()
    await ended_and_gone(conn)
    assert "rdp" in caplog.text and rdp_server_nla.password not in caplog.text


async def test_certificate_recorded_on_first_use_and_a_change_refused(ssh_bridge, rdp_server):
    recorded: list[str] = []
    conn, _ = await open_desktop(ssh_bridge, rdp_server, on_certificate=recorded.append)
    conn.close()
    await ended_and_gone(conn)
    assert len(recorded) == 1
    fingerprint = certificate_fingerprint(recorded[0])

    # pinned: the same certificate connects, and nothing new is recorded
    again: list[str] = []
    conn, _ = await open_desktop(ssh_bridge, rdp_server, known_certificate=fingerprint, on_certificate=again.append)
    conn.close()
    await ended_and_gone(conn)
    assert again == []

    # a different pin: refused before any credential is sent, the new one kept for an administrator
    other = ("00" if not fingerprint.startswith("00") else "11") + fingerprint[2:]
    changed: list[str] = []
    events = EventRecorder()
    conn = connect(ssh_bridge, rdp_server, known_certificate=other, on_certificate_changed=changed.append)
    conn.open(events, 80, 24)
    kind, detail, retryable = await the_end(events)
    assert (kind, retryable) == ("failed", False)
    assert detail == (f"the certificate of {rdp_server.host}:{rdp_server.port} changed (now SHA-256 "
                      f"{fingerprint}); an administrator must accept the new certificate")
    assert changed == [fingerprint]
    await ended_and_gone(conn)


async def test_a_refused_security_layer_is_a_clear_refusal(ssh_bridge, rdp_server_nla):
    events = EventRecorder()
    conn = connect(ssh_bridge, rdp_server_nla, options=RdpOptions(security="tls"))
    conn.open(events, 80, 24)
    kind, detail, retryable = await the_end(events)
    assert (kind, retryable) == ("failed", False)
    assert detail == (f"security negotiation with {rdp_server_nla.host}:{rdp_server_nla.port} failed: "
                      "the server requires network level authentication (NLA)")
    await ended_and_gone(conn)


async def test_close_while_connecting_reports_nothing_and_leaves_nothing(ssh_bridge, rdp_server_nla):
    events = EventRecorder()
    conn = connect(ssh_bridge, rdp_server_nla)
    conn.open(events, 80, 24)
    with trio.fail_after(10):
        while len(conn.child_pids()) < 2:  # both children started, the RDP connection under way
            await trio.sleep(0.01)
    conn.close()
    await ended_and_gone(conn)
    assert events.events == []


async def test_a_server_that_never_answers_times_out(ssh_bridge):
    # a TCP listener that accepts and says nothing: the RDP connection can never become active
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    accepted = []
    async with trio.open_nursery() as nursery:
        async def hold() -> None:
            while True:
                accepted.append(await listener.accept())

        nursery.start_soon(hold)
        events = EventRecorder()
        conn = RdpConnection(ssh_bridge, "127.0.0.1", port, Credentials("alice", password="x"),
                             options=RdpOptions(connect_timeout=1.0))
        conn.open(events, 80, 24)
        kind, detail, retryable = await the_end(events)
        assert (kind, retryable) == ("failed", True)
        assert detail.startswith(f"the RDP connection to 127.0.0.1:{port} did not become active within 1 s")
        await ended_and_gone(conn)
        nursery.cancel_scope.cancel()
    for stream in accepted:
        await stream.aclose()
    await listener.aclose()


@pytest.mark.parametrize("child, reasons", [
    # the display's exit and its reader's lost socket race: either says what happened
    ("Xvnc", {"the session's private display ended unexpectedly", "the session's private display could not be read"}),
    ("xfreerdp", {"the RDP client for {where} was killed by SIGKILL"}),
])
async def test_a_dead_child_fails_the_attempt_with_a_clear_reason(ssh_bridge, rdp_server, child, reasons):
    conn, events = await open_desktop(ssh_bridge, rdp_server)
    os.kill(next(pid for pid, name in rdp_children() if name == child), 9)
    kind, detail, retryable = await the_end(events)
    assert (kind, retryable) == ("failed", True)
    assert detail in {r.format(where=f"{rdp_server.host}:{rdp_server.port}") for r in reasons}
    await ended_and_gone(conn)


DIES_WITH_ITS_PARENT = """
import sys, trio
from pathlib import Path
from protocols.xvnc import start_xvnc

async def main():
    child, display, _ = await start_xvnc(Path(sys.argv[1]), width=1280, height=800, unix_socket=True)
    print(child.pid, flush=True)
    await trio.sleep_forever()

trio.run(main)
"""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


async def test_children_die_with_the_gateway(tmp_path):
    """The gateway killed outright (no chance to clean up): its Xvnc dies with it."""
    gateway = await trio.lowlevel.open_process([sys.executable, "-c", DIES_WITH_ITS_PARENT, str(tmp_path)],
                                               stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
    try:
        with trio.fail_after(20):
            xvnc = int(await gateway.stdout.receive_some(64))
        assert alive(xvnc)
    finally:
        gateway.kill()
        await gateway.wait()
        await gateway.stdout.aclose()
    with trio.fail_after(10):
        while alive(xvnc):
            await trio.sleep(0.01)

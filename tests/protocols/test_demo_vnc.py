"""The demo desktop (`cosession serve`'s second demo endpoint): a real Xvnc with an xterm and a
clock, reached with its random password through the VNC connection; stopped, nothing is left."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio

from protocols.demo_vnc import serve_demo_vnc
from protocols.vnc import VncConnection
from tests.fixtures.xvnc import DisplayRecorder, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))


async def test_demo_desktop_shows_its_clients_and_leaves_nothing(vnc_bridge, tmp_path):
    async with trio.open_nursery() as nursery:
        demo = await nursery.start(functools.partial(serve_demo_vnc, "127.0.0.1", width=800, height=600))
        assert demo.password and demo.password not in repr(demo)
        assert Path(f"/tmp/.X11-unix/X{demo.display}").exists()
        events = DisplayRecorder()
        conn = VncConnection(vnc_bridge, demo.host, demo.port, demo.password)
        conn.open(events, 80, 24)
        # the xterm and the clock paint over the black root window
        await events.wait_for(lambda: events.model.width == 800
                              and int((events.model.framebuffer.max(axis=2) > 100).sum()) > 5000, 15)
        assert "cosession demo" in events.events[0][1]
        conn.close()
        nursery.cancel_scope.cancel()
    with pytest.raises(OSError):
        await trio.open_tcp_stream(demo.host, demo.port)
    assert not Path(f"/tmp/.X11-unix/X{demo.display}").exists()  # -displayfd: the socket claims the number


async def test_a_private_display_on_a_unix_socket_only(vnc_bridge):
    """What the RDP path runs its client in: no TCP listener, no password, a private socket."""
    from protocols.xvnc import serve_xvnc

    async with trio.open_nursery() as nursery:
        display = await nursery.start(functools.partial(
            serve_xvnc, width=640, height=400, unix_socket=True,
            clients=[["xclock", "-geometry", "200x200+0+0", "-update", "1"]]))
        assert display.port == 0 and Path(display.socket_path).exists()
        assert oct(Path(display.socket_path).parent.stat().st_mode & 0o777) == "0o700"
        events = DisplayRecorder()
        conn = VncConnection(vnc_bridge, socket_path=display.socket_path)
        conn.open(events, 80, 24)
        await events.wait_for(lambda: events.model.width == 640
                              and int((events.model.framebuffer.max(axis=2) > 100).sum()) > 2000, 15)
        conn.close()
        # nothing listens on TCP for this display (Xvnc would take 5900 + display by default)
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", 5900 + display.display)
        nursery.cancel_scope.cancel()
    assert not Path(display.socket_path).exists()


def test_the_display_dies_with_a_killed_gateway(tmp_path):
    """A gateway killed with SIGKILL runs no `finally`: the kernel ends its Xvnc all the same."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "gateway.py"
    script.write_text(
        "import functools, sys, trio\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from protocols.xvnc import serve_xvnc\n"
        "async def main():\n"
        "    async with trio.open_nursery() as n:\n"
        "        d = await n.start(functools.partial(serve_xvnc, width=320, height=200, tcp_host='127.0.0.1'))\n"
        "        print(d.display, flush=True)\n"
        "        await trio.sleep_forever()\n"
        "trio.run(main)\n")
    gateway = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    int(gateway.stdout.readline())  # the display is up
    # -displayfd takes no lock file: the gateway's child named Xvnc is its display
    xvnc_pids = [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat")
                 if _parent_and_name(stat) == (gateway.pid, "Xvnc")]
    assert len(xvnc_pids) == 1
    xvnc_pid = xvnc_pids[0]
    argv = Path(f"/proc/{xvnc_pid}/cmdline").read_bytes().split(b"\0")
    private = Path(argv[argv.index(b"-rfbauth") + 1].decode()).parent  # a killed gateway leaves it
    gateway.send_signal(signal.SIGKILL)
    gateway.wait(10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{xvnc_pid}").exists() and Path(f"/proc/{xvnc_pid}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline, "Xvnc outlived the gateway"
        time.sleep(0.05)  # polling for the process to go
    gateway.stdout.close()
    shutil.rmtree(private, ignore_errors=True)
    assert not os.path.exists(f"/proc/{xvnc_pid}") or "Z" in Path(f"/proc/{xvnc_pid}/stat").read_text().split()[2]


def _parent_and_name(stat: Path) -> tuple[int, str] | None:
    try:
        text = stat.read_text()
    except OSError:  # the process is gone
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    return int(text[text.rindex(")") + 2:].split()[1]), name

"""The demo desktop: TigerVNC's Xvnc on loopback with an xterm and a clock.

`cosession serve` starts it beside the demo SSH server, so that a newcomer can try a graphical
joint session with nothing else to set up. Xvnc listens on 127.0.0.1 only, with VNC
authentication and a random password (written as vncpasswd writes it, in a private temporary
directory), `-AlwaysShared` (so the demo can also be watched with any VNC viewer) and its own
display number. Its X clients (an xterm running the gateway user's shell, and xclock when
x11-apps is installed) are started with that display.

The shell runs as the gateway's own OS user, as the demo SSH shell does: a convenience for
trying cosession on one machine, not something to leave on in production
(`[demo] enabled = false`).

When the task is cancelled, the X clients and Xvnc are stopped (each in its own process group)
and reaped, and the directory is removed, before `serve_demo_vnc` returns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from protocols.rfb import obfuscated_password

log = logging.getLogger(__name__)

XVNC = "Xvnc"
FIRST_DISPLAY = 50  # the demo's display number is the first free one from here
LAST_DISPLAY = 99
READY_SECONDS = 10.0
_STOP_GRACE = 2.0


class DemoUnavailable(RuntimeError):
    """Xvnc is not installed, or no display could be had: the gateway goes on without the demo."""


@dataclass(frozen=True, repr=False)
class DemoVnc:
    host: str
    port: int
    password: str = field(repr=False)
    display: int
    width: int
    height: int

    def __repr__(self) -> str:
        return f"DemoVnc({self.host}:{self.port}, display :{self.display}, {self.width}x{self.height})"


def _free_display() -> int:
    for display in range(FIRST_DISPLAY, LAST_DISPLAY + 1):
        if not Path(f"/tmp/.X{display}-lock").exists() and not Path(f"/tmp/.X11-unix/X{display}").exists():
            return display
    raise DemoUnavailable(f"no free X display from :{FIRST_DISPLAY} to :{LAST_DISPLAY}")


async def _ready(process: Any, host: str, port: int) -> bool:
    with trio.move_on_after(READY_SECONDS):
        while process.poll() is None:
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError:
                await trio.sleep(0.02)  # Xvnc is starting: it listens within ~40 ms
                continue
            async with stream:
                return (await stream.receive_some(12)).startswith(b"RFB ")
    return False


async def _stop(process: Any) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with trio.move_on_after(_STOP_GRACE):
        await process.wait()
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


async def serve_demo_vnc(host: str = "127.0.0.1", port: int = 0, *, width: int = 1280, height: int = 800,
                         password: str | None = None, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run the demo desktop until cancelled; `task_status.started(DemoVnc)` once it answers."""
    xvnc = shutil.which(XVNC)
    if xvnc is None:
        raise DemoUnavailable("Xvnc is not installed (Debian: tigervnc-standalone-server)")
    password = password or secrets.token_urlsafe(6)[:8]  # VNC passwords are at most 8 characters
    directory = Path(tempfile.mkdtemp(prefix="cosession-demo-vnc-"))
    processes: list[Any] = []
    try:
        passwd = directory / "passwd"
        passwd.write_bytes(obfuscated_password(password))
        passwd.chmod(0o600)
        xvnc_process = None
        for _ in range(5):  # a display or port taken in between: try the next
            display = _free_display()
            chosen = port or _free_port(host)
            argv = [xvnc, f":{display}", "-rfbport", str(chosen), "-interface", host, "-rfbauth", str(passwd),
                    "-SecurityTypes", "VncAuth", "-AlwaysShared", "-geometry", f"{width}x{height}",
                    "-depth", "24", "-nolisten", "tcp", "-desktop", "cosession demo"]
            with open(directory / "xvnc.log", "ab") as out:
                xvnc_process = await trio.lowlevel.open_process(argv, stdout=out, stderr=out, start_new_session=True)
            processes.append(xvnc_process)
            if await _ready(xvnc_process, host, chosen):
                break
            await _stop(xvnc_process)
            xvnc_process = None
        if xvnc_process is None:
            raise DemoUnavailable(f"Xvnc did not start (see {directory / 'xvnc.log'})")
        env = {**os.environ, "DISPLAY": f":{display}"}
        shell = os.environ.get("SHELL") or pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"
        clients = [["xterm", "-geometry", "100x32+30+30", "-T", "cosession demo", "-e", shell, "-l"]]
        if shutil.which("xclock"):
            clients.append(["xclock", "-geometry", "180x180-30+30", "-update", "1"])
        for argv in clients:
            if shutil.which(argv[0]) is None:
                log.warning("demo desktop: %s is not installed; the desktop starts without it", argv[0])
                continue
            processes.append(await trio.lowlevel.open_process(
                argv, env=env, cwd=str(Path.home()), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True))
        demo = DemoVnc(host, chosen, password, display, width, height)
        log.info("demo desktop: %r", demo)
        task_status.started(demo)
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            for process in reversed(processes):
                await _stop(process)
        shutil.rmtree(directory, ignore_errors=True)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]

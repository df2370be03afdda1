"""A private X display served by TigerVNC's Xvnc, with its X clients: what the demo desktop is,
and what a graphical endpoint that is not VNC runs its client in (the RDP path runs xfreerdp in
one, and reads it through `protocols.vnc`).

`serve_xvnc` runs as a trio task: it takes the first free display number from `first_display`,
starts Xvnc listening where it is told (a loopback TCP port with VNC authentication and a
password, and/or a unix socket in a private directory), waits until it answers RFB, starts the
X clients with that display, reports an `XvncDisplay` through `task_status.started`, and runs
until cancelled. Then the clients and Xvnc are stopped (each in its own process group, SIGTERM
then SIGKILL) and reaped, and the private directory removed, before it returns. Should the
gateway die without that (a SIGKILL), the kernel sends Xvnc SIGTERM (PR_SET_PDEATHSIG), and its
X clients end with their display.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import trio

from protocols.rfb import obfuscated_password

log = logging.getLogger(__name__)

XVNC = "Xvnc"
READY_SECONDS = 10.0
# Run in the child before Xvnc: ask the kernel for SIGTERM when the gateway dies, however it dies
# (a SIGKILL leaves no `finally` to stop it; Xvnc's X clients end with their display). A tiny
# interpreter execs Xvnc, instead of a `preexec_fn`, which is not safe with threads (the actors).
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)  # the parent died before the request took effect
os.execv(sys.argv[2], sys.argv[2:])
"""
_STOP_GRACE = 2.0
_ATTEMPTS = 5  # a display or port taken between looking and starting: try the next


class XvncUnavailable(RuntimeError):
    """Xvnc is not installed, or no display could be had."""


@dataclass(frozen=True, repr=False)
class XvncDisplay:
    display: int
    width: int
    height: int
    host: str = ""  # with `port`: the TCP listener, VNC authentication with `password`
    port: int = 0
    socket_path: str = ""  # the unix socket listener, no authentication (its directory is private)
    password: str = field(default="", repr=False)

    @property
    def env(self) -> dict[str, str]:
        """The environment for an X client of this display."""
        return {**os.environ, "DISPLAY": f":{self.display}"}

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port else self.socket_path
        return f"XvncDisplay(:{self.display}, {where}, {self.width}x{self.height})"


def _free_display(first: int, last: int) -> int:
    for display in range(first, last + 1):
        if not Path(f"/tmp/.X{display}-lock").exists() and not Path(f"/tmp/.X11-unix/X{display}").exists():
            return display
    raise XvncUnavailable(f"no free X display from :{first} to :{last}")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def _answers_rfb(process: Any, host: str, port: int, socket_path: str) -> bool:
    with trio.move_on_after(READY_SECONDS):
        while process.poll() is None:
            try:
                stream = await (trio.open_unix_socket(socket_path) if socket_path else trio.open_tcp_stream(host, port))
            except OSError:
                await trio.sleep(0.02)  # Xvnc is starting: it listens within ~40 ms
                continue
            async with stream:
                return (await stream.receive_some(12)).startswith(b"RFB ")
    return False


async def stop_process(process: Any) -> None:
    """SIGTERM to the process group, SIGKILL after a grace period; reaped either way."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with trio.move_on_after(_STOP_GRACE):
            await process.wait()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


async def serve_xvnc(*, width: int, height: int, tcp_host: str | None = None, password: str | None = None,
                     unix_socket: bool = False, clients: Sequence[Sequence[str]] = (), name: str = "cosession",
                     first_display: int = 50, last_display: int = 199, client_cwd: str | None = None,
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run Xvnc and its `clients` until cancelled (see the module). `tcp_host`: listen on a free
    port there, with VNC authentication (`password`, or a random one); `unix_socket`: listen on
    a socket in a private directory, without authentication."""
    xvnc = shutil.which(XVNC)
    if xvnc is None:
        raise XvncUnavailable("Xvnc is not installed (Debian: tigervnc-standalone-server)")
    if tcp_host is None and not unix_socket:
        raise ValueError("Xvnc needs a TCP host or a unix socket to listen on")
    if tcp_host is not None:
        password = password or secrets.token_urlsafe(6)[:8]  # VNC passwords are at most 8 characters
    directory = Path(tempfile.mkdtemp(prefix="cosession-xvnc-"))  # 0700: only this user reaches the socket
    processes: list[Any] = []
    try:
        security = []
        argv_common = ["-geometry", f"{width}x{height}", "-depth", "24", "-AlwaysShared", "-nolisten", "tcp",
                       "-desktop", name]
        if tcp_host is not None:
            passwd = directory / "passwd"
            passwd.write_bytes(obfuscated_password(password or ""))
            passwd.chmod(0o600)
            argv_common += ["-rfbauth", str(passwd)]
            security.append("VncAuth")
        if unix_socket:
            security.append("None")
        socket_path = str(directory / "rfb.sock") if unix_socket else ""
        started = None
        for _ in range(_ATTEMPTS):
            display = _free_display(first_display, last_display)
            port = _free_port(tcp_host) if tcp_host is not None else 0
            argv = [xvnc, f":{display}", *argv_common, "-SecurityTypes", ",".join(security)]
            # a unix socket alone: no TCP listener at all
            argv += ["-rfbport", str(port), "-interface", tcp_host] if tcp_host is not None else ["-rfbport", "-1"]
            if socket_path:
                argv += ["-rfbunixpath", socket_path, "-rfbunixmode", "0600"]
            shim = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid())]
            with open(directory / "xvnc.log", "ab") as out:
                process = await trio.lowlevel.open_process([*shim, *argv], stdout=out, stderr=out,
                                                           start_new_session=True)
            processes.append(process)
            if await _answers_rfb(process, tcp_host or "", port, socket_path):
                started = XvncDisplay(display, width, height, tcp_host or "", port, socket_path, password or "")
                break
            await stop_process(process)
        if started is None:
            raise XvncUnavailable(f"Xvnc did not start (see {directory / 'xvnc.log'})")
        for argv in clients:
            if shutil.which(argv[0]) is None:
                log.warning("xvnc :%d: %s is not installed; the desktop starts without it", started.display, argv[0])
                continue
            processes.append(await trio.lowlevel.open_process(
                list(argv), env=started.env, cwd=client_cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True))
        log.info("xvnc: %r", started)
        task_status.started(started)
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            for process in reversed(processes):
                await stop_process(process)
        shutil.rmtree(directory, ignore_errors=True)

"""Private X displays: a TigerVNC `Xvnc` per session that only the gateway can reach, and the
child processes that run in it.

`start_private_display` starts `Xvnc -displayfd`: the X server picks a free display number
itself and writes it to a pipe once it accepts connections, so concurrent sessions (and test
servers) never collide. Its RFB server listens only on a unix socket in the caller's private
directory (mode 0600, no TCP port, security type None: only the gateway's own user can open
it); its X server accepts only clients presenting a random MIT-MAGIC-COOKIE-1 (an Xauthority
file written there) and no TCP clients. `WindowWatch` is a minimal X11 client of such a display
that waits for a window to be mapped.

`Child` is a child process of the gateway that dies with it: started through `setpriv
--pdeathsig KILL` from the loop's own thread (the kernel sends the signal when the *thread* that
forked the child ends, and trio's `open_process` forks in a worker thread that ends when idle;
with vfork the fork takes a fraction of a millisecond), awaited through a pidfd, and ended with
SIGTERM, then SIGKILL, always reaped. `child_environment` is a child's whole environment, built
rather than inherited, so that nothing of the gateway's own (its keys, its settings) reaches it.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger(__name__)

XVNC = "Xvnc"
SETPRIV = "setpriv"
_DISPLAY_START_TIMEOUT = 10.0  # seconds for Xvnc to report its display number
_TERMINATE_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when a child is ended


class DisplayFailed(Exception):
    """The private display did not start or stopped answering; the detail is safe to show."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class PrivateDisplay:
    """A session's private X display, as its RFB reader and its X clients reach it."""

    number: int
    rfb_socket: str  # Xvnc's RFB server: a unix socket, mode 0600, in a 0700 directory
    xauthority: str  # the file with the cookie its X clients present
    width: int
    height: int
    drive: str | None  # a folder for the client to share, when the session's profile allows one

    @property
    def name(self) -> str:
        return f":{self.number}"


class Child:
    """A child process started from the loop's thread and awaited through a pidfd."""

    def __init__(self, name: str, popen: subprocess.Popen) -> None:
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self._pidfd = os.pidfd_open(popen.pid)
        self._watch_ended: trio.Event | None = None  # set when the task watching the pidfd stops

    @classmethod
    def spawn(cls, name: str, argv: list[str], **popen_args: Any) -> Child:
        # on the loop's thread on purpose (see the module's docstring)
        popen = subprocess.Popen([SETPRIV, "--pdeathsig", "KILL", "--", *argv],
                                 start_new_session=True, **popen_args)
        return cls(name, popen)

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    async def wait(self) -> int:
        """The exit status, once the child has exited (and been reaped). Any number of tasks
        may wait: one watches the pidfd, the others wait for it to stop watching."""
        while self.popen.returncode is None:
            if self._watch_ended is not None:
                await self._watch_ended.wait()
                continue
            self._watch_ended = trio.Event()
            try:
                await trio.lowlevel.wait_readable(self._pidfd)
                self.popen.wait()  # it has exited: this only reaps it
                self._close_pidfd()
            finally:
                self._watch_ended.set()
                self._watch_ended = None
        return self.popen.returncode

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    async def end(self) -> None:
        """SIGTERM, then SIGKILL after a grace; returns once the child is reaped. Shielded:
        a child is never left running because its owner was cancelled."""
        with trio.CancelScope(shield=True):
            if self.popen.poll() is None:
                self._signal(signal.SIGTERM)
                with trio.move_on_after(_TERMINATE_GRACE):
                    await self.wait()
                if self.popen.poll() is None:
                    log.warning("%s (pid %d) ignored SIGTERM; killing it", self.name, self.pid)
                    self._signal(signal.SIGKILL)
            await self.wait()
            self._close_pidfd()

    def _signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pid, sig)  # its own session and group (start_new_session)
        except ProcessLookupError:
            pass


_COOKIE_NAME = b"MIT-MAGIC-COOKIE-1"


def _xauthority(path: Path) -> bytes:
    """An Xauthority file with one random MIT-MAGIC-COOKIE-1 for any display (FamilyWild);
    returns the cookie."""
    def counted(data: bytes) -> bytes:
        return struct.pack(">H", len(data)) + data

    cookie = secrets.token_bytes(16)
    entry = struct.pack(">H", 0xFFFF) + counted(b"") + counted(b"") + counted(_COOKIE_NAME) + counted(cookie)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(entry)
    return cookie


class WindowWatch:
    """A minimal X11 client of a private display that waits for a window to be mapped: the
    connection setup with the display's cookie, then one ChangeWindowAttributes asking for the
    root window's SubstructureNotify events. Subscribed before the client whose window it waits
    for starts, it cannot miss the map. (There is no window manager: a window is mapped when its
    client maps it, and with the pointer over it, it has the keyboard.)"""

    _X11_REQUEST_CHANGE_WINDOW_ATTRIBUTES = 2
    _EVENT_MASK = 0x800  # CWEventMask
    _SUBSTRUCTURE_NOTIFY = 0x80000
    _MAP_NOTIFY = 19

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream

    @classmethod
    async def subscribe(cls, display: PrivateDisplay, cookie: bytes) -> WindowWatch:
        stream = await trio.open_unix_socket(f"/tmp/.X11-unix/X{display.number}")
        try:
            def padded(data: bytes) -> bytes:
                return data + b"\0" * (-len(data) % 4)

            await stream.send_all(struct.pack("<cxHHHH2x", b"l", 11, 0, len(_COOKIE_NAME), len(cookie))
                                  + padded(_COOKIE_NAME) + padded(cookie))
            head = await _receive_exactly(stream, 8)
            status, length = head[0], struct.unpack_from("<H", head, 6)[0]
            setup = await _receive_exactly(stream, 4 * length)
            if status != 1:
                raise DisplayFailed("the session's private display refused its own client")
            vendor_length, formats = struct.unpack_from("<H", setup, 16)[0], setup[21]
            root = struct.unpack_from("<I", setup, 32 + vendor_length + (-vendor_length % 4) + 8 * formats)[0]
            await stream.send_all(struct.pack("<BxHIII", cls._X11_REQUEST_CHANGE_WINDOW_ATTRIBUTES, 4, root,
                                              cls._EVENT_MASK, cls._SUBSTRUCTURE_NOTIFY))
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return cls(stream)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self._stream)

    async def wait_mapped(self, mapped: trio.Event) -> None:
        """Sets `mapped` when a window is mapped; then stops watching."""
        try:
            while True:
                event = await _receive_exactly(self._stream, 32)
                if event[0] & 0x7F == self._MAP_NOTIFY:
                    mapped.set()
                    return
                if event[0] == 0:  # an X error: the request above was refused
                    raise DisplayFailed("the session's private display refused its own client")
        finally:
            await self.aclose()


async def _receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            raise DisplayFailed("the session's private display closed its own client's connection")
        data += chunk
    return bytes(data)


class WorkingDirectory:
    """A session attempt's private directory (0700), with the home, configuration and (empty)
    certificate directories of its children; removed with everything in it at the end."""

    def __init__(self, prefix: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        for sub in ("home", "config", "certs"):
            (self.path / sub).mkdir(mode=0o700)

    def remove(self) -> None:
        def report(function: Any, path: str, exc_info: Any) -> None:
            log.warning("could not remove %s from a session's working directory", path)

        shutil.rmtree(self.path, onerror=report)


def remove_display_files(display: PrivateDisplay, xvnc: Child) -> None:
    """An X server removes its socket when it exits, but not when it is killed: remove ours if
    nothing listens on it any more, so that no trace of the display stays. (With -displayfd
    there is no lock file: the socket itself is what claims the display number.)"""
    if xvnc.returncode is None:
        return
    path = f"/tmp/.X11-unix/X{display.number}"
    if not os.path.exists(path):
        return
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
            return  # another X server has taken the number since
        except OSError:
            pass
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc.strerror)


def child_environment(work: Path, display: PrivateDisplay | None = None) -> dict[str, str]:
    """A child's whole environment: nothing of the gateway's own (its keys, its secrets)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work / "home"),
        "XDG_CONFIG_HOME": str(work / "config"),  # FreeRDP's certificate store, for one
        "LANG": "C.UTF-8",
        # no certificate authorities: every server's certificate is pinned on first use
        "SSL_CERT_DIR": str(work / "certs"),
        "SSL_CERT_FILE": str(work / "certs" / "none.pem"),
    }
    if display is not None:
        env.update(DISPLAY=display.name, XAUTHORITY=display.xauthority)
    return env


async def _read_line(stream: trio.abc.ReceiveStream, limit: int = 64) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = await stream.receive_some(limit)
        if not chunk:
            break
        data += chunk
    return data


async def start_private_display(work: Path, width: int, height: int, *, clipboard: bool = False,
                                drive: bool = False) -> tuple[Child, PrivateDisplay, bytes]:
    """Xvnc on a free display number (it picks one and says which on a pipe: `-displayfd`),
    with its RFB server on a unix socket only. Returns once it accepts connections, with its
    X cookie."""
    xauthority = work / "xauthority"
    cookie = _xauthority(xauthority)
    rfb_socket = work / "rfb"
    drive_path = None
    if drive:  # a folder for the session's client to share (FreeRDP's drive redirection)
        drive_path = str(work / "drive")
        os.mkdir(drive_path, 0o700)
    cut_text = "1" if clipboard else "0"
    read_fd, write_fd = os.pipe()
    try:
        with open(work / "xvnc.log", "wb") as xvnc_log:
            child = Child.spawn(XVNC, [
                XVNC, "-displayfd", str(write_fd), "-auth", str(xauthority),
                "-geometry", f"{width}x{height}", "-depth", "24", "-dpi", "96",
                "-rfbunixpath", str(rfb_socket), "-rfbunixmode", "0600", "-rfbport", "-1",
                "-nolisten", "tcp", "-SecurityTypes", "None", "-AlwaysShared",
                "-AcceptSetDesktopSize=0",  # the client in it keeps the size it started with
                f"-AcceptCutText={cut_text}", f"-SendCutText={cut_text}",
                "-SendPrimary=0", "-SetPrimary=0", "-desktop", "cosession",
            ], stdin=subprocess.DEVNULL, stdout=xvnc_log, stderr=subprocess.STDOUT,
                pass_fds=(write_fd,), env=child_environment(work), cwd=work)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    number = b""
    try:
        async with trio.lowlevel.FdStream(read_fd) as displayfd:
            with trio.move_on_after(_DISPLAY_START_TIMEOUT):
                number = await _read_line(displayfd)
    except BaseException:
        await child.end()
        raise
    if not number.strip().isdigit():
        await child.end()
        tail = (work / "xvnc.log").read_text(errors="replace").strip().splitlines()[-3:]
        log.error("Xvnc did not start (status %s): %s", child.returncode, " | ".join(tail))
        raise DisplayFailed("the session's private display did not start (see the gateway's log)")
    display = PrivateDisplay(int(number), str(rfb_socket), str(xauthority), width, height, drive_path)
    return child, display, cookie

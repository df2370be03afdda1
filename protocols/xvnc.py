"""Private X displays served by TigerVNC's Xvnc, and the processes that run in them: the demo
desktop (`serve_xvnc`, with its X clients) and an RDP session's display, in which xfreerdp runs
and which `protocols.vnc` reads (protocols/rdp.py).

`start_xvnc` starts `Xvnc -displayfd`: the X server picks a free display number itself and
writes it to a pipe once it accepts connections, so that concurrent displays (and test servers)
never collide. Its RFB server listens where it is told: a unix socket in the caller's private
(0700) directory without authentication (mode 0600, no TCP port at all), and/or a loopback TCP
port with VNC authentication and a password. Its X server accepts only clients that present a
random MIT-MAGIC-COOKIE-1 (an Xauthority file in that directory; `XvncDisplay.xauthority`), and
no TCP clients. `WindowWatch` is a minimal X11 client of such a display that waits for a window
to be mapped.

`Child` is a child process of the gateway that dies with it: started through `setpriv
--pdeathsig KILL` from the loop's own thread (the kernel sends the signal when the *thread* that
forked the child ends, and trio's `open_process` forks in a worker thread that ends when idle;
with vfork the fork takes about 2 ms), awaited through a pidfd, and ended with SIGTERM, then
SIGKILL after a grace, always reaped.

`serve_xvnc` runs a display and its X clients as a trio task until cancelled; then the clients
and Xvnc are ended and reaped and the private directory removed, before it returns.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import trio

from protocols.rfb import obfuscated_password

log = logging.getLogger(__name__)

XVNC = "Xvnc"
SETPRIV = "setpriv"
READY_SECONDS = 10.0  # for Xvnc to report its display number
_STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when a child is ended
_ATTEMPTS = 5  # a TCP port taken between looking and starting: try another


class XvncUnavailable(RuntimeError):
    """Xvnc is not installed, did not start, or stopped answering its own client."""


@dataclass(frozen=True, repr=False)
class XvncDisplay:
    display: int
    width: int
    height: int
    host: str = ""  # with `port`: the TCP listener, VNC authentication with `password`
    port: int = 0
    socket_path: str = ""  # the unix socket listener, no authentication (its directory is private)
    password: str = field(default="", repr=False)
    xauthority: str = ""  # the file with the cookie its X clients present

    @property
    def name(self) -> str:
        return f":{self.display}"

    @property
    def env(self) -> dict[str, str]:
        """The environment for an X client of this display (the gateway's, with the display)."""
        return {**os.environ, "DISPLAY": self.name, "XAUTHORITY": self.xauthority}

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port else self.socket_path
        return f"XvncDisplay(:{self.display}, {where}, {self.width}x{self.height})"


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
                with trio.move_on_after(_STOP_GRACE):
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
    async def subscribe(cls, display: XvncDisplay, cookie: bytes) -> WindowWatch:
        stream = await trio.open_unix_socket(f"/tmp/.X11-unix/X{display.display}")
        try:
            def padded(data: bytes) -> bytes:
                return data + b"\0" * (-len(data) % 4)

            await stream.send_all(struct.pack("<cxHHHH2x", b"l", 11, 0, len(_COOKIE_NAME), len(cookie))
                                  + padded(_COOKIE_NAME) + padded(cookie))
            head = await _receive_exactly(stream, 8)
            status, length = head[0], struct.unpack_from("<H", head, 6)[0]
            setup = await _receive_exactly(stream, 4 * length)
            if status != 1:
                raise XvncUnavailable("the session's private display refused its own client")
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
                    raise XvncUnavailable("the session's private display refused its own client")
        finally:
            await self.aclose()


async def _receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            raise XvncUnavailable("the session's private display closed its own client's connection")
        data += chunk
    return bytes(data)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def _answers_rfb(host: str, port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError:
        return False
    async with stream:
        return (await stream.receive_some(12)).startswith(b"RFB ")


async def _read_line(stream: trio.abc.ReceiveStream, limit: int = 64) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = await stream.receive_some(limit)
        if not chunk:
            break
        data += chunk
    return data


async def start_xvnc(directory: Path, *, width: int, height: int, tcp_host: str | None = None,
                     password: str | None = None, unix_socket: bool = False, cut_text: bool = True,
                     resizable: bool = True, name: str = "cosession") -> tuple[Child, XvncDisplay, bytes]:
    """Xvnc in `directory` (private, the caller's to remove), with its X cookie; once it accepts
    connections. `tcp_host`: RFB on a free port there with VNC authentication (`password`, or a
    random one); `unix_socket`: RFB on `directory/rfb` without. `cut_text`: clipboard text to and
    from RFB clients; `resizable`: RFB clients may set the desktop's size."""
    if shutil.which(XVNC) is None or shutil.which(SETPRIV) is None:
        raise XvncUnavailable("Xvnc is not installed (Debian: tigervnc-standalone-server)")
    if tcp_host is None and not unix_socket:
        raise ValueError("Xvnc needs a TCP host or a unix socket to listen on")
    xauthority = directory / "xauthority"
    cookie = _xauthority(xauthority)
    flag = {True: "1", False: "0"}
    argv = [XVNC, "-auth", str(xauthority), "-geometry", f"{width}x{height}", "-depth", "24", "-dpi", "96",
            "-nolisten", "tcp", "-AlwaysShared", "-desktop", name, f"-AcceptCutText={flag[cut_text]}",
            f"-SendCutText={flag[cut_text]}", "-SendPrimary=0", "-SetPrimary=0",
            f"-AcceptSetDesktopSize={flag[resizable]}"]
    security = []
    if tcp_host is not None:
        password = password or secrets.token_urlsafe(6)[:8]  # VNC passwords are at most 8 characters
        passwd = directory / "passwd"
        passwd.write_bytes(obfuscated_password(password))
        passwd.chmod(0o600)
        argv += ["-rfbauth", str(passwd)]
        security.append("VncAuth")
    socket_path = ""
    if unix_socket:
        socket_path = str(directory / "rfb")
        argv += ["-rfbunixpath", socket_path, "-rfbunixmode", "0600"]
        security.append("None")
    argv += ["-SecurityTypes", ",".join(security)]
    for _ in range(_ATTEMPTS):
        port = _free_port(tcp_host) if tcp_host is not None else 0
        listen = ["-rfbport", str(port), "-interface", tcp_host] if tcp_host is not None else ["-rfbport", "-1"]
        child, number = await _start(directory, [*argv, *listen])
        if number is not None and (tcp_host is None or await _answers_rfb(tcp_host, port)):
            display = XvncDisplay(number, width, height, tcp_host or "", port, socket_path, password or "",
                                  str(xauthority))
            return child, display, cookie
        await child.end()
        if tcp_host is None:
            break
    tail = (directory / "xvnc.log").read_text(errors="replace").strip().splitlines()[-3:]
    log.error("Xvnc did not start: %s", " | ".join(tail))
    raise XvncUnavailable(f"Xvnc did not start (see {directory / 'xvnc.log'})")


async def _start(directory: Path, argv: list[str]) -> tuple[Child, int | None]:
    """Xvnc with -displayfd, and the display number it reports (None if it reports none)."""
    read_fd, write_fd = os.pipe()
    try:
        with open(directory / "xvnc.log", "ab") as out:
            child = Child.spawn(XVNC, [argv[0], "-displayfd", str(write_fd), *argv[1:]],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                pass_fds=(write_fd,), cwd=directory,
                                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(directory)})
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    number = b""
    try:
        async with trio.lowlevel.FdStream(read_fd) as displayfd:
            with trio.move_on_after(READY_SECONDS):
                number = await _read_line(displayfd)
    except BaseException:
        await child.end()
        raise
    return child, int(number) if number.strip().isdigit() else None


def remove_stale_socket(display: XvncDisplay, xvnc: Child) -> None:
    """An X server removes its socket when it exits, but not when it is killed: remove ours if
    nothing listens on it any more, so that no trace of the display stays. (With -displayfd
    there is no lock file: the socket itself is what claims the display number.)"""
    if xvnc.returncode is None:
        return
    path = f"/tmp/.X11-unix/X{display.display}"
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


async def serve_xvnc(*, width: int, height: int, tcp_host: str | None = None, password: str | None = None,
                     unix_socket: bool = False, clients: Sequence[Sequence[str]] = (), name: str = "cosession",
                     client_cwd: str | None = None, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run Xvnc and its `clients` until cancelled (see the module and `start_xvnc`)."""
    directory = Path(tempfile.mkdtemp(prefix="cosession-xvnc-"))  # 0700: only this user reaches the socket
    children: list[Child] = []
    display = None
    try:
        xvnc, display, _ = await start_xvnc(directory, width=width, height=height, tcp_host=tcp_host,
                                            password=password, unix_socket=unix_socket, name=name)
        children.append(xvnc)
        for argv in clients:
            if shutil.which(argv[0]) is None:
                log.warning("xvnc :%d: %s is not installed; the desktop starts without it", display.display, argv[0])
                continue
            children.append(Child.spawn(argv[0], list(argv), env=display.env, cwd=client_cwd,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))
        log.info("xvnc: %r", display)
        task_status.started(display)
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            for child in reversed(children):
                await child.end()
        if display is not None and children:
            remove_stale_socket(display, children[0])
        shutil.rmtree(directory, ignore_errors=True)

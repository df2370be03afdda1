"""RDP endpoint connection: FreeRDP's `xfreerdp` full-screen in a private TigerVNC `Xvnc`.

Per attempt (each `open`), on the trio loop, the connection owns two child processes in a
private working directory (`cosession-rdp-*` in the temporary directory, mode 0700):

- `Xvnc`, the session's private X display, sized to the launcher's resolution. Its RFB server
  listens only on a unix socket in the working directory (mode 0600, no TCP port), and its X
  server accepts only clients that present a random cookie (an Xauthority file there too).
- `xfreerdp`, full-screen on that display, connected to the endpoint. The password reaches it
  on its standard input (`/from-stdin:force`), written into a pipe and closed before it starts:
  never on a command line, in an environment, a file or a log. The user name goes in a `.rdp`
  file in the working directory (it is not a secret, but it stays off the world-readable
  command line). Its environment is built here, not inherited from the gateway's.

Once FreeRDP says its connection is active and its window is mapped on the private display (a
minimal X11 client, subscribed before xfreerdp starts, sees the map), the attempt hands the
display to the gateway's VNC path: a `protocols.vnc.VncConnection` on the unix socket, whose
decoded updates become the session's (`EndpointEvents.display`) and which carries the
controller's input, as RFB key and pointer events, to the display, where FreeRDP turns them
into the server's scancodes. `opened` is reported when that reader is reading. When `xfreerdp`
exits, its exit status (FreeRDP's own codes, with the server's disconnect reason among them)
and what it logged say why, and the attempt reports `closed` (the server ended the session:
logoff, another login taking the console, an administrator) or `failed` (retryable or not).
When `Xvnc` exits, the attempt fails. When the attempt ends for any reason, both children are
ended and reaped and the working directory is removed.

Children die with the gateway too: each is started through `setpriv --pdeathsig KILL`, and
started from the loop's own thread, since the kernel sends the signal when the *thread* that
forked the child ends (trio's `open_process` forks in a worker thread that ends when idle).

The server's certificate: FreeRDP's own certificate store in a private configuration
directory per attempt, with `/cert:tofu,deny`. On first use FreeRDP accepts the certificate
and writes it to its `known_hosts2`; the connection then reads its SHA-256 fingerprint back and
reports it (`on_certificate`). A recorded fingerprint is written into `known_hosts2` before
FreeRDP starts, and a different certificate is refused by FreeRDP before any credential is
sent; its fingerprint goes to `on_certificate_changed` for an administrator to accept. The
system's certificate authorities are hidden from FreeRDP (an empty certificate directory), so
that every endpoint is pinned the same way, as SSH host keys are.
"""

from __future__ import annotations

import base64
import collections
import errno
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import trio

from engine import Credentials, EndpointEvents, LoopBridge, LoopClosed
from protocols import rfb
from protocols.vnc import VncConnection

log = logging.getLogger(__name__)

XVNC = "Xvnc"
XFREERDP = "xfreerdp"
SETPRIV = "setpriv"
DRIVE_NAME = "cosession"  # the redirected folder's name on the RDP server ("\\tsclient\cosession")
MIN_SIZE = (200, 200)
MAX_SIZE = (8192, 8192)
MAX_PASSWORD_BYTES = 511  # FreeRDP reads at most this many from its standard input
INPUT_QUEUE_CHUNKS = 512  # controller input waiting for the display; more is dropped, never waited for
# xfreerdp takes a key's release followed by its press with the same X timestamp for autorepeat
# and drops the release (xf_event_KeyReleaseOrIgnore), so a doubled letter typed by a script
# ("ll" in one burst) loses a letter. A press of the key just released waits this long.
SAME_KEY_GAP = 0.02
_DISPLAY_START_TIMEOUT = 10.0  # seconds for Xvnc to report its display number
_TERMINATE_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when a child is ended
_OUTPUT_TAIL = 40  # FreeRDP log lines kept to explain an exit
_MAX_LINE = 4096  # longer FreeRDP output lines are cut
_FINGERPRINT = re.compile(r"^(?:[0-9a-f]{2}:){31}[0-9a-f]{2}$")
# "[12:00:00:000] [pid:tid] [LEVEL][tag] - message"
_LOG_LINE = re.compile(r"\[(TRACE|DEBUG|INFO|WARN|ERROR|FATAL)\]\[([^\]]+)\] - (.*)")
_STATE = re.compile(r"--> CONNECTION_STATE_(\w+)")
_NEGOTIATED = re.compile(r"Negotiated (\w+) security")
_NEGO_ERROR = re.compile(r"^Error: (\w+_BY_SERVER|SSL_CERT_NOT_ON_SERVER|INCONSISTENT_FLAGS)")
_CHANGED_FINGERPRINT = re.compile(r"fingerprint for the host key sent by the remote host is ([0-9A-Fa-f:]+)")
# FreeRDP logs at WARN and above, and at DEBUG the two tags that tell the connection's progress:
# its state transitions (CONNECTION_STATE_ACTIVE means connected) and the negotiated security.
_LOG_FILTERS = "com.freerdp.core.connection:DEBUG,com.freerdp.core.nego:DEBUG"


# --- what the connection is asked to do ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RdpOptions:
    """How a session's RDP connection is made. Clipboard and drive stay off unless the session's
    access profile allows them."""

    width: int = 1280
    height: int = 800
    security: str | None = None  # "nla", "tls" or "rdp" to insist on one; None negotiates
    clipboard: bool = False  # FreeRDP's clipboard channel and the display's cut text
    drive: bool = False  # a folder of the working directory, redirected as drive DRIVE_NAME
    connect_timeout: float = 20.0  # from starting xfreerdp to the session being active

    def __post_init__(self) -> None:
        if not (MIN_SIZE[0] <= self.width <= MAX_SIZE[0] and MIN_SIZE[1] <= self.height <= MAX_SIZE[1]):
            raise ValueError(f"an RDP desktop of {self.width}x{self.height} is not supported "
                             f"(from {MIN_SIZE[0]}x{MIN_SIZE[1]} to {MAX_SIZE[0]}x{MAX_SIZE[1]})")
        if self.security not in (None, "nla", "tls", "rdp"):
            raise ValueError(f"unknown RDP security layer {self.security!r} (nla, tls or rdp)")
        if self.connect_timeout <= 0:
            raise ValueError("the RDP connect timeout must be positive")


@dataclass(frozen=True, slots=True)
class PrivateDisplay:
    """A session's private X display, as the VNC reader and FreeRDP reach it."""

    number: int
    rfb_socket: str  # Xvnc's RFB server: a unix socket, mode 0600, in a 0700 directory
    xauthority: str  # the cookie FreeRDP presents to the X server
    width: int
    height: int
    drive: str | None  # the redirected folder, when the profile allows one

    @property
    def name(self) -> str:
        return f":{self.number}"


def certificate_fingerprint(value: str) -> str:
    """A certificate fingerprint as FreeRDP writes it (SHA-256, lowercase hex pairs with colons);
    ValueError for anything else."""
    text = value.strip().lower()
    if not _FINGERPRINT.match(text):
        raise ValueError("not an SHA-256 certificate fingerprint (32 hex pairs separated by colons)")
    return text


# --- failures -----------------------------------------------------------------------------------


class _Failure(Exception):
    """The attempt failed; the detail is written for the user (and safe to show)."""

    def __init__(self, detail: str, retryable: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable


class _Ended(Exception):
    """The RDP server ended the session on purpose (logoff, another login, an administrator)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


# FreeRDP 2's client connection states, in the order a connection goes through them
_STATES = ("INITIAL", "NEGO", "NLA", "MCS_CONNECT", "MCS_ATTACH_USER", "MCS_CHANNEL_JOIN",
           "RDP_SECURITY_COMMENCEMENT", "SECURE_SETTINGS_EXCHANGE", "CONNECT_TIME_AUTO_DETECT",
           "LICENSING", "MULTITRANSPORT_BOOTSTRAPPING", "CAPABILITIES_EXCHANGE", "FINALIZATION",
           "ACTIVE")


@dataclass(slots=True)
class FreeRdpRun:
    """What one xfreerdp run told us, from its output and its exit status."""

    furthest: str = "INITIAL"  # the furthest connection state it reached (it falls back to
    # INITIAL to retry without NLA, so the last state says little)
    security: str | None = None  # the negotiated security layer (NLA, TLS, RDP)
    nego_error: str | None = None  # why security negotiation failed, in FreeRDP's words
    changed_fingerprint: str | None = None  # the certificate it refused, when it changed
    returncode: int | None = None

    def note(self, line: str) -> bool:
        """Take one output line into account; True when it says the session became active."""
        match = _LOG_LINE.search(line)
        message = match.group(3) if match else line
        if (state := _STATE.search(message)) is not None:
            entered = state.group(1)
            if _rank(entered) > _rank(self.furthest):
                self.furthest = entered
            return entered == "ACTIVE"
        if (negotiated := _NEGOTIATED.search(message)) is not None:
            self.security = negotiated.group(1)
        elif (nego := _NEGO_ERROR.search(message)) is not None:
            self.nego_error = nego.group(1)
        elif (changed := _CHANGED_FINGERPRINT.search(message)) is not None:
            try:
                self.changed_fingerprint = certificate_fingerprint(changed.group(1))
            except ValueError:
                self.changed_fingerprint = None
        return False


_NEGO_ERRORS = {
    "HYBRID_REQUIRED_BY_SERVER": "the server requires network level authentication (NLA)",
    "SSL_REQUIRED_BY_SERVER": "the server requires TLS",
    "SSL_NOT_ALLOWED_BY_SERVER": "the server does not allow TLS",
    "SSL_CERT_NOT_ON_SERVER": "the server has no certificate for TLS",
    "INCONSISTENT_FLAGS": "the server answered with inconsistent security flags",
    "SSL_WITH_USER_AUTH_REQUIRED_BY_SERVER": "the server requires TLS with user authentication",
}

# xfreerdp's exit status (client/X11/xfreerdp.h): 1–12 are the server's own disconnect reasons.
_SERVER_ENDED = {
    0: "the RDP server ended the session",
    1: "an administrative tool on the RDP server disconnected the session",
    2: "an administrative tool on the RDP server logged the session off",
    3: "the RDP server disconnected the session after it was idle too long",
    5: "another connection to the RDP server took over the session",
    11: "the session was disconnected on the RDP server",
    12: "the user logged off",
}
_FINAL = {  # refusals that another attempt would only repeat
    4: "the RDP server's logon time limit ran out",
    7: "the RDP server denied the connection",
    8: "the RDP server denied the connection (FIPS)",
    9: "the user has no right to log on to the RDP server",
    10: "the RDP server requires fresh credentials",
    135: "the account is locked out",
    144: "the account has insufficient privileges",
    148: "the password has expired",
    149: "the password must be changed before logging on",
    151: "the account is disabled",
    152: "the password has expired",
    153: "the client certificate was revoked",
    155: "access was denied",
    156: "the account has restrictions that prevent this logon",
    157: "the account has expired",
    158: "the account may not log on through RDP",
}
_AUTH_FAILED = (132, 134, 154)  # authentication, logon failure, wrong password
_LICENSE = range(16, 27)


def _rank(state: str) -> int:
    return _STATES.index(state) if state in _STATES else 0


def describe_exit(run: FreeRdpRun, where: str, username: str, was_active: bool) -> _Failure | _Ended:
    """Why xfreerdp's run ended, for the user: `_Ended` when the server ended the session on
    purpose, else a `_Failure` that says whether another attempt may help."""
    code = run.returncode
    who = username or "(no user name)"
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return _Failure(f"the RDP client for {where} was killed by {name}", True)
    if code in _SERVER_ENDED and (code != 0 or was_active):
        return _Ended(_SERVER_ENDED[code])
    if run.changed_fingerprint is not None:
        return _Failure(f"the certificate of {where} changed (now SHA-256 {run.changed_fingerprint}); "
                        "an administrator must accept the new certificate", False)
    if code in _AUTH_FAILED:
        return _Failure(f"authentication failed for user {who}", False)
    if code == 159:
        return _Failure(f"{where} requires a user name and password", False)
    if code in _FINAL:
        return _Failure(f"{_FINAL[code]} (user {who} on {where})", False)
    if code in _LICENSE:
        return _Failure(f"licensing with {where} failed (FreeRDP status {code})", False)
    if code in (133, 146) or run.nego_error is not None:
        why = _NEGO_ERRORS.get(run.nego_error or "", "the server and the gateway share no security layer")
        return _Failure(f"security negotiation with {where} failed: {why}", False)
    if not was_active and run.furthest == "NLA":
        # FreeRDP's shadow server and some others just close the connection on a wrong
        # password, after the credentials were sent: say so, and do not retry a bad password.
        return _Failure(f"authentication failed for user {who} ({where} closed the connection "
                        "during network level authentication)", False)
    if code == 143:
        return _Failure(f"the TLS handshake with {where} failed", True)
    if code in (139, 140):
        return _Failure(f"cannot resolve the RDP server {where}", True)
    if was_active:
        return _Failure(f"connection to {where} lost", True)
    if code == 128:
        return _Failure("the RDP client refused its arguments (see the gateway's log)", False)
    return _Failure(f"the RDP connection to {where} failed during {_stage(run)} (FreeRDP status {code})", True)


def _stage(run: FreeRdpRun) -> str:
    return run.furthest.lower().replace("_", " ")


# --- child processes ----------------------------------------------------------------------------


class _Child:
    """A child process started from the loop's thread and awaited through a pidfd."""

    def __init__(self, name: str, popen: subprocess.Popen) -> None:
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self._pidfd = os.pidfd_open(popen.pid)
        self._watch_ended: trio.Event | None = None  # set when the task watching the pidfd stops

    @classmethod
    def spawn(cls, name: str, argv: list[str], **popen_args: Any) -> _Child:
        # On the loop's thread on purpose (see the module's docstring): with vfork it takes a
        # fraction of a millisecond, and the parent-death signal stays bound to a thread that
        # lives as long as the loop.
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
                    log.warning("rdp: %s (pid %d) ignored SIGTERM; killing it", self.name, self.pid)
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


class _WindowWatch:
    """A minimal X11 client of the private display that waits for a window to be mapped.

    FreeRDP says its connection is active a moment before its window exists; keys sent to the
    display in between go nowhere. The watch subscribes to the root window's substructure
    before xfreerdp starts, so it cannot miss the map; the session is reported open after it.
    (There is no window manager: a window is mapped when its client maps it, and with the
    pointer over it, it has the keyboard.)"""

    _X11_REQUEST_CHANGE_WINDOW_ATTRIBUTES = 2
    _EVENT_MASK = 0x800  # CWEventMask
    _SUBSTRUCTURE_NOTIFY = 0x80000
    _MAP_NOTIFY = 19

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream

    @classmethod
    async def subscribe(cls, display: PrivateDisplay, cookie: bytes) -> _WindowWatch:
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
                raise _Failure("the session's private display refused its own client", True)
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
                    raise _Failure("the session's private display refused its own client", True)
        finally:
            await self.aclose()


async def _receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            raise _Failure("the session's private display closed its own client's connection", True)
        data += chunk
    return bytes(data)


class _WorkingDirectory:
    """The attempt's private directory (0700); removed with everything in it at the end."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="cosession-rdp-"))
        for sub in ("home", "config", "certs"):
            (self.path / sub).mkdir(mode=0o700)

    def remove(self) -> None:
        def report(function: Any, path: str, exc_info: Any) -> None:
            log.warning("rdp: could not remove %s from a session's working directory", path)

        shutil.rmtree(self.path, onerror=report)


def _remove_display_files(display: PrivateDisplay, xvnc: _Child) -> None:
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
        log.warning("rdp: could not remove %s: %s", path, exc.strerror)


def _child_environment(work: Path, display: PrivateDisplay | None = None) -> dict[str, str]:
    """A child's whole environment: nothing of the gateway's own (its keys, its secrets)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work / "home"),
        "XDG_CONFIG_HOME": str(work / "config"),  # FreeRDP's certificate store lives here
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


async def start_private_display(work: Path, options: RdpOptions) -> tuple[_Child, PrivateDisplay, bytes]:
    """Xvnc on a free display number (it picks one and says which on a pipe: `-displayfd`),
    with its RFB server on a unix socket only. Returns once it accepts connections, with its
    X cookie."""
    xauthority = work / "xauthority"
    cookie = _xauthority(xauthority)
    rfb_socket = work / "rfb"
    drive = None
    if options.drive:
        drive_path = work / "drive"
        drive_path.mkdir(mode=0o700)
        drive = str(drive_path)
    cut_text = "1" if options.clipboard else "0"
    read_fd, write_fd = os.pipe()
    try:
        with open(work / "xvnc.log", "wb") as xvnc_log:
            child = _Child.spawn(XVNC, [
                XVNC, "-displayfd", str(write_fd), "-auth", str(xauthority),
                "-geometry", f"{options.width}x{options.height}", "-depth", "24", "-dpi", "96",
                "-rfbunixpath", str(rfb_socket), "-rfbunixmode", "0600", "-rfbport", "-1",
                "-nolisten", "tcp", "-SecurityTypes", "None", "-AlwaysShared",
                "-AcceptSetDesktopSize=0",  # xfreerdp's desktop has the size it connected with
                f"-AcceptCutText={cut_text}", f"-SendCutText={cut_text}",
                "-SendPrimary=0", "-SetPrimary=0", "-desktop", "cosession RDP",
            ], stdin=subprocess.DEVNULL, stdout=xvnc_log, stderr=subprocess.STDOUT,
                pass_fds=(write_fd,), env=_child_environment(work), cwd=work)
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
        log.error("rdp: Xvnc did not start (status %s): %s", child.returncode, " | ".join(tail))
        raise _Failure("the session's private display did not start (see the gateway's log)", True)
    display = PrivateDisplay(int(number), str(rfb_socket), str(xauthority), options.width,
                             options.height, drive)
    return child, display, cookie


def freerdp_options(host: str, port: int, options: RdpOptions, display: PrivateDisplay) -> list[str]:
    """xfreerdp's options for a session on `display` (bench/rdp_websocket.py runs its direct
    clients with the same ones)."""
    address = f"[{host}]" if ":" in host else host
    argv = [
        f"/v:{address}:{port}", "/f", "-toggle-fullscreen", "-decorations",
        "/from-stdin:force", "/cert:tofu,deny", "/log-level:WARN", f"/log-filters:{_LOG_FILTERS}",
        "+clipboard" if options.clipboard else "-clipboard",
        "/audio-mode:2",  # never play sound (there is nobody to hear it)
    ]
    if options.security:
        argv.append(f"/sec:{options.security}")
    if display.drive:
        argv.append(f"/drive:{DRIVE_NAME},{display.drive}")
    return argv


# --- one attempt --------------------------------------------------------------------------------


class _Attempt:
    """State of one `open()`: its events sink and its cancel scope. As in protocols/ssh.py,
    `report` holds `lock` while telling and `close` takes it, so nothing is reported after a
    `close()` has returned."""

    def __init__(self, events: EndpointEvents) -> None:
        self.events = events
        self.lock = threading.Lock()
        self.closed = False
        self.finished = False
        self.scope = trio.CancelScope()
        self.done = trio.Event()  # the attempt's task has ended: children reaped, directory gone
        self.display: PrivateDisplay | None = None
        self.children: list[_Child] = []
        self.reader: VncConnection | None = None  # reads the private display, once FreeRDP is active
        self.input_send, self.input_recv = trio.open_memory_channel[bytes](INPUT_QUEUE_CHUNKS)
        self.dropped_chunks = 0

    def report(self, what: str, *args: Any) -> None:
        with self.lock:
            if self.closed or self.finished:
                return
            if what in ("closed", "failed"):
                self.finished = True
            try:
                getattr(self.events, what)(*args)
            except Exception:
                log.exception("rdp: reporting %s failed; closing the connection", what)
                self.closed = True
                if trio.lowlevel.in_trio_run():
                    self.scope.cancel()

    def close(self) -> None:
        with self.lock:
            self.closed = True

    def cancel(self) -> None:
        self.scope.cancel()

    def feed(self, data: bytes) -> None:
        """On the loop: the controller's input, queued for `_pace_input`."""
        try:
            self.input_send.send_nowait(data)
        except trio.WouldBlock:
            self.dropped_chunks += 1
            if self.dropped_chunks == 1 or self.dropped_chunks % 100 == 0:
                log.warning("rdp: input queue full, %d input chunk(s) dropped so far", self.dropped_chunks)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass


async def _pace_input(attempt: _Attempt, reader: VncConnection) -> None:
    """Passes the controller's input to the display reader as it comes, except that a key
    pressed again right after its release waits out SAME_KEY_GAP (see there)."""
    messages = rfb.ClientMessageReader()
    released: dict[int, float] = {}  # keysym → when its release went to the reader
    async for data in attempt.input_recv:
        try:
            parsed = messages.feed(data)
        except rfb.RfbError:
            # the reader parses the stream again and says what is wrong; pass it on as it is
            messages = rfb.ClientMessageReader()
            reader.send_input(data)
            continue
        batch = bytearray()
        for message, wire in parsed:
            if isinstance(message, rfb.KeyEvent):
                if message.down and message.key in released:
                    wait = released.pop(message.key) + SAME_KEY_GAP - trio.current_time()
                    if wait > 0:
                        if batch:
                            reader.send_input(bytes(batch))
                            batch.clear()
                        await trio.sleep(wait)
                elif not message.down:
                    if len(released) > 64:
                        released.clear()
                    released[message.key] = trio.current_time()
            batch += wire
        if batch:
            reader.send_input(bytes(batch))


class _ReaderEvents:
    """What the private display's VNC reader reports, as the RDP attempt's events. The reader
    reports on the loop (it is opened there), so the trio event may be set directly."""

    def __init__(self, attempt: _Attempt, detail: str, lost: trio.Event, why: list[str]) -> None:
        self._attempt = attempt
        self._detail = detail
        self._lost = lost
        self._why = why

    def opened(self, detail: str = "") -> None:
        self._attempt.report("opened", self._detail)

    def display(self, items: tuple[Any, ...]) -> None:
        self._attempt.report("display", items)

    def output(self, data: bytes) -> None:  # pragma: no cover - an RFB reader reports display items
        self._attempt.report("output", data)

    def closed(self, detail: str = "") -> None:
        self._end(detail)

    def failed(self, detail: str, retryable: bool = True) -> None:
        self._end(detail)

    def _end(self, detail: str) -> None:
        self._why.append(detail)
        self._lost.set()


# --- the connection -----------------------------------------------------------------------------


class RdpConnection:
    """A remote desktop on an RDP endpoint, as an `EndpointConnection`."""

    def __init__(self, bridge: LoopBridge, host: str, port: int, credentials: Credentials, *,
                 options: RdpOptions | None = None, known_certificate: str | None = None,
                 on_certificate: Callable[[str], None] | None = None,
                 on_certificate_changed: Callable[[str], None] | None = None) -> None:
        if known_certificate is not None:
            known_certificate = certificate_fingerprint(known_certificate)
        _check_credentials(credentials)
        self._bridge = bridge
        self._host = host
        self._port = port
        self._credentials = credentials
        self._options = options or RdpOptions()
        self._known_certificate = known_certificate
        self._on_certificate = on_certificate
        self._on_certificate_changed = on_certificate_changed
        self._lock = threading.Lock()
        self._attempt: _Attempt | None = None
        self._closed = False

    @property
    def where(self) -> str:
        return f"{self._host}:{self._port}"

    @property
    def options(self) -> RdpOptions:
        return self._options

    @property
    def display(self) -> PrivateDisplay | None:
        """The current attempt's private display, once it runs."""
        attempt = self._attempt
        return attempt.display if attempt is not None else None

    def child_pids(self) -> list[int]:
        """The current attempt's child processes (Xvnc, xfreerdp) that have not been reaped."""
        attempt = self._attempt
        if attempt is None:
            return []
        return [child.pid for child in attempt.children if child.returncode is None]

    def __repr__(self) -> str:
        return f"RdpConnection({self._credentials.username or '-'}@{self.where})"

    # --- the EndpointConnection contract (called from actor threads) -------------------------

    def open(self, events: EndpointEvents, cols: int, rows: int) -> None:
        """`cols` and `rows` are a terminal's: an RDP desktop has the size of its options."""
        with self._lock:
            if self._closed:
                log.debug("rdp %s: open after close ignored", self.where)
                return
            previous, self._attempt = self._attempt, _Attempt(events)
            attempt = self._attempt
        if previous is not None:
            self._stop(previous)
        try:
            self._bridge.spawn(self._run, attempt)
        except LoopClosed:
            attempt.report("failed", "the gateway's network loop is not running", False)

    def send_input(self, data: bytes) -> None:
        """The controller's RFB client messages (keys, pointer, clipboard), to the private display,
        where FreeRDP turns them into the server's scancodes and pointer events."""
        attempt = self._attempt
        if attempt is None or attempt.closed or attempt.reader is None or not data:
            return  # not connected yet: there is no desktop to type into
        try:
            self._bridge.call_soon(attempt.feed, bytes(data))
        except LoopClosed:
            pass

    def resize(self, cols: int, rows: int) -> None:
        """The desktop keeps the size it was opened with."""

    def close(self) -> None:
        with self._lock:
            self._closed = True
            attempt = self._attempt
        if attempt is not None:
            self._stop(attempt)

    def _stop(self, attempt: _Attempt) -> None:
        attempt.close()
        try:
            self._bridge.call_soon(attempt.cancel)
        except LoopClosed:
            pass

    async def stopped(self) -> None:
        """On the loop: wait until the current attempt has ended its children and removed its
        working directory (after `close()`, or after it reported its end)."""
        attempt = self._attempt
        if attempt is not None:
            await attempt.done.wait()

    # --- on the loop -------------------------------------------------------------------------

    async def _run(self, attempt: _Attempt) -> None:
        try:
            with attempt.scope:
                await self._attempt_session(attempt)
        except BaseException as exc:
            propagate, failure = _split(exc)
            if failure is not None:
                self._report_end(attempt, failure)
            if propagate is not None:
                raise propagate
        finally:
            attempt.done.set()

    def _report_end(self, attempt: _Attempt, exc: BaseException) -> None:
        if isinstance(exc, _Ended):
            log.info("rdp %s: %s", self.where, exc.detail)
            attempt.report("closed", exc.detail)
        elif isinstance(exc, _Failure):
            log.warning("rdp %s: %s (%s)", self.where, exc.detail, "retryable" if exc.retryable else "final")
            attempt.report("failed", exc.detail, exc.retryable)
        else:
            log.error("rdp %s: internal error", self.where, exc_info=exc)
            attempt.report("failed", f"internal error in the RDP connection to {self.where} "
                           f"({type(exc).__name__})", True)

    async def _attempt_session(self, attempt: _Attempt) -> None:
        await self._probe()
        work = _WorkingDirectory()
        try:
            await self._in_working_directory(attempt, work.path)
        finally:
            with trio.CancelScope(shield=True):
                for child in attempt.children:
                    await child.end()
            if attempt.display is not None and attempt.children:
                _remove_display_files(attempt.display, attempt.children[0])
            work.remove()

    async def _probe(self) -> None:
        """A plain TCP connection first: FreeRDP 2 reports an unreachable server only as a
        transport failure, and there is no point starting a display for it."""
        try:
            with trio.fail_after(self._options.connect_timeout):
                stream = await trio.open_tcp_stream(self._host, self._port)
            await stream.aclose()
        except trio.TooSlowError:
            raise _Failure(f"connection to {self.where} timed out after "
                           f"{self._options.connect_timeout:g} s", True) from None
        except socket.gaierror:
            raise _Failure(f"cannot resolve host {self._host}", True) from None
        except OSError as exc:
            # trio tries every address and raises one OSError, the attempts' errors its cause
            cause = exc.__cause__
            errors = list(cause.exceptions) if isinstance(cause, BaseExceptionGroup) else [exc]
            if any(getattr(e, "errno", None) == errno.ECONNREFUSED for e in errors):
                raise _Failure(f"connection to {self.where} refused", True) from None
            first = next((e for e in errors if isinstance(e, OSError) and e.strerror), exc)
            raise _Failure(f"cannot connect to {self.where}: {first.strerror or type(first).__name__}",
                           True) from None

    async def _in_working_directory(self, attempt: _Attempt, work: Path) -> None:
        xvnc, display, cookie = await start_private_display(work, self._options)
        attempt.children.append(xvnc)
        attempt.display = display
        window = await _WindowWatch.subscribe(display, cookie)
        run = FreeRdpRun()
        try:
            freerdp, output_fd = self._start_freerdp(work, display)
        except BaseException:
            await window.aclose()
            raise
        attempt.children.append(freerdp)
        active = trio.Event()
        mapped = trio.Event()
        settled = trio.Event()  # active, or exited before that
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_display, attempt, xvnc)
            nursery.start_soon(window.wait_mapped, mapped)
            nursery.start_soon(self._watch_freerdp, freerdp, output_fd, run, active, settled)
            with trio.move_on_after(self._options.connect_timeout) as timeout:
                await settled.wait()
                if active.is_set():
                    await mapped.wait()  # FreeRDP's window: only now do keys reach it
            if timeout.cancelled_caught:
                self._record_certificate(attempt, work)
                raise _Failure(f"the RDP connection to {self.where} did not become active within "
                               f"{self._options.connect_timeout:g} s (it got as far as {_stage(run)})", True)
            self._record_certificate(attempt, work)
            if active.is_set():
                detail = (f"{self._credentials.username or '-'}@{self.where} (RDP, "
                          f"{run.security or 'negotiated'} security, {display.width}x{display.height})")
                nursery.start_soon(self._read_display, attempt, display, detail)
            await freerdp.wait()
            self._certificate_changed(attempt, run)
            raise describe_exit(run, self.where, self._credentials.username, active.is_set())

    async def _read_display(self, attempt: _Attempt, display: PrivateDisplay, detail: str) -> None:
        """The gateway's VNC path reads the private display: its reports become this attempt's,
        with `opened` (FreeRDP's detail) once it reads. If it stops, the attempt fails."""
        lost = trio.Event()
        why: list[str] = []
        reader = VncConnection(self._bridge, socket_path=display.rfb_socket,
                               connect_timeout=self._options.connect_timeout)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pace_input, attempt, reader)
                reader.open(_ReaderEvents(attempt, detail, lost, why), display.width, display.height)
                attempt.reader = reader
                await lost.wait()
                nursery.cancel_scope.cancel()
        finally:
            attempt.reader = None
            reader.close()
        log.error("rdp %s: reading the private display stopped: %s", self.where, why[0] if why else "?")
        raise _Failure("the session's private display could not be read", True)

    async def _watch_display(self, attempt: _Attempt, xvnc: _Child) -> None:
        status = await xvnc.wait()
        log.error("rdp %s: the private display (Xvnc) exited with status %s", self.where, status)
        raise _Failure("the session's private display ended unexpectedly", True)

    async def _watch_freerdp(self, child: _Child, output_fd: int, run: FreeRdpRun,
                             active: trio.Event, settled: trio.Event) -> None:
        """Reads xfreerdp's output until it ends (its pty closes), then reaps it."""
        tail: collections.deque[str] = collections.deque(maxlen=_OUTPUT_TAIL)
        pending = bytearray()
        async with trio.lowlevel.FdStream(output_fd) as output:
            while True:
                try:
                    chunk = await output.receive_some(65536)
                except trio.BrokenResourceError:  # EIO: every writer of the pty has gone
                    chunk = b""
                if not chunk:
                    break
                pending += chunk
                *lines, rest = pending.split(b"\n")
                pending = bytearray(rest[-_MAX_LINE:])
                for raw in lines:
                    line = raw[:_MAX_LINE].decode(errors="replace").rstrip("\r")
                    if run.note(line):
                        active.set()
                        settled.set()
                    if "[WARN]" in line or "[ERROR]" in line or "[FATAL]" in line:
                        tail.append(line)
                        log.debug("rdp %s: freerdp: %s", self.where, line)
        run.returncode = await child.wait()
        settled.set()
        if run.returncode not in (0, None) and not active.is_set():
            log.info("rdp %s: xfreerdp exited with status %s; its last warnings: %s", self.where,
                     run.returncode, " | ".join(list(tail)[-6:]))

    def _start_freerdp(self, work: Path, display: PrivateDisplay) -> tuple[_Child, int]:
        """xfreerdp on the private display; returns it and the reading end of its output."""
        creds = self._credentials
        argv = [XFREERDP]
        if creds.username:
            rdp_file = work / "connection.rdp"
            fd = os.open(rdp_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(f"username:s:{creds.username}\n")
            argv.append(str(rdp_file))
        argv += freerdp_options(self._host, self._port, self._options, display)
        if self._known_certificate:
            self._write_known_certificate(work)
        # The password goes into a pipe, closed before xfreerdp starts: FreeRDP reads it byte
        # by byte from its standard input (/from-stdin:force) before connecting.
        stdin_read, stdin_write = os.pipe()
        try:
            os.write(stdin_write, (creds.password or "").encode() + b"\n")
        finally:
            os.close(stdin_write)
        # FreeRDP logs through stdio: a pty makes its output line-buffered, so the connection
        # hears of each state as it happens.
        master, slave = os.openpty()
        try:
            child = _Child.spawn(XFREERDP, argv, stdin=stdin_read, stdout=slave, stderr=slave,
                                 env=_child_environment(work, display), cwd=work)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(stdin_read)
            os.close(slave)
        return child, master

    def _known_hosts(self, work: Path) -> Path:
        return work / "config" / "freerdp" / "known_hosts2"

    def _write_known_certificate(self, work: Path) -> None:
        path = self._known_hosts(work)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # FreeRDP's line: host port fingerprint subject issuer (the last two base64, shown only
        # in prompts, which FreeRDP never makes here)
        label = base64.b64encode(b"recorded by cosession").decode()
        path.write_text(f"{self._host.lower()} {self._port} {self._known_certificate} {label} {label}\n")

    def _record_certificate(self, attempt: _Attempt, work: Path) -> None:
        """First use: the fingerprint FreeRDP accepted and wrote to its store, if it did."""
        if self._known_certificate is not None:
            return
        try:
            lines = self._known_hosts(work).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == self._host.lower() and fields[1] == str(self._port):
                try:
                    fingerprint = certificate_fingerprint(fields[2])
                except ValueError:
                    continue
                self._known_certificate = fingerprint  # pinned for this connection's retries
                log.info("rdp %s: certificate SHA-256 %s accepted on first use", self.where, fingerprint)
                if self._on_certificate is not None and not attempt.closed:
                    try:
                        self._on_certificate(fingerprint)
                    except Exception:
                        log.exception("rdp %s: on_certificate failed", self.where)
                return

    def _certificate_changed(self, attempt: _Attempt, run: FreeRdpRun) -> None:
        if run.changed_fingerprint is None or self._on_certificate_changed is None or attempt.closed:
            return
        try:
            self._on_certificate_changed(run.changed_fingerprint)
        except Exception:
            log.exception("rdp %s: on_certificate_changed failed", self.where)


def _check_credentials(credentials: Credentials) -> None:
    """FreeRDP reads the password as one line and the user name from a `.rdp` file line."""
    for what, value in (("user name", credentials.username), ("password", credentials.password or "")):
        if any(ch in value for ch in "\r\n\0"):
            raise ValueError(f"an RDP {what} cannot contain a line break or a NUL character")
    if len((credentials.password or "").encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"an RDP password is at most {MAX_PASSWORD_BYTES} bytes long here")


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _split(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """(what must propagate, the failure to report) of what ended an attempt. A child's
    `_Ended`/`_Failure` wins over the cancellations it caused."""
    leaves = _leaves(exc)
    failures = [leaf for leaf in leaves if isinstance(leaf, Exception)]
    ours = [leaf for leaf in failures if isinstance(leaf, (_Ended, _Failure))]
    failure = (ours or failures or [None])[0]
    others = [leaf for leaf in leaves if not isinstance(leaf, Exception)]
    if not others:
        return None, failure
    if isinstance(exc, BaseExceptionGroup):
        propagate, _ = exc.split(lambda e: not isinstance(e, Exception))
        return propagate, failure
    return exc, None

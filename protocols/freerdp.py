"""What cosession knows about FreeRDP's X11 client, `xfreerdp` (Debian freerdp2-x11, 2.x): the
options it runs with, how the password reaches it, what its output and exit status mean, and
its certificate store.

- **Options** (`freerdp_options`): full-screen on its display (`/f`; without a window manager
  the window covers it), `-toggle-fullscreen` (Ctrl-Alt-Enter reaches the server),
  `/from-stdin:force` (the password on standard input, read byte by byte before connecting),
  `/cert:tofu,deny`, sound off, the clipboard channel and a drive only when allowed, a security
  layer only when one is insisted on. It logs at WARN, and at DEBUG the two tags that tell the
  connection's progress.
- **Output** (`FreeRdpRun.note`): the furthest connection state reached (ACTIVE means
  connected), the negotiated security layer, a security negotiation error, the fingerprint of a
  certificate refused because it changed.
- **Exit status** (`describe_exit`): xfreerdp's codes (client/X11/xfreerdp.h), among them the
  server's own disconnect reasons (1-12), become `ServerEnded` (the server ended the session:
  logoff, another login, an administrator) or `AttemptFailed` (retryable or not), each with a
  detail written for the user.
- **Certificates**: FreeRDP keeps accepted certificates in `XDG_CONFIG_HOME/freerdp/known_hosts2`
  (`host port fingerprint subject issuer`); `write_known_certificate` pins one there and
  `accepted_certificate` reads back the one FreeRDP accepted on first use.
"""

from __future__ import annotations

import base64
import collections
import logging
import os
import re
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import trio

from engine import Credentials
from protocols.xvnc import Child, XvncDisplay

log = logging.getLogger(__name__)

XFREERDP = "xfreerdp"
DRIVE_NAME = "cosession"  # the redirected folder's name on the RDP server ("\\tsclient\cosession")
MIN_SIZE = (200, 200)
MAX_SIZE = (8192, 8192)
MAX_PASSWORD_BYTES = 511  # FreeRDP reads at most this many from its standard input
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
_OUTPUT_TAIL = 40  # warnings kept to explain an exit
_MAX_LINE = 4096  # longer output lines are cut



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


def certificate_fingerprint(value: str) -> str:
    """A certificate fingerprint as FreeRDP writes it (SHA-256, lowercase hex pairs with colons);
    ValueError for anything else."""
    text = value.strip().lower()
    if not _FINGERPRINT.match(text):
        raise ValueError("not an SHA-256 certificate fingerprint (32 hex pairs separated by colons)")
    return text


class AttemptFailed(Exception):
    """The attempt failed; the detail is written for the user (and safe to show)."""

    def __init__(self, detail: str, retryable: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable


class ServerEnded(Exception):
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


def describe_exit(run: FreeRdpRun, where: str, username: str, was_active: bool) -> AttemptFailed | ServerEnded:
    """Why xfreerdp's run ended, for the user: `ServerEnded` when the server ended the session on
    purpose, else a `AttemptFailed` that says whether another attempt may help."""
    code = run.returncode
    who = username or "(no user name)"
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return AttemptFailed(f"the RDP client for {where} was killed by {name}", True)
    if code in _SERVER_ENDED and (code != 0 or was_active):
        return ServerEnded(_SERVER_ENDED[code])
    if run.changed_fingerprint is not None:
        return AttemptFailed(f"the certificate of {where} changed (now SHA-256 {run.changed_fingerprint}); "
                        "an administrator must accept the new certificate", False)
    if code in _AUTH_FAILED:
        return AttemptFailed(f"authentication failed for user {who}", False)
    if code == 159:
        return AttemptFailed(f"{where} requires a user name and password", False)
    if code in _FINAL:
        return AttemptFailed(f"{_FINAL[code]} (user {who} on {where})", False)
    if code in _LICENSE:
        return AttemptFailed(f"licensing with {where} failed (FreeRDP status {code})", False)
    if code in (133, 146) or run.nego_error is not None:
        why = _NEGO_ERRORS.get(run.nego_error or "", "the server and the gateway share no security layer")
        return AttemptFailed(f"security negotiation with {where} failed: {why}", False)
    if not was_active and run.furthest == "NLA":
        # FreeRDP's shadow server and some others just close the connection on a wrong
        # password, after the credentials were sent: say so, and do not retry a bad password.
        return AttemptFailed(f"authentication failed for user {who} ({where} closed the connection "
                        "during network level authentication)", False)
    if code == 143:
        return AttemptFailed(f"the TLS handshake with {where} failed", True)
    if code in (139, 140):
        return AttemptFailed(f"cannot resolve the RDP server {where}", True)
    if was_active:
        return AttemptFailed(f"connection to {where} lost", True)
    if code == 128:
        return AttemptFailed("the RDP client refused its arguments (see the gateway's log)", False)
    return AttemptFailed(f"the RDP connection to {where} failed during {stage(run)} (FreeRDP status {code})", True)


def stage(run: FreeRdpRun) -> str:
    """The furthest state the connection reached, in words."""
    return run.furthest.lower().replace("_", " ")


def freerdp_options(host: str, port: int, options: RdpOptions, drive: str | None = None) -> list[str]:
    """xfreerdp's options for a session (bench/rdp_websocket.py runs its direct clients with the
    same ones); `drive`: the folder to redirect, when the profile allows one."""
    address = f"[{host}]" if ":" in host else host
    argv = [
        f"/v:{address}:{port}", "/f", "-toggle-fullscreen", "-decorations",
        "/from-stdin:force", "/cert:tofu,deny", "/log-level:WARN", f"/log-filters:{_LOG_FILTERS}",
        "+clipboard" if options.clipboard else "-clipboard",
        "/audio-mode:2",  # never play sound (there is nobody to hear it)
    ]
    if options.security:
        argv.append(f"/sec:{options.security}")
    if drive:
        argv.append(f"/drive:{DRIVE_NAME},{drive}")
    return argv


# --- FreeRDP's certificate store --------------------------------------------------------------------


def known_hosts(config_home: Path) -> Path:
    return config_home / "freerdp" / "known_hosts2"


def write_known_certificate(config_home: Path, host: str, port: int, fingerprint: str) -> None:
    """Pin `fingerprint` for host:port in FreeRDP's store (subject and issuer, shown only in
    prompts that FreeRDP never makes here, are a label)."""
    path = known_hosts(config_home)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    label = base64.b64encode(b"recorded by cosession").decode()
    path.write_text(f"{host.lower()} {port} {certificate_fingerprint(fingerprint)} {label} {label}\n")


def accepted_certificate(config_home: Path, host: str, port: int) -> str | None:
    """The fingerprint FreeRDP wrote for host:port (on first use), if it wrote one."""
    try:
        lines = known_hosts(config_home).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[0] == host.lower() and fields[1] == str(port):
            try:
                return certificate_fingerprint(fields[2])
            except ValueError:
                continue
    return None


def check_credentials(credentials: Credentials) -> None:
    """FreeRDP reads the password as one line and the user name from a `.rdp` file line."""
    for what, value in (("user name", credentials.username), ("password", credentials.password or "")):
        if any(ch in value for ch in "\r\n\0"):
            raise ValueError(f"an RDP {what} cannot contain a line break or a NUL character")
    if len((credentials.password or "").encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"an RDP password is at most {MAX_PASSWORD_BYTES} bytes long here")


def freerdp_environment(work: Path, display: XvncDisplay) -> dict[str, str]:
    """xfreerdp's whole environment, built rather than inherited, so that nothing of the
    gateway's own (its keys, its settings) reaches it: its home and configuration (its
    certificate store) in the attempt's directory, no certificate authorities (every server's
    certificate is pinned on first use), the display and its cookie."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work / "home"),
        "XDG_CONFIG_HOME": str(work / "config"),
        "LANG": "C.UTF-8",
        "SSL_CERT_DIR": str(work / "certs"),
        "SSL_CERT_FILE": str(work / "certs" / "none.pem"),
        "DISPLAY": display.name,
        "XAUTHORITY": display.xauthority,
    }


class WorkingDirectory:
    """An attempt's private directory (0700): the display's files, xfreerdp's home,
    configuration (its certificate store) and empty certificate directory, the `.rdp` file, and
    the redirected folder when the profile allows one. Removed with everything in it at the end."""

    def __init__(self, drive: bool) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="cosession-rdp-"))
        for sub in ("home", "config", "certs") + (("drive",) if drive else ()):
            (self.path / sub).mkdir(mode=0o700)

    def remove(self) -> None:
        def report(function: object, path: str, exc_info: object) -> None:
            log.warning("rdp: could not remove %s from a session's working directory", path)

        shutil.rmtree(self.path, onerror=report)


def start_freerdp(work: Path, display: XvncDisplay, host: str, port: int, options: RdpOptions,
                  credentials: Credentials) -> tuple[Child, int]:
    """xfreerdp on `display`; returns it and the reading end of its output (a pty)."""
    argv = [XFREERDP]
    if credentials.username:
        rdp_file = work / "connection.rdp"
        fd = os.open(rdp_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"username:s:{credentials.username}\n")
        argv.append(str(rdp_file))
    argv += freerdp_options(host, port, options, str(work / "drive") if options.drive else None)
    # The password goes into a pipe, closed before xfreerdp starts: FreeRDP reads it byte by
    # byte from its standard input (/from-stdin:force) before connecting.
    stdin_read, stdin_write = os.pipe()
    try:
        os.write(stdin_write, (credentials.password or "").encode() + b"\n")
    finally:
        os.close(stdin_write)
    # FreeRDP logs through stdio: a pty makes its output line-buffered, so that each state is
    # heard of as it happens.
    master, slave = os.openpty()
    try:
        child = Child.spawn(XFREERDP, argv, stdin=stdin_read, stdout=slave, stderr=slave,
                            env=freerdp_environment(work, display), cwd=work)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(stdin_read)
        os.close(slave)
    return child, master


async def read_output(output_fd: int, run: FreeRdpRun, on_active: Callable[[], None], where: str) -> list[str]:
    """xfreerdp's output until it ends (every writer of its pty gone), noted in `run`;
    `on_active()` when it says its connection is active. Returns its last warnings."""
    tail: collections.deque[str] = collections.deque(maxlen=_OUTPUT_TAIL)
    pending = bytearray()
    async with trio.lowlevel.FdStream(output_fd) as output:
        while True:
            try:
                chunk = await output.receive_some(65536)
            except trio.BrokenResourceError:  # EIO: the pty's other side has closed
                chunk = b""
            if not chunk:
                return list(tail)
            pending += chunk
            *lines, rest = pending.split(b"\n")
            pending = bytearray(rest[-_MAX_LINE:])
            for raw in lines:
                line = raw[:_MAX_LINE].decode(errors="replace").rstrip("\r")
                if run.note(line):
                    on_active()
                if "[WARN]" in line or "[ERROR]" in line or "[FATAL]" in line:
                    tail.append(line)
                    log.debug("rdp %s: freerdp: %s", where, line)

"""SSH endpoint connection: asyncssh on the gateway's trio loop, through trio-asyncio.

Everything that knows about asyncssh or trio-asyncio lives in this module (and in the demo
server, `protocols.demo_ssh`), so that trio-asyncio can be replaced without touching anything
else. See docs/ssh.md for the design.

Threads: `open`, `send_input`, `resize` and `close` are called from an actor thread. They only
schedule work onto the trio loop through the `LoopBridge` and return at once. Everything else
runs on the loop: one connection task per attempt (each `open` is one attempt), which owns an
asyncio loop of its own (`trio_asyncio.open_loop()`), the asyncssh connection, the shell
channel and a writer task fed by a bounded trio memory channel.

Reports go to `EndpointEvents` (tells, never blocking) under a per-attempt lock, so that once
`close()` has returned nothing more is reported. Terminal data stays bytes end to end.

Output is flow-controlled: when `EndpointEvents.output` answers that the endpoint actor is
behind, the shell channel stops reading (asyncssh's `pause_reading`: the SSH window is not
reopened, so sshd stops sending and the program writing to the PTY waits) until the actor has
caught up and calls the resume it was given; the resume comes back to the loop through the
bridge. Nothing waits on the loop meanwhile.

Credentials are used here and nowhere else: never logged, never in a reported detail, never in
a repr.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import socket
import threading
import posixpath
import stat as stat_module
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import asyncssh
import trio
import trio_asyncio

from engine import Credentials, EndpointEvents, LoopBridge, LoopClosed
from protocols.attempts import Attempt, AttemptConnection, InputQueue

log = logging.getLogger(__name__)

INPUT_QUEUE_CHUNKS = 512  # input chunks waiting for the endpoint; more are dropped, never waited for
OUTPUT_CHUNK = 64 * 1024  # output packets that arrive together are reported as one chunk up to this
_CLOSE_GRACE = 2.0  # seconds to let a closing connection say goodbye before it is abandoned
# Host key algorithms offered on first use, in OpenSSH's order: plain keys only (a host
# certificate would need a trusted CA, and it is the key that is recorded and pinned). Once a
# key is pinned, asyncssh offers only that key's own algorithms.
_FIRST_USE_HOST_KEY_ALGS = (
    "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa",
)
# Ciphers in the gateway's order of preference (the client's order decides). AES-GCM first:
# asyncssh decrypts each packet with one call into OpenSSL, about 15 us for the 4 KiB packets
# OpenSSH sends from a PTY, where its chacha20-poly1305 (asyncssh's default first choice) builds
# three cipher objects and a Poly1305 in Python per packet, about 100 us: most of the gateway's
# CPU for a terminal's bulk output, on the loop that sends every websocket (docs/ssh.md).
# The rest as asyncssh's defaults, for a server without AES-GCM.
ENCRYPTION_ALGS = (
    "aes256-gcm@openssh.com", "aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com",
    "aes256-ctr", "aes192-ctr", "aes128-ctr",
)


# --- host keys ------------------------------------------------------------------------------


def _key_parts(openssh_key: str) -> tuple[str, bytes]:
    """(algorithm, blob) of a public key in OpenSSH format: `TYPE BASE64 [COMMENT]`."""
    parts = openssh_key.split()
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key (expected 'TYPE BASE64 [COMMENT]')")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not an OpenSSH public key (bad base64)") from None
    return parts[0], blob


def fingerprint(openssh_key: str) -> str:
    """The SHA256 fingerprint of an OpenSSH public key, as `ssh-keygen -l` prints it."""
    _, blob = _key_parts(openssh_key)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _openssh_text(key: asyncssh.SSHKey) -> str:
    """`TYPE BASE64` of a public key, without a comment."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


# --- one attempt ----------------------------------------------------------------------------


class _Failure(Exception):
    """A failure whose detail is already written for the user (and safe to show)."""

    def __init__(self, detail: str, retryable: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable


# --- files: SFTP over the session's own connection ----------------------------------------


FILE_QUEUE = 8  # file operations waiting for the SFTP client; more are refused, never waited for
FILE_CHUNK = 256 * 1024  # what one read or write moves (a download streams in these)


MAX_PATH = 1024  # characters of a path inside the home folder


class RemoteFileError(Exception):
    """A file operation the server refused or that could not run; the text says why (it
    names no credential: it is the SFTP server's message, or ours)."""


def home_path(raw: str) -> str:
    """`raw` as a path inside the home folder, as SFTP resolves it from there ('' is the home
    folder itself). ValueError, saying why, for an absolute path, a parent folder ('..'), a NUL
    or more than MAX_PATH characters: every file operation's path is checked with this, where
    the request is read and again on the node that runs the session."""
    if len(raw) > MAX_PATH or "\x00" in raw or raw.startswith("/"):
        raise ValueError(f"a path inside your home folder, at most {MAX_PATH} characters")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("a path may not go up a folder ('..')")
    return "/".join(parts)


@dataclass(frozen=True, slots=True)
class RemoteFile:
    name: str
    size: int
    is_dir: bool
    modified: float


class _FileRequest:
    """One file operation for `SshConnection._serve_files`: an asyncio coroutine function of
    the SFTP client, its result or error, and the event its caller waits on."""

    __slots__ = ("operation", "done", "result", "error")

    def __init__(self, operation: Callable[[Any], Awaitable[Any]]) -> None:
        self.operation = operation
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class _Attempt(Attempt):
    """State of one `open()`: its input queue, its shell channel and its file requests.

    `report` (protocols.attempts.Attempt) is the only way anything reaches `events`; it holds
    `lock` while telling, and `close` takes the same lock, so a report never follows a `close()`
    that has returned.
    """

    protocol = "ssh"

    def __init__(self, events: EndpointEvents, cols: int, rows: int) -> None:
        super().__init__(events)
        self.input = InputQueue("ssh", INPUT_QUEUE_CHUNKS)
        self.size = (cols, rows)
        self.channel: Any = None  # the asyncssh shell channel, once open (loop only)
        self.shell: _Shell | None = None  # its callbacks, once open (loop only)
        self.queued = 0  # input chunks taken into the input queue and not yet written to the channel
        self.server_key: asyncssh.SSHKey | None = None
        self.mismatched_key: asyncssh.SSHKey | None = None
        # file operations (SFTP over this attempt's connection), served inside its asyncio loop
        self.files_send, self.files_recv = trio.open_memory_channel[_FileRequest](FILE_QUEUE)

    def feed(self, data: bytes) -> None:
        """On the loop: the controller's input, to the channel at once or through the queue."""
        if not self.queued and self._write_now(data):
            return
        if self.input.offer(data):
            self.queued += 1

    def _write_now(self, data: bytes) -> bool:
        """Write `data` to the shell channel at once if nothing waits ahead of it and the channel
        takes it; False: queue it for the writer task. A keystroke written here reaches the
        endpoint in this pass of the event loop instead of after the writer task's wake in the
        next one: under an anonymous flood each pass a keystroke waits for can be a busy one
        (docs/benchmarks.md, "An anonymous flood at the edge")."""
        shell, channel = self.shell, self.channel
        if shell is None or channel is None or not shell.can_write.is_set() or shell.error is not None:
            return False
        try:
            if channel.is_closing():
                return False
            channel.write(data)
        except Exception:  # the channel is failing: the writer task meets it and reports it
            return False
        return True

    def apply_size(self) -> None:
        channel = self.channel
        if channel is None:
            return  # the shell is not open yet; it will be opened with self.size
        try:
            channel.change_terminal_size(*self.size)
        except Exception as exc:  # the channel may be closing
            log.debug("ssh: terminal resize not sent: %s", type(exc).__name__)


class _Client(asyncssh.SSHClient):
    """Checks the server's host key during key exchange, before any credential is sent."""

    def __init__(self, attempt: _Attempt, known_key: str | None) -> None:
        self._attempt = attempt
        self._known_blob = _key_parts(known_key)[1] if known_key else None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        # Only called for keys not already trusted; with a pinned key that means a mismatch.
        if self._known_blob is None:
            self._attempt.server_key = key
            return True
        if key.public_data == self._known_blob:  # pragma: no cover - asyncssh trusts it first
            self._attempt.server_key = key
            return True
        self._attempt.mismatched_key = key
        return False


class _Shell(asyncssh.SSHClientSession):
    """The shell channel's callbacks (on the loop, in asyncio context)."""

    def __init__(self, attempt: _Attempt, opened_detail: str, loop: Any, bridge: LoopBridge) -> None:
        self._attempt = attempt
        self._opened_detail = opened_detail
        self._loop = loop
        self._bridge = bridge
        self._channel: Any = None
        self._pending = bytearray()
        self._flush_scheduled = False
        self._paused = False
        self.pauses = 0  # how often the endpoint actor was behind and reading paused
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.error: Exception | None = None
        self.can_write = trio.Event()
        self.can_write.set()

    def connection_made(self, chan: Any) -> None:
        self._channel = chan

    def session_started(self) -> None:
        # here, not once create_session returns: asyncssh starts delivering data before that
        self._attempt.report("opened", self._opened_detail)

    def data_received(self, data: bytes, datatype: Any) -> None:
        # asyncssh hands over one SSH packet at a time (OpenSSH sends 4 KiB ones from a PTY);
        # the packets of one socket read are reported together: fewer, larger frames.
        self._pending += data
        if len(self._pending) >= OUTPUT_CHUNK:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            data = bytes(self._pending)
            self._pending.clear()
            if self._attempt.report("output", data, self._resume_soon) is False:
                self._pause()

    def _pause(self) -> None:
        """The endpoint actor is behind: read nothing more until it calls `_resume_soon`."""
        if self._paused or self._channel is None:
            return
        self._paused = True
        self.pauses += 1
        self._channel.pause_reading()

    def _resume_soon(self) -> None:
        """From the endpoint actor's thread: back onto the loop, into asyncio's context."""
        try:
            self._bridge.call_soon(self._resume_in_asyncio)
        except LoopClosed:
            pass

    def _resume_in_asyncio(self) -> None:
        try:
            self._loop.call_soon(self._resume)
        except RuntimeError:  # the attempt's asyncio loop is closed: nothing left to resume
            pass

    def _resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        try:
            # also when closing: data received before the endpoint's close is still delivered
            self._channel.resume_reading()
        except Exception as exc:  # the connection is gone
            log.debug("ssh: resume after the end: %s", type(exc).__name__)

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = signal

    def connection_lost(self, exc: Exception | None) -> None:
        self.flush()
        self.error = exc
        self.can_write.set()  # let the writer notice the end

    def pause_writing(self) -> None:
        self.can_write = trio.Event()

    def resume_writing(self) -> None:
        self.can_write.set()


# --- the connection -------------------------------------------------------------------------


class SshConnection(AttemptConnection):
    """An interactive shell on an SSH endpoint, as an `EndpointConnection`."""

    def __init__(self, bridge: LoopBridge, host: str, port: int, credentials: Credentials, *,
                 known_host_key: str | None, on_host_key: Callable[[str], None] | None = None,
                 on_host_key_changed: Callable[[str], None] | None = None,
                 connect_timeout: float = 10.0, keepalive_interval: float = 15.0,
                 keepalive_count_max: int = 3, term_type: str = "xterm-256color") -> None:
        if known_host_key is not None:
            _key_parts(known_host_key)  # refuse a malformed pin now, not at connect time
        self._bridge = bridge
        self._host = host
        self._port = port
        self._credentials = credentials
        self._known_host_key = known_host_key
        self._on_host_key = on_host_key
        self._on_host_key_changed = on_host_key_changed
        self._connect_timeout = connect_timeout
        self._keepalive_interval = keepalive_interval
        self._keepalive_count_max = keepalive_count_max
        self._term_type = term_type
        self._lock = threading.Lock()
        self._attempt: _Attempt | None = None
        self._closed = False
        self._client_key: asyncssh.SSHKey | None = None  # the imported private key, kept for retries

    @property
    def where(self) -> str:
        return f"{self._host}:{self._port}"

    def __repr__(self) -> str:
        return f"SshConnection({self._credentials.username}@{self.where})"

    # --- the EndpointConnection contract (called from actor threads) -------------------------

    def open(self, events: EndpointEvents, cols: int, rows: int) -> None:
        self._begin(_Attempt(events, cols, rows))

    def send_input(self, data: bytes) -> None:
        attempt = self._attempt
        if attempt is None or attempt.closed or not data:
            return
        try:
            self._bridge.call_soon(attempt.feed, bytes(data))
        except LoopClosed:
            log.debug("ssh %s: input dropped, loop closed", self.where)

    def resize(self, cols: int, rows: int) -> None:
        attempt = self._attempt
        if attempt is None or attempt.closed:
            return
        attempt.size = (cols, rows)
        try:
            self._bridge.call_soon(attempt.apply_size)
        except LoopClosed:
            pass

    # --- on the loop -------------------------------------------------------------------------

    async def _run(self, attempt: _Attempt) -> None:
        """One attempt, from connect to the shell's end. Lets no exception out but the
        bridge's own cancellation: an exception here would take the gateway down."""
        try:
            with attempt.scope:
                async with trio_asyncio.open_loop() as loop:
                    await self._session(attempt, loop)
        except BaseException as exc:
            cancelled, failure = _split_cancelled(exc)
            if failure is not None:
                self._report_failure(attempt, failure)
            if cancelled is not None:
                raise cancelled from None
        finally:
            attempt.channel = None
            attempt.shell = None
            attempt.input.receive_channel.close()

    async def _session(self, attempt: _Attempt, loop: Any) -> None:
        client_key = await self._load_client_key()
        creds = self._credentials
        known = self._known_host_key
        # an SSHKey, never the text: asyncssh would take a string for a file name
        trusted = [asyncssh.import_public_key(known)] if known else []
        conn = None
        try:
            conn = await trio_asyncio.aio_as_trio(asyncssh.connect)(
                self._host, self._port,
                client_factory=lambda: _Client(attempt, known),
                known_hosts=(trusted, [], []),
                server_host_key_algs=() if known else _FIRST_USE_HOST_KEY_ALGS,
                encryption_algs=ENCRYPTION_ALGS,
                username=creds.username,
                password=creds.password or None,
                client_keys=[client_key] if client_key is not None else None,
                # nothing from the gateway's own account: no ~/.ssh/config, keys, agent, CAs
                config=None, agent_path=None, x509_trusted_certs=None,
                gss_auth=False, gss_kex=False, host_based_auth=False,
                connect_timeout=self._connect_timeout,
                keepalive_interval=self._keepalive_interval,
                keepalive_count_max=self._keepalive_count_max,
            )
            self._record_host_key(attempt, conn)
            version = conn.get_extra_info("server_version") or "SSH server"
            shell = _Shell(attempt, f"{creds.username}@{self.where} ({version})", loop, self._bridge)

            opened_size = attempt.size
            channel, _ = await trio_asyncio.aio_as_trio(conn.create_session)(
                lambda: shell, term_type=self._term_type, term_size=opened_size, encoding=None)
            attempt.channel, attempt.shell = channel, shell
            if attempt.size != opened_size:  # a resize came while the channel was opening
                attempt.apply_size()
            log.info("ssh %s: shell open for %s (%s, cipher %s)", self.where, creds.username, version,
                     conn.get_extra_info("recv_cipher"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_input, attempt, channel, shell)
                nursery.start_soon(self._serve_files, attempt, conn)
                await trio_asyncio.aio_as_trio(channel.wait_closed)()
                nursery.cancel_scope.cancel()

            shell.flush()
            if shell.error is not None:
                raise shell.error
            if shell.exit_signal is not None:
                detail = f"remote shell ended by signal {shell.exit_signal}"
            elif shell.exit_status is not None:
                detail = f"remote shell exited with status {shell.exit_status}"
            else:
                detail = "remote shell closed the session"
            log.info("ssh %s: %s", self.where, detail)
            attempt.report("closed", detail)
        except asyncssh.PermissionDenied:
            self._record_host_key(attempt, None)  # the key exchange completed
            raise
        except asyncssh.KeyExchangeFailed:
            if known and attempt.mismatched_key is None:
                # the server no longer has a key of the pinned key's type: find out what it has
                attempt.mismatched_key = await self._probe_host_key(known)
            raise
        finally:
            if conn is not None:
                conn.close()
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + _CLOSE_GRACE
                    await trio_asyncio.aio_as_trio(conn.wait_closed)()
                if scope.cancelled_caught:
                    conn.abort()

    async def _write_input(self, attempt: _Attempt, channel: Any, shell: _Shell) -> None:
        async for data in attempt.input.receive_channel:
            await shell.can_write.wait()  # the endpoint's window is full: let the queue fill
            if shell.error is not None or channel.is_closing():
                return
            channel.write(data)
            attempt.queued -= 1

    async def _serve_files(self, attempt: _Attempt, conn: Any) -> None:
        """File operations, one at a time, inside this attempt's asyncio loop (where asyncssh
        lives): the SFTP client starts on the first one, on the same authenticated connection
        as the shell. Its errors go back to the caller, never out of the session."""
        sftp = None
        try:
            async for request in attempt.files_recv:
                try:
                    if sftp is None:
                        sftp = await trio_asyncio.aio_as_trio(conn.start_sftp_client)()
                    request.result = await trio_asyncio.aio_as_trio(request.operation)(sftp)
                except (asyncssh.Error, OSError) as exc:
                    request.error = RemoteFileError(_sftp_reason(exc))
                except Exception as exc:  # noqa: BLE001 - a file operation never ends the session
                    log.warning("ssh %s: file operation failed: %s", self.where, type(exc).__name__)
                    request.error = RemoteFileError("the file operation failed")
                finally:
                    request.done.set()
        finally:
            if sftp is not None:
                sftp.exit()
            for request in _drain(attempt.files_recv):
                request.error = RemoteFileError("the connection to the endpoint ended")
                request.done.set()
            attempt.files_recv.close()  # a later request is refused at once, never left waiting

    async def _file_operation(self, operation: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run `operation(sftp)` on this session's connection; called on the trio loop."""
        attempt = self._attempt
        if attempt is None or attempt.closed or attempt.channel is None:
            raise RemoteFileError("the endpoint is not connected")
        request = _FileRequest(operation)
        try:
            attempt.files_send.send_nowait(request)
        except trio.WouldBlock:
            raise RemoteFileError("too many file operations at once; try again") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RemoteFileError("the endpoint is not connected") from None
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    # the file operations (paths relative to the user's home folder, checked by the caller)

    async def list_folder(self, path: str) -> list[RemoteFile]:
        async def run(sftp: Any) -> list[RemoteFile]:
            found = []
            for entry in await sftp.readdir(path or "."):
                if entry.filename in (".", ".."):
                    continue
                attrs = entry.attrs
                found.append(RemoteFile(entry.filename, attrs.size or 0,
                                        stat_module.S_ISDIR(attrs.permissions or 0), float(attrs.mtime or 0)))
            return sorted(found, key=lambda f: (not f.is_dir, f.name))
        return await self._file_operation(run)

    async def make_folder(self, path: str) -> None:
        async def run(sftp: Any) -> None:
            await sftp.mkdir(path)
        await self._file_operation(run)

    async def delete(self, path: str) -> None:
        """A file, or an empty folder."""
        async def run(sftp: Any) -> None:
            if await sftp.isdir(path):
                await sftp.rmdir(path)
            else:
                await sftp.remove(path)
        await self._file_operation(run)

    async def write_chunk(self, path: str, offset: int, data: bytes) -> None:
        """Write `data` at `offset`; offset 0 creates (or empties) the file."""
        async def run(sftp: Any) -> None:
            async with sftp.open(path, "wb" if offset == 0 else "r+b") as f:
                await f.write(data, offset)
        await self._file_operation(run)

    async def read_chunk(self, path: str, offset: int, size: int = FILE_CHUNK) -> bytes:
        async def run(sftp: Any) -> bytes:
            async with sftp.open(path, "rb") as f:
                return await f.read(size, offset)
        return await self._file_operation(run)

    async def file_digest(self, path: str) -> tuple[int, str]:
        """The size and SHA-256 (hex) of a file as the server stores it, read in one operation."""
        async def run(sftp: Any) -> tuple[int, str]:
            digest, size = hashlib.sha256(), 0
            async with sftp.open(path, "rb") as f:
                while True:
                    data = await f.read(FILE_CHUNK, size)
                    if not data:
                        return size, digest.hexdigest()
                    digest.update(data)
                    size += len(data)
        return await self._file_operation(run)

    async def make_executable(self, path: str) -> None:
        async def run(sftp: Any) -> None:
            await sftp.chmod(path, 0o755)
        await self._file_operation(run)

    async def file_size(self, path: str) -> int:
        """The size of a regular file (refused for a folder)."""
        async def run(sftp: Any) -> int:
            attrs = await sftp.stat(path)
            if not stat_module.S_ISREG(attrs.permissions or 0):
                raise asyncssh.SFTPFailure(f"{posixpath.basename(path)} is not a file")
            return attrs.size or 0
        return await self._file_operation(run)

    async def _load_client_key(self) -> asyncssh.SSHKey | None:
        creds = self._credentials
        if not creds.private_key:
            return None
        if self._client_key is None:
            try:
                # decrypting a key runs a deliberately slow KDF: keep it off the loop
                self._client_key = await trio.to_thread.run_sync(
                    asyncssh.import_private_key, creds.private_key, creds.passphrase or None)
            except (asyncssh.KeyImportError, ValueError, TypeError) as exc:
                # asyncssh's messages are fixed texts; still, none of them is passed on as is
                reason = str(exc)
                if "bcrypt" in reason:
                    detail = ("the private key is in OpenSSH's encrypted format, which needs the "
                              "'bcrypt' package on the gateway")
                elif "Passphrase must be specified" in reason:
                    detail = "the private key is encrypted and no passphrase was given"
                else:
                    detail = "the private key could not be read (wrong passphrase or not a supported private key)"
                raise _Failure(detail, retryable=False) from None
        return self._client_key

    async def _probe_host_key(self, known: str) -> asyncssh.SSHKey | None:
        """The server's current host key, from a key exchange without authentication."""
        try:
            with trio.move_on_after(self._connect_timeout):
                key = await trio_asyncio.aio_as_trio(asyncssh.get_server_host_key)(
                    self._host, self._port, config=None, server_host_key_algs=_FIRST_USE_HOST_KEY_ALGS)
                if key is not None and key.public_data != _key_parts(known)[1]:
                    return key
        except Exception as exc:
            log.debug("ssh %s: host key probe failed: %s", self.where, type(exc).__name__)
        return None

    def _record_host_key(self, attempt: _Attempt, conn: Any) -> None:
        if self._known_host_key is not None:
            return
        key = attempt.server_key or (conn.get_server_host_key() if conn is not None else None)
        if key is None:
            return
        text = _openssh_text(key)
        # pin it for this connection's retries; the caller records it for the endpoint
        self._known_host_key = text
        log.info("ssh %s: host key %s accepted on first use", self.where, fingerprint(text))
        if self._on_host_key is not None and not attempt.closed:
            try:
                self._on_host_key(text)
            except Exception:
                log.exception("ssh %s: on_host_key failed", self.where)

    def _host_key_changed(self, attempt: _Attempt, key: asyncssh.SSHKey) -> None:
        if self._on_host_key_changed is None or attempt.closed:
            return
        try:
            self._on_host_key_changed(_openssh_text(key))
        except Exception:
            log.exception("ssh %s: on_host_key_changed failed", self.where)

    def _report_failure(self, attempt: _Attempt, exc: BaseException) -> None:
        detail, retryable, unexpected = self._describe(attempt, exc)
        if attempt.mismatched_key is not None:
            self._host_key_changed(attempt, attempt.mismatched_key)
        if unexpected:
            log.error("ssh %s: %s", self.where, detail, exc_info=exc)
        else:
            log.warning("ssh %s: %s (%s)", self.where, detail, "retryable" if retryable else "final")
        attempt.report("failed", detail, retryable)

    def _describe(self, attempt: _Attempt, exc: BaseException) -> tuple[str, bool, bool]:
        """(detail, retryable, unexpected). Details name the endpoint and never a secret."""
        where = self.where
        if isinstance(exc, _Failure):
            return exc.detail, exc.retryable, False
        if attempt.mismatched_key is not None:
            expected = fingerprint(self._known_host_key or "")
            got = attempt.mismatched_key.get_fingerprint("sha256")
            return (f"host key of {where} changed (expected {expected}, got {got}); "
                    "an administrator must accept the new key", False, False)
        if isinstance(exc, asyncssh.PermissionDenied):
            return f"authentication failed for user {self._credentials.username}", False, False
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            return f"host key of {where} could not be verified", False, False
        if isinstance(exc, asyncssh.KeyExchangeFailed) and self._known_host_key is not None:
            return (f"key exchange with {where} failed; its host key may have changed "
                    f"(expected {fingerprint(self._known_host_key)})", False, False)
        if isinstance(exc, asyncssh.ConnectionLost):
            if "keepalive" in str(exc).lower():
                return f"{where} stopped answering keepalives", True, False
            return f"connection to {where} lost", True, False
        if isinstance(exc, asyncssh.ProtocolNotSupported):
            return f"{where} speaks an unsupported SSH protocol version", False, False
        if isinstance(exc, asyncssh.DisconnectError):
            return f"{where} disconnected: {exc.reason}", True, False
        if isinstance(exc, ConnectionRefusedError):
            return f"connection to {where} refused", True, False
        if isinstance(exc, (TimeoutError, trio.TooSlowError)):
            return f"connection to {where} timed out after {self._connect_timeout:g} s", True, False
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve host {self._host}", True, False
        if isinstance(exc, OSError):
            return f"cannot connect to {where}: {exc.strerror or type(exc).__name__}", True, False
        return f"internal error in the SSH connection to {where} ({type(exc).__name__})", True, True


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _split_cancelled(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """(what must propagate, the first real failure) of what ended an attempt."""
    leaves = _leaves(exc)
    failures = [leaf for leaf in leaves if isinstance(leaf, Exception)]
    others = [leaf for leaf in leaves if not isinstance(leaf, Exception)]
    if not others:
        return None, failures[0] if failures else None
    if isinstance(exc, BaseExceptionGroup):
        propagate, _ = exc.split(lambda e: not isinstance(e, Exception))
        return propagate, failures[0] if failures else None
    return exc, None


def _drain(receive: Any) -> list[Any]:
    """What is left in a memory channel, without waiting."""
    left = []
    while True:
        try:
            left.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return left


def _sftp_reason(exc: BaseException) -> str:
    """An SFTP error as a short reason for the user (the server's own words when it gave some)."""
    if isinstance(exc, asyncssh.SFTPError):
        return exc.reason or "the server refused the file operation"
    if isinstance(exc, asyncssh.Error):
        return exc.reason or "the SSH connection refused the file operation"
    return "the file operation failed"

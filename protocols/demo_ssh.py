"""The demo endpoint: an SSH server on loopback that runs a real login shell in a real PTY.

`cosession serve` starts it so that a newcomer can try a joint session with nothing else
installed. It is asyncssh's SSH server on the trio loop through trio-asyncio (like
`protocols.ssh`, this module keeps asyncssh and trio-asyncio to itself), with one user, a
random password unless one is given, and an ephemeral Ed25519 host key.

Each session gets a pseudo-terminal (`pty.openpty()`), sized from the client's pty request and
resized on window-change (`TIOCSWINSZ` on the master, so the shell gets SIGWINCH); the shell is
the OS user's login shell (or `shell`), a session leader with the PTY as its controlling
terminal and `TERM` from the client. Bytes move both ways without decoding.

The shell runs as the gateway's own OS user: the demo is a convenience for trying cosession on
one machine, not something to leave on in production (`[demo] enabled = false`).

When the server is cancelled, every shell it started is killed (each shell's whole session,
found by its session id) and reaped before `serve_demo_ssh` returns.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pty
import pwd
import secrets
import signal
import struct
import sys
import termios
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import trio
import trio_asyncio

log = logging.getLogger(__name__)

_READ_CHUNK = 65536
_INPUT_HIGH_WATER = 256 * 1024  # stop reading the client's input while this much waits for the PTY
_STOP_GRACE = 2.0

# Run in the child before the shell: make the PTY (stdin) the controlling terminal of the new
# session (start_new_session made one), then become the shell. A separate tiny interpreter
# instead of `preexec_fn`, which is not safe in a process with threads (the actors).
_CTTY_SHIM = """
import fcntl, os, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
try:
    os.execvp(sys.argv[1], sys.argv[1:])
except OSError as exc:
    sys.stderr.write(f"demo ssh: cannot run {sys.argv[1]}: {exc.strerror}\\r\\n")
    sys.exit(127)
"""


@dataclass(frozen=True, repr=False)
class DemoSsh:
    """Where the demo server listens and how to log in to it."""

    host: str
    port: int
    username: str
    password: str
    host_key_openssh: str  # `TYPE BASE64`: trusted by whoever registers the demo endpoint

    def __repr__(self) -> str:
        return f"DemoSsh({self.username}@{self.host}:{self.port}, password=<hidden>)"


class _Demo:
    """State shared by the demo server's connections."""

    def __init__(self, username: str, password: str, shell: str | None) -> None:
        self.username = username.encode()
        self.password = password.encode()
        account = pwd.getpwuid(os.getuid())
        self.account = account
        self.shell = shell or account.pw_shell or "/bin/sh"
        self.nursery: trio.Nursery | None = None  # where shells run, while the server serves
        self.connections: set[Any] = set()


class _DemoServer(asyncssh.SSHServer):
    def __init__(self, demo: _Demo) -> None:
        self._demo = demo
        self._conn: Any = None

    def connection_made(self, conn: Any) -> None:
        self._conn = conn
        self._demo.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self._demo.connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        # both compared in constant time, whichever is wrong
        user_ok = secrets.compare_digest(username.encode(), self._demo.username)
        password_ok = secrets.compare_digest(password.encode(), self._demo.password)
        return user_ok and password_ok

    def session_requested(self) -> Any:
        return _DemoSession(self._demo)


class _DemoSession(asyncssh.SSHServerSession):
    """One shell in one PTY. Callbacks run on the loop in asyncio context; the shell's I/O runs
    in a trio task in the demo server's nursery."""

    def __init__(self, demo: _Demo) -> None:
        self._demo = demo
        self._chan: Any = None
        self._term = "xterm-256color"
        self._size = (80, 24)
        self._command: str | None = None
        self._master: int | None = None
        self._scope = trio.CancelScope()
        self._input_send, self._input_recv = trio.open_memory_channel[bytes](float("inf"))
        self._input_pending = 0
        self._reading_paused = False
        self._can_write = trio.Event()
        self._can_write.set()

    # --- asyncssh callbacks ------------------------------------------------------------------

    def connection_made(self, chan: Any) -> None:
        self._chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any) -> bool:
        self._term = term_type or self._term
        if term_size[0] > 0 and term_size[1] > 0:
            self._size = (term_size[0], term_size[1])
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command  # runs as `shell -c command`, in a PTY too
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        return False

    def session_started(self) -> None:
        nursery = self._demo.nursery
        try:
            if nursery is None:
                raise RuntimeError("the demo server is stopping")
            nursery.start_soon(self._run)
        except RuntimeError:
            self._chan.close()

    def data_received(self, data: bytes, datatype: Any) -> None:
        if not self._input_pending and self._master is not None:
            # nothing waits ahead of it: to the PTY now, not after the input pump's wake (a
            # keystroke's echo then waits for one pass of the event loop less)
            try:
                data = data[os.write(self._master, data):]
            except OSError:  # full (BlockingIOError) or failing: the pump writes it, or meets the error
                pass
            if not data:
                return
        self._input_pending += len(data)
        self._input_send.send_nowait(data)
        if self._input_pending > _INPUT_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self._chan.pause_reading()

    def eof_received(self) -> bool:
        return True  # keep the channel open: the shell decides when the session ends

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if width > 0 and height > 0:
            self._size = (width, height)
            if self._master is not None:
                _set_winsize(self._master, *self._size)

    def pause_writing(self) -> None:
        self._can_write = trio.Event()

    def resume_writing(self) -> None:
        self._can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._scope.cancel()  # the client is gone: end the shell
        self._can_write.set()

    # --- the shell (a trio task) --------------------------------------------------------------

    async def _run(self) -> None:
        try:
            with self._scope:
                await self._run_shell()
        except Exception:
            log.exception("demo ssh: shell session failed")
            with contextlib.suppress(Exception):
                self._chan.exit(1)

    async def _run_shell(self) -> None:
        demo = self._demo
        account = demo.account
        master, slave = pty.openpty()
        _set_winsize(master, *self._size)
        env = {
            "HOME": account.pw_dir, "USER": account.pw_name, "LOGNAME": account.pw_name,
            "SHELL": demo.shell, "TERM": self._term,
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        args = [demo.shell, "-c", self._command] if self._command is not None else [demo.shell, "-l"]
        cwd = account.pw_dir if Path(account.pw_dir).is_dir() else "/"
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-I", "-S", "-c", _CTTY_SHIM, *args],
                stdin=slave, stdout=slave, stderr=slave, start_new_session=True, env=env, cwd=cwd)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        log.info("demo ssh: shell %d started (%s)", process.pid, self._term)
        ended = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_output, master)
                nursery.start_soon(self._pump_input, master)
                status = await process.wait()
                nursery.cancel_scope.cancel()
            self._drain_output(master)
            ended = True
            if status >= 0:
                self._chan.exit(status)
            else:
                self._chan.exit_with_signal(signal.Signals(-status).name.removeprefix("SIG"))
        finally:
            self._master = None
            with trio.CancelScope(shield=True):
                await _kill_session(process)
            trio.lowlevel.notify_closing(master)
            os.close(master)
            if not ended:  # stopped from here (server stopping): tell the client how it ended
                with contextlib.suppress(Exception):
                    self._chan.exit_with_signal("KILL")
            log.info("demo ssh: shell %d ended", process.pid)

    async def _pump_output(self, master: int) -> None:
        while True:
            await trio.lowlevel.wait_readable(master)
            if not self._read_once(master):
                await trio.sleep_forever()  # every slave end is closed; the shell's exit ends us
            await self._can_write.wait()

    def _read_once(self, master: int) -> bool:
        try:
            data = os.read(master, _READ_CHUNK)
        except BlockingIOError:
            return True
        except OSError:  # EIO: no process has the terminal open any more
            return False
        if not data:
            return False
        self._chan.write(data)
        return True

    def _drain_output(self, master: int) -> None:
        """What the shell wrote just before it exited, still in the PTY."""
        for _ in range(64):
            try:
                data = os.read(master, _READ_CHUNK)
            except OSError:
                return
            if not data:
                return
            self._chan.write(data)

    async def _pump_input(self, master: int) -> None:
        async for data in self._input_recv:
            view = memoryview(data)
            while view:
                try:
                    written = os.write(master, view)
                except BlockingIOError:  # the PTY's buffer is full: wait for the shell to read
                    await trio.lowlevel.wait_writable(master)
                    continue
                view = view[written:]
            self._input_pending -= len(data)
            if self._reading_paused and self._input_pending < _INPUT_HIGH_WATER // 2:
                self._reading_paused = False
                self._chan.resume_reading()


def _set_winsize(fd: int, cols: int, rows: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _session_members(sid: int) -> list[int]:
    """Live processes whose session id is `sid` (the shell and everything it started)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            members.append(int(entry))
    return members


async def _kill_session(process: Any) -> None:
    """Kill a shell and every process of its session, then reap the shell."""
    pids = _session_members(process.pid) if sys.platform.startswith("linux") else []
    for pid in [process.pid, *pids]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with trio.move_on_after(_STOP_GRACE):
        await process.wait()


async def serve_demo_ssh(host: str = "127.0.0.1", port: int = 0, *, username: str | None = None,
                         password: str | None = None, shell: str | None = None,
                         task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the demo SSH endpoint until cancelled; `task_status.started(DemoSsh(...))`."""
    username = username or f"demo-{secrets.token_hex(3)}"
    password = password or secrets.token_urlsafe(18)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key_openssh = " ".join(host_key.export_public_key("openssh").decode().split()[:2])
    async with trio_asyncio.open_loop():
        demo = _Demo(username, password, shell)
        acceptor = await trio_asyncio.aio_as_trio(asyncssh.create_server)(
            lambda: _DemoServer(demo), host, port,
            server_host_keys=[host_key], encoding=None, line_editor=False,
            # nothing but a shell: no forwarding, no agent, no X11, no SFTP or SCP
            agent_forwarding=False, x11_forwarding=False, allow_scp=False,
            login_timeout=60, keepalive_interval=30, config=None)
        try:
            async with trio.open_nursery() as nursery:
                demo.nursery = nursery
                try:
                    bound_port = acceptor.get_port()
                    log.info("demo ssh: listening on %s:%d as %s", host, bound_port, username)
                    task_status.started(DemoSsh(host, bound_port, username, password, host_key_openssh))
                    await trio.sleep_forever()
                finally:
                    acceptor.close()  # no new sessions; the shells end (are killed) with the nursery
                    demo.nursery = None
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + _STOP_GRACE
                for conn in list(demo.connections):
                    conn.close()
                for conn in list(demo.connections):
                    await trio_asyncio.aio_as_trio(conn.wait_closed)()
                await trio_asyncio.aio_as_trio(acceptor.wait_closed)()
            log.info("demo ssh: stopped")

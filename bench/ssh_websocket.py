"""Joint SSH sessions through real websockets, against 11 plain `ssh` clients on one `tmux`.

    .venv/bin/python bench/ssh_websocket.py [--runs 3] [--viewers 10] [--cat-mb 50] [--json]
                                            [--write-docs docs/benchmarks.md]

Needs root (a test user and OpenSSH ``sshd`` on a loopback port, as tests/fixtures/openssh.py
starts them), Debian's ``tmux`` and ``openssh-client``. Everything runs on 127.0.0.1 and stops
by itself; every wait is bounded.

What runs where (all on this machine, loopback only):

- one real OpenSSH ``sshd`` for the test user, with a key authorised for it;
- **the gateway** in a child process (this file with ``--gateway-child``): the real application
  on Hypercorn's trio worker (`cosession.loadtest_ws.InProcessGateway`) with default settings,
  an SSH endpoint per session pointing at that sshd with a stored key and pinned host key, and
  one user per participant. Being its own process, its CPU time is its own (read from
  ``/proc``), and the clients do not share its GIL;
- **the clients** in this process: for cosession one trio-websocket client per participant
  (controller + N viewers), each signed in with ``POST /api/login`` and holding its own
  websocket, as a browser tab does; for tmux, N+1 OpenSSH ``ssh -tt`` clients, each on its own
  pseudo-terminal (80x24), running ``tmux attach`` to one tmux session on the same sshd.

Each run measures both systems with the same workload (the order alternates between runs):

1. **idle**: CPU with the controller and every viewer connected, nothing typed.
2. **lines**: the controller types ``printf 'BM%dE\\n' ID`` every `--line-interval` seconds
   (`--lines` of them). The marker ``BM<ID>E`` appears only in the command's output, never in
   its echo. *Input → viewer* latency is from the controller client's send of the line (the
   websocket message; the write to the ssh client's pty) to each viewer's receipt of the marker
   (the websocket message; the read from the pty). It includes the SSH round trip to the shell,
   the same on both sides. For cosession we also see inside the gateway: *gateway → viewer* is
   from the moment the gateway received the output from sshd (the engine Frame's
   ``emitted_ns``, hooked in the gateway process; ``perf_counter`` is CLOCK_MONOTONIC, the same
   clock in every process) to each viewer's receipt. "All viewers" is, per line, the time until
   the last viewer has it.
3. **cat**: the controller runs ``cat FILE; printf 'BM%dE\\n' ID`` on a generated text file of
   `--cat-mb` MB (80-column lines). Per viewer: the time from the command's send to the final
   marker's receipt; *effective* MB/s is the file's size over that time (what the viewer's
   terminal has caught up with), *received* MB/s the bytes it actually received over it; slow
   viewers may get a keyframe instead of the bytes they missed (cosession's resyncs; tmux too
   stops writing to a client that falls behind and redraws it), so both are given, with the
   resync count.
4. **Ctrl-C**: the controller runs ``yes | head -c N`` (`--flood-mb`) and presses Ctrl-C
   `--interrupt-after` seconds later, then types a marker line once its terminal shows ``^C``:
   the time from the Ctrl-C to the marker, at the controller and at the last viewer (how long
   a runaway command keeps the terminal after the user gave up on it).
5. **late joiner**: with ``top -d 5`` running, one viewer leaves and a new one joins, `--late`
   times. cosession: from the start of the websocket's TCP connect to the receipt of the
   keyframe (the binary message after ``reset``), the user already signed in. tmux: from
   starting ``ssh -tt ... tmux attach`` to the last byte of the attach redraw (the first burst
   containing top's header, ended by 150 ms of quiet), both over a fresh SSH connection (key
   exchange and authentication included) and over an already open one (ControlMaster).
6. **CPU**: process CPU time (utime+stime from ``/proc``, children included) over the wall time
   of a phase: the *fan-out process* (the gateway; the tmux server) and the *server total*
   (that plus sshd and everything under it: sshd's session processes, the shell, ``cat``).
7. **parallel**: `--parallel` sessions at once (each a controller and N viewers; for tmux one
   tmux server with that many sessions), the lines workload in all of them; latency and CPU
   per session.

Medians over `--runs` with the spread (min-max). Ratios are cosession / tmux.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import json
import logging
import math
import os
import platform
import pty
import pwd
import re
import select
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, bench/ is sys.path[0] and the project root is not: bench/engine.py would
# shadow the engine package. The project root goes first, bench/ goes.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

MARK = re.compile(rb"BM(\d+)E")  # a line marker; the typed command's echo never matches it
TOP_TEXT = b"average"  # in top's header ("load average:"); not in the cat file
REPLY_PREFIX = "@@BENCH "  # the gateway child's answers on its stdout
PASSWORD = "bench-password"
COLS, ROWS = 80, 24
QUIET_SECONDS = 0.15  # tmux late joiner: the attach redraw is over after this much silence
SECTION = "## Joint SSH sessions through real websockets"
BEGIN = "<!-- bench/ssh_websocket.py: begin -->"
END = "<!-- bench/ssh_websocket.py: end -->"


class BenchError(Exception):
    pass


@dataclasses.dataclass
class Options:
    runs: int = 3
    viewers: int = 10
    cat_mb: float = 50.0
    lines: int = 200
    line_interval: float = 0.05
    late: int = 5
    idle: float = 3.0
    parallel: int = 3
    flood_mb: float = 10.0
    interrupt_after: float = 0.3
    progress: bool = True
    settings: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # gateway overrides


def say(options: Options, text: str) -> None:
    if options.progress:
        print(f"[bench] {text}", file=sys.stderr, flush=True)


# =================================================================================================
# The gateway child process
# =================================================================================================


def gateway_child() -> int:
    """Run the gateway; answer commands on stdin (``marks``, ``stats``, ``stop``)."""
    # A server ignores SIGPIPE (Python's own default, undone for this script's output below):
    # a client that resets its connection must cost an EPIPE on that socket, not the process.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import threading

    from config.settings import load
    from cosession.loadtest_ws import InProcessGateway
    from engine.messages import EndpointProtocol
    from engine import connection as base

    config = json.loads(sys.stdin.readline())
    marks: dict[int, int] = {}
    lock = threading.Lock()

    original_output = base.EndpointEvents.output

    def output(self: Any, data: bytes, *args: Any) -> Any:  # EndpointEvents.output, recording markers
        now = time.perf_counter_ns()
        if b"BM" in data:
            found = [int(m.group(1)) for m in MARK.finditer(data)]
            if found:
                with lock:
                    for mark in found:
                        marks.setdefault(mark, now)
        return original_output(self, data, *args)

    base.EndpointEvents.output = output  # type: ignore[method-assign]

    # How much of the gateway's CPU the screen model's parser takes: the CPU time of the thread
    # (an endpoint actor) inside pyte's ByteStream.feed, whichever engine code calls it.
    import pyte

    parse_ns = [0]
    original_feed = pyte.ByteStream.feed

    def feed(self: Any, data: bytes) -> None:
        began = time.thread_time_ns()
        try:
            original_feed(self, data)
        finally:
            spent = time.thread_time_ns() - began
            with lock:
                parse_ns[0] += spent

    pyte.ByteStream.feed = feed  # type: ignore[method-assign]

    # How many keyframes the screen models render (joins and resyncs), whoever asks for them.
    from engine.screen import TerminalScreen

    keyframes = [0]
    original_keyframe = TerminalScreen.keyframe

    def keyframe(self: Any) -> Any:
        with lock:
            keyframes[0] += 1
        return original_keyframe(self)

    TerminalScreen.keyframe = keyframe  # type: ignore[method-assign]

    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(REPLY_PREFIX + json.dumps(message) + "\n")
        sys.stdout.flush()

    with tempfile.TemporaryDirectory(prefix="cosession-bench-gw-") as tmp:
        gateway = InProcessGateway(load(env={}, **config.get("settings", {})), Path(tmp)).start()
        try:
            services = gateway.services
            endpoints = []
            for n in range(config["sessions"]):
                record = services.endpoints.create(
                    f"bench-{n}", EndpointProtocol.SSH, config["host"], config["port"], username=config["username"],
                    private_key=config["private_key"], host_key=config["host_key"], joint_session=True)
                endpoints.append(record.id)
            for name in config["users"]:
                user = services.users.create(name, PASSWORD)
                for endpoint_id in endpoints:
                    services.grants.grant(endpoint_id, user.id)
            reply({"base_url": gateway.base_url, "endpoints": endpoints, "pid": os.getpid()})
            for line in sys.stdin:
                command = line.strip()
                if command == "marks":
                    with lock:
                        taken = dict(marks)
                        marks.clear()
                    reply({"marks": {str(k): v for k, v in taken.items()}})
                elif command == "stats":
                    with lock:
                        parsed, rendered = parse_ns[0], keyframes[0]
                    reply({**_proc_status(os.getpid()), "screen_parse_s": parsed / 1e9, "keyframes": rendered})
                elif command == "stop":
                    break
        finally:
            gateway.stop()
    reply({"stopped": True})
    return 0


class GatewayProcess:
    """The parent's handle on the gateway child."""

    def __init__(self, config: dict[str, Any], log_path: Path, *, script: Path | None = None,
                 cwd: Path = ROOT) -> None:
        """Start `script --gateway-child` (this file by default: another benchmark's, or another
        checkout's copy of this one) in `cwd`, and read its first answer."""
        self._log = open(log_path, "wb")
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, str(script or Path(__file__).resolve()), "--gateway-child"], cwd=str(cwd),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, start_new_session=True)
        self._buffer = b""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(config) + "\n").encode())
        self.proc.stdin.flush()
        self.info = self._answer(60)
        self.pid = self.info["pid"]

    def _answer(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(REPLY_PREFIX):
                    return json.loads(text[len(REPLY_PREFIX):])
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"the gateway process did not answer within {timeout:g} s ({self.log_tail()})")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise BenchError(f"the gateway process exited ({self.log_tail()})")
                self._buffer += chunk

    def call(self, command: str, timeout: float = 30) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((command + "\n").encode())
        self.proc.stdin.flush()
        return self._answer(timeout)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:].strip() or "no log"
        except OSError:
            return "no log"

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(Exception):
                    self.call("stop", timeout=30)
                self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
            self.proc.wait(timeout=10)
        finally:
            self._log.close()


# =================================================================================================
# CPU and memory from /proc
# =================================================================================================

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_status(pid: int) -> dict[str, Any]:
    status = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "Threads"):
                status[key] = int(value.split()[0])
    return status


def cpu_pressure() -> float | None:
    """The share of the last 10 s in which some runnable task waited for a CPU (PSI), in %."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return float(line.split("avg10=")[1].split()[0])


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _ticks(pid: int) -> int | None:
    """utime + stime + cutime + cstime of a process, in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(f) for f in fields[11:15])


def cpu_sample(groups: dict[str, list[int]]) -> dict[str, dict[int, int]]:
    """Per group, the ticks of its roots and all their descendants."""
    children = _children_map()
    sample: dict[str, dict[int, int]] = {}
    for name, roots in groups.items():
        pids: list[int] = []
        todo = list(roots)
        while todo:
            pid = todo.pop()
            pids.append(pid)
            todo.extend(children.get(pid, []))
        sample[name] = {pid: t for pid in pids if (t := _ticks(pid)) is not None}
    return sample


def cpu_seconds(before: dict[str, dict[int, int]], after: dict[str, dict[int, int]]) -> dict[str, float]:
    """CPU seconds per group between two samples (a process born in between counts in full)."""
    return {name: sum(max(0, t - before.get(name, {}).get(pid, 0)) for pid, t in pids.items()) / CLK_TCK
            for name, pids in after.items()}


# =================================================================================================
# Clients
# =================================================================================================


class Receiver:
    """What one client receives: byte counts, the first receipt time of every marker, the
    last 64 KiB of the stream, and a wake-up on every chunk."""

    def __init__(self) -> None:
        import trio

        self._trio = trio
        self.data_bytes = 0
        self.keyframe_bytes = 0
        self.chunks = 0
        self.first_ns = 0
        self.last_ns = 0
        self.marks: dict[int, int] = {}
        self.recent = bytearray()
        self._tail = b""
        self._changed = trio.Event()
        self.finished = False

    def feed(self, data: bytes, now: int, keyframe: bool = False) -> None:
        if keyframe:
            self.keyframe_bytes += len(data)
        else:
            self.data_bytes += len(data)
        self.chunks += 1
        self.first_ns = self.first_ns or now
        self.last_ns = now
        buffer = self._tail + data
        if b"E" in buffer:
            for m in MARK.finditer(buffer):
                self.marks.setdefault(int(m.group(1)), now)
        self._tail = buffer[-24:]  # a marker split between two chunks is found in the second
        self.recent += data
        if len(self.recent) > 65536:
            del self.recent[:-65536]
        self.poke()

    @property
    def total_bytes(self) -> int:
        return self.data_bytes + self.keyframe_bytes

    def poke(self) -> None:
        self._changed.set()
        self._changed = self._trio.Event()

    def finish(self) -> None:
        self.finished = True
        self.poke()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._trio.move_on_after(timeout):
            while not predicate():
                await self._changed.wait()
            return True
        return predicate()

    async def changed(self, timeout: float) -> bool:
        """True if anything arrived within `timeout`."""
        with self._trio.move_on_after(timeout):
            await self._changed.wait()
            return True
        return False


class WsClient:
    """One participant's websocket, as a browser tab holds it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.receiver = Receiver()
        self.socket: Any = None
        self.role = ""
        self.session_id = ""
        self.state = ""
        self.refusal: dict[str, Any] | None = None
        self.ended: dict[str, Any] | None = None
        self.resyncs = 0
        self.left_seen = 0  # participant_left messages
        self.messages = 0  # binary messages (terminal data and keyframes)
        self.keyframes = 0
        self.keyframe_ns = 0
        self.keyframe_data = b""
        self.closed = False
        self._keyframe_next = False
        self.connect_ns = 0
        self.join_ns = 0

    async def open(self, nursery: Any, base_url: str, cookie: str, path: str, first: dict[str, Any]) -> None:
        import time as _time

        from cosession.join import connect_socket, send_json

        self.connect_ns = _time.perf_counter_ns()
        self.socket = await connect_socket(nursery, base_url, path, cookie, message_queue_size=64,
                                           connect_timeout=30)
        nursery.start_soon(self._read)
        self.join_ns = _time.perf_counter_ns()
        await send_json(self.socket, first)
        if not await self.receiver.wait_for(lambda: bool(self.role or self.refusal or self.closed), 30):
            raise BenchError(f"{self.name}: no answer to {first['type']} within 30 s")
        if self.refusal is not None or not self.role:
            raise BenchError(f"{self.name}: {first['type']} refused: {self.refusal}")

    async def _read(self) -> None:
        from trio_websocket import ConnectionClosed

        try:
            while True:
                message = await self.socket.get_message()
                now = time.perf_counter_ns()
                if isinstance(message, bytes):
                    self.messages += 1
                    if self._keyframe_next:
                        self._keyframe_next = False
                        self.keyframes += 1
                        self.keyframe_ns = now
                        self.keyframe_data = message
                        self.receiver.feed(message, now, keyframe=True)
                    else:
                        self.receiver.feed(message, now)
                else:
                    self._control(json.loads(message))
                    self.receiver.poke()
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.receiver.finish()

    def _control(self, m: dict[str, Any]) -> None:
        kind = m.get("type")
        if kind == "joined":
            self.role, self.session_id, self.state = m["role"], m["session_id"], m["state"]
        elif kind == "state":
            self.state = m["state"]
        elif kind == "reset":
            self._keyframe_next = True
        elif kind == "resync":
            self.resyncs += 1
        elif kind == "participant_left":
            self.left_seen += 1
        elif kind == "ended":
            self.ended = m
        elif kind == "refused" and m.get("fatal"):
            self.refusal = m

    async def send(self, data: bytes) -> None:
        await self.socket.send_message(data)

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.socket.send_message(json.dumps(message))

    async def aclose(self) -> None:
        if self.socket is not None:
            await self.socket.aclose()


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when the benchmark's process dies, however it dies (an
    ssh client on a pty of ours would otherwise outlive it)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class PtyClient:
    """A program (ssh) on its own pseudo-terminal of 80x24; we are its keyboard and screen."""

    def __init__(self, argv: list[str], registry: list["PtyClient"]) -> None:
        import trio

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm-256color",
               "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
        self.start_ns = time.perf_counter_ns()
        try:
            self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                         start_new_session=True, close_fds=True, preexec_fn=_die_with_parent)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        registry.append(self)
        self.stream = trio.lowlevel.FdStream(master)
        self.receiver = Receiver()

    async def read(self) -> None:
        import trio

        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                self.receiver.feed(data, time.perf_counter_ns())
        except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # EIO once ssh has exited and the pty's slave side is closed
        finally:
            self.receiver.finish()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    async def aclose(self) -> None:
        import trio

        await trio.to_thread.run_sync(self.kill)
        await self.stream.aclose()


# =================================================================================================
# The two systems under test
# =================================================================================================


@dataclasses.dataclass
class Context:
    options: Options
    server: Any  # tests.fixtures.openssh.OpenSshServer
    key_path: Path
    cat_path: Path
    cat_bytes: int
    gateway: GatewayProcess
    cookies: dict[str, str]
    tmux_socket: str
    control_path: str
    nursery: Any = None
    pty_clients: list[PtyClient] = dataclasses.field(default_factory=list)
    tmux_pid: int | None = None
    master: PtyClient | None = None
    _next_mark: int = 1000

    def mark(self) -> int:
        self._next_mark += 1
        return self._next_mark

    def ssh_args(self, *extra: str) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-i", str(self.key_path), "-p", str(self.server.port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-e", "none", *extra,
                f"{self.server.username}@{self.server.host}"]

    async def remote(self, command: str) -> str:
        """Run a command as the test user over ssh (no pty; a channel of the master connection
        once it is open); its stdout."""
        import trio

        extra = ("-S", self.control_path) if self.master is not None else ()
        done = await trio.to_thread.run_sync(lambda: subprocess.run(
            self.ssh_args(*extra) + [command], capture_output=True, text=True, timeout=30,
            stdin=subprocess.DEVNULL))
        if done.returncode != 0:
            raise BenchError(f"remote {command!r}: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout


def line_command(mark: int) -> bytes:
    return f"printf 'BM%dE\\n' {mark}\r".encode()


class Side:
    """A live shared terminal: a controller that types and viewers that watch."""

    kind = ""
    controller: Any
    viewers: list[Any]

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.dropped = 0  # viewers that left before the late-joiner phase

    @property
    def everyone(self) -> list[Any]:
        return [self.controller, *self.viewers]

    def cpu_groups(self) -> dict[str, list[int]]:
        raise NotImplementedError

    async def prepare(self) -> None:
        """A short prompt, then a marker every participant must see: the shell is there."""
        await self.controller.send(b"PS1='$ '\r")
        mark = self.ctx.mark()
        await self.controller.send(line_command(mark))
        for client in self.everyone:
            if not await client.receiver.wait_for(lambda c=client: mark in c.receiver.marks, 30):
                raise BenchError(f"{self.kind}: the shell did not answer within 30 s")

    async def drop_viewer(self) -> None:
        raise NotImplementedError

    async def late_join(self, n: int) -> dict[str, Any]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class CosessionSide(Side):
    kind = "cosession"

    def __init__(self, ctx: Context, index: int) -> None:
        super().__init__(ctx)
        self.index = index
        self.base_url = ctx.gateway.info["base_url"]
        self.endpoint_id = ctx.gateway.info["endpoints"][index]

    @classmethod
    async def open(cls, ctx: Context, index: int, viewers: int) -> "CosessionSide":
        side = cls(ctx, index)
        controller = WsClient(f"ctl-{index}")
        await controller.open(ctx.nursery, side.base_url, ctx.cookies[f"ctl-{index}"],
                              f"/ws/endpoints/{side.endpoint_id}/start",
                              {"type": "start", "cols": COLS, "rows": ROWS})
        side.controller = controller
        side.viewers = []
        if not await controller.receiver.wait_for(lambda: controller.state == "active" or controller.closed, 30):
            raise BenchError(f"cosession: the session did not become active ({controller.state})")
        if controller.state != "active":
            raise BenchError(f"cosession: the session ended at once: {controller.ended}")
        for v in range(viewers):
            viewer = WsClient(f"view-{index}-{v}")
            await viewer.open(ctx.nursery, side.base_url, ctx.cookies[viewer.name],
                              f"/ws/sessions/{controller.session_id}", {"type": "join"})
            side.viewers.append(viewer)
        return side

    def cpu_groups(self) -> dict[str, list[int]]:
        return {"fanout": [self.ctx.gateway.pid], "sshd": [self.ctx.server.process.pid]}

    async def drop_viewer(self) -> None:
        viewer = self.viewers.pop()
        seen = self.controller.left_seen
        await viewer.send_json({"type": "leave"})
        await viewer.receiver.wait_for(lambda: viewer.closed, 10)
        await viewer.aclose()
        await self.controller.receiver.wait_for(lambda: self.controller.left_seen > seen, 10)

    async def late_join(self, n: int) -> dict[str, Any]:
        joiner = WsClient(f"late-{n}")
        seen = self.controller.left_seen
        await joiner.open(self.ctx.nursery, self.base_url, self.ctx.cookies[joiner.name],
                          f"/ws/sessions/{self.controller.session_id}", {"type": "join"})
        ok = await joiner.receiver.wait_for(lambda: joiner.keyframes > 0, 15)
        sample = {
            "ms": (joiner.keyframe_ns - joiner.connect_ns) / 1e6 if ok else None,
            "join_ms": (joiner.keyframe_ns - joiner.join_ns) / 1e6 if ok else None,
            "bytes": len(joiner.keyframe_data),
            "top_on_screen": TOP_TEXT in joiner.keyframe_data,
        }
        await joiner.send_json({"type": "leave"})
        await joiner.receiver.wait_for(lambda: joiner.closed, 10)
        await joiner.aclose()
        await self.controller.receiver.wait_for(lambda: self.controller.left_seen > seen, 10)
        return sample

    async def close(self) -> None:
        import trio

        with contextlib.suppress(Exception):
            await self.controller.send_json({"type": "leave"})
            for client in self.everyone:
                await client.receiver.wait_for(lambda c=client: c.closed, 10)
        for client in self.everyone:
            with trio.move_on_after(10):
                await client.aclose()


class TmuxSide(Side):
    kind = "tmux"

    def __init__(self, ctx: Context, index: int) -> None:
        super().__init__(ctx)
        self.session = f"bench{index}"

    def attach_command(self) -> str:
        return f"tmux -L {self.ctx.tmux_socket} attach-session -t {self.session}"

    async def attach(self, *extra: str) -> PtyClient:
        client = PtyClient(self.ctx.ssh_args("-tt", *extra) + [self.attach_command()], self.ctx.pty_clients)
        self.ctx.nursery.start_soon(client.read)
        return client

    @classmethod
    async def open(cls, ctx: Context, index: int, viewers: int) -> "TmuxSide":
        side = cls(ctx, index)
        sock = ctx.tmux_socket
        await ctx.remote(f"tmux -L {sock} -f /dev/null new-session -d -s {side.session} -x {COLS} -y {ROWS} "
                         f"\\; set-option -g status off")
        # the server exits with its last session: ask for its pid each time
        ctx.tmux_pid = int((await ctx.remote(f"tmux -L {sock} display-message -p '#{{pid}}'")).strip())
        side.controller = await side.attach()
        side.viewers = [await side.attach() for _ in range(viewers)]
        for client in side.everyone:
            if not await client.receiver.wait_for(lambda c=client: c.receiver.chunks > 0, 30):
                raise BenchError("tmux: a client did not attach within 30 s")
        return side

    def cpu_groups(self) -> dict[str, list[int]]:
        assert self.ctx.tmux_pid is not None
        return {"fanout": [self.ctx.tmux_pid], "sshd": [self.ctx.server.process.pid]}

    async def drop_viewer(self) -> None:
        await self.viewers.pop().aclose()

    async def late_join(self, n: int, via_master: bool = False) -> dict[str, Any]:
        extra = ("-S", self.ctx.control_path) if via_master else ()
        client = await self.attach(*extra)
        try:
            receiver = client.receiver
            ok = await receiver.wait_for(lambda: TOP_TEXT in receiver.recent or receiver.finished, 15)
            ok = ok and not receiver.finished
            while ok and await receiver.changed(QUIET_SECONDS):
                pass
            return {"ms": (receiver.last_ns - client.start_ns) / 1e6 if ok else None,
                    "bytes": receiver.total_bytes, "top_on_screen": ok}
        finally:
            await client.aclose()

    async def close(self) -> None:
        for client in self.everyone:
            await client.aclose()
        with contextlib.suppress(BenchError):
            await self.ctx.remote(f"tmux -L {self.ctx.tmux_socket} kill-session -t {self.session}")


# =================================================================================================
# Phases
# =================================================================================================


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


async def wait_all(clients: list[Any], predicate: Callable[[Any], bool], timeout: float) -> bool:
    import trio

    deadline = trio.current_time() + timeout
    for client in clients:
        left = deadline - trio.current_time()
        if not await client.receiver.wait_for(lambda c=client: predicate(c), max(0.0, left)):
            return False
    return True


async def phase_idle(ctx: Context, side: Side) -> dict[str, Any]:
    import trio

    groups = side.cpu_groups()
    before, t0 = cpu_sample(groups), time.perf_counter()
    await trio.sleep(ctx.options.idle)  # the phase is this much wall time with nothing to do
    after, t1 = cpu_sample(groups), time.perf_counter()
    cpu = cpu_seconds(before, after)
    wall = t1 - t0
    return {"cpu_idle_fanout_pct": 100 * cpu["fanout"] / wall,
            "cpu_idle_total_pct": 100 * (cpu["fanout"] + cpu["sshd"]) / wall}


async def phase_lines(ctx: Context, sides: list[Side]) -> dict[str, Any]:
    """Each controller types `lines` marker lines at the set interval; all sessions at once."""
    import trio

    options = ctx.options
    sent: dict[int, int] = {}
    owner: dict[int, Side] = {}
    groups = sides[0].cpu_groups()
    messages_before = {id(v): getattr(v, "messages", 0) for side in sides for v in side.viewers}
    before, t0 = cpu_sample(groups), time.perf_counter()
    start = trio.current_time()

    async def drive(side: Side, offset: float) -> None:
        for i in range(options.lines):
            await trio.sleep_until(start + offset + i * options.line_interval)
            mark = ctx.mark()
            owner[mark] = side
            sent[mark] = time.perf_counter_ns()
            await side.controller.send(line_command(mark))

    async with trio.open_nursery() as nursery:
        for n, side in enumerate(sides):
            nursery.start_soon(drive, side, n * options.line_interval / len(sides))
    timeout = 15 + options.lines * options.line_interval
    marks_of = {id(side): [m for m, s in owner.items() if s is side] for side in sides}
    complete = True
    for side in sides:
        mine = marks_of[id(side)]
        complete &= await wait_all(side.everyone, lambda c, mine=mine: all(m in c.receiver.marks for m in mine),
                                   timeout)
    after, t1 = cpu_sample(groups), time.perf_counter()
    cpu = cpu_seconds(before, after)
    wall = t1 - t0

    each: list[float] = []
    every: list[float] = []
    echo: list[float] = []
    lost = 0
    for side in sides:
        for mark in marks_of[id(side)]:
            times = [v.receiver.marks.get(mark) for v in side.viewers]
            got = [(t - sent[mark]) / 1e6 for t in times if t is not None]
            lost += len(times) - len(got)
            each.extend(got)
            if len(got) == len(times):
                every.append(max(got))
            if (t := side.controller.receiver.marks.get(mark)) is not None:
                echo.append((t - sent[mark]) / 1e6)
    per_line = [(getattr(v, "messages", 0) - messages_before[id(v)]) / options.lines
                for side in sides for v in side.viewers]
    result = {
        "line_p50_ms": pct(each, 50), "line_p99_ms": pct(each, 99),
        "line_messages_per_line": _median(per_line) if isinstance(sides[0], CosessionSide) else None,
        "line_all_p50_ms": pct(every, 50), "line_all_p99_ms": pct(every, 99),
        "line_echo_p50_ms": pct(echo, 50),
        "lines_lost": lost, "lines_complete": complete,
        "cpu_lines_fanout_pct": 100 * cpu["fanout"] / wall / len(sides),
        "cpu_lines_total_pct": 100 * (cpu["fanout"] + cpu["sshd"]) / wall / len(sides),
        "_sent": sent, "_owner": owner, "_line_all_ms": [round(x, 3) for x in every],
    }
    return result


async def gateway_latency(ctx: Context, side: CosessionSide, lines: dict[str, Any]) -> dict[str, Any]:
    """For cosession: the gateway's receipt of each line from sshd (hooked `emitted_ns`)."""
    import trio

    answer = await trio.to_thread.run_sync(ctx.gateway.call, "marks")
    emitted = {int(k): v for k, v in answer["marks"].items()}
    sent, owner = lines["_sent"], lines["_owner"]
    fanout: list[float] = []
    rtt: list[float] = []
    per_line: list[float] = []  # the median over the viewers, per line
    missing = 0
    for mark, s in owner.items():
        if s is not side:
            continue
        if mark not in emitted:
            missing += 1
            continue
        rtt.append((emitted[mark] - sent[mark]) / 1e6)
        got = [(t - emitted[mark]) / 1e6 for v in side.viewers if (t := v.receiver.marks.get(mark)) is not None]
        fanout.extend(got)
        if got:
            per_line.append(round(statistics.median(got), 3))
    return {"gateway_p50_ms": pct(fanout, 50), "gateway_p99_ms": pct(fanout, 99),
            "gateway_rtt_p50_ms": pct(rtt, 50), "gateway_marks_missing": missing, "_gateway_line_ms": per_line}


async def phase_cat(ctx: Context, side: Side) -> dict[str, Any]:
    options = ctx.options
    groups = side.cpu_groups()
    mark = ctx.mark()
    start_bytes = [v.receiver.total_bytes for v in side.viewers]
    start_resyncs = [getattr(v, "resyncs", 0) for v in side.viewers]
    parse_before = await _screen_parse_seconds(ctx, side)
    before, t0 = cpu_sample(groups), time.perf_counter()
    sent = time.perf_counter_ns()
    await side.controller.send(f"cat {ctx.cat_path}; printf 'BM%dE\\n' {mark}\r".encode())
    timeout = 30 + 6 * options.cat_mb
    complete = await wait_all(side.everyone, lambda c: mark in c.receiver.marks, timeout)
    after, t1 = cpu_sample(groups), time.perf_counter()
    cpu = cpu_seconds(before, after)
    parse_after = await _screen_parse_seconds(ctx, side)
    effective, received, seconds, got_bytes = [], [], [], []
    for v, b0 in zip(side.viewers, start_bytes):
        t = v.receiver.marks.get(mark)
        if t is None:
            continue
        dt = (t - sent) / 1e9
        seconds.append(dt)
        got_bytes.append(v.receiver.total_bytes - b0)
        effective.append(ctx.cat_bytes / dt / 1e6)
        received.append((v.receiver.total_bytes - b0) / dt / 1e6)
    resyncs = sum(getattr(v, "resyncs", 0) - r0 for v, r0 in zip(side.viewers, start_resyncs))
    controller_at = side.controller.receiver.marks.get(mark)
    return {
        "cat_effective_mbps": _median(effective), "cat_effective_min_mbps": min(effective) if effective else None,
        "cat_received_mbps": _median(received), "cat_seconds": max(seconds) if seconds else None,
        "cat_received_mb": _median([b / 1e6 for b in got_bytes]), "cat_resyncs": resyncs,
        "cat_controller_s": None if controller_at is None else (controller_at - sent) / 1e9,
        "cat_complete": complete,
        "cpu_cat_fanout_s": cpu["fanout"], "cpu_cat_total_s": cpu["fanout"] + cpu["sshd"],
        "cpu_cat_fanout_pct": 100 * cpu["fanout"] / (t1 - t0),
        "cpu_cat_screen_s": None if parse_before is None else parse_after - parse_before,
    }


async def _screen_parse_seconds(ctx: Context, side: Side) -> float | None:
    """The gateway's CPU seconds in its screen model's parser so far (cosession only)."""
    import trio

    if not isinstance(side, CosessionSide):
        return None
    return (await trio.to_thread.run_sync(ctx.gateway.call, "stats"))["screen_parse_s"]


async def phase_interrupt(ctx: Context, side: Side) -> dict[str, Any]:
    """The controller runs ``yes | head -c N`` and presses Ctrl-C `interrupt_after` seconds
    later (a person's reaction), then, once its terminal shows the ``^C``, types a marker line:
    how long until its prompt is back (Ctrl-C → the marker), at the controller and at the last
    viewer."""
    import trio

    options = ctx.options
    mark = ctx.mark()
    controller = side.controller
    start_bytes = controller.receiver.total_bytes
    began = trio.current_time()
    await controller.send(f"yes | head -c {int(options.flood_mb * 1e6)}\r".encode())
    await trio.sleep_until(began + options.interrupt_after)  # the reaction time is the workload
    interrupted = time.perf_counter_ns()
    interrupted_at = controller.receiver.total_bytes
    await controller.send(b"\x03")
    # Type the next line once the terminal shows the ^C, as a person would: typed at once, it
    # may arrive while bash handles the interrupt at its prompt, which discards it.
    timeout = 30 + 6 * options.flood_mb

    def shown() -> bool:
        received = controller.receiver.total_bytes - interrupted_at
        return received > 0 and b"^C" in controller.receiver.recent[-received:]

    await controller.receiver.wait_for(shown, timeout)
    await controller.send(line_command(mark))
    complete = await wait_all(side.everyone, lambda c: mark in c.receiver.marks, timeout)
    back = [(t - interrupted) / 1e6 for v in side.viewers if (t := v.receiver.marks.get(mark)) is not None]
    at = controller.receiver.marks.get(mark)
    return {"interrupt_ms": None if at is None else (at - interrupted) / 1e6,
            "interrupt_all_ms": max(back) if len(back) == len(side.viewers) else None,
            "interrupt_received_mb": (controller.receiver.total_bytes - start_bytes) / 1e6,
            "interrupt_complete": complete}


async def phase_late(ctx: Context, side: Side) -> dict[str, Any]:
    """`top` runs; one viewer leaves; new viewers join, one at a time."""
    options = ctx.options
    await side.controller.send(b"top -d 5\r")  # a refresh seldom falls in tmux's attach burst
    if not await wait_all(side.everyone, lambda c: TOP_TEXT in c.receiver.recent, 20):
        raise BenchError(f"{side.kind}: top did not show within 20 s")
    await side.drop_viewer()
    result: dict[str, Any] = {}
    if isinstance(side, CosessionSide):
        samples = [await side.late_join(n) for n in range(options.late)]
        result["late_ms"] = _median([s["ms"] for s in samples])
        result["late_max_ms"] = max((s["ms"] for s in samples if s["ms"] is not None), default=None)
        result["late_join_ms"] = _median([s["join_ms"] for s in samples])
        result["late_keyframe_kb"] = _median([s["bytes"] / 1024 for s in samples])
    else:
        assert isinstance(side, TmuxSide)
        fresh = [await side.late_join(n) for n in range(options.late)]
        muxed = [await side.late_join(n, via_master=True) for n in range(options.late)]
        samples = fresh + muxed
        result["late_ms"] = _median([s["ms"] for s in muxed])
        result["late_max_ms"] = max((s["ms"] for s in muxed if s["ms"] is not None), default=None)
        result["late_fresh_ssh_ms"] = _median([s["ms"] for s in fresh])
        result["late_keyframe_kb"] = _median([s["bytes"] / 1024 for s in muxed])
    result["late_samples_bad"] = sum(1 for s in samples if s["ms"] is None or not s["top_on_screen"])
    result["_late_samples"] = samples
    await side.controller.send(b"q")
    return result


async def _start_master(ctx: Context) -> PtyClient:
    """An SSH ControlMaster connection that late joiners' ssh clients multiplex over."""
    import trio

    master = PtyClient(ctx.ssh_args("-M", "-S", ctx.control_path, "-N", "-o", "ControlPersist=no"),
                       ctx.pty_clients)
    ctx.nursery.start_soon(master.read)
    check = ctx.ssh_args("-S", ctx.control_path, "-O", "check")
    with trio.fail_after(20):
        while (await trio.to_thread.run_sync(lambda: subprocess.run(check, capture_output=True))).returncode:
            await trio.sleep(0.05)  # poll interval until the master's socket answers
    return master


# =================================================================================================
# One run
# =================================================================================================


async def measure_side(ctx: Context, kind: str) -> dict[str, Any]:
    import trio

    options = ctx.options
    cls = CosessionSide if kind == "cosession" else TmuxSide
    figures: dict[str, Any] = {"load1": os.getloadavg()[0], "cpu_pressure_pct": cpu_pressure()}
    side = await cls.open(ctx, 0, options.viewers)
    try:
        await side.prepare()
        figures.update(await phase_idle(ctx, side))
        lines = await phase_lines(ctx, [side])
        if isinstance(side, CosessionSide):
            figures.update(await gateway_latency(ctx, side, lines))
        figures.update({k: v for k, v in lines.items() if k not in ("_sent", "_owner")})
        figures.update(await phase_cat(ctx, side))
        if options.flood_mb > 0:
            figures.update(await phase_interrupt(ctx, side))
        figures.update(await phase_late(ctx, side))
    finally:
        with trio.move_on_after(30) as scope:
            scope.shield = True
            await side.close()
    if options.parallel > 1:
        sides: list[Side] = []
        try:
            for n in range(options.parallel):
                sides.append(await cls.open(ctx, n, options.viewers))
            for s in sides:
                await s.prepare()
            lines = await phase_lines(ctx, sides)
            if kind == "cosession":
                await trio.to_thread.run_sync(ctx.gateway.call, "marks")  # drop them
            figures.update({"par_" + k: v for k, v in lines.items() if not k.startswith("_")})
        finally:
            with trio.move_on_after(30) as scope:
                scope.shield = True
                for s in sides:
                    await s.close()
    if kind == "cosession":
        stats = await trio.to_thread.run_sync(ctx.gateway.call, "stats")
        figures["gateway_peak_rss_mb"] = stats.get("VmHWM", 0) / 1024
    else:
        with contextlib.suppress(BenchError):
            await ctx.remote(f"tmux -L {ctx.tmux_socket} kill-server")
        ctx.tmux_pid = None
    return figures


async def _login_all(ctx: Context, names: list[str]) -> None:
    import trio

    from cosession.join import login

    base_url = ctx.gateway.info["base_url"]
    for name in names:
        ctx.cookies[name] = await trio.to_thread.run_sync(login, base_url, name, PASSWORD)


def user_names(options: Options) -> list[str]:
    sessions = max(1, options.parallel)
    names = [f"ctl-{n}" for n in range(sessions)]
    names += [f"view-{n}-{v}" for n in range(sessions) for v in range(options.viewers)]
    names += [f"late-{k}" for k in range(options.late)]
    return names


async def _main(ctx: Context) -> list[dict[str, Any]]:
    import trio

    options = ctx.options
    runs = []
    async with trio.open_nursery() as nursery:
        ctx.nursery = nursery
        nursery.start_soon(_stop_on_signals)
        await _login_all(ctx, user_names(options))
        ctx.master = await _start_master(ctx)
        for run in range(options.runs):
            order = ["cosession", "tmux"] if run % 2 == 0 else ["tmux", "cosession"]
            result: dict[str, Any] = {}
            for kind in order:
                say(options, f"run {run + 1}/{options.runs}: {kind}")
                began = time.perf_counter()
                result[kind] = await measure_side(ctx, kind)
                result[kind]["seconds"] = round(time.perf_counter() - began, 1)
                say(options, f"run {run + 1}/{options.runs}: {kind} done in {result[kind]['seconds']} s: "
                             + ", ".join(f"{k}={_fmt(v)}" for k, v in result[kind].items()
                                       if not k.startswith("_")))
            runs.append(result)
        nursery.cancel_scope.cancel()
    return runs


async def _stop_on_signals() -> None:
    """SIGTERM or SIGHUP during the run: stop it as Ctrl-C does (a KeyboardInterrupt out of the
    run's nursery), so that everything it started is stopped."""
    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            raise KeyboardInterrupt(f"signal {signum}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


# =================================================================================================
# Set-up and tear-down
# =================================================================================================


def _prerequisites() -> None:
    from tests.fixtures.openssh import _skip_reason

    reason = _skip_reason()
    if reason:
        raise BenchError(reason)
    for tool in ("tmux", "ssh"):
        if shutil.which(tool) is None:
            raise BenchError(f"the benchmark needs {tool} (Debian's tmux, openssh-client)")


def write_cat_file(path: Path, size: int) -> int:
    """Text of 80-column lines (79 characters and a newline), numbered, about `size` bytes."""
    words = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor inc"
    count = max(1, size // 80)
    with open(path, "wb") as f:
        for start in range(0, count, 10000):
            f.write(b"".join(b"%08d %s\n" % (n, words[: 70]) for n in range(start, min(count, start + 10000))))
    path.chmod(0o644)
    return path.stat().st_size


def run_benchmark(options: Options) -> dict[str, Any]:
    import trio

    from tests.fixtures.openssh import TEST_USER, OpenSshAccount, _ensure_user, _keygen, start_sshd

    _prerequisites()
    started = datetime.datetime.now(datetime.timezone.utc)
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="cosession-bench-"))
    server = None
    gateway = None
    ctx: Context | None = None
    tmux_socket = f"cosession-bench-{os.getpid()}"
    try:
        password, home = _ensure_user()
        private, public = _keygen(work / "id_ed25519")
        account = OpenSshAccount(TEST_USER, password, home, private, public, "", "", "", public + "\n")
        server = start_sshd(account)
        say(options, f"sshd on 127.0.0.1:{server.port}")
        cat_path = server.directory / "cat.txt"  # sshd's own directory (0755): the test user reads it
        cat_bytes = write_cat_file(cat_path, int(options.cat_mb * 1e6))
        gateway = GatewayProcess({
            "host": server.host, "port": server.port, "username": server.username, "private_key": private,
            "host_key": server.host_key, "sessions": max(1, options.parallel), "users": user_names(options),
            "settings": options.settings,
        }, work / "gateway.log")
        say(options, f"gateway on {gateway.info['base_url']} (pid {gateway.pid})")
        ctx = Context(options, server, work / "id_ed25519", cat_path, cat_bytes, gateway, {}, tmux_socket,
                      str(work / "ctl"))
        try:
            runs = trio.run(_main, ctx)
        except BaseExceptionGroup as group:
            raise _first_cause(group) from group
    finally:
        if ctx is not None:
            for client in ctx.pty_clients:
                client.kill()
        if server is not None:
            # the tmux server left its session (a daemon, not under sshd): end it as its user would
            with contextlib.suppress(Exception):
                subprocess.run(["runuser", "-u", server.username, "--", "tmux", "-L", tmux_socket, "kill-server"],
                               capture_output=True, timeout=10)
            with contextlib.suppress(Exception):
                (Path("/tmp") / f"tmux-{pwd.getpwnam(server.username).pw_uid}" / tmux_socket).unlink(missing_ok=True)
        if gateway is not None:
            gateway.stop()
        if server is not None:
            server.stop()
            shutil.rmtree(server.directory, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "command": command_line(),
        "commit": _git_commit(),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "options": dataclasses.asdict(options),
        "cat_bytes": cat_bytes,
        "runs": runs,
        "summary": summarise(runs),
    }


def _first_cause(group: BaseExceptionGroup) -> BaseException:
    """What to report of the run nursery's failures: an interruption, else our own error, else
    the first failure."""
    leaves: list[BaseException] = []
    todo: list[BaseException] = [group]
    while todo:
        exc = todo.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            todo.extend(exc.exceptions)
        else:
            leaves.append(exc)
    for kind in (KeyboardInterrupt, BenchError):
        for exc in leaves:
            if isinstance(exc, kind):
                return exc
    return leaves[0] if leaves else group


def _git_commit() -> str:
    """The commit measured, with "+changes" if the working tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+changes" if dirty else "")


def command_line() -> str:
    args = " ".join(shlex.quote(a) for a in sys.argv[1:] if a != "--gateway-child")
    return f".venv/bin/python bench/ssh_websocket.py {args}".strip()


def machine_info() -> dict[str, Any]:
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "ssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
        "tmux": subprocess.run(["tmux", "-V"], capture_output=True, text=True).stdout.strip(),
    }


# =================================================================================================
# Report
# =================================================================================================

# key, label, unit; a ratio cosession / tmux is given for every key not in NOT_COMPARED
FIGURES: list[tuple[str, str, str]] = [
    ("line_p50_ms", "Line latency, input → each viewer, p50", "ms"),
    ("line_p99_ms", "Line latency, input → each viewer, p99", "ms"),
    ("line_all_p50_ms", "Line latency, input → all viewers have it, p50", "ms"),
    ("line_all_p99_ms", "Line latency, input → all viewers have it, p99", "ms"),
    ("line_echo_p50_ms", "Line latency, input → the controller itself, p50", "ms"),
    ("gateway_p50_ms", "Fan-out latency, gateway gets the line from sshd → each viewer, p50", "ms"),
    ("gateway_p99_ms", "Fan-out latency, gateway gets the line from sshd → each viewer, p99", "ms"),
    ("gateway_rtt_p50_ms", "Input → gateway gets the line back from sshd, p50", "ms"),
    ("lines_lost", "Line markers never received (all viewers, all lines)", ""),
    ("line_messages_per_line", "Websocket messages per line, per viewer", ""),
    ("cat_effective_mbps", "cat: file size / time to show its end, per viewer (median)", "MB/s"),
    ("cat_effective_min_mbps", "cat: the same, slowest viewer", "MB/s"),
    ("cat_received_mbps", "cat: bytes received / that time, per viewer (median)", "MB/s"),
    ("cat_received_mb", "cat: bytes received per viewer (median)", "MB"),
    ("cat_seconds", "cat: time until the last viewer shows its end", "s"),
    ("cat_controller_s", "cat: time until the controller itself shows its end", "s"),
    ("cat_resyncs", "cat: resyncs (all viewers)", ""),
    ("interrupt_ms", "Ctrl-C during a bounded `yes` flood → the controller's prompt is back", "ms"),
    ("interrupt_all_ms", "The same → every viewer shows the prompt", "ms"),
    ("interrupt_received_mb", "The same: bytes the controller received from `yes` until then", "MB"),
    ("late_ms", "Late joiner: connect → keyframe (tmux: over an open SSH connection)", "ms"),
    ("late_max_ms", "Late joiner: the slowest of the samples (tmux: over an open SSH connection)", "ms"),
    ("late_join_ms", "Late joiner: join message sent → keyframe", "ms"),
    ("late_fresh_ssh_ms", "Late joiner: new ssh + tmux attach → screen drawn", "ms"),
    ("late_keyframe_kb", "Late joiner: keyframe / attach redraw size", "KiB"),
    ("cpu_idle_fanout_pct", "CPU idle, fan-out process (gateway; tmux server), % of a core", "%"),
    ("cpu_idle_total_pct", "CPU idle, server total (+ sshd and its children), % of a core", "%"),
    ("cpu_lines_fanout_pct", "CPU during lines, fan-out process, % of a core", "%"),
    ("cpu_lines_total_pct", "CPU during lines, server total, % of a core", "%"),
    ("cpu_cat_fanout_s", "CPU for the whole cat, fan-out process", "s"),
    ("cpu_cat_total_s", "CPU for the whole cat, server total", "s"),
    ("cpu_cat_screen_s", "CPU for the whole cat, of which the screen model's parser (pyte)", "s"),
    ("cpu_cat_fanout_pct", "CPU during cat, fan-out process, % of a core", "%"),
    ("gateway_peak_rss_mb", "Gateway peak RSS (whole run)", "MB"),
    ("load1", "Machine: load average (1 min) when the side's run began", ""),
    ("cpu_pressure_pct", "Machine: CPU pressure (PSI some avg10) when the side's run began", "%"),
    ("par_line_p50_ms", "PARALLEL sessions: line latency, input → each viewer, p50", "ms"),
    ("par_line_p99_ms", "PARALLEL sessions: line latency, input → each viewer, p99", "ms"),
    ("par_lines_lost", "PARALLEL sessions: line markers never received", ""),
    ("par_cpu_lines_fanout_pct", "PARALLEL sessions: CPU per session, fan-out process, % of a core", "%"),
    ("par_cpu_lines_total_pct", "PARALLEL sessions: CPU per session, server total, % of a core", "%"),
]
NOT_COMPARED = {
    "lines_lost", "line_messages_per_line", "cat_resyncs", "par_lines_lost", "late_join_ms", "late_fresh_ssh_ms",
    "gateway_p50_ms", "gateway_p99_ms", "gateway_rtt_p50_ms", "gateway_peak_rss_mb", "cpu_cat_screen_s",
    "cat_received_mb", "late_keyframe_kb", "interrupt_received_mb", "cpu_idle_fanout_pct", "cpu_idle_total_pct",
    "load1", "cpu_pressure_pct",
}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for key, _, _ in FIGURES:
        entry: dict[str, Any] = {}
        for kind in ("cosession", "tmux"):
            values = [r[kind][key] for r in runs if r[kind].get(key) is not None]
            if values:
                entry[kind] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                               "n": len(values)}
        c, t = entry.get("cosession"), entry.get("tmux")
        if key not in NOT_COMPARED and c and t and t["median"]:
            entry["ratio"] = c["median"] / t["median"]
        summary[key] = entry
    return summary


def _num(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "—"
    if entry["n"] == 1 or entry["min"] == entry["max"]:
        return _num(entry["median"])
    return f"{_num(entry['median'])} ({_num(entry['min'])}–{_num(entry['max'])})"


def _settings_text(options: dict[str, Any]) -> str:
    changed = options.get("settings") or {}
    if not changed:
        return "default settings (flush 16 ms / 64 KiB, 1 MiB queue per participant)"
    return "settings changed from the defaults: " + ", ".join(
        f"`{section}.{key} = {value}`" for section, values in changed.items() for key, value in values.items())


def markdown(report: dict[str, Any]) -> str:
    options, machine, summary = report["options"], report["machine"], report["summary"]
    runs = len(report["runs"])
    lines = [
        BEGIN,
        f"Command: `{report['command']}` — {report['date']}"
        + (f", commit {report['commit']}" if report.get("commit") else "")
        + f"; {runs} run(s), medians with the spread (min–max) over the runs.",
        "",
        f"Machine: {machine['nproc']} cores, {machine['memory_gib']} GiB, Python {machine['python']}, "
        f"Linux {machine['kernel']}, {machine['ssh']}, {machine['tmux']}; load average at the start "
        f"{' / '.join(str(x) for x in machine['load_average'])} (shared machine).",
        "",
        f"Workload: 1 controller + {options['viewers']} viewers, terminal {COLS}x{ROWS}; "
        f"{options['lines']} lines every {options['line_interval'] * 1000:g} ms; "
        f"cat of {report['cat_bytes'] / 1e6:.0f} MB; Ctrl-C {options.get('interrupt_after', 0):g} s into "
        f"`yes | head -c` {options.get('flood_mb', 0):g} MB; "
        f"{options['late']} late joiners during `top`; "
        f"{options['parallel']} sessions in parallel for the PARALLEL rows. "
        f"cosession: {_settings_text(options)}, gateway in its own process. "
        f"tmux: {options['viewers'] + 1} `ssh -tt` clients running `tmux attach` "
        f"to one session, `status off`.",
        "",
        "| Figure | cosession | tmux + ssh | cosession / tmux |",
        "| --- | --- | --- | --- |",
    ]
    for key, label, unit in FIGURES:
        entry = summary.get(key, {})
        if not entry:
            continue
        ratio = f"{entry['ratio']:.2f}" if "ratio" in entry else ""
        name = f"{label}, {unit}" if unit and unit != "%" else label
        lines.append(f"| {name} | {_cell(entry.get('cosession'))} | {_cell(entry.get('tmux'))} | {ratio} |")
    lines.append(END)
    return "\n".join(lines)


def write_docs(path: Path, block: str) -> None:
    """Replace the generated block inside this benchmark's section (only there)."""
    text = path.read_text()
    at = text.find(SECTION)
    if at == -1:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n"
    else:
        body_start = at + len(SECTION)
        next_section = text.find("\n## ", body_start)
        body_end = len(text) if next_section == -1 else next_section + 1
        body = text[body_start:body_end]
        if BEGIN in body and END in body:
            body = body[:body.index(BEGIN)] + block + body[body.index(END) + len(END):]
        else:
            body = body.replace("(measurements follow)", block) if "(measurements follow)" in body \
                else body.rstrip("\n") + f"\n\n{block}\n"
        text = text[:body_start] + body + text[body_end:]
    path.write_text(text)


# =================================================================================================
# Command line
# =================================================================================================


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--viewers", type=int, default=10, help="viewers per session (the cap is 10)")
    parser.add_argument("--cat-mb", type=float, default=50.0, help="size of the file the controller cats, MB")
    parser.add_argument("--lines", type=int, default=200, help="marker lines in the latency phase")
    parser.add_argument("--line-interval", type=float, default=0.05, help="seconds between two lines")
    parser.add_argument("--late", type=int, default=5, help="late joiners (samples) per run")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of the idle CPU phase")
    parser.add_argument("--parallel", type=int, default=3, help="sessions in the parallel phase (1: skip it)")
    parser.add_argument("--flood-mb", type=float, default=10.0,
                        help="MB of `yes` the controller interrupts with Ctrl-C (0: skip the phase)")
    parser.add_argument("--interrupt-after", type=float, default=0.3,
                        help="seconds from the `yes` command to the controller's Ctrl-C")
    parser.add_argument("--setting", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a gateway setting for a diagnostic run (VALUE is JSON), e.g. gateway.flush_ms=0")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.add_argument("--write-docs", metavar="FILE", help="write the table into FILE's section")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--from-json", metavar="FILE", help="measure nothing: render a report saved by --json")
    parser.add_argument("--gateway-child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.gateway_child:
        return gateway_child()
    if not 1 <= args.viewers <= 10:
        print("--viewers: 1 to 10 (the product's cap)", file=sys.stderr)
        return 2
    settings: dict[str, dict[str, Any]] = {}
    for item in args.setting:
        name, _, value = item.partition("=")
        section, _, key = name.partition(".")
        if not (section and key and value):
            print(f"--setting {item!r}: expected SECTION.KEY=VALUE", file=sys.stderr)
            return 2
        try:
            settings.setdefault(section, {})[key] = json.loads(value)
        except ValueError:
            settings.setdefault(section, {})[key] = value
    # SIGINT is ignored in a job started in the background by a shell without job control:
    # take it back (trio handles it), and make SIGTERM and SIGHUP stop the set-up and tear-down
    # the same way (during the run, `_stop_on_signals`), so that what the run started is stopped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.default_int_handler)
    options = Options(runs=args.runs, viewers=args.viewers, cat_mb=args.cat_mb, lines=args.lines,
                      line_interval=args.line_interval, late=args.late, idle=args.idle,
                      parallel=max(1, args.parallel), flood_mb=args.flood_mb, interrupt_after=args.interrupt_after,
                      progress=not args.quiet, settings=settings)
    try:
        if args.from_json:
            report = json.loads(Path(args.from_json).read_text())
        else:
            report = run_benchmark(options)
    except BenchError as exc:
        print(f"bench/ssh_websocket.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/ssh_websocket.py: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    block = markdown(report)
    if args.write_docs:
        write_docs(Path(args.write_docs), block)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        print(block)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())

"""Joint VNC sessions through real websockets, against 11 clients sharing Xvnc through websockify.

    .venv/bin/python bench/vnc_websocket.py [--runs 3] [--viewers 10] [--rate 10] [--marks 30]
                                            [--full 8] [--late 8] [--json] [--write-docs docs/benchmarks.md]

Needs Debian's tigervnc-standalone-server (Xvnc), python3-tk's Tk (the workload program) and
PyPI's websockify 0.13 (in the test extras). Everything runs on 127.0.0.1 and stops by itself;
every wait is bounded. The machine is shared: read the spread, not one number.

What runs (one Xvnc, 1920x1080x24, `FrameRate=60`, the same for both sides):

- **the workload** (bench/vnc_workload.py) on that desktop: four 320x180 photo-like regions
  repainted `--rate` times a second; a 96x96 marker square repainted on each `m` key; the whole
  screen replaced on each `f` key (two photo-like 1920x1080 images);
- **direct** (how a VNC desktop is shared today): `Xvnc -AlwaysShared` behind websockify 0.13;
  1 controller + N viewers, each its own websocket through websockify to Xvnc, each asking for
  what noVNC asks (Tight, JPEG quality 6, ...): the server encodes for each client;
- **cosession**: the gateway (in its own process, `--gateway-child`) with one VNC endpoint on
  that Xvnc (its password stored); 1 controller + N viewers, each a websocket to the gateway
  speaking RFB as noVNC does: the gateway decodes once and sends everyone the same bytes.

Clients read rectangles' positions and sizes only (protocols.vnc.read_update frames them; no
pixel is decoded), so the clients' CPU stays small beside what is measured. Each side runs
alone (the other's clients disconnected) and the order alternates between runs.

Figures, per side:

- **latency**: the controller sends `m` (KeyEvent down and up); per viewer, the time until an
  update with a rectangle over the marker square has been read. p50 and p99 over all viewers
  and marks; "last viewer" is per mark the time until every viewer has it;
- **full screen**: the controller sends `f`; per viewer, the time until rectangles covering 95%
  of the screen have been read; the last of the N viewers, p50 and max over the changes;
- **CPU**: process CPU (utime+stime from /proc) of the server side (cosession: the gateway +
  Xvnc; direct: websockify + Xvnc) over `--seconds` of the steady workload, with the controller
  only and with the controller and N viewers; *marginal per viewer* is the difference over N;
- **bytes per viewer**: what one viewer received per second over that steady window;
- **late join**: a fresh viewer (websocket, RFB handshake) until rectangles covering the whole
  1920x1080 desktop have been read: cosession's keyframe, the direct path's first full update.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ssh_websocket import (  # noqa: E402 - the path above first
    REPLY_PREFIX, GatewayProcess as _SshGatewayProcess, _first_cause, _git_commit, cpu_pressure, cpu_sample,
    cpu_seconds, machine_info,
)

MARK = (40, 40, 96, 96)  # bench/vnc_workload.py's marker square
PASSWORD = "bench-password-1"
SECTION = "## Joint VNC sessions through real websockets"
BEGIN = "<!-- bench:vnc_websocket:begin -->"
END = "<!-- bench:vnc_websocket:end -->"
KEY_M, KEY_F = 0x6D, 0x66
NOVNC_ENCODINGS = (7, -260, 16, 1, 0, -32 + 6, -256 + 2, -223, -224, -308, -307, -239)


class BenchError(Exception):
    pass


@dataclasses.dataclass
class Options:
    runs: int = 3
    viewers: int = 10
    rate: float = 10.0
    marks: int = 30
    mark_interval: float = 0.25
    full: int = 8
    late: int = 8
    seconds: float = 8.0
    width: int = 1920
    height: int = 1080
    sides: str = "cosession,direct"
    quiet: bool = False


def say(options: Options, text: str) -> None:
    if not options.quiet:
        print(text, file=sys.stderr, flush=True)


# =================================================================================================
# The gateway child
# =================================================================================================


def gateway_child() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from config.settings import load
    from cosession.loadtest_ws import InProcessGateway
    from engine.messages import EndpointProtocol

    config = json.loads(sys.stdin.readline())

    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(REPLY_PREFIX + json.dumps(message) + "\n")
        sys.stdout.flush()

    with tempfile.TemporaryDirectory(prefix="cosession-vnc-bench-gw-") as tmp:
        gateway = InProcessGateway(load(env={}), Path(tmp)).start()
        try:
            services = gateway.services
            record = services.endpoints.create("bench-desktop", EndpointProtocol.VNC, config["host"], config["port"],
                                               password=config["password"], joint_session=True)
            for name in config["users"]:
                user = services.users.create(name, PASSWORD)
                services.grants.grant(record.id, user.id)
            reply({"base_url": gateway.base_url, "endpoint": record.id, "pid": os.getpid()})
            for line in sys.stdin:
                if line.strip() == "stop":
                    break
        finally:
            gateway.stop()
    reply({"stopped": True})
    return 0


class GatewayProcess(_SshGatewayProcess):
    """The SSH benchmark's handle on its gateway child, running this file's child instead."""

    def __init__(self, config: dict[str, Any], log_path: Path) -> None:  # noqa: super().__init__ starts the SSH child
        self._log = open(log_path, "wb")
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--gateway-child"], cwd=str(ROOT),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, start_new_session=True)
        self._buffer = b""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(config) + "\n").encode())
        self.proc.stdin.flush()
        self.info = self._answer(60)
        self.pid = self.info["pid"]


# =================================================================================================
# Clients: RFB over a websocket, rectangles' geometry only
# =================================================================================================


class WsBytes:
    """A trio ReceiveStream of a websocket's binary messages; text messages go to `on_text`."""

    def __init__(self, ws: Any, on_text: Callable[[str], None]) -> None:
        self.ws = ws
        self.on_text = on_text
        self.received = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        from trio_websocket import ConnectionClosed

        while True:
            try:
                message = await self.ws.get_message()
            except ConnectionClosed:
                return b""
            if isinstance(message, str):
                self.on_text(message)
                continue
            self.received += len(message)
            return bytes(message)


class Viewer:
    """One participant: reads updates; records, per update, its time and rectangles."""

    def __init__(self, name: str) -> None:
        import trio

        self.name = name
        self._trio = trio
        self.ws: Any = None
        self.stream: WsBytes | None = None
        self.updates = 0
        self.listeners: list[Callable[[int, list[tuple[int, int, int, int]]], None]] = []
        self.control: list[dict[str, Any]] = []
        self.ready = trio.Event()
        self.closed = False

    def on_text(self, text: str) -> None:
        self.control.append(json.loads(text))

    async def rfb(self, *, password: str | None, request_updates: bool) -> tuple[Any, Any]:
        """The client side of the RFB handshake, then noVNC's pixel format and encodings."""
        from protocols import rfb
        from protocols.vnc import Framing, RfbReader

        assert self.stream is not None
        reader = RfbReader(self.stream, self.name)
        version = await reader.read(12)
        if not version.startswith(b"RFB 003.008"):
            raise BenchError(f"{self.name}: {version!r}")
        await self.ws.send_message(rfb.VERSION_3_8)
        (count,) = await reader.unpack(struct.Struct(">B"))
        types = await reader.read(count)
        if password and 2 in types:
            await self.ws.send_message(b"\x02")
            challenge = await reader.read(16)
            await self.ws.send_message(rfb.vnc_auth_response(password, challenge))
        else:
            await self.ws.send_message(b"\x01")
        (result,) = await reader.unpack(struct.Struct(">I"))
        if result:
            raise BenchError(f"{self.name}: security result {result}")
        await self.ws.send_message(b"\x01")
        width, height = await reader.unpack(struct.Struct(">HH"))
        await reader.read(16)
        (length,) = await reader.unpack(struct.Struct(">I"))
        await reader.read(length)
        framing = Framing(width, height)
        await self.ws.send_message(rfb.pack(rfb.SetPixelFormat(rfb.RGBX)) + rfb.pack(rfb.SetEncodings(NOVNC_ENCODINGS))
                                   + rfb.pack(rfb.FramebufferUpdateRequest(False, 0, 0, width, height)))
        return reader, framing

    async def read_updates(self, reader: Any, framing: Any, *, request_updates: bool) -> None:
        from protocols import rfb
        from protocols.vnc import read_update

        try:
            while True:
                (kind,) = await reader.unpack(struct.Struct(">B"))
                if kind == 0:
                    rects = await read_update(reader, framing, tight_png=True)
                    now = time.perf_counter_ns()
                    self.updates += 1
                    if request_updates:  # as noVNC does after each update
                        await self.ws.send_message(rfb.pack(rfb.FramebufferUpdateRequest(
                            True, 0, 0, framing.width, framing.height)))
                    boxes = [(r.x, r.y, r.width, r.height) for r in rects if r.encoding >= -260 and r.encoding not in (
                        -223, -308, -239, -307)]
                    for listener in list(self.listeners):
                        listener(now, boxes)
                elif kind == 2:
                    continue
                elif kind == 3:
                    (length,) = await reader.unpack(struct.Struct(">3xI"))
                    await reader.read(length)
                else:
                    raise BenchError(f"{self.name}: server message {kind}")
        except Exception as exc:
            if not self.closed:
                raise BenchError(f"{self.name}: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        self.closed = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.aclose()


def covers(box: tuple[int, int, int, int], target: tuple[int, int, int, int]) -> bool:
    x, y, w, h = box
    tx, ty, tw, th = target
    return x < tx + tw and tx < x + w and y < ty + th and ty < y + h


class Side:
    name = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    async def connect(self, nursery: Any, name: str, controller: bool) -> Viewer:
        raise NotImplementedError

    def server_pids(self) -> list[int]:
        raise NotImplementedError


class DirectSide(Side):
    """Xvnc behind websockify: every client its own RFB connection to the server."""

    name = "direct"

    def __init__(self, options: Options, xvnc: Any, websockify_port: int, websockify_pid: int) -> None:
        super().__init__(options)
        self.xvnc = xvnc
        self.url = f"ws://127.0.0.1:{websockify_port}/"
        self.websockify_pid = websockify_pid

    async def connect(self, nursery: Any, name: str, controller: bool) -> Viewer:
        from trio_websocket import connect_websocket_url

        viewer = Viewer(name)
        viewer.ws = await connect_websocket_url(nursery, self.url, subprotocols=["binary"],
                                                max_message_size=1 << 24, message_queue_size=64)
        viewer.stream = WsBytes(viewer.ws, viewer.on_text)
        reader, framing = await viewer.rfb(password=self.xvnc.password, request_updates=True)
        nursery.start_soon(lambda: viewer.read_updates(reader, framing, request_updates=True))
        return viewer

    def server_pids(self) -> list[int]:
        return [self.xvnc.process.pid, self.websockify_pid]


class CosessionSide(Side):
    name = "cosession"

    def __init__(self, options: Options, xvnc: Any, gateway: GatewayProcess, cookies: dict[str, str]) -> None:
        super().__init__(options)
        self.xvnc = xvnc
        self.gateway = gateway
        self.cookies = cookies
        self.session_id = ""
        self.used = 0

    async def connect(self, nursery: Any, name: str, controller: bool) -> Viewer:
        from cosession.join import connect_socket

        base = self.gateway.info["base_url"]
        viewer = Viewer(name)
        path = (f"/ws/endpoints/{self.gateway.info['endpoint']}/start" if controller
                else f"/ws/sessions/{self.session_id}")
        socket = await connect_socket(nursery, base, path, self.cookies[name], message_queue_size=64,
                                      connect_timeout=30)
        viewer.ws = socket
        viewer.stream = WsBytes(socket, viewer.on_text)
        first = {"type": "start", "cols": 80, "rows": 24} if controller else {"type": "join"}
        await socket.send_message(json.dumps(first))
        reader, framing = await viewer.rfb(password=None, request_updates=False)
        joined = next((m for m in viewer.control if m.get("type") == "joined"), None)
        if joined is None:
            raise BenchError(f"{name}: no joined before RFB ({viewer.control[-3:]})")
        if controller:
            self.session_id = joined["session_id"]
        nursery.start_soon(lambda: viewer.read_updates(reader, framing, request_updates=True))
        return viewer

    def server_pids(self) -> list[int]:
        return [self.xvnc.process.pid, self.gateway.pid]


# =================================================================================================
# Phases
# =================================================================================================


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def key(viewer: Viewer, keysym: int) -> int:
    from protocols import rfb

    sent = time.perf_counter_ns()
    await viewer.ws.send_message(rfb.pack(rfb.KeyEvent(True, keysym)) + rfb.pack(rfb.KeyEvent(False, keysym)))
    return sent


async def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    import trio

    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.002)  # polling the clients' counters; reads run in their own tasks
        return True
    return predicate()


async def phase_marks(side: Side, controller: Viewer, viewers: list[Viewer]) -> dict[str, Any]:
    import trio

    each: list[float] = []
    last: list[float] = []
    for _ in range(side.options.marks):
        seen: dict[str, int] = {}

        def listener(v: Viewer) -> Callable[[int, list], None]:
            def on(now: int, boxes: list) -> None:
                if v.name not in seen and any(covers(b, MARK) for b in boxes):
                    seen[v.name] = now
            return on

        hooks = [(v, listener(v)) for v in viewers]
        for v, hook in hooks:
            v.listeners.append(hook)
        sent = await key(controller, KEY_M)
        await wait_until(lambda: len(seen) == len(viewers), 5)
        for v, hook in hooks:
            v.listeners.remove(hook)
        delays = [(t - sent) / 1e6 for t in seen.values()]
        each += delays
        if len(seen) == len(viewers):
            last.append(max(delays))
        await trio.sleep(side.options.mark_interval)
    return {"latency_p50_ms": pct(each, 50), "latency_p99_ms": pct(each, 99),
            "latency_last_p50_ms": pct(last, 50), "latency_last_p99_ms": pct(last, 99),
            "marks_missed": side.options.marks - len(last)}


async def phase_full(side: Side, controller: Viewer, viewers: list[Viewer]) -> dict[str, Any]:
    import trio

    lasts: list[float] = []
    firsts: list[float] = []
    for _ in range(side.options.full):
        area: dict[str, int] = {v.name: 0 for v in viewers}
        done: dict[str, int] = {}

        def listener(v: Viewer) -> Callable[[int, list], None]:
            def on(now: int, boxes: list) -> None:
                area[v.name] += sum(w * h for _, _, w, h in boxes)
                if v.name not in done and area[v.name] >= 0.95 * side.options.width * side.options.height:
                    done[v.name] = now
            return on

        hooks = [(v, listener(v)) for v in viewers]
        for v, hook in hooks:
            v.listeners.append(hook)
        sent = await key(controller, KEY_F)
        await wait_until(lambda: len(done) == len(viewers), 10)
        for v, hook in hooks:
            v.listeners.remove(hook)
        if len(done) == len(viewers):
            times = sorted((t - sent) / 1e6 for t in done.values())
            firsts.append(times[0])
            lasts.append(times[-1])
        await trio.sleep(0.5)
    return {"full_first_p50_ms": pct(firsts, 50), "full_last_p50_ms": pct(lasts, 50),
            "full_last_max_ms": max(lasts) if lasts else None}


async def phase_cpu(side: Side, viewers: list[Viewer]) -> dict[str, Any]:
    import trio

    before = cpu_sample({"server": side.server_pids()})
    received = [v.stream.received for v in viewers if v.stream]
    started = time.monotonic()
    await trio.sleep(side.options.seconds)
    wall = time.monotonic() - started
    after = cpu_sample({"server": side.server_pids()})
    per_viewer = [(v.stream.received - r) / wall for v, r in zip(viewers, received) if v.stream]
    return {"cpu_pct": cpu_seconds(before, after)["server"] / wall * 100,
            "bytes_per_viewer_s": statistics.median(per_viewer) if per_viewer else None}


async def phase_late(side: Side, nursery: Any, n: int, viewers: list[Viewer]) -> dict[str, Any]:
    """A viewer leaves (cosession's cap is 10 viewers), then each late joiner in turn joins and
    leaves again, with a user of its own."""
    import trio

    await viewers.pop().aclose()
    await trio.sleep(0.5)
    times: list[float] = []
    for i in range(side.options.late):
        area = [0]
        done: list[int] = []

        def on(now: int, boxes: list) -> None:
            area[0] += sum(w * h for _, _, w, h in boxes)
            if not done and area[0] >= side.options.width * side.options.height:
                done.append(now)

        started = time.perf_counter_ns()
        viewer = await side.connect(nursery, f"u{n + i}", False)
        viewer.listeners.append(on)
        await wait_until(lambda: bool(done), 10)
        if done:
            times.append((done[0] - started) / 1e6)
        await viewer.aclose()
        await trio.sleep(0.3)
    return {"late_p50_ms": pct(times, 50), "late_p99_ms": pct(times, 99)}


async def measure(side: Side, options: Options) -> dict[str, Any]:
    import trio

    result: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        controller = await side.connect(nursery, "u0", True)
        await trio.sleep(1.0)
        alone = await phase_cpu(side, [controller])
        viewers = [await side.connect(nursery, f"u{i + 1}", False) for i in range(options.viewers)]
        await trio.sleep(1.0)
        loaded = await phase_cpu(side, viewers)
        result.update({"cpu_controller_only_pct": alone["cpu_pct"], "cpu_all_pct": loaded["cpu_pct"],
                       "cpu_per_viewer_pct": (loaded["cpu_pct"] - alone["cpu_pct"]) / options.viewers,
                       "bytes_per_viewer_kbs": (loaded["bytes_per_viewer_s"] or 0) / 1e3})
        result.update(await phase_marks(side, controller, viewers))
        result.update(await phase_full(side, controller, viewers))
        result.update(await phase_late(side, nursery, options.viewers + 1, viewers))
        for v in [controller, *viewers]:
            await v.aclose()
        nursery.cancel_scope.cancel()
    return result


FIGURES = [
    ("latency_p50_ms", "key → viewer, p50", "ms"),
    ("latency_p99_ms", "key → viewer, p99", "ms"),
    ("latency_last_p99_ms", "key → last viewer, p99", "ms"),
    ("full_first_p50_ms", "full-screen change → first viewer, p50", "ms"),
    ("full_last_p50_ms", "full-screen change → last viewer, p50", "ms"),
    ("full_last_max_ms", "full-screen change → last viewer, max", "ms"),
    ("cpu_controller_only_pct", "CPU, controller only (server side)", "% of a core"),
    ("cpu_all_pct", "CPU, controller + viewers (server side)", "% of a core"),
    ("cpu_per_viewer_pct", "CPU per added viewer", "% of a core"),
    ("bytes_per_viewer_kbs", "bytes per viewer", "KB/s"),
    ("late_p50_ms", "late join to a full picture of the desktop, p50", "ms"),
    ("late_p99_ms", "late join to a full picture of the desktop, p99", "ms"),
    ("marks_missed", "marks a viewer never saw", ""),
]


async def _main(options: Options, xvnc: Any, gateway: GatewayProcess, websockify: tuple[int, int]) -> list[dict[str, Any]]:
    from cosession.join import login
    import trio

    names = [f"u{i}" for i in range(options.viewers + 1 + options.late)]
    base = gateway.info["base_url"]
    cookies = {name: await trio.to_thread.run_sync(login, base, name, PASSWORD) for name in names}
    runs = []
    for run in range(options.runs):
        sides: list[Side] = [side for side in (CosessionSide(options, xvnc, gateway, cookies),
                                               DirectSide(options, xvnc, *websockify))
                             if side.name in options.sides.split(",")]
        if run % 2:
            sides.reverse()
        result: dict[str, Any] = {"pressure_start": cpu_pressure()}
        for side in sides:
            say(options, f"run {run + 1}: {side.name} ...")
            result[side.name] = await measure(side, options)
            say(options, f"  {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result[side.name].items()})}")
        runs.append(result)
    return runs


def run_benchmark(options: Options) -> dict[str, Any]:
    import trio

    from tests.fixtures.xvnc import start_xvnc

    if shutil.which("Xvnc") is None:
        raise BenchError("needs Xvnc (tigervnc-standalone-server)")
    started = datetime.datetime.now(datetime.timezone.utc)
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="cosession-vnc-bench-"))
    processes: list[subprocess.Popen] = []
    gateway = None
    try:
        with start_xvnc(options.width, options.height, password=PASSWORD[:8], extra=("-FrameRate=60",)) as xvnc:
            workload = xvnc.run(sys.executable, str(ROOT / "bench" / "vnc_workload.py"), str(options.width),
                                str(options.height),
                                str(options.rate), stdout=subprocess.PIPE)
            assert workload.stdout is not None
            if workload.stdout.readline().strip() != b"ready":
                raise BenchError("the workload program did not start")
            from tests.fixtures.xvnc import _free_port

            ws_port = _free_port()
            log = open(work / "websockify.log", "wb")
            websockify = subprocess.Popen([sys.executable, "-m", "websockify", f"127.0.0.1:{ws_port}",
                                           f"127.0.0.1:{xvnc.port}"], stdout=log, stderr=log, start_new_session=True)
            processes.append(websockify)
            gateway = GatewayProcess({"host": xvnc.host, "port": xvnc.port, "password": xvnc.password,
                                      "users": [f"u{i}" for i in range(options.viewers + 1 + options.late)]},
                                     work / "gateway.log")
            say(options, f"Xvnc :{xvnc.display} on {xvnc.port}, websockify on {ws_port}, gateway {gateway.info['base_url']}")
            try:
                runs = trio.run(_main, options, xvnc, gateway, (ws_port, websockify.pid))
            except BaseExceptionGroup as group:
                raise _first_cause(group) from group
    finally:
        if gateway is not None:
            gateway.stop()
        for process in processes:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return {"command": ".venv/bin/python bench/vnc_websocket.py " + " ".join(sys.argv[1:]),
            "commit": _git_commit(), "date": started.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine,
            "options": dataclasses.asdict(options), "runs": runs, "summary": summarise(runs)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for key, _, _ in FIGURES:
        entry: dict[str, Any] = {}
        for kind in ("cosession", "direct"):
            values = [r[kind][key] for r in runs if r.get(kind, {}).get(key) is not None]
            if values:
                entry[kind] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        c, d = entry.get("cosession"), entry.get("direct")
        if c and d and d["median"]:
            entry["ratio"] = c["median"] / d["median"]
        summary[key] = entry
    return summary


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "—"
    fmt = (lambda x: f"{x:.1f}" if abs(x) < 100 else f"{x:.0f}")
    if entry["min"] == entry["max"]:
        return fmt(entry["median"])
    return f"{fmt(entry['median'])} ({fmt(entry['min'])}–{fmt(entry['max'])})"


def markdown(report: dict[str, Any]) -> str:
    o, m = report["options"], report["machine"]
    lines = [BEGIN, f"Command: `{report['command']}` — {report['date']}, commit {report['commit']}; "
             f"{len(report['runs'])} run(s), medians with the spread (min–max) over the runs.", "",
             f"Machine: {m['nproc']} cores, {m['memory_gib']} GiB, Python {m['python']}; load average at the "
             f"start {' / '.join(str(x) for x in m['load_average'])} (a shared machine: other work ran too).", "",
             f"Workload: Xvnc {o['width']}x{o['height']}x24 `FrameRate=60`; four 320x180 photo-like regions repainted "
             f"{o['rate']:g}/s; 1 controller + {o['viewers']} viewers asking for Tight, JPEG quality 6; "
             f"{o['marks']} marker keys, {o['full']} full-screen changes, {o['late']} late joins. Direct: each "
             f"client through websockify 0.13 to `Xvnc -AlwaysShared`.", "",
             "| Figure | cosession | direct (websockify) | cosession / direct |", "| --- | --- | --- | --- |"]
    for key, label, unit in FIGURES:
        entry = report["summary"].get(key) or {}
        ratio = f"{entry['ratio']:.2f}" if "ratio" in entry else ""
        lines.append(f"| {label}{', ' + unit if unit else ''} | {_cell(entry.get('cosession'))} | "
                     f"{_cell(entry.get('direct'))} | {ratio} |")
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--gateway-child"]:
        return gateway_child()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for field in dataclasses.fields(Options):
        if field.name == "quiet":
            continue
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--write-docs", metavar="FILE")
    args = parser.parse_args(argv)
    options = Options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Options) if f.name != "quiet"})
    report = run_benchmark(options)
    block = markdown(report)
    print(json.dumps(report, indent=2) if args.json else block)
    if args.write_docs:
        write_docs_section(Path(args.write_docs), block)
    return 0


def write_docs_section(path: Path, block: str) -> None:
    """Replace this benchmark's generated block in its section of `path` (or add the section)."""
    text = path.read_text()
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    elif SECTION in text:
        at = text.index(SECTION) + len(SECTION)
        text = text[:at] + f"\n\n{block}\n" + text[at:]
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())

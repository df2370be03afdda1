"""Joint RDP sessions through real websockets, against 11 xfreerdp clients on FreeRDP's shadow server.

    .venv/bin/python bench/rdp_websocket.py [--runs 3] [--viewers 10] [--rate 10] [--marks 30]
                                            [--late 8] [--json] [--write-docs docs/benchmarks.md]

Needs Debian's freerdp2-x11, freerdp2-shadow-x11, xvfb, tigervnc-standalone-server and
python3-tk (the workload program). Everything runs on 127.0.0.1 and stops by itself; every wait
is bounded. The machine is shared: read the spread, not one number.

What runs (the same for both sides):

- **the RDP server**: FreeRDP's shadow server (`freerdp-shadow-cli -auth`) sharing an Xvfb
  display of 1280x800x24 (an RDP session's default size) on which **the workload** runs (bench/vnc_workload.py, the VNC
  benchmark's: four 320x180 photo-like regions repainted `--rate` times a second, a 96x96
  marker square repainted on each `m` key);
- **direct** (how an RDP desktop is shared without cosession): every participant runs its own
  `xfreerdp` connected to the server, with the options cosession uses
  (`protocols.freerdp.freerdp_options`), each drawing full-screen into its own Xvnc of the same size
  (an X display to draw in, read over its unix socket); the controller's keys go in through its
  own display. The server encodes for every client;
- **cosession**: the gateway (in its own process: bench/desktop_websocket.py) with one RDP endpoint on
  that server: one xfreerdp in a private Xvnc for the session (children of the gateway), and
  1 controller + N viewers, each a websocket to the gateway speaking RFB as noVNC does.

Every participant is read the same way: an RFB reader that frames updates and reads only the
rectangles' positions and sizes (bench/desktop_websocket.py's `Viewer`); for direct it reads the
client's own display, for cosession the gateway's websocket. Each side runs alone and the order
alternates between runs.

Figures, per side:

- **latency**: the controller sends `m` (KeyEvent down and up), which repaints the 96x96
  marker square in the next colour; per viewer, the time until it has read the square's new
  colour. Colour, not rectangles: an RDP server's frames (a whole H.264 frame, a screen's worth
  of tiles) often cover the square without changing it. Each cosession viewer decodes the
  rectangles over the square's centre (the gateway's are stateless: a fill, a JPEG, a PNG); each
  direct client's display is also read by a second RFB connection that asks only for the
  square, in Raw. p50 and p99 over all viewers and marks, and per mark the last viewer;
- **CPU**: process CPU time (utime+stime from /proc, children included) over `--seconds` of
  the steady workload, with the controller only and with the controller and N viewers, for the
  *RDP server* (the shadow server), the *gateway side* (cosession: the gateway with its
  xfreerdp and Xvnc; direct: nothing) and the *clients* (direct: every xfreerdp and its
  display; cosession: none besides the readers, which run in this process); *per viewer* is the
  difference over N;
- **memory**: resident memory (RSS) per session on the gateway side: the session's xfreerdp
  and Xvnc plus what the gateway grew by; for direct, one client's xfreerdp and display;
- **bytes per viewer**: what one viewer received per second over the steady window;
- **late join**: a new participant until rectangles covering the whole desktop have been read:
  cosession's keyframe over a new websocket; direct: a new xfreerdp connecting to the server;
- **showing**, **late joins complete**: how many of the 1 + N participants showed the desktop
  when the CPU was measured (each is waited for up to 60 s, then measured as it is), and how
  many of the late joins completed within 15 s: a direct xfreerdp that the server never
  activates shows nothing and costs little, so these say what the other figures are over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.desktop_websocket import (  # noqa: E402 - the path above first
    KEY_M, MARK, PASSWORD, BenchError, CosessionSide as _CosessionSide, GatewayProcess, Side, Viewer, WsBytes,
    markdown as _markdown, parse_options, pct, report, say, wait_until,
    write_docs_section as _write_docs_section,
)
from bench.desktop_websocket import key as send_key  # noqa: E402
from bench.ssh_websocket import (  # noqa: E402
    _first_cause, _proc_status, cpu_pressure, cpu_sample, cpu_seconds, machine_info,
)

WIDTH, HEIGHT = 1280, 800  # an RDP session's default size (the launcher's)
SECTION = "## Joint RDP sessions through real websockets"
BEGIN = "<!-- bench:rdp_websocket:begin -->"
END = "<!-- bench:rdp_websocket:end -->"
TOOLS = ("Xvfb", "Xvnc", "xfreerdp", "freerdp-shadow-cli", "setpriv")


@dataclasses.dataclass
class Options:
    runs: int = 3
    viewers: int = 10
    rate: float = 10.0
    marks: int = 30
    mark_interval: float = 0.25
    late: int = 8
    seconds: float = 8.0
    sides: str = "cosession,direct"
    quiet: bool = False


# =================================================================================================
# Direct clients: xfreerdp in its own display, read over the display's unix socket
# =================================================================================================


MARK_CENTRE = (MARK[0] + MARK[2] // 2, MARK[1] + MARK[3] // 2)


def _pixel_of(rect: Any, x: int, y: int) -> tuple[int, int, int] | None:
    """The colour at (x, y) in a rectangle as the gateway or a Raw request sends it, if it is
    there and stateless (a Tight fill, JPEG or PNG, or Raw RGBX); None otherwise."""
    import simplejpeg

    from protocols.rfb import Encoding
    from protocols.rfb_browser import decode_png

    if not (rect.x <= x < rect.x + rect.width and rect.y <= y < rect.y + rect.height):
        return None
    dx, dy = x - rect.x, y - rect.y
    if rect.encoding == Encoding.RAW:
        i = (dy * rect.width + dx) * 4
        return rect.data[i], rect.data[i + 1], rect.data[i + 2]
    if rect.encoding in (Encoding.TIGHT, Encoding.TIGHT_PNG):
        kind = rect.control >> 4
        if kind == 8:
            return rect.data[0], rect.data[1], rect.data[2]
        if kind == 9:
            pixels = simplejpeg.decode_jpeg(rect.data, colorspace="RGB")
        elif kind == 10:
            pixels = decode_png(rect.data)
        else:
            return None
        return tuple(int(c) for c in pixels[dy, dx, :3])
    return None


class MarkerViewer(Viewer):
    """A participant that also knows the marker square's colour as it has read it."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.marker: tuple[int, int, int] | None = None
        self.marker_changed: list[tuple[int, tuple[int, int, int]]] = []  # (time, colour)

    def see(self, now: int, rects: list[Any]) -> None:
        if self.probe is None:  # a direct client's probe sees the square instead
            self.mark_seen(now, rects)

    def mark_seen(self, now: int, rects: list[Any]) -> None:
        for rect in rects:
            colour = _pixel_of(rect, *MARK_CENTRE)
            if colour is not None and colour != self.marker:
                self.marker = colour
                self.marker_changed.append((now, colour))

    probe: Any = None  # a direct client's marker probe


def _differs(a: tuple[int, int, int] | None, b: tuple[int, int, int] | None) -> bool:
    """Another marker colour (the workload's differ by far more than a JPEG's error)."""
    return a is None or b is None or max(abs(x - y) for x, y in zip(a, b)) > 60


class UnixRfb:
    """The websocket-like face (send_message, get_message, aclose) of an RFB unix socket, so
    that the shared `Viewer` reads a direct client's display as it reads a websocket."""

    def __init__(self, stream: Any) -> None:
        import trio

        self.stream = stream
        self._sending = trio.Lock()  # the reader's update requests and the controller's keys

    async def send_message(self, data: bytes) -> None:
        async with self._sending:
            await self.stream.send_all(data)

    async def get_message(self) -> bytes:
        from trio_websocket import ConnectionClosed

        data = await self.stream.receive_some(1 << 20)
        if not data:
            raise ConnectionClosed(None)
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()


class DirectClient:
    """One participant's own RDP client: xfreerdp full-screen in its own Xvnc."""

    def __init__(self, work: Path) -> None:
        import trio

        self.work = work
        self.xvnc: Any = None
        self.freerdp: subprocess.Popen | None = None
        self.display: Any = None
        self.mapped = trio.Event()  # xfreerdp's window is on its display: what it draws now is the desktop

    async def start(self, nursery: Any, host: str, port: int) -> None:
        from protocols.freerdp import XFREERDP, RdpOptions, freerdp_environment, freerdp_options
        from protocols.xvnc import WindowWatch, XvncUnavailable, start_xvnc

        for sub in ("home", "config", "certs"):
            (self.work / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.xvnc, self.display, cookie = await start_xvnc(self.work, width=WIDTH, height=HEIGHT, unix_socket=True,
                                                           cut_text=False, resizable=False)
        window = await WindowWatch.subscribe(self.display, cookie)

        async def watch() -> None:
            with contextlib.suppress(XvncUnavailable):  # the client left before its window came
                await window.wait_mapped(self.mapped)

        nursery.start_soon(watch)
        read, write = os.pipe()
        os.write(write, b"\n")  # no password: the shadow server runs without authentication
        os.close(write)
        self.freerdp = subprocess.Popen(
            [XFREERDP, *freerdp_options(host, port, RdpOptions(width=WIDTH, height=HEIGHT))],
            stdin=read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=freerdp_environment(self.work, self.display), cwd=self.work, start_new_session=True)
        os.close(read)

    def pids(self) -> list[int]:
        return [p for p in (self.xvnc.pid if self.xvnc else None, self.freerdp.pid if self.freerdp else None) if p]

    def rss_kib(self) -> int:
        return sum(_proc_status(pid).get("VmRSS", 0) for pid in self.pids())

    async def aclose(self) -> None:
        if self.freerdp is not None:
            self.freerdp.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.freerdp.wait(5)
            if self.freerdp.poll() is None:
                self.freerdp.kill()
                self.freerdp.wait()
        if self.xvnc is not None:
            await self.xvnc.end()
        shutil.rmtree(self.work, ignore_errors=True)


class DirectSide(Side):
    """Every participant its own xfreerdp connected to the shadow server."""

    name = "direct"

    def __init__(self, options: Options, server: Any, work: Path) -> None:
        super().__init__(options)
        self.server = server
        self.work = work
        self.clients: dict[str, DirectClient] = {}

    async def connect(self, nursery: Any, name: str, controller: bool) -> Viewer:
        import trio

        client = DirectClient(self.work / name)
        await client.start(nursery, self.server.host, self.server.port)
        self.clients[name] = client
        viewer = _DirectViewer(name, client)
        viewer.ws = UnixRfb(await trio.open_unix_socket(client.display.socket_path))
        viewer.stream = WsBytes(viewer.ws, viewer.on_text)
        reader, framing = await viewer.rfb(password=None, request_updates=True)
        nursery.start_soon(lambda: viewer.read_updates(reader, framing, request_updates=True))
        viewer.probe = MarkerProbe(viewer)
        await viewer.probe.start(nursery, client.display.socket_path)
        return viewer

    def server_pids(self) -> list[int]:
        return [self.server.processes["shadow"].pid]

    def gateway_pids(self) -> list[int]:
        return []

    def client_pids(self) -> list[int]:
        return [pid for client in self.clients.values() for pid in client.pids()]

    def session_rss_kib(self) -> int | None:
        sizes = [client.rss_kib() for client in self.clients.values()]
        return int(statistics.median(sizes)) if sizes else None


class _DirectViewer(MarkerViewer):
    def __init__(self, name: str, client: DirectClient) -> None:
        super().__init__(name)
        self.client = client

    async def aclose(self) -> None:
        self.closed = True  # before the probe's socket goes: its reader ends quietly
        if self.probe is not None:
            await self.probe.aclose()
        await super().aclose()
        await self.client.aclose()


class MarkerProbe:
    """A second RFB connection to a direct client's display that asks only for the marker
    square, in Raw: its colour as the client shows it, at a few bytes a change."""

    def __init__(self, viewer: MarkerViewer) -> None:
        self.viewer = viewer
        self.ws: Any = None

    async def start(self, nursery: Any, socket_path: str) -> None:
        import trio

        from protocols import rfb
        from protocols.rfb_decode import Framing, RfbReader

        self.ws = UnixRfb(await trio.open_unix_socket(socket_path))
        stream = WsBytes(self.ws, lambda text: None)
        reader = RfbReader(stream, self.viewer.name + " (marker)")
        await reader.read(12)
        await self.ws.send_message(rfb.VERSION_3_8)
        (count,) = await reader.unpack(struct.Struct(">B"))
        await reader.read(count)
        await self.ws.send_message(b"\x01")  # security None: the display's socket is private
        await reader.read(4)
        await self.ws.send_message(b"\x01")
        width, height = await reader.unpack(struct.Struct(">HH"))
        await reader.read(16)
        (length,) = await reader.unpack(struct.Struct(">I"))
        await reader.read(length)
        self.request = rfb.pack(rfb.FramebufferUpdateRequest(True, *MARK))
        await self.ws.send_message(rfb.pack(rfb.SetPixelFormat(rfb.RGBX)) + rfb.pack(rfb.SetEncodings((0,)))
                                   + rfb.pack(rfb.FramebufferUpdateRequest(False, *MARK)))
        nursery.start_soon(self._read, reader, Framing(width, height))

    async def _read(self, reader: Any, framing: Any) -> None:
        from protocols.rfb_decode import read_update

        try:
            while True:
                (kind,) = await reader.unpack(struct.Struct(">B"))
                if kind != 0:
                    raise BenchError(f"{self.viewer.name} (marker): server message {kind}")
                rects = await read_update(reader, framing)
                self.viewer.mark_seen(time.perf_counter_ns(), rects)
                await self.ws.send_message(self.request)
        except Exception as exc:
            if not self.viewer.closed:
                raise BenchError(f"{self.viewer.name} (marker): {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.aclose()


class CosessionSide(_CosessionSide):
    """The participants through the gateway, each also knowing the marker square's colour."""

    viewer_class = MarkerViewer

    def __init__(self, options: Options, server: Any, gateway: GatewayProcess, cookies: dict[str, str]) -> None:
        super().__init__(options, server, gateway, cookies)
        self.rss_before: int | None = None

    def server_pids(self) -> list[int]:
        return [self.xvnc.processes["shadow"].pid]

    def gateway_pids(self) -> list[int]:
        return [self.gateway.pid]

    def client_pids(self) -> list[int]:
        return []

    def session_rss_kib(self) -> int | None:
        from tests.fixtures.rdp import rdp_children

        session = sum(_proc_status(pid).get("VmRSS", 0) for pid, _ in rdp_children(self.gateway.pid))
        grown = _proc_status(self.gateway.pid).get("VmRSS", 0) - (self.rss_before or 0)
        return session + max(0, grown)


# =================================================================================================
# Phases
# =================================================================================================


async def phase_cpu(side: Any, viewers: list[Viewer]) -> dict[str, Any]:
    import trio

    groups = {"server": side.server_pids(), "gateway": side.gateway_pids(), "clients": side.client_pids()}
    before = cpu_sample(groups)
    received = [v.stream.received for v in viewers if v.stream]
    started = time.monotonic()
    await trio.sleep(side.options.seconds)
    wall = time.monotonic() - started
    seconds = cpu_seconds(before, cpu_sample(groups))
    per_viewer = [(v.stream.received - r) / wall for v, r in zip(viewers, received) if v.stream]
    return {"cpu": {name: value / wall * 100 for name, value in seconds.items()},
            "bytes_per_viewer_s": statistics.median(per_viewer) if per_viewer else None}


def _showing(viewer: Viewer) -> bool:
    client = getattr(viewer, "client", None)
    return viewer.updates > 0 and (client is None or client.mapped.is_set())


async def phase_marks(side: Any, controller: Viewer, viewers: list[MarkerViewer]) -> dict[str, Any]:
    import trio

    each: list[float] = []
    last: list[float] = []
    for _ in range(side.options.marks):
        before = {v.name: v.marker for v in viewers}
        counts = {v.name: len(v.marker_changed) for v in viewers}
        sent = await send_key(controller, KEY_M)

        def seen(v: MarkerViewer) -> int | None:
            for when, colour in v.marker_changed[counts[v.name]:]:
                if _differs(colour, before[v.name]):
                    return when
            return None

        await wait_until(lambda: all(seen(v) is not None for v in viewers), 5)
        delays = [(t - sent) / 1e6 for v in viewers if (t := seen(v)) is not None]
        each += delays
        if len(delays) == len(viewers):
            last.append(max(delays))
        await trio.sleep(side.options.mark_interval)
    return {"latency_p50_ms": pct(each, 50), "latency_p99_ms": pct(each, 99),
            "latency_last_p50_ms": pct(last, 50), "latency_last_p99_ms": pct(last, 99),
            "marks_missed": side.options.marks - len(last)}


async def phase_late(side: Any, nursery: Any, n: int, viewers: list[Viewer]) -> dict[str, Any]:
    """As the VNC benchmark's: a viewer leaves, then each late joiner in turn joins (a user of
    its own) until rectangles covering the whole desktop have been read, and leaves again. A
    direct client's display shows its own empty root first: only what it draws once xfreerdp's
    window is mapped counts."""
    import trio

    await viewers.pop().aclose()
    await trio.sleep(0.5)
    times: list[float] = []
    for i in range(side.options.late):
        area = [0]
        done: list[int] = []
        started = time.perf_counter_ns()
        viewer = await side.connect(nursery, f"u{n + i}", False)
        client = getattr(viewer, "client", None)

        def on(now: int, boxes: list, client: Any = client) -> None:
            if client is not None and not client.mapped.is_set():
                return
            area[0] += sum(w * h for _, _, w, h in boxes)
            if not done and area[0] >= WIDTH * HEIGHT:
                done.append(now)

        viewer.listeners.append(on)  # before its reader runs: it is only scheduled by connect
        await wait_until(lambda: bool(done), 15)
        if done:
            times.append((done[0] - started) / 1e6)
        await viewer.aclose()
        await trio.sleep(0.3)
    return {"late_p50_ms": pct(times, 50), "late_p99_ms": pct(times, 99), "late_done": len(times)}


async def measure(side: Any, options: Options) -> dict[str, Any]:
    import trio

    result: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        if isinstance(side, CosessionSide):
            side.rss_before = _proc_status(side.gateway.pid).get("VmRSS", 0)
        controller = await side.connect(nursery, "u0", True)
        await wait_until(lambda: _showing(controller), 60)
        await trio.sleep(2.0)  # the desktop painted, the workload steady
        alone = await phase_cpu(side, [controller])
        viewers = [await side.connect(nursery, f"u{i + 1}", False) for i in range(options.viewers)]
        # every viewer shows the desktop (a direct client has connected to the server and drawn)
        await wait_until(lambda: all(_showing(v) for v in viewers), 60)
        # a participant that never shows the desktop is measured all the same: say how many did
        result["showing"] = sum(1 for v in [controller, *viewers] if _showing(v))
        await trio.sleep(2.0)
        loaded = await phase_cpu(side, viewers)
        for group in ("server", "gateway", "clients"):
            result[f"cpu_{group}_alone_pct"] = alone["cpu"][group]
            result[f"cpu_{group}_all_pct"] = loaded["cpu"][group]
            result[f"cpu_{group}_per_viewer_pct"] = (loaded["cpu"][group] - alone["cpu"][group]) / options.viewers
        result["cpu_total_all_pct"] = sum(loaded["cpu"].values())
        result["session_rss_mib"] = (side.session_rss_kib() or 0) / 1024
        result["bytes_per_viewer_kbs"] = (loaded["bytes_per_viewer_s"] or 0) / 1e3
        result.update(await phase_marks(side, controller, viewers))
        result.update(await phase_late(side, nursery, options.viewers + 1, viewers))
        for v in [controller, *viewers]:
            await v.aclose()
        nursery.cancel_scope.cancel()
    return result


FIGURES = [
    ("latency_p50_ms", "key → viewer, p50", "ms"),
    ("latency_p99_ms", "key → viewer, p99", "ms"),
    ("latency_last_p99_ms", "key → last viewer, p99", "ms"),
    ("cpu_server_alone_pct", "CPU of the RDP server, controller only", "% of a core"),
    ("cpu_server_all_pct", "CPU of the RDP server, controller + viewers", "% of a core"),
    ("cpu_gateway_alone_pct", "CPU of the gateway side, controller only", "% of a core"),
    ("cpu_gateway_all_pct", "CPU of the gateway side, controller + viewers", "% of a core"),
    ("cpu_clients_all_pct", "CPU of the RDP clients, controller + viewers", "% of a core"),
    ("cpu_total_all_pct", "CPU in total, controller + viewers", "% of a core"),
    ("cpu_server_per_viewer_pct", "RDP server CPU per added viewer", "% of a core"),
    ("cpu_gateway_per_viewer_pct", "gateway side CPU per added viewer", "% of a core"),
    ("session_rss_mib", "memory per session (cosession) / per client (direct)", "MiB"),
    ("bytes_per_viewer_kbs", "bytes per viewer", "KB/s"),
    ("late_p50_ms", f"late join to a full {WIDTH}x{HEIGHT} picture, p50", "ms"),
    ("late_p99_ms", f"late join to a full {WIDTH}x{HEIGHT} picture, p99", "ms"),
    ("marks_missed", "marks a viewer never saw", ""),
    ("showing", "participants showing the desktop when measured", ""),
    ("late_done", "late joins complete within 15 s", ""),
]


async def _main(options: Options, server: Any, gateway: GatewayProcess | None, work: Path) -> list[dict[str, Any]]:
    import trio

    from cosession.join import login

    sides_wanted = options.sides.split(",")
    cookies: dict[str, str] = {}
    if gateway is not None:
        base = gateway.info["base_url"]
        cookies = {name: await trio.to_thread.run_sync(login, base, name, PASSWORD) for name in user_names(options)}
    runs = []
    for run in range(options.runs):
        sides: list[Any] = []
        if "cosession" in sides_wanted and gateway is not None:
            sides.append(CosessionSide(options, server, gateway, cookies))
        if "direct" in sides_wanted:
            sides.append(DirectSide(options, server, work / f"direct-{run}"))
        if run % 2:
            sides.reverse()
        result: dict[str, Any] = {"pressure_start": cpu_pressure()}
        for side in sides:
            say(options, f"run {run + 1}: {side.name} ...")
            result[side.name] = await measure(side, options)
            say(options, f"  {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result[side.name].items()})}")
        runs.append(result)
    return runs


def user_names(options: Options) -> list[str]:
    """The controller, the viewers, and a user for each late joiner."""
    return [f"u{i}" for i in range(options.viewers + 1 + options.late)]


def _workload(rate: float):
    def start(env: dict[str, str], directory: Path) -> subprocess.Popen:
        workload = subprocess.Popen([sys.executable, str(ROOT / "bench" / "vnc_workload.py"), str(WIDTH), str(HEIGHT),
                                     str(rate)], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=open(directory / "workload.log", "wb"), start_new_session=True)
        assert workload.stdout is not None
        if workload.stdout.readline().strip() != b"ready":
            raise BenchError("the workload program did not start")
        return workload
    return start


def run_benchmark(options: Options) -> dict[str, Any]:
    import trio

    from tests.fixtures.rdp import start_rdp_server

    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise BenchError("needs " + ", ".join(missing))
    started = datetime.datetime.now(datetime.timezone.utc)
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="cosession-rdp-bench-"))
    gateway = None
    server = start_rdp_server(width=WIDTH, height=HEIGHT, desktop=_workload(options.rate))
    try:
        if "cosession" in options.sides.split(","):
            gateway = GatewayProcess({"protocol": "rdp", "name": "bench-windows", "host": server.host,
                                      "port": server.port, "password": None, "users": user_names(options)},
                                     work / "gateway.log")
        say(options, f"shadow server on {server.port} (display {server.display})"
                     + (f", gateway {gateway.info['base_url']}" if gateway else ""))
        try:
            runs = trio.run(_main, options, server, gateway, work)
        except BaseExceptionGroup as group:
            raise _first_cause(group) from group
    finally:
        if gateway is not None:
            gateway.stop()
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return report("rdp_websocket.py", started, machine, options, runs, FIGURES)


def markdown(report: dict[str, Any]) -> str:
    o = report["options"]
    workload = (f"Workload: FreeRDP's shadow server sharing Xvfb {WIDTH}x{HEIGHT}x24 with the VNC benchmark's "
                f"workload program; four 320x180 photo-like regions repainted {o['rate']:g}/s; 1 controller + "
                f"{o['viewers']} viewers; {o['marks']} marker keys, {o['late']} late joins. "
                "Direct: every participant its own xfreerdp (cosession's options) drawing into its own Xvnc.")
    return _markdown(report, FIGURES, begin=BEGIN, end=END, workload=workload, direct="direct (xfreerdp each)")


def write_docs_section(path: Path, block: str) -> None:
    """Replace this benchmark's generated block in its section of `path` (or add the section)."""
    _write_docs_section(path, block, section=SECTION, begin=BEGIN, end=END)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options, args = parse_options(Options, __doc__, argv)
    report = run_benchmark(options)
    if args.json:
        print(json.dumps(report, indent=2))
    block = markdown(report)
    print(block)
    if args.write_docs:
        write_docs_section(Path(args.write_docs), block)
    return 0


if __name__ == "__main__":
    sys.exit(main())

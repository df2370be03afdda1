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
- **cosession**: the gateway (in its own process: bench/desktop_websocket.py) with one VNC endpoint on
  that Xvnc (its password stored); 1 controller + N viewers, each a websocket to the gateway
  speaking RFB as noVNC does: the gateway passes the server's JPEG on as it reads it (and
  decodes it for its own framebuffer afterwards) and sends everyone the same bytes.

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

import contextlib
import dataclasses
import datetime
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.desktop_websocket import (  # noqa: E402 - the path above first
    KEY_F, KEY_M, MARK, PASSWORD, BenchError, CosessionSide, GatewayProcess, Side, Viewer, WsBytes, covers, key,
    markdown as _markdown, parse_options, pct, report, say, wait_until,
    write_docs_section as _write_docs_section,
)
from bench.ssh_websocket import _first_cause, cpu_pressure, cpu_sample, cpu_seconds, machine_info  # noqa: E402

SECTION = "## Joint VNC sessions through real websockets"
BEGIN = "<!-- bench:vnc_websocket:begin -->"
END = "<!-- bench:vnc_websocket:end -->"


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


# =================================================================================================
# The direct side (the gateway side and the participants: bench/desktop_websocket.py)
# =================================================================================================


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


# =================================================================================================
# Phases
# =================================================================================================


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
            gateway = GatewayProcess({"protocol": "vnc", "name": "bench-desktop", "host": xvnc.host, "port": xvnc.port,
                                      "password": xvnc.password,
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
    return report("vnc_websocket.py", started, machine, options, runs, FIGURES)


def markdown(report: dict[str, Any]) -> str:
    o = report["options"]
    workload = (f"Workload: Xvnc {o['width']}x{o['height']}x24 `FrameRate=60`; four 320x180 photo-like regions "
                f"repainted {o['rate']:g}/s; 1 controller + {o['viewers']} viewers asking for Tight, JPEG quality 6; "
                f"{o['marks']} marker keys, {o['full']} full-screen changes, {o['late']} late joins. Direct: each "
                f"client through websockify 0.13 to `Xvnc -AlwaysShared`.")
    return _markdown(report, FIGURES, begin=BEGIN, end=END, workload=workload, direct="direct (websockify)")


def write_docs_section(path: Path, block: str) -> None:
    """Replace this benchmark's generated block in its section of `path` (or add the section)."""
    _write_docs_section(path, block, section=SECTION, begin=BEGIN, end=END)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options, args = parse_options(Options, __doc__, argv)
    report = run_benchmark(options)
    block = markdown(report)
    print(json.dumps(report, indent=2) if args.json else block)
    if args.write_docs:
        write_docs_section(Path(args.write_docs), block)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the VNC and RDP websocket benchmarks share (bench/vnc_websocket.py, bench/rdp_websocket.py).

- **The gateway child**: `GatewayProcess` runs this file with `--gateway-child`: the gateway in
  a process of its own (as bench/ssh_websocket.py's), with one graphical endpoint (VNC or RDP,
  its password stored if it has one) and the benchmark's users granted on it.
- **Participants**: `Viewer`, one websocket speaking RFB as noVNC does, that frames updates and
  reads only rectangles' positions and sizes (`protocols.rfb_decode.read_update`; no pixel is
  decoded unless a subclass's `see` wants one); `CosessionSide` connects the controller and
  the viewers through the gateway.
- **Phases and the report**: percentiles, keys, bounded waits, the summary over runs, the
  markdown table, its block in docs/benchmarks.md, the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ssh_websocket import REPLY_PREFIX, GatewayProcess as _SshGatewayProcess, _git_commit  # noqa: E402

MARK = (40, 40, 96, 96)  # bench/vnc_workload.py's marker square
PASSWORD = "bench-password-1"
KEY_M, KEY_F = 0x6D, 0x66
NOVNC_ENCODINGS = (7, -260, 16, 1, 0, -32 + 6, -256 + 2, -223, -224, -308, -307, -239)
_PSEUDO = (-223, -308, -239, -307)  # DesktopSize, ExtendedDesktopSize, Cursor, DesktopName: no pixels


class BenchError(Exception):
    pass


def say(options: Any, text: str) -> None:
    if not options.quiet:
        print(text, file=sys.stderr, flush=True)


# =================================================================================================
# The gateway child
# =================================================================================================


def gateway_child() -> int:
    """The gateway with one graphical endpoint: config (one JSON line on stdin) names its
    protocol, name, host, port, password (or null) and the users to create and grant."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from config.settings import load
    from cosession.loadtest_ws import InProcessGateway
    from engine.messages import EndpointProtocol

    config = json.loads(sys.stdin.readline())

    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(REPLY_PREFIX + json.dumps(message) + "\n")
        sys.stdout.flush()

    with tempfile.TemporaryDirectory(prefix=f"cosession-{config['protocol']}-bench-gw-") as tmp:
        gateway = InProcessGateway(load(env={}), Path(tmp)).start()
        try:
            services = gateway.services
            extra = {"password": config["password"]} if config.get("password") else {}
            record = services.endpoints.create(config["name"], EndpointProtocol(config["protocol"]), config["host"],
                                               config["port"], joint_session=True, **extra)
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

    def __init__(self, config: dict[str, Any], log_path: Path) -> None:
        super().__init__(config, log_path, script=Path(__file__).resolve())


# =================================================================================================
# Participants: RFB over a websocket, rectangles' geometry only
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
    """One participant: reads updates; calls its listeners, per update, with its time and the
    rectangles' boxes."""

    def __init__(self, name: str) -> None:
        import trio

        self.name = name
        self.ws: Any = None
        self.stream: WsBytes | None = None
        self.updates = 0
        self.listeners: list[Callable[[int, list[tuple[int, int, int, int]]], None]] = []
        self.control: list[dict[str, Any]] = []
        self.ready = trio.Event()
        self.closed = False

    def on_text(self, text: str) -> None:
        self.control.append(json.loads(text))

    def see(self, now: int, rects: list[Any]) -> None:
        """Each update's rectangles as read (a subclass looks at pixels here)."""

    async def rfb(self, *, password: str | None, request_updates: bool) -> tuple[Any, Any]:
        """The client side of the RFB handshake, then noVNC's pixel format and encodings."""
        from protocols import rfb
        from protocols.rfb_decode import Framing, RfbReader

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
        from protocols.rfb_decode import read_update

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
                    self.see(now, rects)
                    boxes = [(r.x, r.y, r.width, r.height) for r in rects
                             if r.encoding >= -260 and r.encoding not in _PSEUDO]
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

    def __init__(self, options: Any) -> None:
        self.options = options

    async def connect(self, nursery: Any, name: str, controller: bool) -> Viewer:
        raise NotImplementedError

    def server_pids(self) -> list[int]:
        raise NotImplementedError


class CosessionSide(Side):
    """The participants through the gateway: the controller starts the session, viewers join it."""

    name = "cosession"
    viewer_class: type[Viewer] = Viewer

    def __init__(self, options: Any, xvnc: Any, gateway: GatewayProcess, cookies: dict[str, str]) -> None:
        super().__init__(options)
        self.xvnc = xvnc  # the endpoint's server (the VNC benchmark's Xvnc, the RDP one's shadow server)
        self.gateway = gateway
        self.cookies = cookies
        self.session_id = ""

    async def connect(self, nursery: Any, name: str, controller: bool) -> Viewer:
        from cosession.join import connect_socket

        base = self.gateway.info["base_url"]
        viewer = self.viewer_class(name)
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


# =================================================================================================
# The report
# =================================================================================================


Figures = list[tuple[str, str, str]]  # (key, label, unit)


def report(script: str, started: Any, machine: dict[str, Any], options: Any, runs: list[dict[str, Any]],
           figures: Figures) -> dict[str, Any]:
    """What a desktop benchmark writes with --json and renders: how it was run, on what, and
    every run's figures with their summary."""
    return {"command": f".venv/bin/python bench/{script} " + " ".join(sys.argv[1:]),
            "commit": _git_commit(), "date": started.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine,
            "options": dataclasses.asdict(options), "runs": runs, "summary": summarise(runs, figures)}


def summarise(runs: list[dict[str, Any]], figures: Figures) -> dict[str, Any]:
    """Per figure and side: the median and the spread over the runs; cosession / direct."""
    summary: dict[str, Any] = {}
    for key, _, _ in figures:
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


def markdown(report: dict[str, Any], figures: Figures, *, begin: str, end: str, workload: str, direct: str) -> str:
    """The generated block: the command, the machine, the workload, the table."""
    m = report["machine"]
    lines = [begin, f"Command: `{report['command']}` — {report['date']}, commit {report['commit']}; "
             f"{len(report['runs'])} run(s), medians with the spread (min–max) over the runs.", "",
             f"Machine: {m['nproc']} cores, {m['memory_gib']} GiB, Python {m['python']}; load average at the "
             f"start {' / '.join(str(x) for x in m['load_average'])} (a shared machine: other work ran too).", "",
             workload, "",
             f"| Figure | cosession | {direct} | cosession / direct |", "| --- | --- | --- | --- |"]
    for key, label, unit in figures:
        entry = report["summary"].get(key) or {}
        ratio = f"{entry['ratio']:.2f}" if "ratio" in entry else ""
        lines.append(f"| {label}{', ' + unit if unit else ''} | {_cell(entry.get('cosession'))} | "
                     f"{_cell(entry.get('direct'))} | {ratio} |")
    lines.append(end)
    return "\n".join(lines)


def write_docs_section(path: Path, block: str, *, section: str, begin: str, end: str) -> None:
    """Replace a benchmark's generated block in its section of `path` (or add the section)."""
    text = path.read_text()
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    elif section in text:
        at = text.index(section) + len(section)
        text = text[:at] + f"\n\n{block}\n" + text[at:]
    else:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{block}\n"
    path.write_text(text)


def parse_options(options_class: type, doc: str, argv: list[str]) -> tuple[Any, argparse.Namespace]:
    """An `--option` for each field of the benchmark's Options dataclass, plus --json and --write-docs."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    fields = [f for f in dataclasses.fields(options_class) if f.name != "quiet"]
    for field in fields:
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--write-docs", metavar="FILE")
    args = parser.parse_args(argv)
    return options_class(**{f.name: getattr(args, f.name) for f in fields}), args


if __name__ == "__main__":
    if sys.argv[1:2] == ["--gateway-child"]:
        sys.exit(gateway_child())
    sys.exit("this module is run by bench/vnc_websocket.py and bench/rdp_websocket.py as their gateway child")

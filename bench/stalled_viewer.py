"""The controller's speed with viewers that never read: 0, 1 and 5 stalled viewers.

    .venv/bin/python bench/stalled_viewer.py [--runs 3] [--stalled 0,1,5] [--cat-mb 20] [--json]
                                             [--write-docs docs/benchmarks.md]

Design rule: slow viewers never slow anyone else. This measures it end to end, against real
OpenSSH and the real gateway (the same set-up as bench/ssh_websocket.py, whose helpers it
uses: one ``sshd`` on loopback, the gateway in a child process with default settings, the
clients in this process).

Each case is a fresh session: a controller, one viewer that reads (a trio-websocket client,
as a browser tab), and K **stalled viewers**: a TCP socket with a 4 KiB receive buffer that
completes the websocket handshake, sends ``join``, reads the ``joined`` answer and then never
reads again, as a tab frozen by a debugger, a suspended laptop or a hostile client would. The
cases alternate in order from run to run (0, 1, 5; then 1, 5, 0; ...). In each case:

1. **cat**: the controller runs ``cat FILE; printf 'BM%dE\\n' ID`` on a text file of
   `--cat-mb` MB. *Throughput* is the file's size over the time from the command's send to the
   marker's receipt by the controller; the reading viewer's time is given too.
2. **lines during steady output**: a background job in the controller's shell writes
   `--steady-kb` KB every 50 ms (about 1 MB/s: a build log, a ``tail -f``), and the controller
   types `--lines` marker lines every `--line-interval` seconds (``printf 'BM%dE\\n' ID``, as
   bench/ssh_websocket.py). Latency is from the send of the line to the controller's receipt
   of the marker, and to the reading viewer's: what a user feels typing while something
   prints. The stalled viewers' queues keep overflowing during this phase.
3. **quiet lines**: the background job stopped, the same lines again.
4. **end**: the controller leaves (which ends the session, as a terminate does); the time to
   its ``ended`` message, and how many stalled sockets the gateway closed within
   `--close-wait` seconds of the end (read back from the socket's TCP state: a FIN or RST).

Counted in the gateway process (hooks that change nothing it does): keyframes rendered by the
screen model (``TerminalScreen.keyframe``) during the cat and during the steady output, and the
gateway's CPU seconds for the cat. Medians over `--runs` with the spread (min-max); ratios are against 0 stalled viewers in
the same run set.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.util
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))


def _load_ssh_websocket() -> Any:
    """bench/ssh_websocket.py as a module (bench/ is not a package: its engine.py would shadow
    the engine package)."""
    name = "bench_ssh_websocket"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "ssh_websocket.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


sw = _load_ssh_websocket()

SECTION = "## Stalled viewers and the controller"
BEGIN = "<!-- bench/stalled_viewer.py: begin -->"
END = "<!-- bench/stalled_viewer.py: end -->"
STALLED_RCVBUF = 4096


@dataclasses.dataclass
class Options:
    runs: int = 3
    stalled: tuple[int, ...] = (0, 1, 5)
    cat_mb: float = 20.0
    steady_kb: int = 50
    lines: int = 100
    line_interval: float = 0.05
    close_wait: float = 40.0
    progress: bool = True
    settings: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def say(options: Options, text: str) -> None:
    if options.progress:
        print(f"[stalled] {text}", file=sys.stderr, flush=True)


# =================================================================================================
# A viewer that never reads
# =================================================================================================


class StalledViewer:
    """A websocket client that joins and then never reads (a trio socket, wsproto for the
    handshake and the join), with a tiny receive buffer so that the gateway's sends block soon."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock: Any = None
        self.joined = False

    async def open(self, base_url: str, cookie: str, path: str) -> None:
        import trio
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, RejectConnection, Request, TextMessage

        from cosession.join import _headers

        host, port = base_url.split("//")[1].rsplit(":", 1)
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
        await sock.connect((host, int(port)))
        self.sock = sock
        ws = WSConnection(ConnectionType.CLIENT)
        headers = [(k.decode(), v.decode()) for k, v in _headers(base_url, cookie, None)]
        await sock.send(ws.send(Request(host=f"{host}:{port}", target=path, extra_headers=headers)))
        text = ""
        with trio.fail_after(30):
            while not self.joined:
                data = await sock.recv(4096)
                if not data:
                    raise sw.BenchError(f"{self.name}: the gateway closed the socket before the join")
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        # only now: bytes in the same write as the upgrade request are refused
                        await sock.send(ws.send(TextMessage(json.dumps({"type": "join"}))))
                    elif isinstance(event, RejectConnection):
                        raise sw.BenchError(f"{self.name}: websocket refused ({event.status_code})")
                    elif isinstance(event, TextMessage):
                        text += event.data
                        if event.message_finished:
                            message, text = json.loads(text), ""
                            if message.get("type") == "joined":
                                self.joined = True
                                break
                            if message.get("type") == "refused":
                                raise sw.BenchError(f"{self.name}: join refused: {message}")
        # from here on, nothing is ever read

    def closed_by_peer(self) -> bool:
        """Whether the gateway has closed this connection (FIN or RST), without reading data:
        the socket's TCP state."""
        TCP_INFO = getattr(socket, "TCP_INFO", 11)
        info = self.sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 8)
        state = info[0]
        # ESTABLISHED = 1; CLOSE_WAIT = 8 (a FIN came), CLOSE = 7 (an RST came)
        return state != 1

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


# =================================================================================================
# One case
# =================================================================================================


async def measure_case(ctx: Any, stalled_count: int) -> dict[str, Any]:
    import trio

    options: Options = ctx.stall_options
    base_url = ctx.gateway.info["base_url"]
    endpoint_id = ctx.gateway.info["endpoints"][0]
    figures: dict[str, Any] = {"stalled": stalled_count, "load1": os.getloadavg()[0],
                               "cpu_pressure_pct": sw.cpu_pressure()}
    controller = sw.WsClient("ctl-0")
    viewer = sw.WsClient("view-0-0")
    stalled = [StalledViewer(f"stall-{n}") for n in range(stalled_count)]
    try:
        await controller.open(ctx.nursery, base_url, ctx.cookies["ctl-0"], f"/ws/endpoints/{endpoint_id}/start",
                              {"type": "start", "cols": sw.COLS, "rows": sw.ROWS})
        if not await controller.receiver.wait_for(lambda: controller.state == "active" or controller.closed, 30):
            raise sw.BenchError(f"the session did not become active ({controller.state})")
        sid = controller.session_id
        await viewer.open(ctx.nursery, base_url, ctx.cookies["view-0-0"], f"/ws/sessions/{sid}", {"type": "join"})
        for s in stalled:
            await s.open(base_url, ctx.cookies[s.name], f"/ws/sessions/{sid}")
        await controller.send(b"PS1='$ '\r")
        mark = ctx.mark()
        await controller.send(sw.line_command(mark))
        if not await sw.wait_all([controller, viewer], lambda c: mark in c.receiver.marks, 30):
            raise sw.BenchError("the shell did not answer within 30 s")

        figures.update(await phase_cat(ctx, controller, viewer))
        figures.update(await phase_steady_lines(ctx, controller, viewer))
        figures.update(await phase_quiet_lines(ctx, controller, viewer))

        # the end: the controller leaves, which ends the session for everyone
        left = time.perf_counter_ns()
        await controller.send_json({"type": "leave"})
        await controller.receiver.wait_for(lambda: controller.ended is not None or controller.closed, 30)
        figures["end_ms"] = (time.perf_counter_ns() - left) / 1e6 if controller.ended else None
        with trio.move_on_after(options.close_wait):
            while not all(s.closed_by_peer() for s in stalled):
                await trio.sleep(0.05)  # polls a socket's state: there is nothing to wait on
        figures["stalled_closed"] = sum(1 for s in stalled if s.closed_by_peer())
    finally:
        for s in stalled:
            s.close()
        with trio.move_on_after(10) as scope:
            scope.shield = True
            for client in (controller, viewer):
                with contextlib.suppress(Exception):
                    await client.aclose()
    return figures


async def phase_cat(ctx: Any, controller: Any, viewer: Any) -> dict[str, Any]:
    options: Options = ctx.stall_options
    groups = {"fanout": [ctx.gateway.pid], "sshd": [ctx.server.process.pid]}
    keyframes_before = await keyframes_rendered(ctx)
    mark = ctx.mark()
    before, t0 = sw.cpu_sample(groups), time.perf_counter()
    sent = time.perf_counter_ns()
    await controller.send(f"cat {ctx.cat_path}; printf 'BM%dE\\n' {mark}\r".encode())
    timeout = 60 + 10 * options.cat_mb
    complete = await sw.wait_all([controller], lambda c: mark in c.receiver.marks, timeout)
    controller_at = controller.receiver.marks.get(mark)
    after, t1 = sw.cpu_sample(groups), time.perf_counter()
    await sw.wait_all([viewer], lambda c: mark in c.receiver.marks, timeout)
    viewer_at = viewer.receiver.marks.get(mark)
    cpu = sw.cpu_seconds(before, after)
    seconds = None if controller_at is None else (controller_at - sent) / 1e9
    return {
        "cat_complete": complete,
        "cat_controller_s": seconds,
        "cat_controller_mbps": None if not seconds else ctx.cat_bytes / seconds / 1e6,
        "cat_viewer_s": None if viewer_at is None else (viewer_at - sent) / 1e9,
        "cat_keyframes": await keyframes_rendered(ctx) - keyframes_before,
        "cpu_cat_fanout_s": cpu["fanout"],
        "cpu_cat_fanout_pct": 100 * cpu["fanout"] / (t1 - t0),
    }


async def keyframes_rendered(ctx: Any) -> int:
    import trio

    return (await trio.to_thread.run_sync(ctx.gateway.call, "stats"))["keyframes"]


async def lines(ctx: Any, controller: Any, viewer: Any) -> tuple[list[float], list[float], int]:
    """The marker lines; the latencies to the controller and to the reading viewer, and how
    many never arrived."""
    import trio

    options: Options = ctx.stall_options
    sent: dict[int, int] = {}
    start = trio.current_time()
    for i in range(options.lines):
        await trio.sleep_until(start + i * options.line_interval)
        mark = ctx.mark()
        sent[mark] = time.perf_counter_ns()
        await controller.send(sw.line_command(mark))
    await sw.wait_all([controller, viewer], lambda c: all(m in c.receiver.marks for m in sent), 30)
    own = [(t - s) / 1e6 for m, s in sent.items() if (t := controller.receiver.marks.get(m)) is not None]
    other = [(t - s) / 1e6 for m, s in sent.items() if (t := viewer.receiver.marks.get(m)) is not None]
    return own, other, 2 * len(sent) - len(own) - len(other)


async def phase_steady_lines(ctx: Any, controller: Any, viewer: Any) -> dict[str, Any]:
    options: Options = ctx.stall_options
    keyframes_before = await keyframes_rendered(ctx)
    size = options.steady_kb * 1000
    await controller.send(f"(while :; do head -c {size} {ctx.cat_path}; sleep 0.05; done) &\r".encode())
    began = ctx.mark()  # the job runs once the shell is back at its prompt
    await controller.send(sw.line_command(began))
    await sw.wait_all([controller], lambda c: began in c.receiver.marks, 30)
    own, other, lost = await lines(ctx, controller, viewer)
    await controller.send(b"kill %1; wait\r")
    done = ctx.mark()
    await controller.send(sw.line_command(done))
    await sw.wait_all([controller, viewer], lambda c: done in c.receiver.marks, 60)
    return {"steady_p50_ms": sw.pct(own, 50), "steady_p95_ms": sw.pct(own, 95), "steady_p99_ms": sw.pct(own, 99),
            "steady_viewer_p95_ms": sw.pct(other, 95), "steady_lost": lost,
            "steady_keyframes": await keyframes_rendered(ctx) - keyframes_before}


async def phase_quiet_lines(ctx: Any, controller: Any, viewer: Any) -> dict[str, Any]:
    own, other, lost = await lines(ctx, controller, viewer)
    return {"line_p50_ms": sw.pct(own, 50), "line_p95_ms": sw.pct(own, 95), "line_p99_ms": sw.pct(own, 99),
            "line_viewer_p95_ms": sw.pct(other, 95), "lines_lost": lost}


# =================================================================================================
# Runs
# =================================================================================================


def user_names(options: Options) -> list[str]:
    return ["ctl-0", "view-0-0"] + [f"stall-{n}" for n in range(max(options.stalled, default=0))]


async def _main(ctx: Any) -> list[dict[str, Any]]:
    import trio

    options: Options = ctx.stall_options
    runs = []
    async with trio.open_nursery() as nursery:
        ctx.nursery = nursery
        nursery.start_soon(sw._stop_on_signals)
        await sw._login_all(ctx, user_names(options))
        cases = list(options.stalled)
        for run in range(options.runs):
            order = cases[run % len(cases):] + cases[:run % len(cases)]
            result: dict[str, Any] = {}
            for k in order:
                say(options, f"run {run + 1}/{options.runs}: {k} stalled viewer(s)")
                figures = await measure_case(ctx, k)
                result[str(k)] = figures
                say(options, f"run {run + 1}/{options.runs}: {k} stalled: "
                             + ", ".join(f"{key}={sw._fmt(v)}" for key, v in figures.items()))
            runs.append(result)
        nursery.cancel_scope.cancel()
    return runs


def run_benchmark(options: Options) -> dict[str, Any]:
    import trio

    from tests.fixtures.openssh import TEST_USER, OpenSshAccount, _ensure_user, _keygen, start_sshd

    from tests.fixtures.openssh import _skip_reason

    reason = _skip_reason()
    if reason:
        raise sw.BenchError(reason)
    started = datetime.datetime.now(datetime.timezone.utc)
    machine = sw.machine_info()
    work = Path(tempfile.mkdtemp(prefix="cosession-stalled-"))
    server = gateway = None
    try:
        password, home = _ensure_user()
        private, public = _keygen(work / "id_ed25519")
        account = OpenSshAccount(TEST_USER, password, home, private, public, "", "", "", public + "\n")
        server = start_sshd(account)
        cat_path = server.directory / "cat.txt"
        cat_bytes = sw.write_cat_file(cat_path, int(options.cat_mb * 1e6))
        gateway = sw.GatewayProcess({
            "host": server.host, "port": server.port, "username": server.username, "private_key": private,
            "host_key": server.host_key, "sessions": 1, "users": user_names(options),
            "settings": options.settings,
        }, work / "gateway.log")
        say(options, f"sshd on 127.0.0.1:{server.port}, gateway on {gateway.info['base_url']} (pid {gateway.pid})")
        ctx = sw.Context(sw.Options(), server, work / "id_ed25519", cat_path, cat_bytes, gateway, {}, "", "")
        ctx.stall_options = options
        try:
            runs = trio.run(_main, ctx)
        except BaseExceptionGroup as group:
            say(options, f"the gateway's log ends with: {gateway.log_tail()}")
            raise sw._first_cause(group) from group
    finally:
        if gateway is not None:
            gateway.stop()
        if server is not None:
            server.stop()
            import shutil

            shutil.rmtree(server.directory, ignore_errors=True)
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return {
        "command": command_line(), "commit": sw._git_commit(), "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine, "options": dataclasses.asdict(options), "cat_bytes": cat_bytes,
        "runs": runs, "summary": summarise(options, runs),
    }


def command_line() -> str:
    import shlex

    return ".venv/bin/python bench/stalled_viewer.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# =================================================================================================
# Report
# =================================================================================================

FIGURES: list[tuple[str, str, str]] = [
    ("cat_controller_s", "cat: time until the controller shows its end", "s"),
    ("cat_controller_mbps", "cat: throughput to the controller (file size / that time)", "MB/s"),
    ("cat_viewer_s", "cat: time until the reading viewer shows its end", "s"),
    ("cat_keyframes", "cat: keyframes rendered", ""),
    ("cpu_cat_fanout_s", "cat: gateway CPU", "s"),
    ("steady_p50_ms", "Line during steady output → the controller, p50", "ms"),
    ("steady_p95_ms", "Line during steady output → the controller, p95", "ms"),
    ("steady_p99_ms", "Line during steady output → the controller, p99", "ms"),
    ("steady_viewer_p95_ms", "Line during steady output → the reading viewer, p95", "ms"),
    ("steady_keyframes", "Steady output: keyframes rendered", ""),
    ("line_p50_ms", "Quiet line → the controller, p50", "ms"),
    ("line_p95_ms", "Quiet line → the controller, p95", "ms"),
    ("line_viewer_p95_ms", "Quiet line → the reading viewer, p95", "ms"),
    ("end_ms", "Controller leaves → its `ended` message", "ms"),
    ("stalled_closed", "Stalled sockets closed by the gateway after the end", ""),
    ("steady_lost", "Lines never received (steady, both clients)", ""),
    ("lines_lost", "Lines never received (quiet, both clients)", ""),
    ("load1", "Machine: load average (1 min) when the case began", ""),
]
RATIO = {"cat_controller_s", "cat_controller_mbps", "cat_viewer_s", "cpu_cat_fanout_s", "steady_p50_ms",
         "steady_p95_ms", "steady_p99_ms", "steady_viewer_p95_ms", "line_p50_ms", "line_p95_ms",
         "line_viewer_p95_ms", "end_ms"}


def summarise(options: Options, runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for key, _, _ in FIGURES:
        entry: dict[str, Any] = {}
        for k in options.stalled:
            values = [r[str(k)][key] for r in runs if r.get(str(k), {}).get(key) is not None]
            if values:
                entry[str(k)] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                                 "n": len(values)}
        summary[key] = entry
    return summary


def markdown(report: dict[str, Any]) -> str:
    options, machine, summary = report["options"], report["machine"], report["summary"]
    cases = [str(k) for k in options["stalled"]]
    base = cases[0]
    header = " | ".join(f"{k} stalled" for k in cases)
    ratios = " | ".join(f"{k} / {base}" for k in cases[1:])
    lines = [
        BEGIN,
        f"Command: `{report['command']}` — {report['date']}"
        + (f", commit {report['commit']}" if report.get("commit") else "")
        + f"; {len(report['runs'])} run(s), medians with the spread (min–max) over the runs.",
        "",
        f"Machine: {machine['nproc']} cores, {machine['memory_gib']} GiB, Python {machine['python']}, "
        f"Linux {machine['kernel']}, {machine['ssh']}; load average at the start "
        f"{' / '.join(str(x) for x in machine['load_average'])} (shared machine).",
        "",
        f"Workload: a controller, one viewer that reads, and 0–{max(options['stalled'])} viewers that never "
        f"read (4 KiB receive buffer); terminal {sw.COLS}x{sw.ROWS}; cat of {report['cat_bytes'] / 1e6:.0f} MB; "
        f"{options['lines']} lines every {options['line_interval'] * 1000:g} ms during steady output "
        f"({options['steady_kb']} KB every 50 ms), then as many with nothing else printing. Gateway: "
        + (", ".join(f"`{s}.{k} = {v}`" for s, kv in options["settings"].items() for k, v in kv.items())
           or "default settings") + ", in its own process.",
        "",
        f"| Figure | {header} | {ratios} |",
        "| --- | " + " | ".join("---" for _ in cases) + " | " + " | ".join("---" for _ in cases[1:]) + " |",
    ]
    for key, label, unit in FIGURES:
        entry = summary.get(key, {})
        if not entry:
            continue
        cells = " | ".join(sw._cell(entry.get(k)) for k in cases)
        if key in RATIO and entry.get(base) and entry[base]["median"]:
            rs = " | ".join(f"{entry[k]['median'] / entry[base]['median']:.2f}" if k in entry else ""
                            for k in cases[1:])
        else:
            rs = " | ".join("" for _ in cases[1:])
        name = f"{label}, {unit}" if unit else label
        lines.append(f"| {name} | {cells} | {rs} |")
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
            body = body.rstrip("\n") + f"\n\n{block}\n"
        text = text[:body_start] + body + text[body_end:]
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stalled", default="0,1,5", help="stalled viewers per case, the first is the baseline")
    parser.add_argument("--cat-mb", type=float, default=20.0)
    parser.add_argument("--steady-kb", type=int, default=50, help="KB the background job writes every 50 ms")
    parser.add_argument("--lines", type=int, default=100)
    parser.add_argument("--line-interval", type=float, default=0.05)
    parser.add_argument("--close-wait", type=float, default=40.0,
                        help="seconds to wait for the gateway to close the stalled sockets after the end")
    parser.add_argument("--setting", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--write-docs", metavar="FILE")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--from-json", metavar="FILE")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    stalled = tuple(int(x) for x in args.stalled.split(","))
    if any(not 0 <= k <= 9 for k in stalled):
        print("--stalled: 0 to 9 each (one viewer reads; the cap is 10)", file=sys.stderr)
        return 2
    settings: dict[str, dict[str, Any]] = {}
    for item in args.setting:
        name, _, value = item.partition("=")
        section, _, key = name.partition(".")
        try:
            settings.setdefault(section, {})[key] = json.loads(value)
        except ValueError:
            settings.setdefault(section, {})[key] = value
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.default_int_handler)
    options = Options(runs=args.runs, stalled=stalled, cat_mb=args.cat_mb, steady_kb=args.steady_kb,
                      lines=args.lines, line_interval=args.line_interval, close_wait=args.close_wait,
                      progress=not args.quiet, settings=settings)
    try:
        report = json.loads(Path(args.from_json).read_text()) if args.from_json else run_benchmark(options)
    except sw.BenchError as exc:
        print(f"bench/stalled_viewer.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/stalled_viewer.py: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    block = markdown(report)
    if args.write_docs:
        write_docs(Path(args.write_docs), block)
    print(json.dumps(report, indent=1, default=str) if args.json else block)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())

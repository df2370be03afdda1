"""An anonymous flood against `cosession serve`, measuring the gateway's memory and a controller's
keystroke latency meanwhile.

    .venv/bin/python bench/edge_flood.py [--runs 3] [--seconds 10] [--clients 8] [--json]
        [--config FILE] [--decoy] [--write-docs docs/benchmarks.md]

Each run starts `cosession serve` as its own process (a fresh data directory, the embedded
defaults, the demo SSH endpoint), signs in as `demo` and starts a session on the demo endpoint
(a real login shell in a PTY), whose controller then types one character every 20 ms and times
its echo (send to receipt, on this machine's monotonic clock). Two phases of `--seconds` each:

1. **quiet**: only the controller;
2. **flood**: the controller, and meanwhile `--clients` anonymous attackers per loopback source
   address (127.0.0.1 and 127.0.0.2–.9, so that the per-client limits alone cannot hold them)
   repeating, as fast as the gateway answers, every attack of `Flood._attacks` (in a process
   of their own at the lowest CPU priority: remote attackers would spend none of the gateway
   host's CPU): websocket upgrades with
   permessage-deflate followed by a 65 KB compressed frame that inflates to 64 MiB (the issue's
   attack; pipelined and after the answer), foreign-origin upgrades with frames, upgrades with
   pipelined bytes (the Hypercorn crash), idle connections and 16 KB partial headers held open,
   request bodies just under and far over the limit, and garbage.

The gateway's memory is read from /proc: its resident size before the flood, its peak during it
(VmHWM, reset with `clear_refs` before the flood) and its resident size after. Sign-in attempts
are not part of the flood: each one is an argon2 check of 64 MiB by design (docs/security.md),
bounded to two at once and throttled per address.

`--decoy` is the control experiment: a second `cosession serve` (the decoy) takes the same
flood while the controller is measured on the first, which no attacker touches. The machine
is as busy as in a real run (the attackers, a gateway answering them), so what the controller's
p99 gains here is the shared machine's doing (two cores, the attackers' process and the
gateway's competing for them), not the gateway's: read a real run's ratio against it.

Figures: the controller's latency p50/p99 quiet and during the flood and their ratio; the
memory increase at the peak and after; how many attacks ran, and that the session still worked
afterwards. Medians over the runs, with min–max.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cosession.join import connect_socket, login, send_json  # noqa: E402

SECTION = "## An anonymous flood at the edge"
SOURCES = ["127.0.0.1"] + [f"127.0.0.{n}" for n in range(2, 10)]
PROBE_INTERVAL = 0.02
MIB = 1 << 20


# --- the gateway process -------------------------------------------------------------------------


class Served:
    """`cosession serve --port 0` in its own process."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COSESSION_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cosession.cli", "serve", "--port", "0", "--data-dir", str(data_dir), *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self.stderr: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._threads = [threading.Thread(target=self._pump, daemon=True),
                         threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True)]
        for thread in self._threads:
            thread.start()
        try:
            self.url = self.wait_for(r"cosession is running: open (\S+)/$").group(1)
            self.wait_for("Press Ctrl-C to stop")
        except BaseException:
            self.stop()
            raise
        self.passwords = dict(m.groups() for line in self.lines
                              if (m := re.search(r"name: (\w+)\s+password: (\S+)", line)))

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"no {pattern!r} within {timeout} s: {self.lines}") from None
            if line is None:
                raise RuntimeError(f"serve exited: {self.lines} {self.stderr[-20:]}")
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match

    def alive(self) -> bool:
        return self.proc.poll() is None

    def status(self) -> dict[str, int]:
        """VmRSS and VmHWM in bytes."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) * 1024
        return values

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def reset_peak(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux ≥ 4.0)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for thread in self._threads:
            thread.join(10)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode


# --- the attacks ---------------------------------------------------------------------------------


def _upgrade(host: str, path: str, origin: str, extra: str = "") -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: Upgrade", "Upgrade: websocket",
             "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: bKdPyn3u98cTfZJSh4TNeQ==", f"Origin: {origin}"]
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _frame(opcode: int, payload: bytes, rsv1: bool = False) -> bytes:
    head = bytes([0x80 | (0x40 if rsv1 else 0) | opcode])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else (bytes([0xFE]) + n.to_bytes(2, "big") if n < 65536
                                              else bytes([0xFF]) + n.to_bytes(8, "big"))
    mask = b"\x01\x02\x03\x04"
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _bomb() -> bytes:
    """A permessage-deflate frame of about 65 KB that inflates to 64 MiB of zeros."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = compressor.compress(b"\0" * (64 * MIB)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return _frame(0x2, data[:-4], rsv1=True)


class Flood:
    """Anonymous attackers against `base_url` (host:port on loopback)."""

    def __init__(self, base_url: str, endpoint_id: str) -> None:
        self.host = base_url.split("//", 1)[1]
        self.port = int(self.host.rsplit(":", 1)[1])
        self.origin = base_url
        self.start_path = f"/ws/endpoints/{endpoint_id}/start"
        self.bomb = _bomb()
        self.attacks_list = self._attacks()  # built once: masking frames in Python costs CPU
        self.attacks = 0
        self.refused_503 = 0
        self.errors = 0

    def _attacks(self) -> list[tuple[str, bytes, bytes | None, float]]:
        """(name, first write, second write after the answer or None, seconds to hold open)."""
        deflate = _upgrade(self.host, self.start_path, self.origin, "Sec-WebSocket-Extensions: permessage-deflate")
        return [
            ("deflate bomb, pipelined", deflate + self.bomb, None, 0),
            ("deflate bomb, after the answer", deflate, self.bomb, 0),
            ("foreign origin + frames", _upgrade(self.host, self.start_path, "http://evil.example")
             + _frame(0x2, b"x" * 60000) * 4, None, 0),
            ("upgrade to /login + bytes", _upgrade(self.host, "/login", self.origin) + b"x", None, 0),
            ("idle connection", b"", None, 3.0),
            ("16 KB partial headers", b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 16000, None, 3.0),
            ("body under the limit", b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: 250000\r\n\r\n" + b" " * 250000, None, 0),
            ("body over the limit", b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: 100000000\r\n\r\n" + b" " * 65536, None, 0),
            ("garbage", bytes(range(256)) * 64, None, 0),
        ]

    async def one(self, source: str, first: bytes, second: bytes | None, hold: float) -> None:
        try:
            sock = trio.socket.socket()
            await sock.bind((source, 0))
            await sock.connect(("127.0.0.1", self.port))
            stream = trio.SocketStream(sock)
        except OSError:
            self.errors += 1
            return
        try:
            with trio.move_on_after(10):
                if first:
                    await stream.send_all(first)
                if second is not None or hold == 0:
                    answer = await stream.receive_some(65536)
                    if answer.startswith(b"HTTP/1.1 503"):
                        self.refused_503 += 1
                    if second is not None and answer:
                        await stream.send_all(second)
                        await stream.receive_some(65536)
                if hold:
                    with trio.move_on_after(hold):
                        while await stream.receive_some(65536):
                            pass
            self.attacks += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.attacks += 1
        finally:
            await trio.aclose_forcefully(stream)

    async def attacker(self, source: str, index: int, stop: trio.Event) -> None:
        attacks = self.attacks_list
        n = index
        while not stop.is_set():
            _, first, second, hold = attacks[n % len(attacks)]
            n += 1
            await self.one(source, first, second, hold)
            await trio.sleep(0)

    async def run(self, clients: int, stop: trio.Event) -> None:
        async with trio.open_nursery() as nursery:
            for source in SOURCES:
                for index in range(clients):
                    nursery.start_soon(self.attacker, source, index, stop)


# --- the controller ------------------------------------------------------------------------------


class Controller:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.output = bytearray()
        self._arrived = trio.Event()

    async def reader(self) -> None:
        from trio_websocket import ConnectionClosed

        while True:
            try:
                message = await self.ws.get_message()
            except ConnectionClosed:
                return
            if isinstance(message, bytes):
                self.output += message
                self._arrived.set()

    async def probe(self, char: bytes) -> float:
        """Type `char`; seconds until its echo arrives."""
        seen = len(self.output)
        started = time.monotonic()
        await self.ws.send_message(char)
        with trio.fail_after(30):
            while char not in self.output[seen:]:
                self._arrived = trio.Event()
                await self._arrived.wait()
        return time.monotonic() - started

    async def measure(self, seconds: float) -> list[float]:
        samples = []
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            samples.append(await self.probe(b"abcdefghijklmnopqrstuvwxyz"[n % 26:n % 26 + 1]))
            n += 1
            if n % 60 == 0:
                await self.ws.send_message(b"\x15")  # Ctrl-U: keep the line short
            await trio.sleep(PROBE_INTERVAL)
        return samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def _demo_endpoint(served: Served) -> tuple[str, str]:
    """The demo user's cookie and the demo endpoint's id on `served`."""
    cookie = await trio.to_thread.run_sync(login, served.url, "demo", served.passwords["demo"])
    endpoints = await trio.to_thread.run_sync(_get_json, served.url, "/api/endpoints", cookie)
    return cookie, next(e["id"] for e in endpoints["endpoints"] if e["name"] == "demo")


async def _run_async(served: Served, seconds: float, clients: int, decoy: Served | None = None) -> dict[str, Any]:
    cookie, endpoint_id = await _demo_endpoint(served)
    target = decoy or served  # what the attackers flood
    target_endpoint = (await _demo_endpoint(decoy))[1] if decoy is not None else endpoint_id
    async with trio.open_nursery() as nursery:
        ws = await connect_socket(nursery, served.url, f"/ws/endpoints/{endpoint_id}/start", cookie)
        await send_json(ws, {"type": "start", "cols": 80, "rows": 24})
        with trio.fail_after(30):
            while True:
                message = await ws.get_message()
                if isinstance(message, str) and json.loads(message)["type"] in ("joined", "refused"):
                    assert json.loads(message)["type"] == "joined", message
                    break
        controller = Controller(ws)
        nursery.start_soon(controller.reader)
        await controller.measure(1.0)  # warm up: the shell's prompt, the first echoes
        cpu_start = served.cpu_seconds()
        quiet = await controller.measure(seconds)
        cpu_quiet = served.cpu_seconds() - cpu_start
        before = served.status()["VmRSS"]
        served.reset_peak()
        # the attackers run in their own process (at the lowest CPU priority, see main), so that
        # their event loop does not delay the controller's measurement here
        attackers = subprocess.Popen(
            [sys.executable, __file__, "--attack", target.url, target_endpoint, "--clients", str(clients),
             "--seconds", str(seconds + 0.5)], stdout=subprocess.PIPE, text=True)
        try:
            cpu_start = served.cpu_seconds()
            flooded = await controller.measure(seconds)
            cpu_flood = served.cpu_seconds() - cpu_start
            out, _ = await trio.to_thread.run_sync(attackers.communicate, None, 60)
        finally:
            if attackers.poll() is None:
                attackers.kill()
                attackers.wait()
        counts = json.loads(out)
        peak = served.status()["VmHWM"]
        await trio.sleep(2)  # the last attacks' connections close
        after = served.status()["VmRSS"]
        await controller.probe(b"Z")  # the session still works
        alive = served.alive()
        await ws.aclose()
        nursery.cancel_scope.cancel()
    return {
        "quiet_p50_ms": 1000 * statistics.median(quiet), "quiet_p99_ms": 1000 * percentile(quiet, 99),
        "flood_p50_ms": 1000 * statistics.median(flooded), "flood_p99_ms": 1000 * percentile(flooded, 99),
        "p99_ratio": percentile(flooded, 99) / percentile(quiet, 99),
        "rss_before_mib": before / MIB, "peak_increase_mib": (peak - before) / MIB,
        "after_increase_mib": (after - before) / MIB, **counts,
        "gateway_cpu_quiet": cpu_quiet / seconds, "gateway_cpu_flood": cpu_flood / seconds, "probes_quiet": len(quiet), "probes_flood": len(flooded),
        "gateway_alive": alive,
    }


def _get_json(base_url: str, path: str, cookie: str) -> Any:
    import urllib.request

    request = urllib.request.Request(base_url + path, headers={"Cookie": cookie, "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=15) as answer:
        return json.loads(answer.read())


async def _attack_async(base_url: str, endpoint_id: str, clients: int, seconds: float) -> dict[str, int]:
    flood = Flood(base_url, endpoint_id)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood.run, clients, stop)
        await trio.sleep(seconds)
        stop.set()
    return {"attacks": flood.attacks, "refused_503": flood.refused_503, "connect_errors": flood.errors}


def run_once(seconds: float, clients: int, config: str | None = None, decoy: bool = False) -> dict[str, Any]:
    load = os.getloadavg()[0]
    settings = ("--config", str(Path(config).resolve())) if config else ()
    with tempfile.TemporaryDirectory(prefix="cosession-flood-") as data_dir:
        served = Served(Path(data_dir) / "measured", *settings)
        other = Served(Path(data_dir) / "decoy", *settings) if decoy else None
        try:
            return {**trio.run(_run_async, served, seconds, clients, other), "load_average": load}
        finally:
            served.stop()
            if other is not None:
                other.stop()


# --- the report ----------------------------------------------------------------------------------


FIGURES = [
    ("quiet_p50_ms", "controller keystroke echo p50, quiet (ms)"),
    ("quiet_p99_ms", "controller keystroke echo p99, quiet (ms)"),
    ("flood_p50_ms", "controller keystroke echo p50, during the flood (ms)"),
    ("flood_p99_ms", "controller keystroke echo p99, during the flood (ms)"),
    ("p99_ratio", "p99 ratio, flood / quiet"),
    ("gateway_cpu_quiet", "gateway CPU, quiet (cores)"),
    ("gateway_cpu_flood", "gateway CPU, during the flood (cores)"),
    ("rss_before_mib", "gateway resident memory before the flood (MiB)"),
    ("peak_increase_mib", "gateway memory increase at the flood's peak (MiB)"),
    ("after_increase_mib", "gateway memory increase after the flood (MiB)"),
    ("attacks", "anonymous attacks completed during the flood"),
    ("refused_503", "... of which refused with 503 by a connection limit"),
]


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    loads = ", ".join(f"{r['load_average']:.1f}" for r in runs if "load_average" in r) or "not recorded"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "?"
    lines = [f"Command: `.venv/bin/python bench/edge_flood.py --runs {len(runs)} --seconds {args.seconds:g} "
             f"--clients {args.clients}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}.", "",
             f"{len(runs)} runs of {args.seconds:g} s quiet + {args.seconds:g} s flood, {args.clients} attackers "
             f"on each of {len(SOURCES)} loopback addresses; 1-minute load average at each run's start: "
             f"{loads} (a shared 2-core machine). Median (min–max):", "",
             "| figure | median (min–max) |", "| --- | --- |"]
    for key, label in FIGURES:
        values = [r[key] for r in runs]
        fmt = (lambda v: f"{v:.0f}") if key in ("attacks", "refused_503") else (lambda v: f"{v:.2f}")
        lines.append(f"| {label} | {fmt(statistics.median(values))} ({fmt(min(values))}–{fmt(max(values))}) |")
    lines.append(f"| the session worked after the flood, the gateway alive | "
                 f"{sum(r['gateway_alive'] for r in runs)} of {len(runs)} runs |")
    return "\n".join(lines)


def write_docs(path: Path, block: str) -> None:
    text = path.read_text()
    begin, end = "<!-- bench/edge_flood.py: begin -->", "<!-- bench/edge_flood.py: end -->"
    if SECTION not in text:
        text = text.rstrip() + f"\n\n{SECTION}\n\n{begin}\n{end}\n"
    start, stop = text.index(begin) + len(begin), text.index(end)
    path.write_text(text[:start] + "\n" + block + "\n" + text[stop:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8, help="attackers per source address")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--config", metavar="FILE", help="settings for the gateway (cosession serve --config), "
                        "e.g. another [edge] max_anonymous_per_pass")
    parser.add_argument("--decoy", action="store_true",
                        help="the control: flood a second gateway, measure the controller on the first")
    parser.add_argument("--write-docs", metavar="FILE")
    parser.add_argument("--attack", nargs=2, metavar=("URL", "ENDPOINT_ID"), help=argparse.SUPPRESS)
    parser.add_argument("--from-json", metavar="REPORT", help="render a saved --json report again")
    args = parser.parse_args(argv)
    if args.from_json:
        block = report(json.loads(Path(args.from_json).read_text()), args)
        print(block)
        if args.write_docs:
            write_docs(Path(args.write_docs), block)
        return 0
    if args.attack:  # the attackers' own process (see _run_async)
        # Remote attackers spend none of the gateway host's CPU; here they share its two cores,
        # so they run at the lowest priority and take only what the gateway leaves idle.
        os.nice(19)
        print(json.dumps(trio.run(_attack_async, *args.attack, args.clients, args.seconds)))
        return 0
    runs = []
    for n in range(args.runs):
        runs.append(run_once(args.seconds, args.clients, args.config, args.decoy))
        print(f"run {n + 1}: " + json.dumps({k: round(v, 2) if isinstance(v, float) else v
                                             for k, v in runs[-1].items()}), file=sys.stderr, flush=True)
    block = report(runs, args)
    print(json.dumps(runs, indent=2) if args.json else block)
    if args.write_docs:
        write_docs(Path(args.write_docs), block)
    return 0 if all(r["gateway_alive"] for r in runs) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

"""Desktop recordings: bytes per minute of a busy desktop, and seek time in a 1-hour recording.

    .venv/bin/python bench/desktop_recording.py [--runs 3] [--seconds 30] [--rate 10] [--seeks 20] [--json]

Needs Debian's tigervnc-standalone-server (Xvnc) and python3-tk's Tk (bench/vnc_workload.py).
Everything runs on 127.0.0.1 and stops by itself. The machine is shared: read the spread.

Per run:

- **bytes per minute**: one Xvnc (1920x1080x24) runs the VNC benchmark's workload (four 320x180
  photo-like regions repainted `--rate` times a second, bench/vnc_workload.py); the engine (the
  real one, with its loop bridge: tests/fixtures/gateway.py's LiveGateway) opens a recorded VNC
  session on it through the real VNC connection, records `--seconds` of it on the system clock,
  and ends it. The recording's size over its duration, in MB a minute; and how many keyframes;
- **seek in a 1-hour recording**: that recording's records repeated, each time later, until an
  hour is written (the same bytes a busy hour would have, keyframes every `keyframe_seconds`),
  closed with its index. Then `--seeks` seeks to random times, each as the replay websocket does
  it (dashboard/pages/recordings.py): open the file, read the index (engine.recordings.read_desktop),
  read the keyframe at or before the time and the frames from it to that time (desktop_start).
  p50 and max over the seeks; and, once, the SHA-256 check a closed recording gets at the first
  replay (cached for the seeks after it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.messages import EndpointProtocol, EndpointSpec, User  # noqa: E402
from engine.recording_desktop import (  # noqa: E402
    DesktopEncoder, _walk, desktop_start, read_desktop,
)
from engine.messages import Keyframe  # noqa: E402
from engine.recordings import RecordingMeta  # noqa: E402

PASSWORD = "benchpwd"
HOUR = 3600.0


def record_busy_desktop(seconds: float, rate: float, tmp: Path) -> dict[str, Any]:
    from protocols.vnc import VncConnection
    from tests.fixtures.gateway import LiveGateway
    from tests.fixtures.xvnc import start_xvnc

    with start_xvnc(1920, 1080, password=PASSWORD, extra=("-FrameRate=60",)) as xvnc:
        workload = xvnc.run(sys.executable, str(ROOT / "bench" / "vnc_workload.py"), "1920", "1080", str(rate),
                            stdout=subprocess.PIPE)
        assert workload.stdout is not None and workload.stdout.readline().strip() == b"ready"
        gateway = LiveGateway(tmp / "data").start()
        try:
            engine = gateway.engine
            spec = EndpointSpec("desk", "busy-desktop", EndpointProtocol.VNC)
            controller = engine.open_session(spec, User("alice", "Alice"),
                                             connection=VncConnection(gateway.bridge, xvnc.host, xvnc.port, PASSWORD),
                                             record=True)
            time.sleep(seconds)  # a benchmark: the desktop runs for this long on the system clock
            engine.terminate(controller.session_id, User("root", "Root", is_admin=True))
            deadline = time.monotonic() + 30
            while engine.recordings.open_count():
                if time.monotonic() > deadline:
                    raise RuntimeError("the recording did not close")
                time.sleep(0.05)
            [path] = list(gateway.settings.recordings_path.iterdir())
            target = tmp / path.name
            target.write_bytes(path.read_bytes())
        finally:
            gateway.stop()
    with open(target, "rb") as f:
        recording = read_desktop(f)
    size = target.stat().st_size
    return {"path": target, "bytes": size, "duration": recording.duration, "keyframes": len(recording.keyframes),
            "mb_per_minute": size / 1e6 / (recording.duration / 60)}


def make_hour(source: Path, target: Path) -> dict[str, Any]:
    """`source`'s records repeated, each copy later by its duration, until an hour is written."""
    with open(source, "rb") as f:
        recording = read_desktop(f)
        records = []
        for kind, t, offset, length in _walk(f, 0 + _first(f), recording.end):
            f.seek(offset + 13)
            records.append((kind, t, f.read(length)))
    span = max(recording.duration, 1.0)
    meta = RecordingMeta("hour", "desk", "busy-desktop", "vnc", "alice", "Alice", 0.0)
    encoder = DesktopEncoder(meta)
    copies = 0
    with open(target, "wb") as out:
        out.write(encoder.header())
        while copies * span < HOUR:
            shift = copies * span
            for kind, t, payload in records:
                if kind == b"U":
                    out.write(encoder.output(shift + t, payload))
                elif kind == b"K":
                    width, height = int.from_bytes(payload[:2], "big"), int.from_bytes(payload[2:4], "big")
                    out.write(encoder.keyframe(shift + t, Keyframe(payload[4:], width, height)))
                elif kind == b"M" and copies == 0:
                    out.write(encoder.marker(shift + t, payload.decode()))
            copies += 1
        out.write(encoder.trailer())
    return {"bytes": target.stat().st_size}


def _first(f: Any) -> int:
    from engine.recording_desktop import _read_header
    return _read_header(f)[1]


def seek_times(path: Path, seeks: int, rng: random.Random) -> dict[str, Any]:
    # the first replay's integrity check (then cached by the file's stat)
    started = time.perf_counter()
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    check_ms = (time.perf_counter() - started) * 1000
    times, catch_up = [], []
    with open(path, "rb") as f:
        duration = read_desktop(f).duration
    for _ in range(seeks):
        at = rng.uniform(0, duration)
        started = time.perf_counter()
        with open(path, "rb") as f:
            recording = read_desktop(f, os.stat(path).st_size)
            start = desktop_start(f, recording, at)
        times.append((time.perf_counter() - started) * 1000)
        catch_up.append(len(start.catch_up))
    return {"seek_p50_ms": statistics.median(times), "seek_max_ms": max(times), "check_ms": check_ms,
            "catch_up_mb_p50": statistics.median(catch_up) / 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seeks", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)
    rng = random.Random(12)
    runs = []
    for number in range(options.runs):
        with tempfile.TemporaryDirectory(prefix="cosession-bench-rec-") as tmp:
            load = os.getloadavg()[0]
            busy = record_busy_desktop(options.seconds, options.rate, Path(tmp))
            hour = make_hour(busy["path"], Path(tmp) / "hour.rfbrec")
            seeks = seek_times(Path(tmp) / "hour.rfbrec", options.seeks, rng)
            run = {"load": load, "mb_per_minute": busy["mb_per_minute"], "keyframes": busy["keyframes"],
                   "duration": busy["duration"], "hour_gb": hour["bytes"] / 1e9, **seeks}
            runs.append(run)
            print(f"run {number + 1}: " + ", ".join(f"{k} {v:.3g}" for k, v in run.items()), file=sys.stderr)
    keys = list(runs[0])
    summary = {k: {"median": statistics.median(r[k] for r in runs), "min": min(r[k] for r in runs),
                   "max": max(r[k] for r in runs)} for k in keys}
    if options.json:
        print(json.dumps({"runs": runs, "summary": summary}, indent=2))
    else:
        for k, v in summary.items():
            print(f"{k}: {v['median']:.3g} ({v['min']:.3g}-{v['max']:.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

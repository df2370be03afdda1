"""The engine benchmarks of docs/benchmarks.md: the load test's workloads, several runs each,
each run in a fresh process, reported as medians with the spread.

    .venv/bin/python bench/engine.py [--runs 3] [--workload fanout|scale|all] [--duration 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict

WORKLOADS = {
    # name: (sessions, viewers, rate, input_rate, frame_bytes)
    "fanout": (200, 10, 10.0, 0.0, 128),   # 200 sessions x 10 viewers x 10 frames/s
    "scale": (1000, 10, 1.0, 0.0, 128),    # 11,000 participants at 1 frame/s
}


def one(args: argparse.Namespace) -> None:
    from cosession.loadtest import Options, run_engine_loadtest

    sessions, viewers, rate, input_rate, frame_bytes = WORKLOADS[args.one]
    report = run_engine_loadtest(Options(sessions, viewers, rate, frame_bytes, input_rate, args.duration))
    print(json.dumps(asdict(report)))


def measure(name: str, runs: int, duration: float) -> list[dict]:
    results = []
    for n in range(runs):
        out = subprocess.run([sys.executable, __file__, "--one", name, "--duration", str(duration)],
                             capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name} run {n + 1}/{runs}: p99 {result['fanout_latency_ms']['p99']} ms, "
              f"errors {result['errors']}", file=sys.stderr)
        results.append(result)
    return results


def median_and_spread(values: list[float]) -> str:
    return f"{statistics.median(values):g} ({min(values):g}–{max(values):g})"


def table(name: str, results: list[dict], duration: float) -> str:
    sessions, viewers, rate, _, frame_bytes = WORKLOADS[name]
    rows = [
        ("p50 fan-out latency, ms", [r["fanout_latency_ms"]["p50"] for r in results]),
        ("p99 fan-out latency, ms", [r["fanout_latency_ms"]["p99"] for r in results]),
        ("max fan-out latency, ms", [r["fanout_latency_ms"]["max"] for r in results]),
        ("frames delivered", [r["frames_delivered"] for r in results]),
        ("frames dropped", [r["frames_dropped"] for r in results]),
        ("start-up (open + join all), s", [r["startup_seconds"] for r in results]),
        ("peak RSS, MB", [r["peak_rss_mb"] for r in results]),
        ("threads after stop", [r["threads_after_stop"] for r in results]),
    ]
    lines = [f"`cosession loadtest --sessions {sessions} --viewers {viewers} --rate {rate:g} "
             f"--frame-bytes {frame_bytes} --duration {duration:g}` — {len(results)} runs, median (min–max):", "",
             "| figure | value |", "| --- | --- |"]
    lines += [f"| {label} | {median_and_spread(values)} |" for label, values in rows]
    errors = sorted({e for r in results for e in r["errors"]})
    lines += ["", f"Errors: {'; '.join(errors) if errors else 'none'}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--one", choices=list(WORKLOADS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args)
        return
    print(f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}\n")
    for name in WORKLOADS if args.workload == "all" else [args.workload]:
        print(table(name, measure(name, args.runs, args.duration), args.duration) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()

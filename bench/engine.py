"""The engine benchmarks of docs/benchmarks.md: the load test's workloads, several runs each,
each run in a fresh process, reported as medians with the spread.

    .venv/bin/python bench/engine.py [--runs 3] [--workload fanout|scale|all] [--duration 20]
    .venv/bin/python bench/engine.py --sweep 600,1000,1500 [--rate 5] [--runs 3] [--duration 20]

A workload is `cosession loadtest` with the figures of the table below it: 10 viewers per
session, 128-byte frames, each session's stream at its own phase (`--in-step`: all at once). `--sweep` runs the scale workload at each session count given and
reports the largest count whose median p99 fan-out latency stays under `--p99-bound` ms.
Every run records the machine's 1-minute load average when it began: the machine is shared.
`--record` records every session (docs/recordings.md): run a workload with and without it to see
what recording costs (CPU, fan-out latency) and how many bytes it writes.
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
    "scale": (1000, 10, 5.0, 0.0, 128),    # 11,000 participants at 5 frames/s (issue 14's target)
}


def one(args: argparse.Namespace) -> None:
    from cosession.loadtest import Options, run_engine_loadtest

    sessions, viewers, rate, input_rate, frame_bytes = json.loads(args.one)
    load = os.getloadavg()[0]
    report = run_engine_loadtest(Options(sessions, viewers, rate, frame_bytes, input_rate, args.duration,
                                         in_step=args.in_step, record=args.record))
    print(json.dumps({**asdict(report), "load_at_start": load}))


IN_STEP = False  # --in-step: every session emits at the same instant
RECORD = False  # --record: every session recorded


def measure(shape: tuple, runs: int, duration: float) -> list[dict]:
    results = []
    for n in range(runs):
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(shape), "--duration", str(duration)]
                             + (["--in-step"] if IN_STEP else []) + (["--record"] if RECORD else []),
                             capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{shape[0]} sessions x {shape[1]} viewers x {shape[2]:g}/s run {n + 1}/{runs}: "
              f"p99 {result['fanout_latency_ms']['p99']} ms, start {result['startup_seconds']} s, "
              f"stop {result['stop_seconds']} s, cpu {result['load_cpu_percent']} %, load {result['load_at_start']:.2f}, errors {result['errors']}",
              file=sys.stderr)
        results.append(result)
    return results


def median_and_spread(values: list[float]) -> str:
    return f"{statistics.median(values):g} ({min(values):g}–{max(values):g})"


def command(shape: tuple, duration: float) -> str:
    sessions, viewers, rate, input_rate, frame_bytes = shape
    extra = (f" --input-rate {input_rate:g}" if input_rate else "") + (" --in-step" if IN_STEP else "") \
        + (" --record" if RECORD else "")
    return (f"cosession loadtest --sessions {sessions} --viewers {viewers} --rate {rate:g}{extra} "
            f"--frame-bytes {frame_bytes} --duration {duration:g}")


def table(shape: tuple, results: list[dict], duration: float) -> str:
    rows = [
        ("p50 fan-out latency, ms", [r["fanout_latency_ms"]["p50"] for r in results]),
        ("p99 fan-out latency, ms", [r["fanout_latency_ms"]["p99"] for r in results]),
        ("max fan-out latency, ms", [r["fanout_latency_ms"]["max"] for r in results]),
        ("frames generated", [r["frames_generated"] for r in results]),
        ("frames delivered", [r["frames_delivered"] for r in results]),
        ("frames dropped", [r["frames_dropped"] for r in results]),
        ("rule violations and errors", [len(r["errors"]) for r in results]),
        ("start-up (open + join all), s", [r["startup_seconds"] for r in results]),
        ("stop, s", [r["stop_seconds"] for r in results]),
        ("CPU while the streams ran, % of a core", [r["load_cpu_percent"] for r in results]),
("peak RSS, MB", [r["peak_rss_mb"] for r in results]),
        ("threads after stop", [r["threads_after_stop"] for r in results]),
        ("load average (1 min) at the run's start", [round(r["load_at_start"], 2) for r in results]),
    ]
    if RECORD:  # bytes written per recorded session and minute of the streams
        rows.append(("recorded, KB per session-minute", [
            round(r["recording_bytes"] / max(1, r["sessions_started"]) / duration * 60 / 1024, 1) for r in results]))
    lines = [f"`{command(shape, duration)}` — {len(results)} runs, median (min–max):", "",
             "| figure | value |", "| --- | --- |"]
    lines += [f"| {label} | {median_and_spread(values)} |" for label, values in rows]
    errors = sorted({e for r in results for e in r["errors"]})
    lines += ["", f"Errors: {'; '.join(errors) if errors else 'none'}."]
    return "\n".join(lines)


def sweep(counts: list[int], rate: float, runs: int, duration: float, bound: float) -> str:
    lines = [f"Sweep: `{command((0, 10, rate, 0.0, 128), duration).replace('--sessions 0', '--sessions N')}`, "
             f"{runs} runs per N, median (min–max):", "",
             "| sessions | p99 fan-out, ms | p50, ms | start-up, s | stop, s | CPU, % of a core | peak RSS, MB "
             "| errors | load at start |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    held = None
    for sessions in counts:
        results = measure((sessions, 10, rate, 0.0, 128), runs, duration)
        p99s = [r["fanout_latency_ms"]["p99"] for r in results]
        if statistics.median(p99s) < bound and not any(r["errors"] for r in results):
            held = sessions
        lines.append(" | ".join([
            f"| {sessions}", median_and_spread(p99s),
            median_and_spread([r["fanout_latency_ms"]["p50"] for r in results]),
            median_and_spread([r["startup_seconds"] for r in results]),
            median_and_spread([r["stop_seconds"] for r in results]),
            median_and_spread([r["load_cpu_percent"] for r in results]),
            median_and_spread([r["peak_rss_mb"] for r in results]),
            str(sum(len(r["errors"]) for r in results)),
            median_and_spread([round(r["load_at_start"], 2) for r in results]) + " |"]))
    lines += ["", f"Largest session count with a median p99 under {bound:g} ms and no errors: "
                  f"{held if held is not None else 'none of those tried'}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--sweep", help="comma-separated session counts, at --rate frames/s, 10 viewers")
    parser.add_argument("--rate", type=float, default=5.0, help="frames/s per session in a sweep (default 5)")
    parser.add_argument("--p99-bound", type=float, default=50.0, help="the sweep's p99 bound in ms (default 50)")
    parser.add_argument("--in-step", action="store_true",
                        help="every session emits at the same instant (default: spread over one period)")
    parser.add_argument("--record", action="store_true", help="record every session")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global IN_STEP, RECORD
    IN_STEP, RECORD = args.in_step, args.record
    if args.one:
        one(args)
        return
    print(f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}\n")
    if args.sweep:
        counts = [int(n) for n in args.sweep.split(",")]
        print(sweep(counts, args.rate, args.runs, args.duration, args.p99_bound) + "\n")
        return
    for name in WORKLOADS if args.workload == "all" else [args.workload]:
        shape = WORKLOADS[name]
        print(table(shape, measure(shape, args.runs, args.duration), args.duration) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()

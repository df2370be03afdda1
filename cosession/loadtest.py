"""Drive many joint sessions on synthetic endpoints and report what the rules did.

`--via engine` (the default) drives the actors directly, with no browser and no network: the
figures measure the engine. Every number in the report is counted where it happens: inputs
forwarded by the endpoints themselves, refusals by the participants that were refused, frames
and their latency by each participant that received them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.settings import Settings, load
from engine import Clock, Engine, Participant, actor_threads
from engine.messages import EndpointSpec, Frame, InputRefused, Keyframe, EndpointProtocol, Refused, User
from protocols.synthetic import SyntheticConnection

REPORT_KEYS = (
    "sessions_started", "viewers_joined", "joins_refused", "inputs_forwarded", "inputs_refused",
    "frames_generated", "frames_delivered", "frames_dropped", "fanout_latency_ms", "peak_rss_mb",
    "threads_after_stop", "errors",
)


@dataclass(frozen=True)
class Options:
    sessions: int = 10
    viewers: int = 10
    rate: float = 5.0
    frame_bytes: int = 128
    input_rate: float = 0.0
    duration: float = 5.0
    data_dir: str | None = None
    in_step: bool = False
    record: bool = False  # every session recorded (docs/recordings.md): the recording's overhead


class LatencySink:
    """A participant's sink that measures, at receipt, how long each frame took to get here
    from the endpoint. It never refuses, so drops are only those the actors made."""

    __slots__ = ("_lock", "latencies_ms", "frames", "input_refusals", "closed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latencies_ms = array("d")
        self.frames = 0
        self.input_refusals = 0
        self.closed = False

    def attach(self, request_keyframe: Any) -> None:
        pass  # it never refuses a frame, so it never owes a keyframe

    def offer(self, frame: Frame) -> bool:
        latency = (time.perf_counter_ns() - frame.emitted_ns) / 1e6
        with self._lock:
            self.frames += 1
            self.latencies_ms.append(latency)
        return True

    def keyframe(self, keyframe: Keyframe, resync: bool = False) -> None:
        pass

    def event(self, event: Any) -> None:
        if isinstance(event, InputRefused):
            with self._lock:
                self.input_refusals += 1

    def close(self) -> None:
        self.closed = True


@dataclass
class Report:
    sessions_started: int = 0
    viewers_joined: int = 0
    joins_refused: dict[str, int] = field(default_factory=dict)
    inputs_forwarded: int = 0
    inputs_refused: int = 0
    frames_generated: int = 0
    frames_delivered: int = 0
    frames_dropped: int = 0
    fanout_latency_ms: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    threads_after_stop: int = 0
    errors: list[str] = field(default_factory=list)
    # beyond the JSON contract: for the table and the benchmarks
    startup_seconds: float = 0.0
    stop_seconds: float = 0.0
    load_cpu_percent: float = 0.0  # the process's CPU while the streams ran, % of one core
    controller_inputs_sent: int = 0
    viewer_inputs_sent: int = 0
    threads_at_start: int = 0
    audit_rows: int = 0
    recording_bytes: int = 0  # written to recordings, with --record

    def as_json(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in REPORT_KEYS}


def percentiles(values: array) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 3)}


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


class _Inputs:
    """Sends input at `rate` per second from every participant, on the engine's clock."""

    def __init__(self, clock: Clock, rate: float) -> None:
        self._clock = clock
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._stopped = False
        self.sent: Counter[str] = Counter()

    def start(self, participant: Participant, offset: float) -> None:
        if not self._interval:
            return
        next_at = self._clock.now() + offset * self._interval

        def tick() -> None:
            nonlocal next_at
            if self._stopped:
                return
            participant.send_input(b"k")
            self.sent[participant.role.value] += 1
            next_at += self._interval
            self._clock.call_at(next_at, tick)

        self._clock.call_at(next_at, tick)

    def stop(self) -> None:
        self._stopped = True


def run_engine_loadtest(options: Options, settings: Settings | None = None,
                        progress: Any = None) -> Report:
    report = Report(threads_at_start=threading.active_count())
    with tempfile.TemporaryDirectory(prefix="cosession-loadtest-") as tmp:
        data_dir = Path(options.data_dir or tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        settings = settings or load(server={"data_dir": str(data_dir)})
        if not settings.recordings.directory:  # with its database, not in the configured data directory
            settings = dataclasses.replace(settings, recordings=dataclasses.replace(
                settings.recordings, directory=str(data_dir / "recordings")))
        engine = Engine(settings, database_url=f"sqlite:///{data_dir / 'cosession.db'}").start()
        clock = engine.clock
        connections: list[SyntheticConnection] = []
        sinks: list[LatencySink] = []
        session_sinks: list[list[LatencySink]] = []  # per session, for the final count
        participants: list[Participant] = []
        refusals: Counter[str] = Counter()
        inputs = _Inputs(clock, options.input_rate)
        try:
            began = time.perf_counter()
            for n in range(options.sessions):
                endpoint = EndpointSpec(f"synthetic-{n}", f"synthetic {n}", EndpointProtocol.SYNTHETIC)
                connection = SyntheticConnection(clock, frame_bytes=options.frame_bytes)
                sink = LatencySink()
                answer = engine.open_session(endpoint, User(f"controller-{n}", f"Controller {n}"),
                                             connection=connection, sink=sink, record=options.record)
                if isinstance(answer, Refused):
                    report.errors.append(f"session {n} refused: {answer.reason.value}")
                    continue
                connections.append(connection)
                sinks.append(sink)
                session_sinks.append([sink])
                participants.append(answer)
                report.sessions_started += 1
                for v in range(options.viewers):
                    viewer_sink = LatencySink()
                    joined = engine.join_session(answer.session_id, User(f"viewer-{n}-{v}", f"Viewer {n}.{v}"),
                                                 sink=viewer_sink)
                    if isinstance(joined, Refused):
                        refusals[joined.reason.value] += 1
                    else:
                        sinks.append(viewer_sink)
                        session_sinks[-1].append(viewer_sink)
                        participants.append(joined)
                        report.viewers_joined += 1
                if progress:
                    progress("setup", n + 1, options.sessions)
            report.startup_seconds = round(time.perf_counter() - began, 3)
            for i, connection in enumerate(connections):
                # Independent sessions print at independent moments: spread over one period,
                # unless every stream is to emit in step (a burst of one frame per session).
                connection.start_stream(options.rate, phase=1.0 if options.in_step else (i % 97 + 1) / 97)
            for i, participant in enumerate(participants):
                inputs.start(participant, offset=(i % 97) / 97)
            cpu_before, wall_before = time.process_time(), time.monotonic()
            end = wall_before + options.duration
            while (left := end - time.monotonic()) > 0:
                if progress:
                    progress("run", options.duration - left, options.duration)
                time.sleep(min(0.1, left))  # the load test's own run time, not a test waiting
            inputs.stop()
            for connection in connections:
                connection.stop_stream()
            if options.duration > 0:
                report.load_cpu_percent = round(
                    100 * (time.process_time() - cpu_before) / (time.monotonic() - wall_before), 1)
            _wait_for_deliveries(connections, session_sinks)
            report.audit_rows = engine.flush_audit().rows
        except Exception as exc:  # report, then still stop everything
            report.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            for connection in connections:
                connection.close()
            stopping = time.perf_counter()
            engine.stop()
            report.stop_seconds = round(time.perf_counter() - stopping, 3)
        report.recording_bytes = engine.recordings.bytes_total if engine.recordings is not None else 0
        report.controller_inputs_sent = inputs.sent["controller"]
        report.viewer_inputs_sent = inputs.sent["viewer"]
        report.joins_refused = dict(refusals)
        report.inputs_forwarded = sum(c.inputs_received for c in connections)
        report.inputs_refused = sum(s.input_refusals for s in sinks)
        report.frames_generated = sum(c.frames_emitted for c in connections)
        report.frames_delivered = sum(s.frames for s in sinks)
        report.frames_dropped = 0  # a LatencySink never refuses; see the websocket load test for drops
        latencies = array("d")
        for sink in sinks:
            latencies.extend(sink.latencies_ms)
        report.fanout_latency_ms = percentiles(latencies)
        report.peak_rss_mb = _peak_rss_mb()
        report.threads_after_stop = threading.active_count()
        _check(report)
    return report


def _wait_for_deliveries(connections: list[SyntheticConnection], session_sinks: list[list[LatencySink]],
                         bound: float = 30.0) -> None:
    """After the streams stop, let the frames in flight arrive: every frame an endpoint emitted
    is due to every participant of its session (all joined before the streams started)."""
    deadline = time.monotonic() + bound
    pending = list(zip(connections, session_sinks))
    while pending and time.monotonic() < deadline:
        pending = [(c, ss) for c, ss in pending if any(s.frames < c.frames_emitted for s in ss)]
        if pending:
            time.sleep(0.01)


def _check(report: Report) -> None:
    """What must hold after any run; a violation is an error of the run, not a footnote."""
    if report.inputs_forwarded != report.controller_inputs_sent:
        report.errors.append(f"controller inputs sent {report.controller_inputs_sent}, "
                             f"endpoints received {report.inputs_forwarded}")
    if report.inputs_refused != report.viewer_inputs_sent:
        report.errors.append(f"viewer inputs sent {report.viewer_inputs_sent}, refused {report.inputs_refused}")
    if actor_threads():
        report.errors.append(f"{len(actor_threads())} actor threads left after stop")
    if report.threads_after_stop != report.threads_at_start:
        report.errors.append(f"threads: {report.threads_at_start} at start, {report.threads_after_stop} after stop")


# --- the command ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", type=int, default=10, help="sessions to start (default 10)")
    parser.add_argument("--viewers", type=int, default=10, help="join attempts per session (default 10)")
    parser.add_argument("--rate", type=float, default=5.0, help="frames per second per session (default 5)")
    parser.add_argument("--frame-bytes", type=int, default=128, help="bytes per frame (default 128)")
    parser.add_argument("--input-rate", type=float, default=0.0,
                        help="input messages per second sent by every participant (default 0)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load (default 5)")
    parser.add_argument("--data-dir", help="keep the audit database here (default: a temporary directory)")
    parser.add_argument("--in-step", action="store_true",
                        help="every session emits at the same instant (default: spread over one frame period)")
    parser.add_argument("--record", action="store_true", help="record every session (engine only)")
    parser.add_argument("--via", choices=["engine", "websocket"], default="engine",
                        help="drive the actors directly (engine) or a running gateway's websockets")
    parser.add_argument("--url", help="with --via websocket: the gateway's base URL, or several nodes' "
                        "separated by commas (sessions spread over them)")
    parser.add_argument("--viewers-on", choices=["same", "next"], default="same",
                        help="with several --url nodes: viewers on their controller's node (same) or "
                        "on the next one (next: every viewer joins across nodes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(run=run)


def _validate(args: argparse.Namespace) -> str | None:
    for name in ("sessions", "viewers", "frame_bytes"):
        if getattr(args, name) < (1 if name == "frame_bytes" else 0):
            return f"--{name.replace('_', '-')} must not be negative" if name != "frame_bytes" else \
                "--frame-bytes must be at least 1"
    for name in ("rate", "input_rate", "duration"):
        if getattr(args, name) < 0:
            return f"--{name.replace('_', '-')} must not be negative"
    return None


def run(args: argparse.Namespace) -> int:
    problem = _validate(args)
    if problem:
        print(f"cosession loadtest: {problem}", file=sys.stderr)
        return 2
    options = Options(args.sessions, args.viewers, args.rate, args.frame_bytes, args.input_rate,
                      args.duration, args.data_dir, args.in_step, args.record)
    settings = load(args.config, server={"data_dir": args.data_dir} if args.data_dir else {})
    if args.via == "websocket":
        from cosession.loadtest_ws import run_websocket_loadtest

        report = run_websocket_loadtest(options, settings, url=args.url, viewers_on=args.viewers_on,
                                        progress=None if args.json else _Bar())
    else:
        report = run_engine_loadtest(options, settings, progress=None if args.json else _Bar())
    if args.json:
        print(json.dumps(report.as_json()))
    else:
        _print_table(report)
    return 1 if report.errors else 0


class _Bar:
    """A progress bar on stderr while the load runs."""

    def __init__(self) -> None:
        from rich.progress import Progress

        # Started on first use, after the load test has counted its threads.
        self._progress = Progress(transient=True)
        self._tasks: dict[str, Any] = {}

    def __call__(self, phase: str, done: float, total: float) -> None:
        if not self._tasks:
            self._progress.start()
        if phase not in self._tasks:
            label = "starting sessions" if phase == "setup" else "running load"
            self._tasks[phase] = self._progress.add_task(label, total=total)
        self._progress.update(self._tasks[phase], completed=done)
        if phase == "run" and total - done < 0.11:
            self._progress.stop()  # its refresh thread ends before the threads are counted


def _print_table(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="cosession load test", show_header=False)
    for key in REPORT_KEYS:
        value = getattr(report, key)
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
        elif isinstance(value, list):
            value = "; ".join(value) or "none"
        table.add_row(key.replace("_", " "), str(value))
    table.add_row("startup seconds", str(report.startup_seconds))
    table.add_row("stop seconds", str(report.stop_seconds))
    table.add_row("cpu during load %", str(report.load_cpu_percent))
    table.add_row("audit rows", str(report.audit_rows))
    Console().print(table)

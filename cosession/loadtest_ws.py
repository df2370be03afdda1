"""`cosession loadtest --via websocket`: the engine load test's workload and JSON report, through
a gateway's websockets.

Without ``--url`` it starts a gateway in this process (its own trio loop in a thread, Hypercorn
on 127.0.0.1, a temporary data directory) with one synthetic endpoint and one user per
participant. With ``--url`` it drives a running gateway (or several nodes, docs/protocol.md); set
``COSESSION_LOADTEST_USER``, ``COSESSION_LOADTEST_PASSWORD`` (an account that may use the endpoint;
every participant signs in as it) and ``COSESSION_LOADTEST_ENDPOINT`` (a synthetic endpoint's id).

Every participant is a trio-websocket client that signs in with ``POST /api/login``, opens its
websocket with the session cookie and the gateway's Origin, and counts what it receives:

- frames: each synthetic frame carries an invisible stamp of its emission time (wall-clock ns,
  `protocols.synthetic.stamps`), so latency is measured at the websocket client; an echoed input
  is one frame too (the input byte is ``\\x01``, which nothing else sends);
- drops: the frames a participant should have received and did not, because its queue
  overflowed and the engine resynchronised it from a keyframe (resyncs are counted too);
- inputs: the endpoint's own count of forwarded inputs (the ``stream`` answer), and the refusals
  each viewer received for its inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import resource
import tempfile
import threading
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import trio
from trio_websocket import ConnectionClosed

from config.settings import Settings, load
from cosession.join import GatewaySocket, connect_socket, login, send_json
from cosession.loadtest import Options, Report, _check, _peak_rss_mb, percentiles
from protocols.synthetic import stamp

log = logging.getLogger(__name__)

INPUT = b"\x01"  # what every participant types; the synthetic endpoint echoes it to everyone
BARRIER = b"\x02"  # a controller's last input: once a participant sees its echo, it has seen every frame before it
_STAMP_PREFIX = b"\x1b]9999;"
_STAMP_LEN = len(stamp(0))
SETTLE_SECONDS = 15.0  # after the run: how long the echoes and the last frames may take to arrive
CONNECT_SECONDS = 30.0


class LoadTestError(Exception):
    pass


# --- one participant -----------------------------------------------------------------------------


class WsParticipant:
    """A websocket client that counts what it receives."""

    def __init__(self, name: str, socket: GatewaySocket) -> None:
        self.name = name
        self.socket = socket
        self.role = self.session_id = ""
        self.refusal: dict[str, Any] | None = None
        self.frames = 0
        self.echoes = 0
        self.barriers = 0
        self.latencies_ms = array("d")
        self.input_refusals = 0
        self.sent = 0  # inputs this participant typed
        self.resyncs = 0
        self.resync_dropped = 0
        self.stream_answers: list[dict[str, Any]] = []
        self.ended: dict[str, Any] | None = None
        self.errors: list[str] = []
        self._tail = b""
        self._changed = trio.Event()

    async def read(self) -> None:
        try:
            while True:
                message = await self.socket.get_message()
                if isinstance(message, bytes):
                    self._data(message)
                else:
                    self._control(json.loads(message))
                self._changed.set()
                self._changed = trio.Event()
        except ConnectionClosed:
            pass
        finally:
            self._changed.set()

    def _data(self, data: bytes) -> None:
        now = time.time_ns()
        buffer = self._tail + data
        # a stamp split between two messages is counted once, in the message that completes it
        start = 0
        while (at := buffer.find(_STAMP_PREFIX, start)) != -1:
            end = at + _STAMP_LEN
            if end > len(buffer):
                break
            if end > len(self._tail):
                try:
                    emitted = int(buffer[at + len(_STAMP_PREFIX):end - 1])
                except ValueError:
                    emitted = None
                if emitted is not None:
                    self.frames += 1
                    self.latencies_ms.append((now - emitted) / 1e6)
            start = at + 1
        self.echoes += data.count(INPUT)
        self.barriers += data.count(BARRIER)
        self._tail = buffer[-(_STAMP_LEN - 1):]

    def _control(self, m: dict[str, Any]) -> None:
        kind = m.get("type")
        if kind == "joined":
            self.role, self.session_id = m["role"], m["session_id"]
        elif kind == "refused":
            if m.get("fatal"):
                self.refusal = m
            elif m.get("of") == "input":
                self.input_refusals += 1
            else:
                self.errors.append(f"{self.name}: refused {m.get('of')}: {m.get('reason')}")
        elif kind == "resync":
            self.resyncs += 1
            self.resync_dropped += int(m.get("dropped", 0))
        elif kind == "stream":
            self.stream_answers.append(m)
        elif kind == "ended":
            self.ended = m

    async def wait_for(self, predicate: Callable[[], bool], deadline: float) -> bool:
        with trio.move_on_after(deadline):
            while not predicate():
                await self._changed.wait()
            return True
        return False

    async def send_input(self, data: bytes) -> None:
        await self.socket.send_message(data)


# --- the gateway under test ----------------------------------------------------------------------


class InProcessGateway:
    """The real application on Hypercorn's trio worker, in a thread of this process, on a free
    loopback port, with a fresh data directory. `stop` ends every session first."""

    def __init__(self, settings: Settings, data_dir: Path) -> None:
        from argon2 import PasswordHasher

        from dashboard.services import Services
        from engine import Engine, LoopBridge

        self.settings = dataclasses.replace(
            settings,
            server=dataclasses.replace(settings.server, host="127.0.0.1", port=0, data_dir=str(data_dir),
                                       public_url=""),
            engine=dataclasses.replace(settings.engine, database_url=f"sqlite:///{data_dir / 'cosession.db'}"),
            security=dataclasses.replace(settings.security, secret_key="", credential_key=""),
            demo=dataclasses.replace(settings.demo, enabled=False),
            # every participant connects from this machine: no per-client limits on the load generator's own gateway
            edge=dataclasses.replace(settings.edge, max_connections=0, max_connections_per_client=0,
                                     max_anonymous_connections=0, max_anonymous_connections_per_client=0,
                                     max_handshakes_in_flight=0))
        self.bridge = LoopBridge()
        self.engine = Engine(self.settings)
        # cheap password hashing: a throwaway instance whose accounts exist for one run
        self._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
        self._services_cls = Services
        self.services: Any = None
        self.base_url = ""
        self._token: trio.lowlevel.TrioToken | None = None
        self._shutdown: trio.Event | None = None
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> "InProcessGateway":
        from dashboard.app import create_app

        self.engine.start()
        self.services = self._services_cls.build(self.settings, self.engine, self.bridge, hasher=self._hasher)
        self._app = create_app(self.services)
        self._thread = threading.Thread(target=self._run, name="loadtest-gateway", daemon=True)
        self._thread.start()
        if not self._started.wait(30) or self._error is not None:
            self.stop()
            raise LoadTestError(f"the in-process gateway did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        from cosession import web_server

        self._shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.bridge.serve)
            binds = await nursery.start(functools.partial(web_server.serve, self._app, self.settings,
                                                          shutdown_trigger=self._shutdown.wait,
                                                          graceful_timeout=2.0))
            self.base_url = binds[0]
            self.services.public_url = self.base_url
            self._token = trio.lowlevel.current_trio_token()
            self._started.set()
            await self._shutdown.wait()
            with trio.move_on_after(5):
                while len(nursery.child_tasks) > 1:  # Hypercorn closes its connections
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()

    def stop(self) -> None:
        try:
            self.engine.stop()
        finally:
            if self._token is not None and self._shutdown is not None:
                try:
                    trio.from_thread.run_sync(self._shutdown.set, trio_token=self._token)
                except trio.RunFinishedError:
                    pass
            if self._thread is not None:
                self._thread.join(15)
            if self.services is not None:
                self.services.close()

    def audit_rows(self) -> int:
        return self.engine.flush_audit().rows


# --- the run -------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    nodes: list[tuple[str, str]]  # per session: its controller's node (URL), its viewers' (--viewers-on)
    endpoint_ids: list[str]  # one per session
    controllers: list[tuple[str, str]]  # (name, password) per session
    viewers: list[list[tuple[str, str]]]  # per session


def _local_plan(gateway: InProcessGateway, options: Options) -> _Plan:
    from engine.messages import EndpointProtocol

    services = gateway.services
    password = "loadtest-password"
    endpoint_ids, controllers, viewers = [], [], []
    for n in range(options.sessions):
        endpoint = services.endpoints.create(f"synthetic-{n}", EndpointProtocol.SYNTHETIC)
        endpoint_ids.append(endpoint.id)
        controller = services.users.create(f"controller-{n}", password)
        services.grants.grant(endpoint.id, controller.id)
        controllers.append((controller.name, password))
        names = []
        for v in range(options.viewers):
            viewer = services.users.create(f"viewer-{n}-{v}", password)
            services.grants.grant(endpoint.id, viewer.id)
            names.append((viewer.name, password))
        viewers.append(names)
    return _Plan([(gateway.base_url, gateway.base_url)] * options.sessions, endpoint_ids, controllers, viewers)


def _remote_plan(url: str, options: Options, viewers_on: str) -> _Plan:
    user = os.environ.get("COSESSION_LOADTEST_USER")
    password = os.environ.get("COSESSION_LOADTEST_PASSWORD")
    endpoint = os.environ.get("COSESSION_LOADTEST_ENDPOINT")
    if not (user and password and endpoint):
        raise LoadTestError("with --url, set COSESSION_LOADTEST_USER, COSESSION_LOADTEST_PASSWORD and "
                            "COSESSION_LOADTEST_ENDPOINT (a synthetic endpoint the user may use)")
    urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()] or [url]
    return _Plan([(urls[n % len(urls)], urls[(n + (viewers_on == "next")) % len(urls)]) for n in range(options.sessions)],
                 [endpoint] * options.sessions, [(user, password)] * options.sessions,
                 [[(user, password)] * options.viewers for _ in range(options.sessions)])


class _Run:
    def __init__(self, plan: _Plan, options: Options, report: Report, progress: Any) -> None:
        self.plan = plan
        self.options = options
        self.report = report
        self.progress = progress
        self.cookies: dict[tuple[str, str], str] = {}
        self.sessions: list[tuple[WsParticipant, list[WsParticipant]]] = []
        self.refusals: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.inputs_stopped = False

    async def cookie(self, base_url: str, name: str, password: str) -> str:
        if (base_url, name) not in self.cookies:  # each node's own sign-in: its Origin, its cookie
            self.cookies[base_url, name] = await trio.to_thread.run_sync(login, base_url, name, password)
        return self.cookies[base_url, name]

    async def connect(self, nursery: trio.Nursery, base_url: str, name: str, password: str, path: str,
                      first: dict[str, Any]) -> WsParticipant:
        socket = await connect_socket(nursery, base_url, path, await self.cookie(base_url, name, password),
                                      message_queue_size=64, connect_timeout=CONNECT_SECONDS)
        participant = WsParticipant(name, socket)
        nursery.start_soon(participant.read)
        await send_json(socket, first)
        if not await participant.wait_for(lambda: bool(participant.role or participant.refusal), CONNECT_SECONDS):
            raise LoadTestError(f"{name}: no answer to {first['type']} within {CONNECT_SECONDS:g} s")
        return participant

    async def main(self) -> None:
        options, report = self.options, self.report
        async with trio.open_nursery() as nursery:
            began = time.perf_counter()
            for n in range(options.sessions):
                name, password = self.plan.controllers[n]
                controller = await self.connect(
                    nursery, self.plan.nodes[n][0], name, password, f"/ws/endpoints/{self.plan.endpoint_ids[n]}/start",
                    {"type": "start", "cols": 80, "rows": 24, "synthetic": {"frame_bytes": options.frame_bytes}})
                if controller.refusal is not None:
                    report.errors.append(f"session {n} refused: {controller.refusal['reason']}")
                    await controller.socket.aclose()
                    continue
                report.sessions_started += 1
                viewers = []
                for v_name, v_password in self.plan.viewers[n]:
                    viewer = await self.connect(nursery, self.plan.nodes[n][1], v_name, v_password,
                                                f"/ws/sessions/{controller.session_id}", {"type": "join"})
                    if viewer.refusal is not None:
                        self.refusals[viewer.refusal["reason"]] += 1
                        await viewer.socket.aclose()
                    else:
                        viewers.append(viewer)
                        report.viewers_joined += 1
                self.sessions.append((controller, viewers))
                if self.progress:
                    self.progress("setup", n + 1, options.sessions)
            report.startup_seconds = round(time.perf_counter() - began, 3)

            began, phase = trio.current_time(), 0 if options.in_step or options.rate <= 0 else 1 / options.rate
            for n, (controller, _) in enumerate(self.sessions):  # each at its own phase (--in-step: at once)
                await trio.sleep_until(began + n / len(self.sessions) * phase)
                await send_json(controller.socket, {"type": "stream", "rate": options.rate})
            everyone = [p for controller, viewers in self.sessions for p in (controller, *viewers)]
            if options.input_rate > 0:
                for i, participant in enumerate(everyone):
                    nursery.start_soon(self.type_into, participant, (i % 97) / 97)
            end = trio.current_time() + options.duration
            while (left := end - trio.current_time()) > 0:
                if self.progress:
                    self.progress("run", options.duration - left, options.duration)
                await trio.sleep(min(0.1, left))  # the load test's own run time
            self.inputs_stopped = True
            await self.settle()
            for participant in everyone:
                await participant.socket.aclose()
            nursery.cancel_scope.cancel()

    async def type_into(self, participant: WsParticipant, offset: float) -> None:
        interval = 1.0 / self.options.input_rate
        next_at = trio.current_time() + offset * interval
        while not self.inputs_stopped:
            await trio.sleep_until(next_at)
            if self.inputs_stopped:
                return
            try:
                await participant.send_input(INPUT)
            except ConnectionClosed:
                return
            participant.sent += 1
            self.sent[participant.role] += 1
            next_at += interval

    async def settle(self) -> None:
        """After the run, make sure everything sent has arrived before counting:

        1. stop every stream;
        2. each controller types a last input (the barrier): the endpoint echoes it after every
           frame and every input before it, so a participant that has its echo has everything;
        3. each viewer has had a refusal for every input it sent;
        4. the endpoint's own counters, read after all that (the second ``stream`` answer)."""
        report = self.report
        await trio.sleep(0)  # let the typing tasks see the stop
        for controller, _ in self.sessions:
            await send_json(controller.socket, {"type": "stream", "rate": 0})
            await controller.send_input(BARRIER)
            controller.sent += 1
            self.sent["controller"] += 1
        for controller, viewers in self.sessions:
            for p in (controller, *viewers):
                if not await p.wait_for(lambda p=p: p.barriers >= 1 or p.ended is not None, SETTLE_SECONDS):
                    report.errors.append(f"{p.name}: the last frames did not arrive within {SETTLE_SECONDS:g} s")
            for p in viewers:
                if not await p.wait_for(lambda p=p: p.input_refusals >= p.sent, SETTLE_SECONDS):
                    report.errors.append(f"{p.name}: {p.sent - p.input_refusals} input refusal(s) never came")
            await send_json(controller.socket, {"type": "stream", "rate": 0})
            if not await controller.wait_for(lambda c=controller: _stops(c) >= 2, SETTLE_SECONDS):
                report.errors.append(f"{controller.name}: no stream statistics")

    def finish(self) -> None:
        report = self.report
        report.joins_refused = dict(self.refusals)
        report.controller_inputs_sent = self.sent["controller"]
        report.viewer_inputs_sent = self.sent["viewer"]
        latencies = array("d")
        frames_generated = inputs_forwarded = delivered = expected = resyncs = 0
        for controller, viewers in self.sessions:
            stops = [a for a in controller.stream_answers if a.get("rate") == 0]
            stats = stops[1] if len(stops) >= 2 else {}
            generated = int(stats.get("frames_emitted", 0))
            frames_generated += generated
            inputs_forwarded += int(stats.get("inputs_received", 0))
            for p in (controller, *viewers):
                got = p.frames + p.echoes + p.barriers
                delivered += got
                expected += generated
                resyncs += p.resyncs
                latencies.extend(p.latencies_ms)
                report.inputs_refused += p.input_refusals
                report.errors.extend(p.errors)
        report.frames_generated = frames_generated
        report.inputs_forwarded = inputs_forwarded
        report.frames_delivered = delivered
        # every participant joined before the streams started, so each should have had every frame
        report.frames_dropped = max(0, expected - delivered)
        report.resyncs = resyncs  # type: ignore[attr-defined]
        if report.frames_dropped and not resyncs:
            report.errors.append(f"{report.frames_dropped} frames missing without a resync")
        report.fanout_latency_ms = percentiles(latencies)


def run_websocket_loadtest(options: Options, settings: Settings | None = None, *, url: str | None = None,
                           viewers_on: str = "same", progress: Any = None) -> Report:
    report = Report(threads_at_start=_threads())
    report.resyncs = 0  # type: ignore[attr-defined]
    cpu_before = _cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="cosession-loadtest-ws-") as tmp:
        gateway: InProcessGateway | None = None
        run: _Run | None = None
        try:
            if url:
                plan = _remote_plan(url, options, viewers_on)
            else:
                data_dir = Path(options.data_dir or tmp)
                data_dir.mkdir(parents=True, exist_ok=True)
                gateway = InProcessGateway(settings or load(env={}), data_dir).start()
                plan = _local_plan(gateway, options)
            run = _Run(plan, options, report, progress)
            trio.run(run.main)
            if gateway is not None:
                report.audit_rows = gateway.audit_rows()
        except Exception as exc:  # report, then still stop everything
            log.debug("websocket load test failed", exc_info=True)
            report.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if gateway is not None:
                gateway.stop()
        if run is not None:
            run.finish()
    report.cpu_seconds = round(_cpu_seconds() - cpu_before, 2)  # type: ignore[attr-defined]
    report.peak_rss_mb = _peak_rss_mb()
    report.threads_after_stop = _threads()
    if url:
        _check_inputs(report)  # a running gateway's threads and actors are not this process's
    else:
        _check(report)
    return report


def _check_inputs(report: Report) -> None:
    if report.inputs_forwarded != report.controller_inputs_sent:
        report.errors.append(f"controller inputs sent {report.controller_inputs_sent}, "
                             f"endpoints received {report.inputs_forwarded}")
    if report.inputs_refused != report.viewer_inputs_sent:
        report.errors.append(f"viewer inputs sent {report.viewer_inputs_sent}, refused {report.inputs_refused}")


def _stops(controller: WsParticipant) -> int:
    return sum(1 for answer in controller.stream_answers if answer.get("rate") == 0)


def _threads() -> int:
    """Live threads, without trio's idle worker threads (its thread cache keeps each one for
    10 s after its last job) and the progress bar's refresh thread (it stops when the run
    phase ends): neither belongs to the gateway or the engine."""
    return sum(1 for t in threading.enumerate()
               if not t.name.startswith("Trio thread") and type(t).__name__ != "_RefreshThread")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

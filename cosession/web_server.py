"""The web server at the gateway's edge: Hypercorn's HTTP/1.1 and websocket protocol code, run
by our own accept loop so that no single connection can stop the gateway or bloat it.

Why not ``hypercorn.trio.serve``: Hypercorn 0.18's trio worker starts every connection's
``TCPServer`` in the nursery that also holds its listener, so an exception escaping one
connection's protocol handling cancels the listener and every other connection with it. Any
client can raise one: a websocket upgrade request followed by bytes in the same write makes
Hypercorn answer 400 while the application answers the same handshake (h11
``LocalProtocolError``; pgjones/hypercorn#225, whose mitigation #228 was reverted). trio's own
rule for ``serve_listeners`` is that the handler catches what it does not want to crash the
server; `ConnectionGuard` is that handler:

- each accepted connection runs Hypercorn's ``TCPServer`` inside a guard: whatever it raises
  (short of cancellation) closes that connection and is logged, never more;
- connections are counted, in all and per client address (an IPv6 client counts by its /64),
  and separately while *anonymous*: until one of its requests carries a signed-in session,
  which the application reports through the connection's ASGI state
  (``dashboard.security.admission.CONNECTION_STATE_KEY``). Past a limit a new connection gets a plain
  ``503`` and is closed before Hypercorn reads a byte of it.
- anonymous connections take turns (cosession/anonymous_turns.py): in one pass of the event loop at most
  ``edge.max_anonymous_per_pass`` of them start handling what they received (a request, the
  end of the stream) or setting themselves up, once a pass has left nothing else runnable
  (or once they have waited ``edge.max_anonymous_wait_ms``); the others wait for a later pass,
  first come first served, with their bytes unread by Hypercorn. trio runs, in one pass, every
  task whose socket became readable during its last wait: without turns a flood put dozens of
  anonymous connections (0.3-0.5 ms each) in the pass beside a controller's keystroke and its
  echo. A signed-in connection never waits for a turn.

Two behaviours of Hypercorn's websocket code are changed, once per process, by replacing the
two wsproto names its module looks up (`adjust_hypercorn_websockets`): permessage-deflate is
never negotiated (wsproto inflates a frame without any bound: 65 KB of zeros become 64 MiB
before Hypercorn's message limit applies; and compressing a Send Password answer in the same
context as terminal output would open a compression oracle), and a client whose frames wsproto
cannot parse (invalid UTF-8 in a text frame: 1007; a protocol error: 1002) gets the close frame
RFC 6455 asks for instead of a dropped TCP connection. Each replacement checks that the name it
replaces is still there, so a Hypercorn upgrade that moves it fails loudly at start, and
tests/dashboard/test_web_server.py checks both against the real server.

TLS (`tls_context`, with ``server.certfile`` and ``server.keyfile``): each accepted connection,
once admitted by the guard, is wrapped in a ``trio.SSLStream`` before Hypercorn sees it;
Hypercorn's ``TCPServer`` does the handshake (within ``TLS_HANDSHAKE_SECONDS``) and marks the
connection's scope ``https``/``wss``. Only TLS 1.2 and 1.3 with forward-secret AEAD ciphers, and
ALPN ``http/1.1`` only: the guard's limits count HTTP/1.1 connections, and HTTP/2's multiplexing
would change what one connection can hold. A connection refused by a limit is closed without a
byte on TLS (an answer would cost a handshake, which is what a flood wants of us).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import socket
import ssl
import struct
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generator, Iterator

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import repr_socket_addr, wrap_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cosession.anonymous_turns import AnonymousTurns, EdgeStream
from dashboard.security.admission import CONNECTION_STATE_KEY

log = logging.getLogger("cosession.web_server")

REFUSAL_SECONDS = 1.0  # how long a refused client may take to receive its 503
TLS_HANDSHAKE_SECONDS = 10.0  # Hypercorn's default is 60 s: an anonymous slot held for a minute
TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"  # TLS 1.2's; TLS 1.3's are all AEAD and forward-secret
LOG_INTERVAL = 60.0  # a failing connection is logged at most once per interval
WHERE_FRAMES = 6  # innermost frames named in a failure's log line


# --- Hypercorn's websocket behaviour -----------------------------------------------------------


def adjust_hypercorn_websockets() -> None:
    """No permessage-deflate; a close frame with wsproto's code when a client's data is invalid.
    Idempotent. Raises RuntimeError if this Hypercorn no longer looks these names up."""
    from hypercorn.protocol import ws_stream
    from wsproto.connection import Connection, ConnectionState
    from wsproto.events import CloseConnection
    from wsproto.extensions import PerMessageDeflate

    if getattr(ws_stream, "_cosession_adjusted", False):
        return
    for name, expected in (("PerMessageDeflate", PerMessageDeflate), ("Connection", Connection)):
        if getattr(ws_stream, name, None) is not expected or name not in ws_stream.Handshake.accept.__code__.co_names:
            raise RuntimeError(f"hypercorn.protocol.ws_stream no longer builds websockets with wsproto's {name}: "
                               "check cosession/web_server.py against this Hypercorn release")

    class DeclinedPerMessageDeflate(PerMessageDeflate):
        """Offered by every browser, accepted by none of our connections."""

        def accept(self, offer: str) -> None:  # type: ignore[override]
            return None

    class FailingConnection(Connection):
        """wsproto reports data it cannot parse as a CloseConnection event with the code to send
        (1007, 1002, 1009) but stays OPEN, and Hypercorn answers a close frame only to a
        connection that is REMOTE_CLOSING, so it would drop the TCP connection without one.
        Marking the connection REMOTE_CLOSING makes Hypercorn send that close frame first
        (RFC 6455 7.1.7, "Fail the WebSocket Connection")."""

        def events(self) -> Generator[Any, None, None]:
            for event in super().events():
                if isinstance(event, CloseConnection) and self.state is ConnectionState.OPEN:
                    self._state = ConnectionState.REMOTE_CLOSING
                yield event

    ws_stream.PerMessageDeflate = DeclinedPerMessageDeflate  # type: ignore[misc]
    ws_stream.Connection = FailingConnection  # type: ignore[misc]
    ws_stream._cosession_adjusted = True  # type: ignore[attr-defined]


# --- TLS ----------------------------------------------------------------------------------------


def tls_context(server: Any) -> ssl.SSLContext | None:
    """The server side's TLS context for `server` (config.settings.Server), or None without TLS.
    Raises OSError (ssl.SSLError included) if the certificate or its key cannot be loaded."""
    if not server.tls:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(server.certfile, server.keyfile)
    except ssl.SSLError as exc:
        raise ssl.SSLError(f"cannot use the TLS certificate {server.certfile} with the key {server.keyfile}: "
                           f"{exc.reason or exc}") from exc
    except OSError as exc:
        raise OSError(f"cannot read the TLS certificate or key: {exc}") from exc
    return context


# --- limits and the guard ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """0 means no limit (config/default.toml, [edge])."""

    max_connections: int = 0
    max_connections_per_client: int = 0
    max_anonymous_connections: int = 0
    max_anonymous_connections_per_client: int = 0
    max_anonymous_per_pass: int = 0
    max_anonymous_wait_ms: int = 0

    @classmethod
    def of(cls, settings: Any) -> "ConnectionLimits":
        edge = settings.edge
        return cls(edge.max_connections, edge.max_connections_per_client, edge.max_anonymous_connections,
                   edge.max_anonymous_connections_per_client, edge.max_anonymous_per_pass,
                   edge.max_anonymous_wait_ms)


def client_key(host: str) -> str:
    """What a per-client limit counts by: the IPv4 address, or the /64 of an IPv6 address (one
    subscriber's network usually has a whole /64)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class ClientConnection:
    """One open TCP connection, as the application sees it in its ASGI state."""

    __slots__ = ("key", "peer", "signed_in", "_guard", "_stream")

    def __init__(self, guard: "ConnectionGuard", key: str, peer: str, stream: trio.SocketStream) -> None:
        self._guard = guard
        self._stream = stream
        self.key = key
        self.peer = peer
        self.signed_in = False

    def abort(self) -> None:
        """Close the TCP connection now, for a client that has stopped reading. Hypercorn shields
        its sends from cancellation, so a send blocked on a full socket would otherwise wait for
        as long as the client lets it; closing the socket fails that send at once, and
        Hypercorn ends the connection (the application sees a disconnect). An abortive close
        (SO_LINGER 0: a reset): a graceful one would queue its FIN behind the unsent bytes, which
        a client that reads nothing never lets out, and the kernel would keep them for minutes."""
        sock = self._stream.socket
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def mark_signed_in(self) -> None:
        """A request on this connection carried a signed-in session: it no longer counts
        against the anonymous limits."""
        if not self.signed_in:
            self.signed_in = True
            self._guard._anonymous[self.key] -= 1
            self._guard._anonymous_total -= 1

    async def take_turn(self) -> None:
        """Wait, while this connection is anonymous, for its turn to handle what it received."""
        if self._guard.turns is not None and not self.signed_in:
            await self._guard.turns.take()


def where(exc: BaseException) -> str:
    """Where `exc` (an exception group's first exception) was raised: the innermost frames, file
    and line, without reading a source file. A full traceback takes 10-100 ms to render (Python
    3.11 reads every file and parses each line for its carets), all of it on the event loop,
    while every session waits: a client that makes a connection fail must not buy that."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    frames = traceback.StackSummary.extract(traceback.walk_tb(exc.__traceback__), lookup_lines=False)
    return " < ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames[-WHERE_FRAMES:]))


class CompactTracebacks(logging.Filter):
    """On Hypercorn's error log (an application task that raised: "Error in ASGI Framework"):
    the exception and `where` it was raised instead of a traceback, for the same reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            detail = f": {exc!r:.200} at {where(exc)}"
            record.msg = str(record.msg) + (detail.replace("%", "%%") if record.args else detail)
            record.exc_info, record.exc_text = None, None
        return True


class _OncePerInterval:
    """Logs a failure (the exception and `where` it was raised; the whole traceback at debug
    level only) at most once per interval and counts the rest: any client can make a
    connection fail, and must not be able to fill the log with it."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: float | None = None
        self._suppressed = 0

    def __call__(self, message: str, *args: Any, exc: BaseException | None) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} more such failures since the last report)"
        self._last, self._suppressed = now, 0
        if exc is None:
            log.warning(message, *args)
            return
        log.warning(message + " at %s", *args, where(exc))
        log.debug("the traceback of that failure", exc_info=exc)


class ConnectionGuard:
    """The handler of every accepted TCP connection (see the module's docstring)."""

    def __init__(self, app: Any, config: Config, context: WorkerContext, state: dict[str, Any],
                 limits: ConnectionLimits, tls: ssl.SSLContext | None = None) -> None:
        self.app = app
        self.config = config
        self.context = context
        self.state = state
        self.limits = limits
        self.tls = tls
        self._open: Counter[str] = Counter()
        self._anonymous: Counter[str] = Counter()
        self._open_total = 0
        self._anonymous_total = 0
        self.failures = 0  # connections whose handling raised (closed, logged)
        self.refusals: Counter[str] = Counter()  # connections refused, by the limit that refused them
        self._report_failure = _OncePerInterval(LOG_INTERVAL)
        self._report_refusal = _OncePerInterval(LOG_INTERVAL)
        self.turns = (AnonymousTurns(limits.max_anonymous_per_pass, limits.max_anonymous_wait_ms / 1000)
                      if limits.max_anonymous_per_pass else None)

    @property
    def open_connections(self) -> int:
        return self._open_total

    @property
    def anonymous_connections(self) -> int:
        return self._anonymous_total

    @property
    def anonymous_waiting(self) -> int:
        """Anonymous connections whose received bytes wait for their turn."""
        return self.turns.waiting if self.turns is not None else 0

    def collect(self) -> Iterator[Any]:
        """Its counts, for /metrics (dashboard/services/metrics.py reads them at each scrape)."""
        yield GaugeMetricFamily("cosession_connections_open", "Open TCP connections", value=self._open_total)
        yield GaugeMetricFamily("cosession_connections_anonymous", "Open TCP connections none of whose requests "
                                "was signed in yet", value=self._anonymous_total)
        refused = CounterMetricFamily("cosession_connections_refused", "Connections refused at accept, by the "
                                      "[edge] limit reached", labels=["limit"])
        for limit in ("max_connections", "max_connections_per_client", "max_anonymous_connections",
                      "max_anonymous_connections_per_client"):
            refused.add_metric([limit], self.refusals[limit])
        yield refused
        yield CounterMetricFamily("cosession_connection_failures", "Connections whose handling raised (closed, "
                                  "logged)", value=self.failures)
        yield GaugeMetricFamily("cosession_connections_anonymous_waiting", "Anonymous connections whose received "
                                "bytes wait for their turn ([edge] max_anonymous_per_pass)",
                                value=self.anonymous_waiting)

    def _limit_reached(self, key: str) -> str | None:
        limits = self.limits
        for limit, count, name in (
                (limits.max_connections, self._open_total, "max_connections"),
                (limits.max_connections_per_client, self._open[key], "max_connections_per_client"),
                (limits.max_anonymous_connections, self._anonymous_total, "max_anonymous_connections"),
                (limits.max_anonymous_connections_per_client, self._anonymous[key],
                 "max_anonymous_connections_per_client")):
            if limit and count >= limit:
                return name
        return None

    async def __call__(self, stream: trio.SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()
        except OSError:  # gone already
            await trio.aclose_forcefully(stream)
            return
        host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        key = client_key(host)
        refused_by = self._limit_reached(key)
        if refused_by is not None:
            await self._refuse(stream, key, refused_by)
            return
        connection = ClientConnection(self, key, repr_socket_addr(stream.socket.family, peer), stream)
        self._open[key] += 1
        self._anonymous[key] += 1
        self._open_total += 1
        self._anonymous_total += 1
        served: trio.abc.Stream = EdgeStream(stream, connection)
        if self.tls is not None:  # Hypercorn's TCPServer does the handshake (config.ssl_handshake_timeout)
            served = trio.SSLStream(served, self.tls, server_side=True, https_compatible=True)
        try:
            await connection.take_turn()  # setting the connection up is handled in turn too
            await TCPServer(self.app, self.config, self.context,  # type: ignore[arg-type]
                            {**self.state, CONNECTION_STATE_KEY: connection}, served)
        except* Exception as group:  # never trio.Cancelled, which is how the server stops
            self.failures += 1
            failure = group.exceptions[0] if len(group.exceptions) == 1 else group
            self._report_failure("the connection from %s failed in the web server and was closed: %s",
                                 connection.peer, repr(failure)[:200], exc=failure)
        finally:
            await trio.aclose_forcefully(stream)
            self._forget(connection)

    def _forget(self, connection: ClientConnection) -> None:
        key = connection.key
        self._open[key] -= 1
        self._open_total -= 1
        if not connection.signed_in:
            self._anonymous[key] -= 1
            self._anonymous_total -= 1
        for counter in (self._open, self._anonymous):
            if key in counter and counter[key] <= 0:
                del counter[key]

    async def _refuse(self, stream: trio.SocketStream, key: str, limit: str) -> None:
        """A plain 503 before reading anything, then close (on TLS: close at once)."""
        self.refusals[limit] += 1
        self._report_refusal("refused a connection from %s: %s reached (see [edge] in the settings)",
                             key, limit, exc=None)
        if self.tls is not None:
            await trio.aclose_forcefully(stream)
            return
        body = b"Too many connections: try again later.\n"
        answer = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
                  b"content-length: %d\r\nretry-after: 5\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        with trio.move_on_after(REFUSAL_SECONDS):
            try:
                await stream.send_all(answer)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await trio.aclose_forcefully(stream)


# --- serving -----------------------------------------------------------------------------------


def hypercorn_config(settings: Any, *, graceful_timeout: float) -> Config:
    """Hypercorn's settings for the gateway: where to listen, and the websocket message limit
    (twice the protocol's largest client message, so that a message just past it still reaches
    the gateway to be refused and audited; a bigger one is closed with 1009 unread)."""
    config = Config()
    host, port = settings.server.host, settings.server.port
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    if not any(isinstance(f, CompactTracebacks) for f in config.errorlog.filters):
        config.errorlog.addFilter(CompactTracebacks())
    config.graceful_timeout = graceful_timeout
    config.websocket_max_message_size = 2 * settings.gateway.max_message_bytes
    config.ssl_handshake_timeout = TLS_HANDSHAKE_SECONDS
    return config


async def serve(app: Any, settings: Any, *, shutdown_trigger: Callable[[], Awaitable[None]],
                graceful_timeout: float = 3.0, guard_ready: Callable[[ConnectionGuard], None] | None = None,
                tls: ssl.SSLContext | None = None,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the ASGI `app` on `settings.server`'s address until `shutdown_trigger()` returns;
    started with ``nursery.start``, which returns the addresses it listens on. Then connections
    get `graceful_timeout` seconds to finish before they are cancelled. TLS with `tls`, or else
    with the context `tls_context` makes of the settings (if they name a certificate)."""
    adjust_hypercorn_websockets()
    tls = tls if tls is not None else tls_context(settings.server)
    config = hypercorn_config(settings, graceful_timeout=graceful_timeout)
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(asgi, config, lifespan_state)  # type: ignore[arg-type]
    context = WorkerContext(None)
    guard = ConnectionGuard(asgi, config, context, lifespan_state, ConnectionLimits.of(settings), tls)
    services = getattr(getattr(app, "state", None), "services", None)
    if services is not None:  # /metrics: the guard's counts beside the application's
        services.metrics.register(guard.collect)
    if guard_ready is not None:
        guard_ready(guard)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        if guard.turns is not None:  # for as long as any connection may wait for a turn
            lifespan_nursery.start_soon(guard.turns.run)
        await lifespan.wait_for_startup()
        sockets = config.create_sockets()
        listeners = []
        binds = []
        for sock in sockets.insecure_sockets:
            sock.listen(config.backlog)
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
            binds.append(f"{'https' if tls else 'http'}://{repr_socket_addr(sock.family, sock.getsockname())}")
        log.info("listening on %s", ", ".join(binds))
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(functools.partial(trio.serve_listeners, guard, listeners, handler_nursery=connections))
                task_status.started(binds)
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            await context.terminated.set()  # idle keep-alive connections close now
            connections.cancel_scope.deadline = trio.current_time() + graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()

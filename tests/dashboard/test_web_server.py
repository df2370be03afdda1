"""The gateway's edge against the real server (cosession/web_server.py on Hypercorn, the real
application): no single connection, however malformed, stops the gateway or a live session;
anonymous handshakes are refused before accept; compression is never negotiated; a client's
invalid text frame gets the 1007 close; connection limits.

Each hostile byte sequence is sent in one write, many times over, while a session is live; then
that session must still carry input and output, and a new one must start.
"""

from __future__ import annotations

import contextlib
import json
import struct
import threading
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
from tests.fixtures.websockets import Harness


DEADLINE = 30  # seconds: a bound on waiting for the gateway, never a wait for time
REPEAT = 20  # each hostile sequence, on as many connections: the failures are races


def upgrade(path: str, origin: str | None, *, host: str = "127.0.0.1", cookie: str | None = None,
            extra: str = "") -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: Upgrade", "Upgrade: websocket",
             "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: bKdPyn3u98cTfZJSh4TNeQ=="]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if cookie:
        lines.append(f"Cookie: {cookie}")
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def frame(opcode: int, payload: bytes, *, rsv1: bool = False, fin: bool = True) -> bytes:
    """A client's (masked) websocket frame."""
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    elif len(payload) < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
    mask = b"\x11\x22\x33\x44"
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def deflated(size: int) -> bytes:
    """`size` zero bytes, compressed as permessage-deflate sends them (about 1000:1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = compressor.compress(b"\0" * size) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]


CLOSE_FRAME = frame(0x8, struct.pack("!H", 1000))


def hostile(base_url: str, endpoint_id: str, cookie: str) -> dict[str, bytes]:
    own = base_url
    start = f"/ws/endpoints/{endpoint_id}/start"
    return {
        "upgrade from a foreign origin, then a byte": upgrade("/ws/sessions/x", "http://evil.example") + b"x",
        "upgrade to an unknown path, then bytes": upgrade("/nope", own) + b"\x00\x01\x02",
        "upgrade to /login, then a request": upgrade("/login", own) + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "anonymous upgrade, then a close frame": upgrade(start, own) + CLOSE_FRAME,
        "anonymous upgrade with deflate, then a compressed bomb": upgrade(
            start, own, extra="Sec-WebSocket-Extensions: permessage-deflate")
            + frame(0x2, deflated(4 << 20), rsv1=True),
        "signed-in upgrade, then a close frame": upgrade(start, own, cookie=cookie) + CLOSE_FRAME,
        "signed-in upgrade, then garbage": upgrade(start, own, cookie=cookie) + b"\xff" * 64,
        "garbage": bytes(range(256)) * 4,
        "a TLS hello": bytes.fromhex("16030100a5010000a10303") + b"\0" * 160,
        "a truncated request": b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nAcc",
        "invalid UTF-8 in the request": b"GET /\xff\xfe HTTP/1.1\r\nHost: \xc3\x28\r\nX: \x80\r\n\r\n",
        "invalid UTF-8 in an upgrade": upgrade("/ws/sessions/\xff\xc3\x28", own) + b"\xc3\x28",
        "an h2c upgrade, then garbage": (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                                         b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
            + b"\x00" * 64,
        "HTTP/2 prior knowledge, then garbage": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64,
        "a bad chunked body": (b"POST /api/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                               b"Content-Type: application/json\r\n\r\nzz\r\n"),
        "two Content-Lengths": (b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                b"Content-Length: 7\r\n\r\nhello"),
        "pipelined requests, then an upgrade": (b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
            + upgrade("/login", own) + b"x",
        "headers past the limit": b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * (64 << 10) + b"\r\n\r\n",
    }


async def send_raw(port: int, data: bytes, *, read: bool = True) -> bytes:
    """`data` in one write on a fresh connection; what came back before the server closed it."""
    answer = bytearray()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(data)
        if read:
            with trio.move_on_after(5):
                while chunk := await stream.receive_some(65536):
                    answer += chunk
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)
    return bytes(answer)


async def handshake_then(port: int, request: bytes, data: bytes) -> tuple[bytes, bytes]:
    """The handshake's answer to `request`, then what came back after `data` (frames) until the
    server's close frame or the end of the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        with trio.fail_after(DEADLINE):
            await stream.send_all(request)
            answer = bytearray()
            while b"\r\n\r\n" not in answer:
                chunk = await stream.receive_some(65536)
                assert chunk, f"closed during the handshake: {bytes(answer)!r}"
                answer += chunk
            head, _, rest = bytes(answer).partition(b"\r\n\r\n")
            after = bytearray(rest)
            await stream.send_all(data)
            try:
                while not (len(after) >= 4 and after[0] == 0x88) and (chunk := await stream.receive_some(65536)):
                    after += chunk
            except trio.BrokenResourceError:
                pass
    finally:
        await trio.aclose_forcefully(stream)
    return head, bytes(after)


def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


async def live_session(h: Harness) -> tuple[Any, Any]:
    controller, joined = await h.start("alice")
    viewer, answer = await h.join("bob", joined["session_id"])
    assert answer["type"] == "joined", answer
    return controller, viewer


async def assert_session_works(controller: Any, viewer: Any, marker: bytes) -> None:
    await controller.send(marker)
    await controller.output_contains(marker)
    await viewer.output_contains(marker)


@pytest.fixture
def gateway_overrides():
    # the hostile sequences come from this one address, REPEAT at a time and faster than the
    # server closes them: the per-client limit (tested below) would refuse them before Hypercorn
    return {"edge": {"max_anonymous_connections_per_client": 0}}


@pytest.fixture
async def harness(live_gateway, nursery):
    h = Harness(live_gateway, nursery)
    h.user("alice")
    h.user("bob")
    yield h
    await h.close()


# --- no single connection stops the gateway ------------------------------------------------------


async def test_no_hostile_byte_sequence_stops_the_gateway_or_a_live_session(harness):
    gateway = harness.gateway
    controller, viewer = await live_session(harness)
    await assert_session_works(controller, viewer, b"before")
    cookie = await harness.cookie("alice")
    port = port_of(gateway.base_url)
    for name, data in hostile(gateway.base_url, harness.endpoint.id, cookie).items():
        async with trio.open_nursery() as nursery:
            for _ in range(REPEAT):
                nursery.start_soon(send_raw, port, data)
        # after each kind: the listener still accepts, the live session still works
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=DEADLINE) as client:
            assert (await client.get("/login")).status_code == 200, name
        await assert_session_works(controller, viewer, f"after {name}".encode())
    controller2, viewer2 = await live_session(harness)  # and a new session starts
    await assert_session_works(controller2, viewer2, b"a new session")


async def test_an_exception_in_any_connections_handling_closes_only_that_connection(harness, monkeypatch):
    """Whatever fails in Hypercorn's handling of one connection (injected here into its protocol
    layer: any exception, not just today's h11 one) closes that connection, is counted and
    logged, and nothing else notices."""
    from hypercorn.protocol import ProtocolWrapper
    from hypercorn.events import RawData

    handle = ProtocolWrapper.handle

    async def failing(self: Any, event: Any) -> None:
        if isinstance(event, RawData) and event.data.startswith(b"BOOM"):
            raise RuntimeError("injected failure in the protocol layer")
        await handle(self, event)

    gateway = harness.gateway
    controller, viewer = await live_session(harness)
    monkeypatch.setattr(ProtocolWrapper, "handle", failing)
    failures = gateway.web_server.failures
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(send_raw, port_of(gateway.base_url), b"BOOM / HTTP/1.1\r\n\r\n")
    with trio.fail_after(DEADLINE):  # counted once TCPServer's exception reaches the guard, after the close
        while gateway.web_server.failures - failures < 10:
            await trio.sleep(0.01)
    assert gateway.web_server.failures - failures == 10
    await assert_session_works(controller, viewer, b"still here")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=DEADLINE) as client:
        assert (await client.get("/login")).status_code == 200


# --- before accept ------------------------------------------------------------------------------


async def test_an_anonymous_handshake_gets_a_plain_403_and_no_websocket(harness):
    gateway = harness.gateway
    start = f"/ws/endpoints/{harness.endpoint.id}/start"
    for path in (start, "/ws/sessions/nonexistent", "/nope"):
        answer = await send_raw(port_of(gateway.base_url), upgrade(path, gateway.base_url))
        assert answer.startswith(b"HTTP/1.1 403"), (path, answer[:200])
    audited = {(r["detail"]["reason"], r["detail"]["path"]) for r in await harness.audit("websocket_refused")}
    assert ("not_signed_in", start) in audited


async def test_permessage_deflate_is_never_negotiated(harness):
    cookie = await harness.cookie("alice")
    gateway = harness.gateway
    head, _ = await handshake_then(port_of(gateway.base_url), upgrade(
        f"/ws/endpoints/{harness.endpoint.id}/start", gateway.base_url, cookie=cookie,
        extra="Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"), CLOSE_FRAME)
    assert head.lower().startswith(b"http/1.1 101"), head
    assert b"sec-websocket-extensions" not in head.lower()


async def test_invalid_utf8_in_a_text_frame_gets_the_1007_close(harness):
    cookie = await harness.cookie("alice")
    gateway = harness.gateway
    head, frames = await handshake_then(port_of(gateway.base_url), upgrade(
        f"/ws/endpoints/{harness.endpoint.id}/start", gateway.base_url, cookie=cookie),
        frame(0x1, b'{"type": "ping", "id": "\xc3\x28"}'))
    assert head.startswith(b"HTTP/1.1 101"), head
    assert frames[:1] == b"\x88", frames[:20]  # a close frame, unmasked, from the server
    assert struct.unpack("!H", frames[2:4])[0] == 1007


async def test_a_message_past_twice_the_protocols_limit_is_closed_with_1009_unread(harness):
    cookie = await harness.cookie("alice")
    gateway = harness.gateway
    limit = gateway.settings.gateway.max_message_bytes
    head, frames = await handshake_then(port_of(gateway.base_url), upgrade(
        f"/ws/endpoints/{harness.endpoint.id}/start", gateway.base_url, cookie=cookie),
        frame(0x2, b"x" * (2 * limit + 1)))
    assert head.startswith(b"HTTP/1.1 101"), head
    assert frames[:1] == b"\x88" and struct.unpack("!H", frames[2:4])[0] == 1009, frames[:20]


# --- limits ---------------------------------------------------------------------------------------


class TestLimits:
    @pytest.fixture
    def gateway_overrides(self):
        return {"edge": {"max_anonymous_connections_per_client": 3, "max_request_body_bytes": 4096}}

    async def test_anonymous_connections_per_client_are_bounded_and_signing_in_frees_one(self, harness):
        gateway = harness.gateway
        port = port_of(gateway.base_url)
        cookie = await harness.cookie("alice")
        with trio.fail_after(DEADLINE):  # the sign-in's own (anonymous) connection is closed and forgotten first
            while gateway.web_server.open_connections:
                await trio.sleep(0.01)
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        try:
            with trio.fail_after(DEADLINE):  # the server counts a connection once it has accepted it
                while gateway.web_server.anonymous_connections < 3:
                    await trio.sleep(0.01)
            refused = await send_raw(port, b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
            assert refused.startswith(b"HTTP/1.1 503"), refused[:200]
            assert gateway.web_server.refusals["max_anonymous_connections_per_client"] >= 1
            # a signed-in request on one of them: it no longer counts as anonymous
            await held[0].send_all(f"GET /api/me HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n".encode())
            answer = await held[0].receive_some(65536)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            accepted = await send_raw(port, b"GET /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert accepted.startswith(b"HTTP/1.1 200"), accepted[:200]
        finally:
            # the anonymous ones first, the signed-in one last: the counts must come back to zero
            for stream in reversed(held):
                await trio.aclose_forcefully(stream)
        with trio.fail_after(DEADLINE):
            while gateway.web_server.open_connections:
                await trio.sleep(0.01)
        assert gateway.web_server.anonymous_connections == 0
        assert gateway.web_server.failures == 0
        answer = await send_raw(port, b"GET /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


    async def test_a_request_body_past_the_limit_is_refused_before_it_is_read(self, harness):
        async with httpx.AsyncClient(base_url=harness.gateway.base_url, timeout=DEADLINE) as client:
            big = json.dumps({"name": "alice", "password": "x" * 5000})
            answer = await client.post("/api/login", content=big, headers={"Content-Type": "application/json"})
            assert answer.status_code == 413

            async def chunks():
                yield big.encode()

            answer = await client.post("/api/login", content=chunks(), headers={"Content-Type": "application/json"})
            assert answer.status_code == 411


class TestAnonymousTurns:
    """At most ``edge.max_anonymous_per_pass`` anonymous connections start handling what they
    received in one pass of the gateway's event loop; a signed-in session never waits."""

    PER_PASS = 2
    CONNECTIONS = 12

    @pytest.fixture
    def gateway_overrides(self):
        return {"edge": {"max_anonymous_per_pass": self.PER_PASS, "max_anonymous_connections_per_client": 0}}

    async def test_anonymous_requests_are_handled_a_few_per_pass_while_a_session_goes_on(self, harness, monkeypatch):
        """CONNECTIONS anonymous requests and a controller's keystroke arrive while the gateway's
        loop is held, so that all are readable in its next pass: Hypercorn's protocol layer gets
        at most PER_PASS of the requests per pass, the keystroke reaches the controller and the
        viewer, and every request is answered."""
        from hypercorn.events import RawData
        from hypercorn.protocol import ProtocolWrapper

        gateway = harness.gateway
        controller, viewer = await live_session(harness)
        handle = ProtocolWrapper.handle

        class PerPass(trio.abc.Instrument):
            def __init__(self) -> None:
                self.now = self.most = self.total = 0

            def before_io_wait(self, timeout: float) -> None:  # the end of a pass
                self.most = max(self.most, self.now)
                self.now = 0

        per_pass = PerPass()

        async def counted(self: Any, event: Any) -> None:
            if isinstance(event, RawData) and event.data.startswith(b"GET /login?turns"):
                per_pass.now += 1
                per_pass.total += 1
            await handle(self, event)

        monkeypatch.setattr(ProtocolWrapper, "handle", counted)
        port = port_of(gateway.base_url)
        streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(self.CONNECTIONS)]
        try:
            with trio.fail_after(DEADLINE):  # every connection accepted and set up, none waiting for a turn
                while (gateway.web_server.anonymous_connections < self.CONNECTIONS
                       or gateway.web_server.anonymous_waiting):
                    await trio.sleep(0.01)
            await trio.to_thread.run_sync(gateway.call_on_loop, trio.lowlevel.add_instrument, per_pass)
            loop_held, loop_may_go = threading.Event(), threading.Event()

            def hold() -> None:
                loop_held.set()
                loop_may_go.wait(DEADLINE)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, gateway.call_on_loop, hold)
                assert await trio.to_thread.run_sync(loop_held.wait, DEADLINE)
                try:
                    for stream in streams:
                        await stream.send_all(b"GET /login?turns HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    await controller.send(b"typed during the flood")
                finally:
                    loop_may_go.set()
            await controller.output_contains(b"typed during the flood")
            await viewer.output_contains(b"typed during the flood")
            for stream in streams:
                answer = bytearray()
                with trio.fail_after(DEADLINE):
                    while chunk := await stream.receive_some(65536):
                        answer += chunk
                assert answer.startswith(b"HTTP/1.1 200"), bytes(answer[:200])
        finally:
            for stream in streams:
                await trio.aclose_forcefully(stream)
            await trio.to_thread.run_sync(gateway.call_on_loop, trio.lowlevel.remove_instrument, per_pass)
        assert per_pass.total == self.CONNECTIONS
        assert 1 <= per_pass.most <= self.PER_PASS, per_pass.most
        with trio.fail_after(DEADLINE):  # the closed ones take their turns to see their end; none is left waiting
            while gateway.web_server.anonymous_connections or gateway.web_server.anonymous_waiting:
                await trio.sleep(0.01)
        assert gateway.web_server.failures == 0


class Spinner:
    """A task on the gateway's loop that is runnable in every pass: the loop is never idle."""

    def __init__(self) -> None:
        self.passes = 0
        self.stopped = False

    async def run(self) -> None:
        while not self.stopped:
            self.passes += 1
            await trio.sleep(0)

    async def wait_passes(self, count: int) -> None:
        """Until the spinner has run `count` more passes of the gateway's loop."""
        target = self.passes + count
        with trio.fail_after(DEADLINE):
            while self.passes < target:
                await trio.sleep(0.01)


async def anonymous_streams(gateway: Any, count: int) -> list[trio.SocketStream]:
    """`count` anonymous connections, accepted and set up, none waiting for a turn."""
    port = port_of(gateway.base_url)
    streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(count)]
    with trio.fail_after(DEADLINE):
        while gateway.web_server.anonymous_connections < count or gateway.web_server.anonymous_waiting:
            await trio.sleep(0.01)
    return streams


async def answered(stream: trio.SocketStream) -> bytes:
    answer = bytearray()
    with trio.fail_after(DEADLINE):
        while chunk := await stream.receive_some(65536):
            answer += chunk
    return bytes(answer)


REQUEST = b"GET /login?turns HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@contextlib.asynccontextmanager
async def requests_on_a_busy_loop(gateway: Any, count: int) -> AsyncIterator[tuple[Spinner, list[trio.SocketStream]]]:
    """`count` anonymous connections that have sent REQUEST while a Spinner keeps the gateway's
    loop busy; the spinner stopped and the connections closed at the end, and then none left."""
    streams = await anonymous_streams(gateway, count)
    spinner = Spinner()
    try:
        await trio.to_thread.run_sync(gateway.bridge.spawn, spinner.run)
        await spinner.wait_passes(1)
        for stream in streams:
            await stream.send_all(REQUEST)
        yield spinner, streams
    finally:
        spinner.stopped = True
        for stream in streams:
            await trio.aclose_forcefully(stream)
    with trio.fail_after(DEADLINE):
        while gateway.web_server.anonymous_connections or gateway.web_server.anonymous_waiting:
            await trio.sleep(0.01)


async def all_answered(streams: list[trio.SocketStream]) -> None:
    for stream in streams:
        answer = await answered(stream)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


class TestAnonymousTurnsWaitForAnIdleLoop:
    """Anonymous connections get their turns in a pass in which nothing else is runnable: while
    the gateway's loop always has other work, what they sent waits (for at most
    ``edge.max_anonymous_wait_ms``, an hour here), and a signed-in session's keystroke does not."""

    CONNECTIONS = 6

    @pytest.fixture
    def gateway_overrides(self):
        return {"edge": {"max_anonymous_per_pass": 2, "max_anonymous_wait_ms": 3_600_000,
                         "max_anonymous_connections_per_client": 0}}

    async def test_anonymous_requests_wait_while_the_loop_is_busy_and_a_keystroke_does_not(self, harness):
        gateway = harness.gateway
        controller, viewer = await live_session(harness)
        async with requests_on_a_busy_loop(gateway, self.CONNECTIONS) as (spinner, streams):
            await assert_session_works(controller, viewer, b"typed while the loop is busy")
            await spinner.wait_passes(500)
            assert gateway.web_server.anonymous_waiting == self.CONNECTIONS  # every request read, none handled
            spinner.stopped = True  # the loop goes idle: the turns are handed out
            await all_answered(streams)
        assert gateway.web_server.failures == 0


class TestAnonymousTurnsOnABusyLoop:
    """On a loop that is never idle, anonymous connections still get their turns once they have
    waited ``edge.max_anonymous_wait_ms``."""

    CONNECTIONS = 6

    @pytest.fixture
    def gateway_overrides(self):
        return {"edge": {"max_anonymous_per_pass": 2, "max_anonymous_wait_ms": 1,
                         "max_anonymous_connections_per_client": 0}}

    async def test_anonymous_requests_are_answered_though_the_loop_is_never_idle(self, harness):
        gateway = harness.gateway
        async with requests_on_a_busy_loop(gateway, self.CONNECTIONS) as (_, streams):
            await all_answered(streams)  # the spinner never stops: the wait's bound hands out the turns
        assert gateway.web_server.failures == 0

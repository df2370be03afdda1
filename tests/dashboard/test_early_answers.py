"""An answer given before the request's body has arrived (a 415, a 403, a 400 decided on the
headers alone) must not cost the client its kept-alive connection, against the real server.

Hypercorn closes a connection whose response ended before the request did, without saying
``Connection: close``: a client that sends its next request on it (httpx, a browser) gets
"server disconnected without sending a response". CI met it as a flaky `test_api_login`.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dashboard.security import admission

DEADLINE = 30  # seconds: a bound on waiting for the gateway, never a wait for time
ROUNDS = 3
BODY = b"name=alice"
HEAD = (b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\n\r\n" % len(BODY))


class Connection:
    """One kept-alive HTTP/1.1 connection, read response by response."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def response(self) -> tuple[bytes, bytes]:
        """The next response's head (lower-cased) and body; b"", b"" if the server closed."""
        while b"\r\n\r\n" not in self.buffer:
            if not await self._more():
                return b"", b""
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        head = head.lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip() == b"content-length":
                length = int(value)
        self.buffer[:] = rest
        while len(self.buffer) < length:
            if not await self._more():
                return b"", b""
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return head, body

    async def closed(self) -> bool:
        return not self.buffer and not await self._more()

    async def _more(self) -> bool:
        try:
            chunk = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # a reset
            return False
        self.buffer += chunk
        return bool(chunk)


@pytest.fixture
async def connection(live_gateway):
    host, port = live_gateway.base_url.rsplit("/", 1)[1].split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    yield Connection(stream)
    await trio.aclose_forcefully(stream)


async def test_an_early_answer_keeps_the_connection_for_the_next_request(live_gateway, connection):
    """The 415 is decided on the head alone. The body is sent only once the gateway has done all
    it would with the head (its loop has nothing left to run), as a slow network would deliver
    it; then the next request, on the same connection, must be answered."""
    with trio.fail_after(DEADLINE):
        for round_ in range(ROUNDS):
            await connection.stream.send_all(HEAD)
            await trio.to_thread.run_sync(live_gateway.run_on_loop, trio.testing.wait_all_tasks_blocked,
                                          abandon_on_cancel=True)
            await connection.stream.send_all(BODY + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head, _ = await connection.response()
            assert head.startswith(b"http/1.1 415"), (round_, head)
            assert b"connection: close" not in head, (round_, head)
            head, _ = await connection.response()
            assert head.startswith(b"http/1.1 200"), (round_, head)


async def test_a_body_that_does_not_come_gets_the_answer_with_connection_close(connection, monkeypatch):
    """The server waits a bounded time for the rest of the body; past it, the answer says the
    connection ends, and it does."""
    monkeypatch.setattr(admission, "DRAIN_SECONDS", 0.05)
    with trio.fail_after(DEADLINE):
        await connection.stream.send_all(HEAD + BODY[:3])
        head, _ = await connection.response()
        assert head.startswith(b"http/1.1 415"), head
        assert b"connection: close" in head, head
        assert await connection.closed()

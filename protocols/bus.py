"""The message bus between nodes: NATS, through the nats-py client, on the trio loop.

nats-py is an asyncio library: it runs inside the trio loop through trio-asyncio, on one asyncio
loop that lives as long as the bus (`open_bus`). This module is the only place that knows it:
callers see trio functions and plain bytes, so that the client or the bridge can be replaced
here without touching anything else (as protocols/ssh.py does for asyncssh).

- `Bus.publish(subject, payload)` and `Bus.publish_batch(messages)`: every crossing from trio
  into asyncio costs about half a millisecond, so a batch crosses once for all its messages
  (DESIGN.md: about 2,200 single publishes/s against about 74,000 batched).
- `Bus.subscribe(subject)`: a `Subscription`, an async iterator of `BusMessage` on the trio
  side. The client's callback hands each message to a bounded trio channel without waiting: a
  subscriber that falls behind by more than its `queue_size` loses the newest messages, which
  are counted (`dropped`), and never slows the connection or the other subscriptions.
- `Bus.request(subject, payload, timeout)`: one answer, or `BusTimeout` (nobody answered in
  time, or nobody listens); `BusMessage.respond(payload)` answers a request.
- The connection reconnects by itself, for ever, while the bus is open: subscriptions are
  renewed by the client, and `connected` says whether it is connected now. Messages published
  while it is down are buffered by the client (up to its pending size) and sent on reconnect.

- `Outbox`: an ordered FIFO to the bus, fed from any thread (an actor's) without blocking.

NATS's own authentication: a user and password or a token in the URL
(``nats://USER:PASSWORD@HOST:PORT``, ``nats://TOKEN@HOST:PORT``) or a token given apart
(`open_bus`'s `token`); NKeys, with a credentials file (`credentials_file`: a ``.creds`` file
of a user JWT and its seed, as ``nsc`` makes them for a server in operator mode, or a file
that holds only a user's NKey seed, ``SU…``), which signs the server's nonce and never sends
the seed; TLS with a ``tls://`` URL, the server's certificate checked against `ca_file` (else
the system's CAs). No credential is ever written out: every message and log line names the
server as `shown` gives it.

`cosession serve --bus URL` opens one (docs/cluster.md, dashboard/services/cluster.py).
"""

from __future__ import annotations

import collections
import logging
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats
import nats.errors
import nkeys
import trio
import trio_asyncio

log = logging.getLogger(__name__)

RECONNECT_WAIT_SECONDS = 0.5
CONNECT_TIMEOUT_SECONDS = 5
QUEUE_SIZE = 1024  # messages a subscription holds for its reader


class BusError(Exception):
    """The bus cannot do this now (not connected, closed, or a subject the server refuses)."""


class BusTimeout(BusError):
    """A request got no answer in time, or nobody subscribes to its subject."""


@dataclass(frozen=True, slots=True)
class BusMessage:
    subject: str
    payload: bytes
    reply: str = ""  # where to answer, for a request
    _bus: "Bus | None" = field(default=None, repr=False, compare=False)

    async def respond(self, payload: bytes) -> None:
        if not self.reply or self._bus is None:
            raise BusError(f"a message on {self.subject} is not a request: it cannot be answered")
        await self._bus.publish(self.reply, payload)


class Subscription:
    """Messages on one subject (wildcards allowed), on the trio side. `async for` them;
    `unsubscribe()` ends the iteration."""

    def __init__(self, bus: "Bus", subject: str, queue_size: int) -> None:
        self.subject = subject
        self.dropped = 0  # messages lost because the reader fell behind
        self._bus = bus
        self._send, self._receive = trio.open_memory_channel[BusMessage](queue_size)
        self._nats: Any = None

    async def _on_message(self, msg: Any) -> None:
        # Runs on the asyncio side (inside the trio loop): never wait here.
        try:
            self._send.send_nowait(BusMessage(msg.subject, bytes(msg.data), msg.reply or "", self._bus))
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> BusMessage:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def unsubscribe(self) -> None:
        if self._nats is not None:
            nats_sub, self._nats = self._nats, None
            try:
                await trio_asyncio.aio_as_trio(nats_sub.unsubscribe)()
            except nats.errors.Error as exc:
                log.debug("unsubscribing from %s: %r", self.subject, exc)
        self._send.close()


class Bus:
    """One node's connection to NATS. Made by `open_bus`; use it only on the trio loop that
    opened it."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @property
    def connected(self) -> bool:
        return bool(self._client.is_connected)

    async def publish(self, subject: str, payload: bytes) -> None:
        await self.publish_batch([(subject, payload)])

    async def publish_batch(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish every (subject, payload) in order, crossing into asyncio once."""
        client = self._client

        async def publish_all() -> None:
            for subject, payload in messages:
                await client.publish(subject, payload)

        try:
            await trio_asyncio.aio_as_trio(publish_all)()
        except nats.errors.Error as exc:
            raise BusError(f"cannot publish: {exc}") from exc

    async def subscribe(self, subject: str, *, queue_size: int = QUEUE_SIZE) -> Subscription:
        subscription = Subscription(self, subject, queue_size)
        try:
            subscription._nats = await trio_asyncio.aio_as_trio(self._client.subscribe)(
                subject, cb=subscription._on_message)
        except nats.errors.Error as exc:
            raise BusError(f"cannot subscribe to {subject}: {exc}") from exc
        return subscription

    async def request(self, subject: str, payload: bytes, timeout: float = 1.0) -> BusMessage:
        try:
            msg = await trio_asyncio.aio_as_trio(self._client.request)(subject, payload, timeout=timeout)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise BusTimeout(f"no answer on {subject} within {timeout} s") from exc
        except nats.errors.Error as exc:
            raise BusError(f"cannot request on {subject}: {exc}") from exc
        return BusMessage(msg.subject, bytes(msg.data))

    async def flush(self, timeout: float = 5.0) -> None:
        """Return once the server has every message published before."""
        try:
            await trio_asyncio.aio_as_trio(self._client.flush)(timeout=timeout)
        except nats.errors.Error as exc:
            raise BusError(f"cannot flush: {exc}") from exc


class Outbox:
    """An ordered FIFO of (subject, payload) for the bus, put from any thread without blocking
    and published on the loop by `drain` in batches (one crossing into asyncio per batch).
    `on_loop(fn)` schedules `fn` onto the loop (the loop bridge's `call_soon`)."""

    def __init__(self, on_loop: Callable[[Callable[[], None]], None], max_bytes: int) -> None:
        self._on_loop = on_loop
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: collections.deque[tuple[str, bytes]] = collections.deque()
        self._bytes = 0
        self.dropped = 0
        self._ready = trio.Event()

    def put(self, subject: str, payload: bytes, droppable: bool = False) -> bool:
        """False if a droppable message did not fit within `max_bytes` waiting (it is dropped)."""
        with self._lock:
            if droppable and self._bytes + len(payload) > self._max_bytes:
                self.dropped += 1
                return False
            was_empty = not self._items
            self._items.append((subject, payload))
            self._bytes += len(payload)
        if was_empty:
            self._on_loop(lambda: self._ready.set())
        return True

    async def drain(self, bus: "Bus") -> None:
        """Publish what is put, in order, for ever (run it in a task)."""
        while True:
            await self._ready.wait()
            self._ready = trio.Event()
            with self._lock:
                batch, self._items = list(self._items), collections.deque()
                self._bytes = 0
            if batch:
                try:
                    await bus.publish_batch(batch)
                except BusError as exc:  # the client buffers while it reconnects: this is a closed bus
                    log.warning("the bus lost %d messages: %s", len(batch), exc)


def shown(url: str) -> str:
    """A bus URL fit for a message or a log: its password (or its token) hidden."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unreadable URL)"
    if "@" not in parts.netloc:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    # nats://NAME@HOST: NAME is a token (nats-py's reading), as secret as a password
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if colon else f"***@{host}"))


def credentials_option(path: str) -> dict[str, str]:
    """nats-py's option for the NATS credentials file at `path`: a ``.creds`` file (a user JWT
    and its NKey seed) or a file that holds only a user's NKey seed. Raises `BusError`, saying
    what is wrong but never what the file holds: nats-py itself reads a ``.creds`` file without
    a JWT for ever, and finds a malformed seed only when it signs in."""
    try:
        text = Path(path).read_bytes().decode("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a text file"
        raise BusError(f"cannot read the bus's credentials file {path}: {why}") from None
    option = "nkeys_seed"
    seed = text.strip()
    if "-----BEGIN NATS USER JWT-----" in text:
        option = "user_credentials"
        _, _, after = text.partition("-----BEGIN USER NKEY SEED-----")
        seed = after.strip().split("\n", 1)[0].strip()
    if not _is_user_seed(seed):
        raise BusError(f"the bus's credentials file {path} is neither a NATS .creds file (a user JWT and "
                       "its NKey seed) nor a user's NKey seed (SU…)")
    return {option: path}


def _is_user_seed(seed: str) -> bool:
    if not seed.startswith("SU"):  # an operator's or an account's seed signs nothing in
        return False
    try:
        nkeys.from_seed(bytearray(seed.encode())).wipe()
    except Exception:  # nkeys raises its own errors, binascii's and ValueError for a bad seed
        return False
    return True


def _reason(exc: BaseException) -> str:
    """What went wrong with the server, in words: nats-py says a refused sign-in as
    ``nats: 'Authorization Violation'``, and then only that no server is available."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in text.lower():
        return "authorization violation (the server refused this node's user and password, token or NKey)"
    return text


@asynccontextmanager
async def open_bus(url: str, *, name: str = "cosession", token: str = "", ca_file: str = "",
                   credentials_file: str = "") -> AsyncIterator[Bus]:
    """Connect to the NATS server at `url` (``nats://HOST:PORT``, ``tls://HOST:PORT``; with
    ``USER:PASSWORD@`` or ``TOKEN@``, or `token`, or `credentials_file`) for the block; the connection is drained and
    closed at its end. Raises `BusError` if the first connection fails, saying why (a refused
    sign-in: ``authorization violation``), never with a credential."""
    where = shown(url)
    problems: list[str] = []  # what the server or the connection said, during the first connection
    closing = False  # nats-py calls disconnected_cb on its own close too

    async def disconnected() -> None:
        if not closing:
            log.warning("bus %s: disconnected; reconnecting", where)

    async def reconnected() -> None:
        log.info("bus %s: reconnected", where)

    async def error(exc: Exception) -> None:
        problems.append(_reason(exc))
        log.warning("bus %s: %s", where, _reason(exc))

    security: dict[str, Any] = {}
    if token:
        security["token"] = token
    if credentials_file:
        security.update(credentials_option(credentials_file))
    if ca_file:
        try:
            security["tls"] = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise BusError(f"cannot read the bus's CA file {ca_file}: {exc}") from None
    failure: BusError | None = None
    async with trio_asyncio.open_loop():
        client = None
        with trio.move_on_after(CONNECT_TIMEOUT_SECONDS):  # a server that takes the TCP connection and says nothing
            try:
                # Two attempts for the first connection (reconnecting for ever would
                # also retry a first connection for ever); for ever once connected.
                client = await trio_asyncio.aio_as_trio(nats.connect)(
                    url, name=name, connect_timeout=CONNECT_TIMEOUT_SECONDS, allow_reconnect=True,
                    max_reconnect_attempts=1, reconnect_time_wait=RECONNECT_WAIT_SECONDS,
                    error_cb=error, disconnected_cb=disconnected, reconnected_cb=reconnected, **security)
                client.options["max_reconnect_attempts"] = -1
            except (nats.errors.Error, OSError, ssl.SSLError) as exc:
                # why (a refused sign-in, a refused connection) rather than nats-py's "no servers available"
                refused = [p for p in problems if p.startswith("authorization violation")] or problems
                failure = BusError(f"cannot connect to {where}: {refused[-1] if refused else _reason(exc)}")
        if client is None:
            failure = failure or BusError(f"cannot connect to {where}: " + (
                problems[-1] if problems else f"no answer within {CONNECT_TIMEOUT_SECONDS} s"))
        elif (ca_file or url.startswith("tls://")) and not getattr(client, "_server_info", {}).get("tls_required"):
            # nats-py upgrades to TLS only when the server says it requires it: a server
            # without TLS would carry the sessions in clear
            failure = BusError(f"cannot connect to {where}: the server does not use TLS, "
                               "which a tls:// URL or a CA file asks for")
            with trio.CancelScope(shield=True), trio.move_on_after(CONNECT_TIMEOUT_SECONDS):
                try:
                    await trio_asyncio.aio_as_trio(client.close)()
                except nats.errors.Error as exc:
                    log.debug("closing the bus: %r", exc)
        else:
            try:
                yield Bus(client)
            finally:
                closing = True
                with trio.CancelScope(shield=True), trio.move_on_after(CONNECT_TIMEOUT_SECONDS):
                    try:
                        await trio_asyncio.aio_as_trio(client.close)()
                    except nats.errors.Error as exc:
                        log.debug("closing the bus: %r", exc)
    if failure is not None:  # outside the asyncio loop's nursery: a plain error, not a group
        raise failure

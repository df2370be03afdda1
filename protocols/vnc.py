"""VNC endpoint connection: an RFB 3.8 client (RFC 6143) on the gateway's trio loop.

It connects to any RFB server, by host and port or by a unix socket path, authenticates with
VNC authentication (or none, where the server asks for none), asks for the encodings a real
server sends efficiently (Tight with JPEG, ZRLE, CopyRect, Raw, and the DesktopSize,
ExtendedDesktopSize, Cursor, DesktopName and LastRect pseudo-encodings) and reports what it
decodes as `engine.messages.Display*` items, which the session's display model (engine.display)
applies and encodes once for every browser. docs/vnc.md describes the design; why it is
written here rather than taken from a library is said there too.

Threads and work:

- `open`, `send_input`, `resize`, `close` are called from an actor thread; they only schedule
  work onto the loop (through the `LoopBridge`) and return at once, as the SSH connection does.
- On the loop, one task per attempt reads the server's messages. It only frames them (reads
  lengths and headers, which is cheap) and hands each FramebufferUpdate's rectangles to the
  decoder, then asks for the next update at once.
- The decoder runs in a worker thread (`trio.to_thread`), one update at a time and in order
  (Tight's and ZRLE's zlib streams span rectangles): zlib, libjpeg-turbo (simplejpeg) and numpy,
  no per-pixel Python. A 1920x1080 JPEG decode on the loop would stall every other socket.
- A writer task owns the socket's sending side: update requests and the controller's input.

The controller's input arrives as RFB client messages (from the browser's noVNC, checked by the
gateway); it is parsed again here and only key, pointer, clipboard and desktop-size messages
reach the server. The password is used here and nowhere else: never logged, never in a detail.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from typing import Any

import trio

from engine import EndpointEvents, LoopBridge, LoopClosed
from engine.messages import DisplayName, DisplayPointer, DisplaySize
from protocols import rfb
from protocols.attempts import Attempt, AttemptConnection, InputQueue, leaves, split_cancelled
from protocols.vencrypt import VencryptRefused, vencrypt
from protocols.rfb import Encoding, RfbError, Security, ServerType
from protocols.rfb_decode import (
    MAX_NAME, Decoder, Framing, Rect, RfbReader, ServerClosed, check_size, decode_work, read_update,
)

log = logging.getLogger(__name__)

INPUT_QUEUE_MESSAGES = 4096  # controller messages waiting for the server; more are dropped
DECODE_QUEUE_UPDATES = 2  # framed updates waiting for the decoder: the reader waits past that
UPDATES_IN_FLIGHT = 2  # read from the server and not yet applied by the actor: no request past that
# An update this small decodes on the loop in tens of microseconds, which costs less than the two
# thread switches of a worker (what a key's echo waits for); anything bigger goes to a worker.
# Tight JPEG rectangles count for nothing here: only their headers are read (rfb_decode.decode_work).
INLINE_DECODE_BYTES = 16 * 1024
INLINE_DECODE_PIXELS = 128 * 128
DEFAULT_QUALITY = 6  # Tight JPEG quality level 0-9 (TigerVNC's mapping: 6 is JPEG quality 79)
DEFAULT_COMPRESS = 2  # zlib effort the server spends, 0-9
_CLOSE_GRACE = 1.0
_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")

ENCODINGS = (Encoding.TIGHT, Encoding.ZRLE, Encoding.COPY_RECT, Encoding.RAW,
             Encoding.EXTENDED_DESKTOP_SIZE, Encoding.DESKTOP_SIZE, Encoding.CURSOR,
             Encoding.DESKTOP_NAME, Encoding.LAST_RECT)


class _Failure(Exception):
    """A failure whose detail is already written for the user (and safe to show)."""

    def __init__(self, detail: str, retryable: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable


# --- one attempt --------------------------------------------------------------------------------


class _Attempt(Attempt):
    """State of one `open()`: its queues toward the server and the updates in flight."""

    protocol = "vnc"

    def __init__(self, events: EndpointEvents) -> None:
        super().__init__(events)
        self.out = InputQueue("vnc", INPUT_QUEUE_MESSAGES)  # to the server: the controller's and ours
        self.input = rfb.ClientMessageReader()
        self.framing: Framing | None = None
        self.screens: tuple[rfb.Screen, ...] = ()
        self.stream: trio.abc.Stream | None = None  # TLS, once VeNCrypt chose it
        self.in_flight = 0  # updates read and not yet applied by the actor
        self.applied = trio.Event()

    def one_applied(self) -> None:
        """On the loop: the actor applied one update."""
        self.in_flight = max(0, self.in_flight - 1)
        self.applied.set()
        self.applied = trio.Event()

    def feed(self, data: bytes) -> None:
        """On the loop: the controller's messages, checked, toward the server."""
        try:
            messages = self.input.feed(data)
        except RfbError as exc:
            log.warning("vnc: controller input refused: %s", exc)
            self.input = rfb.ClientMessageReader()
            return
        pointer = None
        for message, wire in messages:
            if not isinstance(message, rfb.INPUT_MESSAGES):
                continue
            if isinstance(message, rfb.PointerEvent):
                pointer = (message.x, message.y)
            if isinstance(message, rfb.SetDesktopSize):
                if self.framing is None or not self.framing.resizable:
                    continue
                wire = rfb.pack(_desktop_size(message.width, message.height, self.screens))
            self.out.offer(wire)
        if pointer is not None and self.framing is not None:
            # the display model draws the pointer where the controller put it (for the viewers)
            self.report("display", (DisplayPointer(*pointer),))


def _desktop_size(width: int, height: int, screens: tuple[rfb.Screen, ...]) -> rfb.SetDesktopSize:
    """One screen covering the desktop, keeping the server's screen id (TigerVNC wants a known id)."""
    screen_id = screens[0].id if screens else 0
    return rfb.SetDesktopSize(width, height, (rfb.Screen(screen_id, 0, 0, width, height, 0),))


# --- the connection -----------------------------------------------------------------------------


class VncConnection(AttemptConnection):
    """A VNC desktop as an `EndpointConnection`. Give `host` and `port`, or `socket_path`.

    `desktop_size` (width, height): asked of the server once it says it can resize (TigerVNC's
    Xvnc can); None keeps the size the server has. The engine's cols/rows mean terminal cells
    and are ignored here: the controller resizes the desktop with its browser's SetDesktopSize."""

    def __init__(self, bridge: LoopBridge, host: str = "", port: int = 0, password: str | None = None, *,
                 socket_path: str | None = None, connect_timeout: float = 10.0,
                 quality: int = DEFAULT_QUALITY, compress: int = DEFAULT_COMPRESS,
                 desktop_size: tuple[int, int] | None = None,
                 encodings: tuple[int, ...] = ENCODINGS) -> None:
        if not socket_path and not (host and 0 < port < 65536):
            raise ValueError("a VNC connection needs host and port, or a socket path")
        if not 0 <= quality <= 9 or not 0 <= compress <= 9:
            raise ValueError("quality and compress are 0 to 9")
        self._bridge = bridge
        self._host = host
        self._port = port
        self._socket_path = socket_path
        self._password = password
        self._connect_timeout = connect_timeout
        # `encodings`: the real and pseudo-encodings to ask for, in order of preference (tests
        # narrow it to exercise one decoder against a real server)
        self._encodings = (*encodings, Encoding.QUALITY_LEVEL_0 + quality, Encoding.COMPRESS_LEVEL_0 + compress)
        self._desktop_size = desktop_size
        self._lock = threading.Lock()
        self._attempt: _Attempt | None = None
        self._closed = False
        self.updates_decoded = 0  # for tests and benchmarks
        self.decode_seconds = 0.0

    @property
    def where(self) -> str:
        return self._socket_path or f"{self._host}:{self._port}"

    def __repr__(self) -> str:
        return f"VncConnection({self.where})"

    # --- the EndpointConnection contract (called from actor threads) -------------------------

    def open(self, events: EndpointEvents, cols: int, rows: int) -> None:
        self._begin(_Attempt(events))

    def send_input(self, data: bytes) -> None:
        attempt = self._attempt
        if attempt is None or attempt.closed or not data:
            return
        try:
            self._bridge.call_soon(attempt.feed, bytes(data))
        except LoopClosed:
            pass

    def resize(self, cols: int, rows: int) -> None:
        """Terminal cells mean nothing to a desktop (see the class)."""

    # --- on the loop -------------------------------------------------------------------------

    async def _run(self, attempt: _Attempt) -> None:
        """One attempt, from connect to the end. Lets no exception out but cancellation."""
        stream: trio.abc.Stream | None = None
        try:
            with attempt.scope:
                with trio.fail_after(self._connect_timeout):
                    stream = await self._connect()
                await self._session(attempt, stream)
        except BaseException as exc:
            # what the server said wrong explains a lost connection better than the loss does
            cancelled, failure = split_cancelled(
                exc, lambda e: isinstance(e, (RfbError, _Failure, VencryptRefused)))
            if failure is not None:
                self._report_failure(attempt, failure)
            if cancelled is not None:
                raise cancelled from None
        finally:
            attempt.out.receive_channel.close()
            if stream is not None:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + _CLOSE_GRACE
                    await (attempt.stream or stream).aclose()
                if scope.cancelled_caught:
                    await trio.aclose_forcefully(stream)

    async def _connect(self) -> trio.abc.Stream:
        if self._socket_path:
            return await trio.open_unix_socket(self._socket_path)
        return await trio.open_tcp_stream(self._host, self._port)

    async def _session(self, attempt: _Attempt, stream: trio.abc.Stream) -> None:
        reader = RfbReader(stream, self.where)
        with trio.fail_after(self._connect_timeout):
            stream, width, height, name = await self._handshake(reader, stream)
        attempt.stream = stream
        framing = attempt.framing = Framing(width, height)
        await stream.send_all(rfb.pack(rfb.SetPixelFormat(rfb.RGBX))
                              + rfb.pack(rfb.SetEncodings(tuple(int(e) for e in self._encodings)))
                              + rfb.pack(rfb.FramebufferUpdateRequest(False, 0, 0, width, height)))
        log.info("vnc %s: connected to %r, %dx%d", self.where, name, width, height)
        attempt.report("opened", f"{name or 'VNC desktop'} at {self.where} ({width}x{height})")
        decoder = Decoder()
        updates_send, updates_recv = trio.open_memory_channel[list[Rect] | tuple[Any, ...]](DECODE_QUEUE_UPDATES)
        await updates_send.send((DisplaySize(width, height), DisplayName(name)))
        decoded = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write, attempt, stream)
            nursery.start_soon(self._decode, attempt, decoder, updates_recv, decoded)
            try:
                await self._read(attempt, reader, framing, updates_send)
            except ServerClosed:
                # the server hung up: what it sent before still decodes (and its error, if it
                # sent garbage and left, says more than the hang-up)
                updates_send.close()
                with trio.move_on_after(self._connect_timeout):
                    await decoded.wait()
                raise
            nursery.cancel_scope.cancel()

    async def _handshake(self, reader: RfbReader, stream: trio.abc.Stream) -> tuple[trio.abc.Stream, int, int, str]:
        """RFB's handshake up to ServerInit; the stream to go on with (TLS, if VeNCrypt chose it)."""
        version = await reader.read(12)
        if not version.startswith(b"RFB ") or not version.endswith(b"\n"):
            raise RfbError("the server does not speak RFB")
        try:
            major, minor = int(version[4:7]), int(version[8:11])
        except ValueError:
            raise RfbError("the server does not speak RFB") from None
        if (major, minor) < (3, 8):
            raise _Failure(f"{self.where} speaks RFB {major}.{minor}; cosession needs 3.8", False)
        await stream.send_all(rfb.VERSION_3_8)
        (count,) = await reader.unpack(_U8)
        if count == 0:
            raise _Failure(f"{self.where} refused the connection: {await self._reason(reader)}", True)
        offered = set(await reader.read(count))
        inner: int | None = None  # the authentication inside VeNCrypt's TLS, if TLS is used
        if Security.VENCRYPT in offered:
            await stream.send_all(bytes((Security.VENCRYPT,)))
            stream, inner = await vencrypt(reader, stream, self.where, bool(self._password))
            reader.stream = stream
        if inner == Security.VNC_AUTH or (inner is None and Security.VNC_AUTH in offered and self._password):
            if not self._password:
                raise _Failure(f"{self.where} asks for a VNC password and none was given", False)
            if inner is None:
                await stream.send_all(bytes((Security.VNC_AUTH,)))
            challenge = await reader.read(16)
            await stream.send_all(rfb.vnc_auth_response(self._password, challenge))
        elif inner == Security.NONE:
            pass
        elif Security.NONE in offered:
            await stream.send_all(bytes((Security.NONE,)))
        elif Security.VNC_AUTH in offered:
            raise _Failure(f"{self.where} asks for a VNC password and none was given", False)
        else:
            names = ", ".join(Security(t).name if t in Security._value2member_map_ else str(t)
                              for t in sorted(offered))
            raise _Failure(f"{self.where} offers no security type cosession supports ({names})", False)
        (result,) = await reader.unpack(_U32)
        if result != 0:
            reason = await self._reason(reader)
            raise _Failure(f"VNC authentication to {self.where} failed ({reason or 'wrong password'})", False)
        await stream.send_all(b"\x01")  # ClientInit: shared, never disconnect anyone else
        width, height = await reader.unpack(struct.Struct(">HH"))
        check_size(width, height)
        await reader.read(16)  # the server's pixel format: replaced by ours at once
        (length,) = await reader.unpack(_U32)
        if length > MAX_NAME:
            raise RfbError(f"a desktop name of {length} bytes")
        name = (await reader.read(length)).decode("utf-8", "replace")
        return stream, width, height, name

    @staticmethod
    async def _reason(reader: RfbReader) -> str:
        (length,) = await reader.unpack(_U32)
        return (await reader.read(min(length, 1024))).decode("utf-8", "replace")

    async def _read(self, attempt: _Attempt, reader: RfbReader, framing: Framing,
                    updates: trio.MemorySendChannel[Any]) -> None:
        asked_size = False
        while True:
            (kind,) = await reader.unpack(_U8)
            if kind == ServerType.FRAMEBUFFER_UPDATE:

                async def part(rects: list[Rect]) -> None:
                    # each part of a large update goes on as soon as it is read (PART_BYTES)
                    attempt.in_flight += 1
                    await updates.send(rects)
                    for rect in rects:
                        if rect.encoding == Encoding.EXTENDED_DESKTOP_SIZE and rect.data:
                            attempt.screens = tuple(rfb.Screen(*struct.unpack_from(">IHHHHI", rect.data, 16 * i))
                                                    for i in range(len(rect.data) // 16))

                await part(await read_update(reader, framing, part=part))
                if framing.resizable and not asked_size and self._desktop_size is not None:
                    asked_size = True
                    if self._desktop_size != (framing.width, framing.height):
                        await attempt.out.send_channel.send(rfb.pack(_desktop_size(*self._desktop_size, attempt.screens)))
                # Ask for the next update now (the server prepares it while this one decodes),
                # unless the actor is behind: the server then keeps merging what changes.
                while attempt.in_flight > UPDATES_IN_FLIGHT:
                    await attempt.applied.wait()
                await attempt.out.send_channel.send(rfb.pack(rfb.FramebufferUpdateRequest(
                    True, 0, 0, framing.width, framing.height)))
            elif kind == ServerType.SET_COLOUR_MAP_ENTRIES:
                _, count = await reader.unpack(struct.Struct(">xHH"))
                await reader.read(6 * count)  # true colour is in force: nothing to apply
            elif kind == ServerType.BELL:
                pass
            elif kind == ServerType.SERVER_CUT_TEXT:
                (length,) = await reader.unpack(struct.Struct(">3xI"))
                if length > rfb.MAX_CUT_TEXT:
                    raise RfbError(f"a clipboard text of {length} bytes")
                # latin-1 per RFC 6143; for the controller only, as its profile allows (docs/session.md)
                attempt.report("clipboard", (await reader.read(length)).decode("latin-1"))
            else:
                raise RfbError(f"the server sent message type {kind}, which cosession did not ask for")

    async def _decode(self, attempt: _Attempt, decoder: Decoder, updates: trio.MemoryReceiveChannel[Any],
                      decoded: trio.Event) -> None:
        async for update in updates:
            if isinstance(update, tuple):
                attempt.report("display", update)
                continue
            started = trio.current_time()
            data, pixels = decode_work(update)
            if data <= INLINE_DECODE_BYTES and pixels <= INLINE_DECODE_PIXELS \
                    and not any(r.encoding == Encoding.ZRLE for r in update):  # its RLE runs are Python
                # a key's echo, a pointer's shape, JPEGs (their headers only): microseconds
                items = decoder.decode(update)
            else:
                items = await trio.to_thread.run_sync(decoder.decode, update)
            self.decode_seconds += trio.current_time() - started
            self.updates_decoded += 1
            if items:
                attempt.report("display", items, self._applied_callback(attempt))
            else:
                attempt.one_applied()
        decoded.set()

    def _applied_callback(self, attempt: _Attempt) -> Any:
        bridge = self._bridge

        def applied() -> None:  # from the actor's thread
            try:
                bridge.call_soon(attempt.one_applied)
            except LoopClosed:
                pass

        return applied

    async def _write(self, attempt: _Attempt, stream: trio.abc.Stream) -> None:
        async for data in attempt.out.receive_channel:
            await stream.send_all(data)

    def _report_failure(self, attempt: _Attempt, exc: BaseException) -> None:
        detail, retryable, unexpected = self._describe(exc)
        if unexpected:
            log.error("vnc %s: %s", self.where, detail, exc_info=exc)
        else:
            log.warning("vnc %s: %s (%s)", self.where, detail, "retryable" if retryable else "final")
        attempt.report("failed", detail, retryable)

    def _describe(self, exc: BaseException) -> tuple[str, bool, bool]:
        """(detail, retryable, unexpected). Details name the endpoint and never the password."""
        where = self.where
        if isinstance(exc, _Failure):
            return exc.detail, exc.retryable, False
        if isinstance(exc, ServerClosed):
            return str(exc), True, False
        if isinstance(exc, VencryptRefused):
            return str(exc), False, False
        if isinstance(exc, RfbError):
            return f"{where} broke the RFB protocol: {exc}", False, False
        if isinstance(exc, trio.TooSlowError):
            return f"connection to {where} timed out after {self._connect_timeout:g} s", True, False
        cause = exc.__cause__  # trio.open_tcp_stream wraps each address's error in one OSError
        if isinstance(exc, ConnectionRefusedError) or isinstance(cause, ConnectionRefusedError) or (
                isinstance(cause, BaseExceptionGroup)
                and all(isinstance(e, ConnectionRefusedError) for e in leaves(cause))):
            return f"connection to {where} refused", True, False
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve host {self._host}", True, False
        if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)):
            return f"connection to {where} lost", True, False
        if isinstance(exc, OSError):
            return f"cannot connect to {where}: {exc.strerror or type(exc).__name__}", True, False
        return f"internal error in the VNC connection to {where} ({type(exc).__name__})", False, True

"""RDP endpoint connection: FreeRDP's `xfreerdp` full-screen in a private TigerVNC `Xvnc`,
read through the gateway's VNC path. docs/rdp.md describes the design.

Per attempt (each `open`), on the trio loop, the connection owns two child processes in a
private working directory (`cosession-rdp-*`, mode 0700): the session's private display
(`protocols.xvnc`: Xvnc on a unix socket, an X cookie, sized to the session) and
`xfreerdp` on it (`protocols.freerdp`: its options, output and exit statuses). The password
reaches xfreerdp on its standard input, written into a pipe and closed before it starts: never
on a command line, in an environment, a file or a log; the user name goes in a `.rdp` file in
the working directory (not a secret, but off the world-readable command line).

Once FreeRDP is active and its window is mapped (a `WindowWatch` subscribed before xfreerdp
starts sees the map: keys sent before it would be lost), a `protocols.vnc.VncConnection` reads
the display over its unix socket: its decoded updates become the session's, its `opened` the
attempt's, and it carries the controller's input to the display, where FreeRDP turns it into
the server's scancodes. When xfreerdp exits, `describe_exit` says why: `closed` (the server
ended the session) or `failed` (retryable or not). When Xvnc exits or the reader stops, the
attempt fails. However the attempt ends, the reader is closed, both children are ended and
reaped, and the working directory is removed.

The server's certificate is pinned through FreeRDP's own store in the attempt's configuration
directory (`/cert:tofu,deny`): a recorded fingerprint is written there before xfreerdp starts
and a different certificate is refused before any credential is sent (`on_certificate_changed`
keeps it for an administrator); on first use the one FreeRDP accepted is read back and recorded
(`on_certificate`). The system's certificate authorities are hidden from FreeRDP, so every
endpoint is pinned the same way, as SSH host keys are.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from pathlib import Path
from typing import Any, Callable

import trio

from engine import Credentials, EndpointEvents, LoopBridge, LoopClosed
from protocols import rfb
from protocols.attempts import Attempt, AttemptConnection, InputQueue, split_cancelled
from protocols.freerdp import (
    AttemptFailed, FreeRdpRun, RdpOptions, ServerEnded, WorkingDirectory, accepted_certificate,
    certificate_fingerprint, check_credentials, describe_exit, read_output, stage, start_freerdp,
    write_known_certificate,
)
from protocols.vnc import VncConnection
from protocols.xvnc import Child, WindowWatch, XvncDisplay, XvncUnavailable, remove_stale_socket, start_xvnc

log = logging.getLogger(__name__)

DISPLAY_ENDED = "the session's private display ended unexpectedly"
INPUT_QUEUE_CHUNKS = 512  # controller input waiting for the display; more is dropped, never waited for
# xfreerdp takes a key's release followed at once by its press with the same X timestamp for
# autorepeat and drops the release (xf_event_KeyReleaseOrIgnore peeks at the very next event), so
# a doubled letter typed by a script ("ll" in one burst, as Playwright types) lost a letter. A
# pause between the two is not enough on a loaded machine: Xvnc may read both in the same
# millisecond. So a press right after its own release gets other X events in front of it: the
# pointer nudged one pixel and back, where the controller left it.
SAME_KEY_WINDOW = 1.0  # seconds: a press this soon after its own release gets the nudge
_BUTTONS = 0b111  # left, middle, right: held buttons stay held; wheel "buttons" are not repeated

# --- one attempt --------------------------------------------------------------------------------


class _Attempt(Attempt):
    """State of one `open()`: its children, its private display and its input queue."""

    protocol = "rdp"

    def __init__(self, events: EndpointEvents) -> None:
        super().__init__(events)
        self.done = trio.Event()  # the attempt's task has ended: children reaped, directory gone
        self.display: XvncDisplay | None = None
        self.children: list[Child] = []
        self.reader: VncConnection | None = None  # reads the private display, once FreeRDP is active
        self.input = InputQueue("rdp", INPUT_QUEUE_CHUNKS)  # the controller's, for `_pace_input`


async def _pace_input(attempt: _Attempt, reader: VncConnection, width: int, height: int) -> None:
    """Passes the controller's input to the display reader as it comes, with a pointer nudge
    before a key pressed again right after its release (see SAME_KEY_WINDOW)."""
    messages = rfb.ClientMessageReader()
    pointer = rfb.PointerEvent(0, width // 2, height // 2)  # X starts the pointer at the centre
    released: tuple[int, float] | None = None  # the last key event, if a release: (keysym, when)
    async for data in attempt.input.receive_channel:
        try:
            parsed = messages.feed(data)
        except rfb.RfbError:
            # the reader parses the stream again and says what is wrong; pass it on as it is
            messages = rfb.ClientMessageReader()
            reader.send_input(data)
            continue
        batch = bytearray()
        for message, wire in parsed:
            if isinstance(message, rfb.PointerEvent):
                pointer = message
            elif isinstance(message, rfb.KeyEvent):
                if message.down and released is not None and released[0] == message.key \
                        and trio.current_time() - released[1] < SAME_KEY_WINDOW:
                    batch += _nudge(pointer, width)
                released = None if message.down else (message.key, trio.current_time())
            batch += wire
        if batch:
            reader.send_input(bytes(batch))


def _nudge(pointer: rfb.PointerEvent, width: int) -> bytes:
    """The pointer one pixel aside and back, its buttons as they are: two MotionNotify events."""
    buttons = pointer.buttons & _BUTTONS
    aside = pointer.x + 1 if pointer.x + 1 < width else pointer.x - 1
    return rfb.pack(rfb.PointerEvent(buttons, aside, pointer.y)) + rfb.pack(rfb.PointerEvent(buttons, pointer.x, pointer.y))


class _ReaderEvents:
    """What the private display's VNC reader reports, as the RDP attempt's events. The reader
    reports on the loop (it is opened there), so the trio event may be set directly."""

    def __init__(self, attempt: _Attempt, detail: str, lost: trio.Event, why: list[str]) -> None:
        self._attempt = attempt
        self._detail = detail
        self._lost = lost
        self._why = why

    def opened(self, detail: str = "") -> None:
        self._attempt.report("opened", self._detail)

    def display(self, items: tuple[Any, ...], applied: Callable[[], None] | None = None) -> None:
        self._attempt.report("display", items, applied)

    def output(self, data: bytes) -> None:  # pragma: no cover - an RFB reader reports display items
        self._attempt.report("output", data)

    def clipboard(self, text: str) -> None:
        """The display's cut text: FreeRDP's clipboard channel puts the server's there."""
        self._attempt.report("clipboard", text)

    def closed(self, detail: str = "") -> None:
        self._end(detail)

    def failed(self, detail: str, retryable: bool = True) -> None:
        self._end(detail)

    def _end(self, detail: str) -> None:
        self._why.append(detail)
        self._lost.set()


# --- the connection -----------------------------------------------------------------------------


class RdpConnection(AttemptConnection):
    """A remote desktop on an RDP endpoint, as an `EndpointConnection`."""

    def __init__(self, bridge: LoopBridge, host: str, port: int, credentials: Credentials, *,
                 options: RdpOptions | None = None, known_certificate: str | None = None,
                 on_certificate: Callable[[str], None] | None = None,
                 on_certificate_changed: Callable[[str], None] | None = None) -> None:
        if known_certificate is not None:
            known_certificate = certificate_fingerprint(known_certificate)
        check_credentials(credentials)
        self._bridge = bridge
        self._host = host
        self._port = port
        self._credentials = credentials
        self._options = options or RdpOptions()
        self._known_certificate = known_certificate
        self._on_certificate = on_certificate
        self._on_certificate_changed = on_certificate_changed
        self._lock = threading.Lock()
        self._attempt: _Attempt | None = None
        self._closed = False

    @property
    def where(self) -> str:
        return f"{self._host}:{self._port}"

    @property
    def display(self) -> XvncDisplay | None:
        """The current attempt's private display, once it runs."""
        attempt = self._attempt
        return attempt.display if attempt is not None else None

    @property
    def drive(self) -> str | None:
        """The current attempt's redirected folder (\\\\tsclient\\cosession on the server), if any."""
        attempt = self._attempt
        if attempt is None or attempt.display is None or not self._options.drive:
            return None
        return str(Path(attempt.display.xauthority).parent / "drive")

    def child_pids(self) -> list[int]:
        """The current attempt's child processes (Xvnc, xfreerdp) that have not been reaped."""
        attempt = self._attempt
        if attempt is None:
            return []
        return [child.pid for child in attempt.children if child.returncode is None]

    def __repr__(self) -> str:
        return f"RdpConnection({self._credentials.username or '-'}@{self.where})"

    # --- the EndpointConnection contract (called from actor threads) -------------------------

    def open(self, events: EndpointEvents, cols: int, rows: int) -> None:
        """`cols` and `rows` are a terminal's: an RDP desktop has the size of its options."""
        self._begin(_Attempt(events))

    def send_input(self, data: bytes) -> None:
        """The controller's RFB client messages (keys, pointer, clipboard), to the private display,
        where FreeRDP turns them into the server's scancodes and pointer events."""
        attempt = self._attempt
        if attempt is None or attempt.closed or attempt.reader is None or not data:
            return  # not connected yet: there is no desktop to type into
        try:
            self._bridge.call_soon(attempt.input.offer, bytes(data))
        except LoopClosed:
            pass

    def resize(self, cols: int, rows: int) -> None:
        """The desktop keeps the size it was opened with."""

    async def stopped(self) -> None:
        """On the loop: wait until the current attempt has ended its children and removed its
        working directory (after `close()`, or after it reported its end)."""
        attempt = self._attempt
        if attempt is not None:
            await attempt.done.wait()

    # --- on the loop -------------------------------------------------------------------------

    async def _run(self, attempt: _Attempt) -> None:
        try:
            with attempt.scope:
                await self._attempt_session(attempt)
        except BaseException as exc:
            propagate, failure = split_cancelled(exc, prefer=_ours)
            if failure is not None:
                self._report_end(attempt, failure)
            if propagate is not None:
                raise propagate
        finally:
            attempt.done.set()

    def _report_end(self, attempt: _Attempt, exc: BaseException) -> None:
        if isinstance(exc, ServerEnded):
            log.info("rdp %s: %s", self.where, exc.detail)
            attempt.report("closed", exc.detail)
        elif isinstance(exc, AttemptFailed):
            log.warning("rdp %s: %s (%s)", self.where, exc.detail, "retryable" if exc.retryable else "final")
            attempt.report("failed", exc.detail, exc.retryable)
        elif isinstance(exc, XvncUnavailable):
            log.warning("rdp %s: the private display: %s (retryable)", self.where, exc)
            attempt.report("failed", "the session's private display did not start or stopped answering", True)
        else:
            log.error("rdp %s: internal error", self.where, exc_info=exc)
            attempt.report("failed", f"internal error in the RDP connection to {self.where} "
                           f"({type(exc).__name__})", True)

    async def _attempt_session(self, attempt: _Attempt) -> None:
        await self._probe()
        work = WorkingDirectory(self._options.drive)
        try:
            await self._in_working_directory(attempt, work.path)
        finally:
            with trio.CancelScope(shield=True):
                for child in attempt.children:
                    await child.end()
            if attempt.display is not None and attempt.children:
                remove_stale_socket(attempt.display, attempt.children[0])
            work.remove()

    async def _probe(self) -> None:
        """A plain TCP connection first: FreeRDP 2 reports an unreachable server only as a
        transport failure, and there is no point starting a display for it."""
        try:
            with trio.fail_after(self._options.connect_timeout):
                stream = await trio.open_tcp_stream(self._host, self._port)
            await stream.aclose()
        except trio.TooSlowError:
            raise AttemptFailed(f"connection to {self.where} timed out after "
                           f"{self._options.connect_timeout:g} s", True) from None
        except socket.gaierror:
            raise AttemptFailed(f"cannot resolve host {self._host}", True) from None
        except OSError as exc:
            # trio tries every address and raises one OSError, the attempts' errors its cause
            cause = exc.__cause__
            errors = list(cause.exceptions) if isinstance(cause, BaseExceptionGroup) else [exc]
            if any(getattr(e, "errno", None) == errno.ECONNREFUSED for e in errors):
                raise AttemptFailed(f"connection to {self.where} refused", True) from None
            first = next((e for e in errors if isinstance(e, OSError) and e.strerror), exc)
            raise AttemptFailed(f"cannot connect to {self.where}: {first.strerror or type(first).__name__}",
                           True) from None

    async def _in_working_directory(self, attempt: _Attempt, work: Path) -> None:
        options = self._options
        xvnc, display, cookie = await start_xvnc(work, width=options.width, height=options.height, unix_socket=True,
                                                 cut_text=options.clipboard, resizable=False, name="cosession RDP")
        attempt.children.append(xvnc)
        attempt.display = display
        window = await WindowWatch.subscribe(display, cookie)
        run = FreeRdpRun()
        try:
            freerdp, output_fd = self._start_freerdp(work, display)
        except BaseException:
            await window.aclose()
            raise
        attempt.children.append(freerdp)
        active = trio.Event()
        mapped = trio.Event()
        settled = trio.Event()  # active, or exited before that
        finished = trio.Event()  # exited, its output read to the end and its status known
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_display, attempt, xvnc)
            nursery.start_soon(window.wait_mapped, mapped)
            nursery.start_soon(self._watch_freerdp, freerdp, output_fd, run, active, settled, finished)
            with trio.move_on_after(self._options.connect_timeout) as timeout:
                await settled.wait()
                if active.is_set():
                    await mapped.wait()  # FreeRDP's window: only now do keys reach it
            if timeout.cancelled_caught:
                self._record_certificate(attempt, work)
                raise AttemptFailed(f"the RDP connection to {self.where} did not become active within "
                               f"{self._options.connect_timeout:g} s (it got as far as {stage(run)})", True)
            self._record_certificate(attempt, work)
            if active.is_set():
                detail = (f"{self._credentials.username or '-'}@{self.where} (RDP, "
                          f"{run.security or 'negotiated'} security, {display.width}x{display.height})")
                nursery.start_soon(self._read_display, attempt, display, detail)
            await finished.wait()  # not freerdp.wait(): what it said and its status make the reason
            self._certificate_changed(attempt, run)
            if xvnc.popen.poll() is not None:  # xfreerdp ended because its display died: say that
                raise AttemptFailed(DISPLAY_ENDED, True)
            raise describe_exit(run, self.where, self._credentials.username, active.is_set())

    async def _read_display(self, attempt: _Attempt, display: XvncDisplay, detail: str) -> None:
        """The gateway's VNC path reads the private display: its reports become this attempt's,
        with `opened` (FreeRDP's detail) once it reads. If it stops, the attempt fails."""
        lost = trio.Event()
        why: list[str] = []
        reader = VncConnection(self._bridge, socket_path=display.socket_path,
                               connect_timeout=self._options.connect_timeout)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pace_input, attempt, reader, display.width, display.height)
                reader.open(_ReaderEvents(attempt, detail, lost, why), display.width, display.height)
                attempt.reader = reader
                await lost.wait()
                nursery.cancel_scope.cancel()
        finally:
            attempt.reader = None
            reader.close()
        log.error("rdp %s: reading the private display stopped: %s", self.where, why[0] if why else "?")
        raise AttemptFailed("the session's private display could not be read", True)

    async def _watch_display(self, attempt: _Attempt, xvnc: Child) -> None:
        status = await xvnc.wait()
        log.error("rdp %s: the private display (Xvnc) exited with status %s", self.where, status)
        raise AttemptFailed(DISPLAY_ENDED, True)

    async def _watch_freerdp(self, child: Child, output_fd: int, run: FreeRdpRun,
                             active: trio.Event, settled: trio.Event, finished: trio.Event) -> None:
        """Reads xfreerdp's output until it ends (its pty closes), then reaps it."""
        def on_active() -> None:
            active.set()
            settled.set()

        warnings = await read_output(output_fd, run, on_active, self.where)
        run.returncode = await child.wait()
        settled.set()
        finished.set()
        if run.returncode not in (0, None) and not active.is_set():
            log.info("rdp %s: xfreerdp exited with status %s; its last warnings: %s", self.where,
                     run.returncode, " | ".join(warnings[-6:]))

    def _start_freerdp(self, work: Path, display: XvncDisplay) -> tuple[Child, int]:
        if self._known_certificate:
            write_known_certificate(work / "config", self._host, self._port, self._known_certificate)
        return start_freerdp(work, display, self._host, self._port, self._options, self._credentials)

    def _record_certificate(self, attempt: _Attempt, work: Path) -> None:
        """First use: the fingerprint FreeRDP accepted and wrote to its store, if it did."""
        if self._known_certificate is not None:
            return
        fingerprint = accepted_certificate(work / "config", self._host, self._port)
        if fingerprint is None:
            return
        self._known_certificate = fingerprint  # pinned for this connection's retries
        log.info("rdp %s: certificate SHA-256 %s accepted on first use", self.where, fingerprint)
        if self._on_certificate is not None and not attempt.closed:
            try:
                self._on_certificate(fingerprint)
            except Exception:
                log.exception("rdp %s: on_certificate failed", self.where)

    def _certificate_changed(self, attempt: _Attempt, run: FreeRdpRun) -> None:
        if run.changed_fingerprint is None or self._on_certificate_changed is None or attempt.closed:
            return
        try:
            self._on_certificate_changed(run.changed_fingerprint)
        except Exception:
            log.exception("rdp %s: on_certificate_changed failed", self.where)


def _ours(exc: BaseException) -> bool:
    """A failure this module described beats the cancellations and errors it caused."""
    return isinstance(exc, (ServerEnded, AttemptFailed, XvncUnavailable))

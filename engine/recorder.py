"""Writing recordings: one more consumer of a session's fan-out, and the threads that write files.

A recorded session's `Recording` is subscribed to its EndpointActor like a participant's sink
(`Subscribe(..., recorder=True)`): the actor offers it the same frames it offers everyone, tells
it size changes in order with them, and closes it after the last frame. The session tells it the
markers (its audit events) and its end. The recording only queues what it is given, under a
lock, never blocking and never touching the disk, so it costs the fan-out what a participant's
queue costs: the actor never waits on a disk.

The files are written by the engine's **writer threads** (engine/recorders.py `Writers`, `recordings.writer_threads`,
2 by default), shared by every recording. Not an actor's thread: an actor must never block on
disk I/O (an fsync can take a second on a busy disk, and on the actor pool of issue 14 a blocked
actor holds a worker that other sessions' actors need). Not the trio loop's worker threads:
the engine runs without a loop (load tests, scripts), the loop's thread limiter is shared with
every page's database query, and a slow disk must not starve pages. Not a thread per recording:
a thousand recorded sessions would be a thousand threads (the engine moves away from a thread
per actor for that reason). A recording is drained by one writer at a time, one batch per turn,
then goes to the back of the queue, so one busy recording cannot hold every writer.

Bounds and failures (docs/recordings.md): a recording's queue holds at most
`recordings.queue_max_bytes`; a frame that does not fit means the writer cannot keep up, which is
reported to the session (`RecordingFailed("behind")`), as is a write that fails (`disk_full`,
`write_failed`), a file that cannot be created (`cannot_create`) and a file deleted or replaced
under a live recording (`file_deleted`, checked every `recordings.check_seconds`). The session
audits it and follows its profile's policy: end with `recording_failed` (the default), or go on;
a recording that fell behind then goes on from a keyframe of the screen as it is, one that cannot
write stops. What is written is fsynced at least every `recordings.fsync_seconds`.

When a recording closes, its size and SHA-256 (of exactly the bytes written) go into the audit
log (`recording_closed`), which `engine.recording_log` checks the files against.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable

from engine.clock import Timer
from engine.messages import (
    AuditEvent, Frame, Keyframe, RecordingFailed, RecordingPolicy, Resized,
)
from engine.recording_desktop import DesktopEncoder
from engine.recording_log import CHECKED
from engine.recordings import CastEncoder, RecordingMeta, is_graphical, marker_label
from engine.refusals import RefusalCounter

log = logging.getLogger(__name__)

RECORDER_ID = "recording"  # the recording's subscriber id at the EndpointActor (never a participant's)
# Output read within this long of the first of a run is one event: a flood costs a line per
# batch, not per read, and a player cannot show the difference.
_MERGE_SECONDS = 0.005


class Recording:
    """One session's recording: the sink its EndpointActor fans out to, the markers its session
    tells it, and the file the writer threads append to. Thread-safe; never blocks a caller."""

    def __init__(self, meta: RecordingMeta, path: Path, *, owner: Any, policy: RecordingPolicy,
                 on_failure: Callable[[RecordingFailed], None]) -> None:
        self.meta = meta
        self.path = path
        self.policy = policy
        self._owner = owner
        self._settings = owner.settings
        self._clock = owner.clock
        self._on_failure = on_failure
        self._encoder = DesktopEncoder(meta) if is_graphical(meta.protocol) else CastEncoder(meta)
        # a desktop's recording asks for a keyframe every keyframe_seconds or keyframe_bytes of
        # frames, so that playback seeks from the nearest one instead of from the start
        self._periodic = self._encoder.wants_keyframes
        # the first frame asks at once: the keyframe after the desktop's first update is where
        # a seek into the first keyframe_seconds starts, and gives the player the desktop's size
        self._since_keyframe_t = float("-inf")
        self._since_keyframe_bytes = 0
        self._periodic_asked = False
        self._refusals = RefusalCounter(owner.refusal_interval)
        self._lock = threading.Lock()
        self._items: list[tuple[str, float, Any]] = []
        self._pending_bytes = 0
        self._scheduled = False
        self._tick_due = False
        self._closed = False  # no more frames: the endpoint fanned out its last
        self._end: tuple[str, str | None, float] | None = None  # the session's end: reason, by, at
        self._finished = False
        self._behind = False  # a frame did not fit: frames are dropped until a keyframe
        self._keyframe_asked = False
        self._request_keyframe: Callable[[], None] | None = None
        self.dropped_frames = 0
        # the writer's side (one writer thread at a time)
        self._fd: int | None = None
        self._created = False
        self._failure: str | None = None  # why writing stopped
        self._sha = hashlib.sha256()
        self.bytes_written = 0
        self._last_t = 0.0
        self._dirty = False
        self._last_sync = 0.0
        self._last_check = 0.0
        self._timer: Timer | None = None

    # --- the producers' side: the endpoint actor, the session, the gateway (any thread) --------

    def attach(self, request_keyframe: Callable[[], None]) -> None:
        self._request_keyframe = request_keyframe

    def offer(self, frame: Frame) -> bool:
        """Queue a frame. Always True: a recording that falls behind is not a participant to
        resynchronise but a failure, reported to the session (its policy decides)."""
        self._put("o", frame.data, len(frame.data))
        return True

    def keyframe(self, keyframe: Keyframe, resync: bool = False) -> None:
        self._put("k", keyframe, len(keyframe.data))

    def event(self, event: Any) -> None:
        if isinstance(event, Resized):
            self._put("r", (event.cols, event.rows), 0)

    def input(self, data: bytes) -> None:
        """The controller's keystrokes, when `recordings.record_input` asks for them."""
        self._put("i", data, len(data))

    def mark(self, event: AuditEvent) -> None:
        """One of the session's audit events: a marker, if it is one (refusals once per window,
        as the audit log writes them)."""
        with self._lock:
            if self._finished:
                return
            # the store's timer ends each refusal window at its end: so here, before this event
            while (due := self._refusals.next_due()) is not None and due <= event.at:
                self._refusals.due(due)
            written = self._refusals.offer(event, event.at)
        detail = dict(event.detail)
        for row in written:
            if row is event:
                label = marker_label(event.kind, event.actor_name, detail)
                if label is not None:
                    self._put("m", label, len(label), at=event.at)

    def ending(self, reason: str, by: str | None, at: float) -> None:
        """The session ended (its `session_ended` row has this `at`): the recording closes
        once the endpoint has fanned out its last frame (`close`)."""
        wake = False
        with self._lock:
            if self._end is None:
                self._end = (reason, by, at)
                wake = self._closed and self._schedule_locked()
        if wake:
            self._owner.writers.submit(self._turn)

    def close(self) -> None:
        """No more frames (the EndpointActor fanned out its last, or is gone). Idempotent."""
        wake = False
        with self._lock:
            if not self._closed:
                self._closed = True
                wake = self._end is not None and self._schedule_locked()
        if wake:
            self._owner.writers.submit(self._turn)

    def _put(self, kind: str, value: Any, size: int, *, at: float | None = None) -> None:
        """Queue one item. Markers always fit (they are small and few). Anything else that does
        not fit in `queue_max_bytes` (unless the queue is empty) means the writer cannot keep up:
        reported once per episode; output, input and sizes are dropped until a keyframe
        (asked for under the `continue` policy once the writer has caught up)."""
        t = (at - self.meta.started_at) if at is not None else self._now()
        wake = report = ask_keyframe = False
        with self._lock:
            if self._finished or self._failure is not None or (self._closed and kind != "m"):
                return
            if kind == "k":
                self._behind = self._keyframe_asked = self._periodic_asked = False
                if value.cols or not self._periodic:  # a desktop's keyframe before its first update is empty
                    self._since_keyframe_t, self._since_keyframe_bytes = t, 0
            elif kind != "m" and self._behind:
                self.dropped_frames += kind == "o"
                return
            if kind != "m" and self._pending_bytes and self._pending_bytes + size > self._settings.queue_max_bytes:
                self._behind = report = True
                self.dropped_frames += kind == "o"
            else:
                self._items.append((kind, t, value))
                self._pending_bytes += size
                wake = self._schedule_locked()
                if self._periodic and kind == "o":
                    self._since_keyframe_bytes += size
                    due = (t - self._since_keyframe_t >= self._settings.keyframe_seconds
                           or self._since_keyframe_bytes >= self._settings.keyframe_bytes)
                    if due and not self._periodic_asked and self._request_keyframe is not None:
                        self._periodic_asked = ask_keyframe = True
        if ask_keyframe:
            # a message to the endpoint actor (never a wait): its keyframe comes back in order
            # with the frames, through `keyframe`
            self._request_keyframe()  # type: ignore[misc]
        if report:
            self._fail_soon("behind", f"the recording fell {self._settings.queue_max_bytes} bytes behind the session")
        if wake:
            self._owner.writers.submit(self._turn)

    def _now(self) -> float:
        return self._clock.now() - self.meta.started_at

    def _schedule_locked(self) -> bool:
        """Under the lock: True if the caller must submit a writer turn."""
        if self._scheduled:
            return False
        self._scheduled = True
        return True

    def _fail_soon(self, reason: str, detail: str) -> None:
        log.warning("recording of session %s failed: %s (%s)", self.meta.session_id, reason, detail)
        try:
            self._on_failure(RecordingFailed(reason, detail))
        except Exception:
            log.exception("reporting the recording failure of session %s", self.meta.session_id)

    # --- the writer's side: one writer thread at a time ------------------------------------------

    def _tick(self) -> None:
        """The clock's timer (never blocks): ask a writer to sync and check the file."""
        self._timer = None
        wake = False
        with self._lock:
            if self._finished:
                return
            self._tick_due = True
            wake = self._schedule_locked()
        if wake:
            self._owner.writers.submit(self._turn)

    def _turn(self) -> None:
        """One batch: create the file if needed, write what is queued, sync and check when due,
        ask for a keyframe when one is owed, finish once the session ended and the frames did."""
        with self._lock:
            items, self._items, self._pending_bytes = self._items, [], 0
            tick, self._tick_due = self._tick_due, False
            finishing = self._closed and self._end is not None
            ask = self._behind and not self._keyframe_asked and self.policy is RecordingPolicy.CONTINUE \
                and not self._closed and self._request_keyframe is not None
            if ask:
                self._keyframe_asked = True
        if not self._created and self._failure is None:
            self._create()
        self._write(self._encode(items))
        if tick:
            self._sync_and_check(force_check=True)
        elif self._dirty and self._clock.now() - self._last_sync >= self._settings.fsync_seconds:
            self._sync_and_check()
        if ask:
            self._request_keyframe()  # type: ignore[misc]  # the endpoint renders it for this sink
        if finishing:
            self._finish()
            return
        with self._lock:
            again = bool(self._items) or self._tick_due or (self._closed and self._end is not None)
            self._scheduled = again
        if again:
            self._owner.writers.submit(self._turn)

    def _encode(self, items: list[tuple[str, float, Any]]) -> bytes:
        if not items or self._failure is not None:
            return b""
        encoder, out = self._encoder, bytearray()
        pending: list[bytes] = []  # adjacent output, written as one event
        pending_t = 0.0
        for kind, t, value in items:
            t = round(max(t, self._last_t), 6)
            self._last_t = t
            if kind == "o":
                if pending and t - pending_t > _MERGE_SECONDS:
                    out += encoder.output(pending_t, b"".join(pending))
                    pending = []
                if not pending:
                    pending_t = t
                pending.append(value)
                continue
            if pending:
                out += encoder.output(pending_t, b"".join(pending))
                pending = []
            if kind == "k":
                out += encoder.keyframe(t, value)
            elif kind == "r":
                out += encoder.resize(t, *value)
            elif kind == "i":
                out += encoder.input(t, value)
            elif kind == "m":
                out += encoder.marker(t, value)
        if pending:
            out += encoder.output(pending_t, b"".join(pending))
        return bytes(out)

    def _create(self) -> None:
        self._created = True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o640)
            self._stat = os.fstat(self._fd)
        except OSError as exc:
            self._fd = None
            self._io_failed("cannot_create", exc)
            return
        self._last_sync = self._last_check = self._clock.now()
        self._owner.audit("recording_started", self.meta.session_id, file=self.path.name, format=self._encoder.format)
        self._write(self._encoder.header())
        self._arm_timer()

    def _write(self, data: bytes) -> None:
        if not data or self._fd is None or self._failure is not None:
            return
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                self._sha.update(view[:written])
                self.bytes_written += written
                view = view[written:]
        except OSError as exc:
            self._io_failed("disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "write_failed", exc)
            return
        self._dirty = True
        self._owner.written(len(data))

    def _sync_and_check(self, force_check: bool = False) -> None:
        if self._fd is None or self._failure is not None:
            return
        now = self._clock.now()
        try:
            if self._dirty:
                os.fsync(self._fd)
                self._dirty = False
                self._last_sync = now
        except OSError as exc:
            self._io_failed("write_failed", exc)
            return
        if force_check or now - self._last_check >= self._settings.check_seconds:
            self._last_check = now
            self._check_file()

    def _check_file(self) -> None:
        """A file deleted or replaced under a live recording: writing on would go nowhere."""
        try:
            on_disk = os.stat(self.path)
            same = (on_disk.st_ino, on_disk.st_dev) == (self._stat.st_ino, self._stat.st_dev)
        except FileNotFoundError:
            same = False
        except OSError as exc:
            self._io_failed("write_failed", exc)
            return
        if not same:
            self._failure = "file_deleted"
            self._fail_soon("file_deleted", f"{self.path.name} was deleted or replaced while it was written")

    def _io_failed(self, reason: str, exc: OSError) -> None:
        if self._failure is not None:
            return
        self._failure = reason
        self._fail_soon(reason, f"{exc.strerror or type(exc).__name__} ({self.path.name})")

    def _arm_timer(self) -> None:
        if not self._finished:
            every = min(self._settings.fsync_seconds, self._settings.check_seconds)
            self._timer = self._clock.call_later(every, self._tick_and_rearm)

    def _tick_and_rearm(self) -> None:
        self._tick()
        with self._lock:
            finished = self._finished
        if not finished:
            self._arm_timer()

    def _finish(self) -> None:
        with self._lock:
            self._finished = True
            items, self._items = self._items, []
            reason, by, at = self._end or ("closed", None, self._clock.now())
        if self._timer is not None:
            self._timer.cancel()
        self._write(self._encode(items))
        label = marker_label("session_ended", by, {"reason": reason})
        if label is not None:
            self._write(self._encode([("m", at - self.meta.started_at, label)]))
        trailer = getattr(self._encoder, "trailer", None)
        if trailer is not None and self._failure is None:
            self._write(trailer())  # a desktop's index of keyframes and markers, to seek by
        if self._fd is not None:
            if self._failure is None:
                self._check_file()
            try:
                if self._failure is None:
                    os.fsync(self._fd)
                os.fchmod(self._fd, 0o440)  # closed: nothing writes it again
                # its time is the session's end on the engine's clock, which retention reads
                os.utime(self._fd, (at, at))
            except OSError as exc:
                self._io_failed("write_failed", exc)
            finally:
                os.close(self._fd)
                self._fd = None
            if self._failure is None:
                self._remember_checked()
        self._owner.closed(self, reason)

    def _remember_checked(self) -> None:
        """The closed file is what this recorder wrote and hashed: its first replay need not hash
        it again (recording_log.CheckedFiles), unless it changes."""
        try:
            stat = os.stat(self.path)
        except OSError:
            return
        CHECKED.remember(CHECKED.key(stat, self._sha.hexdigest(), self.bytes_written))

    def close_row(self, reason: str, **more: Any) -> dict[str, Any]:
        created = self._created and self._failure != "cannot_create"
        return dict(file=self.path.name if created else None, format=self._encoder.format,
                    bytes=self.bytes_written if created else 0,
                    sha256=self._sha.hexdigest() if created else None,
                    complete=self._failure is None and not self.dropped_frames, failure=self._failure,
                    end=reason, duration=round(self._last_t, 3), **more)

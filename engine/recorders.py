"""The engine's recordings (docs/recordings.md): the writer threads every recording shares, and
`Recordings`, which opens one per recorded session (engine/recorder.py), routes the gateway's
audit events to it as markers, closes what a crash left open, deletes old ones (retention), and
waits for every open one to close when the engine stops.

Why writer threads of the engine's own, shared by every recording: engine/recorder.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

from config.settings import Recordings as RecordingSettings
from engine.clock import Clock, Timer
from engine.messages import AuditEvent, RecordingFailed, RecordingPolicy
from engine.recorder import Recording
from engine.recordings import RecordingMeta, find_recording, format_of, recording_path, session_of

log = logging.getLogger(__name__)

_SECONDS_PER_DAY = 86400.0
_SWEEP_SECONDS = 3600.0  # retention: how often old recordings are looked for


class Writers:
    """The engine's writer threads: run each job given, in order, on one of `count` threads
    started on first use."""

    def __init__(self, count: int) -> None:
        self._count = max(1, count)
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopped = False

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._stopped:
                raise RuntimeError("the recording writers have stopped")
            if not self._threads:
                for number in range(self._count):
                    thread = threading.Thread(target=self._run, name=f"cosession-recorder-{number + 1}", daemon=True)
                    thread.start()
                    self._threads.append(thread)
        self._jobs.put(job)

    def stop(self, timeout: float) -> None:
        with self._lock:
            self._stopped = True
            threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.1, deadline - time.monotonic()))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # one recording's bug must not stop the writers of all the others
                log.exception("a recording's writer job failed")


class Recordings:
    """The engine's recordings: opens one per recorded session, routes the gateway's audit
    events to it as markers, ends what a crash left open, deletes old ones (retention), and
    on `stop` waits for every open one to close."""

    def __init__(self, settings: RecordingSettings, directory: Path, clock: Clock, store: Any,
                 refusal_interval: float) -> None:
        self.settings = settings
        self.directory = directory
        self.clock = clock
        self.refusal_interval = refusal_interval
        self._store = store
        self.writers = Writers(settings.writer_threads)
        self._open: dict[str, Recording] = {}
        self._cond = threading.Condition()
        self._sweep_timer: Timer | None = None
        self._stopping = False
        self.bytes_total = 0  # written by this process, for the metrics

    def open(self, meta: RecordingMeta, policy: RecordingPolicy,
             on_failure: Callable[[RecordingFailed], None]) -> Recording:
        recording = Recording(meta, recording_path(self.directory, meta.session_id, meta.protocol),
                              owner=self, policy=policy, on_failure=on_failure)
        with self._cond:
            self._open[meta.session_id] = recording
        with recording._lock:
            recording._scheduled = True
        self.writers.submit(recording._turn)  # creates the file now, not at the first frame
        return recording

    def mark(self, event: AuditEvent) -> None:
        """An audit event told to the engine from outside the session (the gateway's: Send
        Password, refused messages): a marker on its session's recording, if it is recorded."""
        if event.session_id is None:
            return
        with self._cond:
            recording = self._open.get(event.session_id)
        if recording is not None:
            recording.mark(event)

    def ended(self, session_id: str, reason: str, at: float) -> None:
        """A session that failed as a whole: its recording ends (the endpoint closes it)."""
        with self._cond:
            recording = self._open.get(session_id)
        if recording is not None:
            recording.ending(reason, None, at)

    def audit(self, kind: str, session_id: str | None, **detail: Any) -> None:
        self._store.tell(AuditEvent.make(kind, self.clock.now(), session_id, **detail))

    def written(self, size: int) -> None:
        self.bytes_total += size

    def closed(self, recording: Recording, reason: str) -> None:
        self.audit("recording_closed", recording.meta.session_id, **recording.close_row(reason))
        with self._cond:
            self._open.pop(recording.meta.session_id, None)
            self._cond.notify_all()

    # --- after a crash, and retention --------------------------------------------------------

    def recover(self, session_ids: tuple[str, ...]) -> None:
        """Sessions that an earlier run left open (ended `gateway_restarted` at this start): their
        recordings were never closed. Close them as they are: size and SHA-256 into the log."""
        for session_id in session_ids:
            path = find_recording(self.directory, session_id)
            if path is not None:
                self.writers.submit(lambda p=path, s=session_id: self._recover_one(s, p))

    def _recover_one(self, session_id: str, path: Path) -> None:
        sha, size = hashlib.sha256(), 0
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    sha.update(chunk)
                    size += len(chunk)
            os.chmod(path, 0o440)
        except OSError as exc:
            log.error("cannot read the recording %s left open by a crash: %s", path.name, exc)
            self.audit("recording_failed", session_id, reason="unreadable", detail=exc.strerror or type(exc).__name__)
            return
        self.audit("recording_closed", session_id, file=path.name, format=format_of(path), bytes=size,
                   sha256=sha.hexdigest(), complete=False, failure=None, end="gateway_restarted", recovered=True)

    def start_retention(self) -> None:
        """Delete recordings older than `recordings.retention_days`, now and every hour."""
        if self.settings.retention_days > 0:
            self.writers.submit(self.sweep)

    def sweep(self) -> list[str]:
        """One pass of retention (a writer thread): each closed recording whose file was last
        written longer ago than the retention is deleted, and the deletion audited."""
        deleted: list[str] = []
        cutoff = self.clock.now() - self.settings.retention_days * _SECONDS_PER_DAY
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            entries = []
        except OSError as exc:
            log.error("retention: cannot list %s: %s", self.directory, exc)
            entries = []
        for entry in entries:
            session_id = session_of(Path(entry.path))
            if session_id is None:
                continue
            with self._cond:
                if session_id in self._open:
                    continue
            try:
                stat = entry.stat()
                if stat.st_mtime >= cutoff:
                    continue
                os.unlink(entry.path)
            except OSError as exc:
                log.error("retention: cannot delete %s: %s", entry.name, exc)
                continue
            deleted.append(session_id)
            self.audit("recording_deleted", session_id, file=entry.name, bytes=stat.st_size, reason="retention",
                       retention_days=self.settings.retention_days)
        with self._cond:
            if self.settings.retention_days > 0 and not self._stopping:
                self._sweep_timer = self.clock.call_later(_SWEEP_SECONDS, self._sweep_soon)
        return deleted

    def _sweep_soon(self) -> None:
        try:
            self.writers.submit(self.sweep)
        except RuntimeError:
            pass

    # --- stopping ----------------------------------------------------------------------------

    def open_count(self) -> int:
        with self._cond:
            return len(self._open)

    def stop(self, timeout: float) -> None:
        """Wait (at most `timeout`) for every open recording to close, then stop the writers. A
        recording still open then is closed as it is (its end: engine_stopped)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.wait_for(lambda: not self._open, timeout)
            left = list(self._open.values())
            self._stopping = True
            if self._sweep_timer is not None:
                self._sweep_timer.cancel()
        for recording in left:
            log.error("recording of session %s still open at stop; closing it", recording.meta.session_id)
            recording.ending("engine_stopped", None, self.clock.now())
            recording.close()
        if left:
            with self._cond:
                self._cond.wait_for(lambda: not self._open, max(0.1, deadline - time.monotonic()))
        self.writers.stop(max(0.1, deadline - time.monotonic()))

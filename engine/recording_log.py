"""The recordings as the audit log tells them, and checking the files against it.

Every recording leaves rows in the hash-chained log (docs/recordings.md): ``recording_started``
(its file was created), ``recording_failed`` (fell behind, could not write), ``recording_closed``
(its file, size and SHA-256 when it closed: of exactly the bytes written), ``recording_deleted``
(retention removed it), ``recording_replayed`` (someone watched it). Since the rows are chained,
a closed recording's size and SHA-256 cannot be changed without `engine.audit.verify` noticing,
and so a file changed or removed afterwards is named by `verify_recordings`.

Sync SQLAlchemy Core over `engine.db`'s tables: call it off the event loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa

from engine.db import audit_events, sessions
from engine.recordings import session_of

KINDS = ("recording_started", "recording_failed", "recording_closed", "recording_deleted")
_HASH_CHUNK = 1 << 20


@dataclass(slots=True)
class RecordingInfo:
    """One session's recording as the log says it is, and its session's row."""

    session_id: str
    endpoint_id: str = ""
    endpoint_name: str = ""
    protocol: str = ""
    controller_name: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    file: str | None = None
    format: str | None = None
    bytes: int | None = None  # when closed
    sha256: str | None = None  # when closed
    complete: bool | None = None
    failures: list[str] = field(default_factory=list)  # the reasons of its recording_failed rows
    started_row: int | None = None
    closed_row: int | None = None
    deleted_row: int | None = None

    @property
    def state(self) -> str:
        """recording (its session runs, or ran and the recording is not closed yet), closed,
        deleted (by retention), or none (no file was ever made: it could not be created)."""
        if self.deleted_row is not None:
            return "deleted"
        if self.closed_row is not None:
            return "closed" if self.file else "none"
        return "recording" if self.started_row is not None else "none"

    def as_json(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "endpoint_id": self.endpoint_id, "endpoint": self.endpoint_name,
                "protocol": self.protocol, "controller": self.controller_name, "started_at": self.started_at,
                "ended_at": self.ended_at, "end_reason": self.end_reason, "state": self.state, "file": self.file,
                "format": self.format, "bytes": self.bytes, "sha256": self.sha256, "complete": self.complete,
                "failures": list(self.failures)}


def _apply(info: RecordingInfo, row_id: int, kind: str, detail: dict[str, Any]) -> None:
    if kind == "recording_started":
        info.started_row = row_id
        info.file = detail.get("file") or info.file
        info.format = detail.get("format") or info.format
    elif kind == "recording_failed":
        info.failures.append(str(detail.get("reason")))
    elif kind == "recording_closed" and info.closed_row is None:
        info.closed_row = row_id
        info.file = detail.get("file")
        info.format = detail.get("format") or info.format
        info.bytes = detail.get("bytes")
        info.sha256 = detail.get("sha256")
        info.complete = detail.get("complete")
    elif kind == "recording_deleted" and info.deleted_row is None:
        info.deleted_row = row_id


def _detail(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def recordings(conn: sa.Connection, *, session_id: str | None = None, endpoint_id: str | None = None,
               limit: int | None = None, offset: int = 0) -> list[RecordingInfo]:
    """Recorded sessions, newest first: the sessions whose row says ``record``, with what their
    recording rows say."""
    s, e = sessions.c, audit_events.c
    where = [s.record.is_(True)]
    if session_id is not None:
        where.append(s.id == session_id)
    if endpoint_id is not None:
        where.append(s.endpoint_id == endpoint_id)
    query = sa.select(sessions).where(*where).order_by(s.started_at.desc(), s.id).offset(max(0, offset))
    if limit is not None:
        query = query.limit(max(0, limit))
    found = {row.id: RecordingInfo(row.id, row.endpoint_id, row.endpoint_name, row.protocol, row.controller_name,
                                   row.started_at, row.ended_at, row.end_reason)
             for row in conn.execute(query)}
    if found:
        rows = conn.execute(sa.select(e.id, e.session_id, e.kind, e.detail)
                            .where(e.kind.in_(KINDS), e.session_id.in_(sorted(found))).order_by(e.id))
        for row in rows:
            _apply(found[row.session_id], row.id, row.kind, _detail(row.detail))
    return list(found.values())


def recording(conn: sa.Connection, session_id: str) -> RecordingInfo | None:
    found = recordings(conn, session_id=session_id)
    return found[0] if found else None


def file_digest(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a file, read in chunks."""
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


class CheckedFiles:
    """Closed recordings known to be what their log row says, by what any change to their bytes
    changes (inode, size, mtime and ctime; ctime cannot be set back by a writer): a desktop's
    seek reopens its file and must not hash an hour of recording each time, and the recorder
    that wrote and hashed a file knows it when it closes it, so the first replay need not
    either. One per process (`CHECKED`); forgets everything past `LIMIT` files."""

    LIMIT = 256

    def __init__(self) -> None:
        self._keys: set[tuple[Any, ...]] = set()
        self._lock = threading.Lock()

    @staticmethod
    def key(stat: os.stat_result, sha256: str | None, size: int | None) -> tuple[Any, ...]:
        return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, sha256, size)

    def remember(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            if len(self._keys) >= self.LIMIT:
                self._keys.clear()
            self._keys.add(key)

    def __contains__(self, key: tuple[Any, ...]) -> bool:
        with self._lock:
            return key in self._keys


CHECKED = CheckedFiles()


@dataclass(frozen=True, slots=True)
class RecordingProblem:
    session_id: str
    problem: str
    row: int | None = None  # the audit row the file disagrees with


def check_file(info: RecordingInfo, directory: Path) -> str:
    """What is wrong with a closed recording's file, or "" if it is what the log says."""
    if info.state != "closed" or not info.file:
        return ""
    path = directory / info.file
    try:
        size, digest = file_digest(path)
    except FileNotFoundError:
        return f"its file {info.file} was removed (closed at row {info.closed_row}, no deletion row)"
    except OSError as exc:
        return f"its file {info.file} cannot be read: {exc.strerror or type(exc).__name__}"
    return _compare(info, size, digest)


def check_data(info: RecordingInfo, data: bytes) -> str:
    """What is wrong with these bytes as a closed recording's file (read already), or ""."""
    if info.state != "closed" or not info.file:
        return ""
    return _compare(info, len(data), hashlib.sha256(data).hexdigest())


def _compare(info: RecordingInfo, size: int, digest: str) -> str:
    if size != info.bytes:
        return (f"its file {info.file} was altered: it is {size} bytes, the log says {info.bytes} "
                f"(row {info.closed_row})")
    if digest != info.sha256:
        return (f"its file {info.file} was altered: its SHA-256 is {digest[:16]}..., the log says "
                f"{str(info.sha256)[:16]}... (row {info.closed_row})")
    return ""


def verify_recordings(conn: sa.Connection, directory: Path) -> Iterator[RecordingProblem]:
    """Every closed recording's file against its ``recording_closed`` row (present, same size,
    same SHA-256), unless a ``recording_deleted`` row says retention removed it; and every file
    in `directory` that no recording row names (put there by hand). Streams the recordings in
    session id order (one at a time in memory)."""
    e = audit_events.c
    named: set[str] = set()
    current: RecordingInfo | None = None
    rows = conn.execution_options(stream_results=True, yield_per=2000).execute(
        sa.select(e.id, e.session_id, e.kind, e.detail).where(e.kind.in_(KINDS), e.session_id.is_not(None))
        .order_by(e.session_id, e.id))
    try:
        for row in rows:
            if current is None or current.session_id != row.session_id:
                if current is not None:
                    problem = check_file(current, directory)
                    if problem:
                        yield RecordingProblem(current.session_id, problem, current.closed_row)
                current = RecordingInfo(row.session_id)
            detail = _detail(row.detail)
            _apply(current, row.id, row.kind, detail)
            if detail.get("file"):
                named.add(str(detail["file"]))
        if current is not None:
            problem = check_file(current, directory)
            if problem:
                yield RecordingProblem(current.session_id, problem, current.closed_row)
    finally:
        rows.close()
    try:
        files = sorted(p for p in directory.iterdir() if session_of(p) is not None)
    except FileNotFoundError:
        files = []
    for path in files:
        if path.name not in named:
            yield RecordingProblem(session_of(path) or path.name,
                                   f"the file {path.name} is not in the audit log: no recording row names it")


def session_rows(conn: sa.Connection, session_id: str) -> list[dict[str, Any]]:
    """A session's audit rows as stored (``detail`` as its canonical JSON text), so that anyone
    can recompute each row's hash (docs/audit.md)."""
    e = audit_events.c
    rows = conn.execute(sa.select(audit_events).where(e.session_id == session_id).order_by(e.id))
    return [{"id": r.id, "at": r.at, "session_id": r.session_id, "kind": r.kind, "actor_id": r.actor_id,
             "actor_name": r.actor_name, "detail": r.detail, "prev_hash": r.prev_hash, "hash": r.hash} for r in rows]

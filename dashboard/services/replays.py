"""Opening a session's recording for replay, shared by the player's pages (dashboard/pages/recordings.py)
and the desktop replay's websocket (dashboard/gateway/replay.py): who may replay
(`engine.access.may_replay`), and whether the file is what the audit log says (docs/recordings.md,
"Replay"). Blocking: call off the loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dashboard.services import Services
from engine.access import may_replay
from engine.messages import User
from engine.recording_desktop import DesktopRecording, read_desktop
from engine.recording_log import CHECKED, RecordingInfo, check_data, check_file
from engine.recordings import DESKTOP_FORMAT, Cast, CorruptRecording, read_cast, valid_session_id


@dataclass(frozen=True, slots=True)
class Replay:
    info: RecordingInfo
    data: bytes  # exactly the bytes checked
    cast: Cast


@dataclass(frozen=True, slots=True)
class Unavailable:
    status: int  # 404: no such recording for this user; 403 refused; 410 deleted; 409 not what the log says
    title: str
    message: str
    reason: str | None = None  # audited as recording_replay_denied when set


@dataclass(frozen=True, slots=True)
class DesktopReplay:
    info: RecordingInfo
    path: Path
    recording: DesktopRecording


def permitted(services: Services, user: User, session_id: str) -> RecordingInfo | Unavailable | None:
    """The recording of `session_id` if `user` may replay it, or why not (None: 404). Blocking."""
    if not valid_session_id(session_id):
        return None
    info = services.audit_reader.recording(session_id)
    if info is None:
        return None
    if not user.is_admin:
        role = services.access.role(user, info.endpoint_id)
        if role is None:
            return None  # no access to the endpoint: as if there were no such session
        refused = may_replay(False, role, services.settings.recordings.replay_role)
        if refused is not None:
            return Unavailable(403, "Not allowed", f"You may not replay this recording: {refused.detail}.",
                               refused.reason.value)
    if info.state == "deleted":
        return Unavailable(410, "Recording deleted", "This session's recording was deleted by the retention "
                           "setting (the audit log says when).")
    if info.state == "none" or not info.file:
        return Unavailable(404, "No recording", "This session was to be recorded, but no recording was made: "
                           "the audit log says why.")
    return info


def open_replay(services: Services, user: User, session_id: str) -> Replay | DesktopReplay | Unavailable | None:
    """The recording of `session_id` as `user` may replay it, or why not (None: 404). Blocking."""
    info = permitted(services, user, session_id)
    if not isinstance(info, RecordingInfo):
        return info
    if info.format == DESKTOP_FORMAT:
        return open_desktop(services, info)
    path = services.settings.recordings_path / info.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _unreadable(info, exc)
    problem = check_data(info, data)
    if problem:
        return Unavailable(409, "Recording altered", f"This recording is not what the audit log says: {problem}.",
                           "altered")
    if info.state != "closed":  # still written: up to its last complete line
        data = data[:data.rfind(b"\n") + 1]
    try:
        cast = read_cast(data)
    except CorruptRecording as exc:
        return Unavailable(409, "Recording corrupt", f"This recording cannot be played: {exc}.", "corrupt")
    return Replay(info, data, cast)


def _unreadable(info: RecordingInfo, exc: OSError) -> Unavailable:
    if isinstance(exc, FileNotFoundError):
        return Unavailable(409, "Recording missing", f"The file of this recording ({info.file}) is gone, and no "
                           "deletion is in the audit log.", "missing")
    return Unavailable(409, "Recording unreadable", f"The file of this recording cannot be read: "
                       f"{exc.strerror or type(exc).__name__}.", "unreadable")


def open_desktop(services: Services, info: RecordingInfo) -> DesktopReplay | Unavailable:
    """A desktop's recording, checked against the log (closed) and its index read. Blocking."""
    assert info.file is not None
    path = services.settings.recordings_path / info.file
    try:
        stat = os.stat(path)
    except OSError as exc:
        return _unreadable(info, exc)
    if info.state == "closed":
        key = CHECKED.key(stat, info.sha256, info.bytes)
        if key not in CHECKED:
            problem = check_file(info, services.settings.recordings_path)
            if problem:
                return Unavailable(409, "Recording altered", f"This recording is not what the audit log says: "
                                   f"{problem}.", "altered")
            CHECKED.remember(key)
    try:
        with open(path, "rb") as f:
            recording = read_desktop(f, stat.st_size)
    except CorruptRecording as exc:
        return Unavailable(409, "Recording corrupt", f"This recording cannot be played: {exc}.", "corrupt")
    except OSError as exc:
        return Unavailable(409, "Recording unreadable", f"The file of this recording cannot be read: "
                           f"{exc.strerror or type(exc).__name__}.", "unreadable")
    return DesktopReplay(info, path, recording)


def opened(services: Services, user: User, session_id: str, *,
            serving: bool, position: float | None = None) -> Replay | DesktopReplay | Unavailable | None:
    """`open_replay`, audited: a refusal always, a replay when its bytes are served (a terminal's
    file when `serving`; a desktop's replay from `position`, when given)."""
    found = open_replay(services, user, session_id)
    if isinstance(found, Unavailable) and found.reason is not None:
        services.audit_event("recording_replay_denied", user, session_id, reason=found.reason,
                             detail=found.message)
    elif isinstance(found, Replay) and serving:
        services.audit_event("recording_replayed", user, session_id, file=found.info.file, bytes=len(found.data),
                             state=found.info.state)
    elif isinstance(found, DesktopReplay) and position is not None:
        services.audit_event("recording_replayed", user, session_id, file=found.info.file,
                             bytes=found.recording.end, state=found.info.state, position=round(position, 3))
    return found

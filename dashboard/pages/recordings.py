"""Replaying a session's recording (docs/recordings.md, "Replay").

- ``GET /sessions/{session_id}/recording``: the player (asciinema-player from the npm registry)
  with the session's audit markers on its timeline and as a list to seek to;
- ``GET /sessions/{session_id}/recording.cast``: the recording itself, what the player plays.
  Every answer is one audit row: ``recording_replayed`` (file, bytes, state) or
  ``recording_replay_denied`` (reason, detail).

Who may replay: administrators, and users with at least ``recordings.replay_role`` on the
session's endpoint (`engine.access.may_replay`). Anyone else with no access to the endpoint gets
the same 404 as for a session that does not exist. A closed recording is served only if it is
what its chained ``recording_closed`` row says (size, SHA-256); one being written (a live
session: watch from the start) is served up to its last complete line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dashboard.security.auth import require_user
from dashboard.services import Services, services_of
from dashboard.web.http import not_found
from dashboard.web.templating import render
from engine.access import may_replay
from engine.messages import User
from engine.recording_log import RecordingInfo, check_data
from engine.recordings import Cast, CorruptRecording, read_cast, valid_session_id

# The player decodes its terminal with WebAssembly, which a CSP of script-src 'self' forbids:
# this page alone also allows compiling WebAssembly (never eval), docs/security.md.
PLAYER_CSP = ("script-src 'self' 'wasm-unsafe-eval'; frame-ancestors 'none'; object-src 'none'; "
              "base-uri 'self'; form-action 'self'")
CAST_TYPE = "application/x-asciicast"


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


def open_replay(services: Services, user: User, session_id: str) -> Replay | Unavailable | None:
    """The recording of `session_id` as `user` may replay it, or why not (None: 404). Blocking."""
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
    path = services.settings.recordings_path / info.file
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Unavailable(409, "Recording missing", f"The file of this recording ({info.file}) is gone, and no "
                           "deletion is in the audit log.", "missing")
    except OSError as exc:
        return Unavailable(409, "Recording unreadable", f"The file of this recording cannot be read: "
                           f"{exc.strerror or type(exc).__name__}.", "unreadable")
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


def _opened(services: Services, user: User, session_id: str, *, serving: bool) -> Replay | Unavailable | None:
    """`open_replay`, audited: a refusal always, a replay when its bytes are served."""
    found = open_replay(services, user, session_id)
    if isinstance(found, Unavailable) and found.reason is not None:
        services.audit_event("recording_replay_denied", user, session_id, reason=found.reason,
                             detail=found.message)
    elif isinstance(found, Replay) and serving:
        services.audit_event("recording_replayed", user, session_id, file=found.info.file, bytes=len(found.data),
                             state=found.info.state)
    return found


async def _unavailable(request: Request, found: Unavailable | None) -> Response:
    if found is None:
        return await not_found(request, "recording")
    return await render(request, "error.html", {"title": found.title, "message": found.message},
                        status_code=found.status)


async def recording_page(request: Request) -> Response:
    user = await require_user(request)
    services = services_of(request)
    session_id = request.path_params["session_id"]
    found = await trio.to_thread.run_sync(lambda: _opened(services, user, session_id, serving=False))
    if not isinstance(found, Replay):
        return await _unavailable(request, found)
    info, cast = found.info, found.cast
    config: dict[str, Any] = {
        "cast_url": str(request.url_for("recording_cast", session_id=session_id).path),
        "cols": cast.header["width"], "rows": cast.header["height"],
        "markers": [{"time": t, "label": label} for t, label in cast.markers],
        "live": info.state != "closed",
    }
    return await render(request, "recording.html", {
        "info": info, "config": config, "duration": cast.duration, "markers": config["markers"],
        "truncated": cast.truncated}, headers={"content-security-policy": PLAYER_CSP})


async def recording_cast(request: Request) -> Response:
    user = await require_user(request)
    services = services_of(request)
    session_id = request.path_params["session_id"]
    found = await trio.to_thread.run_sync(lambda: _opened(services, user, session_id, serving=True))
    if not isinstance(found, Replay):
        if found is None:
            return Response("no such recording\n", status_code=404, media_type="text/plain")
        return Response(found.message + "\n", status_code=found.status, media_type="text/plain")
    return Response(found.data, media_type=CAST_TYPE, headers={
        "cache-control": "no-store", "content-disposition": f'inline; filename="{found.info.file}"'})


routes = [
    Route("/sessions/{session_id}/recording", recording_page, methods=["GET"], name="recording"),
    Route("/sessions/{session_id}/recording.cast", recording_cast, methods=["GET"], name="recording_cast"),
]

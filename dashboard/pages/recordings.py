"""Replaying a session's recording (docs/recordings.md, "Replay").

- ``GET /sessions/{session_id}/recording``: the player (asciinema-player from the npm registry)
  with the session's audit markers on its timeline and as a list to seek to;
- ``GET /sessions/{session_id}/recording.cast``: the recording itself, what the player plays.
  Every answer is one audit row: ``recording_replayed`` (file, bytes, state) or
  ``recording_replay_denied`` (reason, detail).
  A desktop's player plays through the replay websocket (dashboard/gateway/replay.py).

Who may replay: administrators, and users with at least ``recordings.replay_role`` on the
session's endpoint (`engine.access.may_replay`). Anyone else with no access to the endpoint gets
the same 404 as for a session that does not exist. A closed recording is served only if it is
what its chained ``recording_closed`` row says (size, SHA-256); one being written (a live
session: watch from the start) is served up to its last complete line.
"""

from __future__ import annotations

from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dashboard.security.auth import require_user
from dashboard.services import services_of
from dashboard.services.replays import DesktopReplay, Replay, Unavailable, opened
from dashboard.web.http import not_found
from dashboard.web.templating import render

# The player decodes its terminal with WebAssembly, which a CSP of script-src 'self' forbids:
# this page alone also allows compiling WebAssembly (never eval), docs/security.md.
PLAYER_CSP = ("script-src 'self' 'wasm-unsafe-eval'; frame-ancestors 'none'; object-src 'none'; "
              "base-uri 'self'; form-action 'self'")
CAST_TYPE = "application/x-asciicast"


async def _unavailable(request: Request, found: Unavailable | None) -> Response:
    if found is None:
        return await not_found(request, "recording")
    return await render(request, "error.html", {"title": found.title, "message": found.message},
                        status_code=found.status)


async def recording_page(request: Request) -> Response:
    user = await require_user(request)
    services = services_of(request)
    session_id = request.path_params["session_id"]
    found = await trio.to_thread.run_sync(lambda: opened(services, user, session_id, serving=False))
    if isinstance(found, DesktopReplay):
        return await _desktop_page(request, found)
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
    found = await trio.to_thread.run_sync(lambda: opened(services, user, session_id, serving=True))
    if isinstance(found, DesktopReplay):
        return Response("a desktop's recording is replayed by its player\n", status_code=404, media_type="text/plain")
    if not isinstance(found, Replay):
        if found is None:
            return Response("no such recording\n", status_code=404, media_type="text/plain")
        return Response(found.message + "\n", status_code=found.status, media_type="text/plain")
    return Response(found.data, media_type=CAST_TYPE, headers={
        "cache-control": "no-store", "content-disposition": f'inline; filename="{found.info.file}"'})


async def _desktop_page(request: Request, found: DesktopReplay) -> Response:
    info, recording = found.info, found.recording
    markers = [{"time": t, "label": label} for t, label in recording.markers]
    config: dict[str, Any] = {
        "ws_url": f"/ws/recordings/{info.session_id}", "duration": recording.duration, "markers": markers,
        "live": info.state != "closed", "keyframes": len(recording.keyframes),
    }
    return await render(request, "recording_desktop.html", {
        "info": info, "config": config, "duration": recording.duration, "markers": markers,
        "truncated": recording.truncated})


routes = [
    Route("/sessions/{session_id}/recording", recording_page, methods=["GET"], name="recording"),
    Route("/sessions/{session_id}/recording.cast", recording_cast, methods=["GET"], name="recording_cast"),
]

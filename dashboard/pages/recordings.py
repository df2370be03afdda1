"""Replaying a session's recording (docs/recordings.md, "Replay").

- ``GET /sessions/{session_id}/recording``: the player (asciinema-player from the npm registry)
  with the session's audit markers on its timeline and as a list to seek to;
- ``GET /sessions/{session_id}/recording.cast``: the recording itself, what the player plays.
  Every answer is one audit row: ``recording_replayed`` (file, bytes, state) or
  ``recording_replay_denied`` (reason, detail).
- ``WS /ws/recordings/{session_id}?at=T&play=1&speed=S``: a desktop's recording replayed as RFB
  to the page's noVNC, from the keyframe at or before T (docs/recordings.md, "Replaying a
  desktop"); the page's text messages ``play``, ``pause`` and ``speed``; the gateway's ``time``
  and ``end``. Each websocket (a play or a seek) is one ``recording_replayed`` row with its ``at``.

Who may replay: administrators, and users with at least ``recordings.replay_role`` on the
session's endpoint (`engine.access.may_replay`). Anyone else with no access to the endpoint gets
the same 404 as for a session that does not exist. A closed recording is served only if it is
what its chained ``recording_closed`` row says (size, SHA-256); one being written (a live
session: watch from the start) is served up to its last complete line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from dashboard.gateway.channel import CLIENT_GONE
from dashboard.security.auth import current_user, require_user
from dashboard.services import Services, services_of
from dashboard.web.http import not_found
from dashboard.web.templating import render
from engine.access import may_replay
from engine.messages import User
from engine.recording_log import RecordingInfo, check_data, check_file
from engine.recordings import (
    DESKTOP_FORMAT, Cast, CorruptRecording, DesktopRecording, desktop_frames, desktop_start, read_cast,
    read_desktop, valid_session_id,
)
from protocols import rfb

log = logging.getLogger(__name__)

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


# Closed recordings already checked against the log, by what any change to their bytes changes
# (ctime cannot be set back by a writer): a desktop's seek reopens its file, and must not hash
# an hour of recording each time.
_checked: dict[tuple[Any, ...], bool] = {}
_checked_lock = threading.Lock()


def open_desktop(services: Services, info: RecordingInfo) -> DesktopReplay | Unavailable:
    """A desktop's recording, checked against the log (closed) and its index read. Blocking."""
    assert info.file is not None
    path = services.settings.recordings_path / info.file
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return Unavailable(409, "Recording missing", f"The file of this recording ({info.file}) is gone, and no "
                           "deletion is in the audit log.", "missing")
    except OSError as exc:
        return Unavailable(409, "Recording unreadable", f"The file of this recording cannot be read: "
                           f"{exc.strerror or type(exc).__name__}.", "unreadable")
    if info.state == "closed":
        key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, info.sha256, info.bytes)
        with _checked_lock:
            known = key in _checked
        if not known:
            problem = check_file(info, services.settings.recordings_path)
            if problem:
                return Unavailable(409, "Recording altered", f"This recording is not what the audit log says: "
                                   f"{problem}.", "altered")
            with _checked_lock:
                if len(_checked) > 256:
                    _checked.clear()
                _checked[key] = True
    try:
        with open(path, "rb") as f:
            recording = read_desktop(f, stat.st_size)
    except CorruptRecording as exc:
        return Unavailable(409, "Recording corrupt", f"This recording cannot be played: {exc}.", "corrupt")
    except OSError as exc:
        return Unavailable(409, "Recording unreadable", f"The file of this recording cannot be read: "
                           f"{exc.strerror or type(exc).__name__}.", "unreadable")
    return DesktopReplay(info, path, recording)


def _opened(services: Services, user: User, session_id: str, *,
            serving: bool) -> Replay | DesktopReplay | Unavailable | None:
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
    found = await trio.to_thread.run_sync(lambda: _opened(services, user, session_id, serving=True))
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


# --- replaying a desktop to the page's noVNC --------------------------------------------------

HANDSHAKE_SECONDS = 30.0
SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
TIME_EVERY = 0.25  # seconds between the `time` messages while playing
BATCH_RECORDS = 64  # records read from the file per thread hop


def _query_float(websocket: WebSocket, name: str, default: float) -> float:
    try:
        value = float(websocket.query_params.get(name, default))
    except ValueError:
        return default
    return value if math.isfinite(value) else default


class _Player:
    """Where the replay is in the recording and how fast it goes: recording time runs at
    `speed` times the loop's clock while playing."""

    def __init__(self, at: float, playing: bool, speed: float) -> None:
        self.position = at
        self.playing = playing
        self.speed = speed
        self._anchor = trio.current_time()
        self.changed = trio.Event()

    def now(self) -> float:
        if not self.playing:
            return self.position
        return self.position + (trio.current_time() - self._anchor) * self.speed

    def set(self, *, playing: bool | None = None, speed: float | None = None) -> None:
        self.position, self._anchor = self.now(), trio.current_time()
        if playing is not None:
            self.playing = playing
        if speed is not None:
            self.speed = speed
        self.changed.set()
        self.changed = trio.Event()

    def wall_deadline(self, t: float) -> float:
        return self._anchor + (t - self.position) / self.speed


async def replay_socket(websocket: WebSocket) -> None:
    """Replay a desktop's recording to the page's noVNC as an RFB server would: the handshake,
    ServerInit with the desktop's size at `at`, the keyframe at or before `at` and the frames up
    to `at` at once, then each later frame on its time (times `speed`) while playing."""
    user = await current_user(websocket)
    if user is None:
        await websocket.close(code=1008)
        return
    services = services_of(websocket)
    session_id = websocket.path_params["session_id"]
    at = max(0.0, _query_float(websocket, "at", 0.0))
    speed = _query_float(websocket, "speed", 1.0)
    speed = speed if speed in SPEEDS else 1.0
    playing = websocket.query_params.get("play", "1") != "0"

    def opened() -> DesktopReplay | Unavailable | None:
        found = open_replay(services, user, session_id)
        if isinstance(found, Unavailable) and found.reason is not None:
            services.audit_event("recording_replay_denied", user, session_id, reason=found.reason, detail=found.message)
        elif isinstance(found, Replay):
            return None  # a terminal's recording is played by asciinema-player
        elif isinstance(found, DesktopReplay):
            services.audit_event("recording_replayed", user, session_id, file=found.info.file,
                                 bytes=found.recording.end, state=found.info.state, position=round(at, 3))
        return found

    found = await trio.to_thread.run_sync(opened)
    if not isinstance(found, DesktopReplay):
        await websocket.close(code=1008)
        return
    try:
        await websocket.accept()
    except Exception as exc:  # noqa: BLE001 - a client that broke its own handshake
        log.debug("replay websocket not accepted: %r", exc)
        return
    f = await trio.to_thread.run_sync(lambda: open(found.path, "rb"))
    try:
        await _replay(websocket, found, f, at, playing, speed)
    except CLIENT_GONE:
        pass  # the page closed it (a seek opens another)
    except CorruptRecording as exc:  # a live recording whose file went wrong while replayed
        log.warning("replaying the recording of session %s: %s", session_id, exc)
        with contextlib.suppress(*CLIENT_GONE):
            await websocket.send_text(json.dumps({"type": "error", "detail": f"This recording cannot be played: {exc}."}))
            await websocket.close(code=1011)
    finally:
        f.close()


async def _replay(websocket: WebSocket, found: DesktopReplay, f: BinaryIO, at: float, playing: bool,
                  speed: float) -> None:
    leg = rfb.BrowserLeg()
    await websocket.send_bytes(leg.greeting())
    with trio.move_on_after(HANDSHAKE_SECONDS):
        while leg.state is not rfb.LegState.READY:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                continue
            try:
                reply, _ = leg.receive(bytes(data))
            except rfb.RfbError:
                await websocket.close(code=1008)
                return
            if reply:
                await websocket.send_bytes(reply)
    if leg.state is not rfb.LegState.READY:
        await websocket.close(code=1008)
        return
    recording = found.recording
    at = min(at, recording.duration)
    start = await trio.to_thread.run_sync(lambda: desktop_start(f, recording, at))
    name = f"{found.info.endpoint_name} (recording)"
    await websocket.send_bytes(rfb.BrowserLeg.server_init(start.width or 1024, start.height or 768, name))
    for i in range(0, len(start.catch_up), 1 << 20):
        await websocket.send_bytes(start.catch_up[i:i + (1 << 20)])
    await websocket.send_text(json.dumps({"type": "time", "t": at, "playing": playing}))
    player = _Player(at, playing, speed)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_controls, websocket, player, nursery.cancel_scope)
        await _play(websocket, f, recording, start.next_offset, player)


async def _controls(websocket: WebSocket, player: _Player, scope: trio.CancelScope) -> None:
    """The page's text messages: play, pause, speed. Its binary ones (noVNC's update requests,
    and any key or pointer: a recording takes no input) go nowhere."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            scope.cancel()
            return
        text = message.get("text")
        if text is None:
            continue
        try:
            request = json.loads(text)
            kind = request.get("type")
        except (ValueError, AttributeError):
            continue
        if kind == "play":
            player.set(playing=True)
        elif kind == "pause":
            player.set(playing=False)
        elif kind == "speed" and request.get("speed") in SPEEDS:
            player.set(speed=float(request["speed"]))


async def _play(websocket: WebSocket, f: BinaryIO, recording: DesktopRecording, offset: int,
                player: _Player) -> None:
    frames = desktop_frames(f, offset, recording.end)

    def batch() -> list[tuple[float, bytes, int]]:
        out = []
        for item in frames:
            out.append(item)
            if len(out) >= BATCH_RECORDS:
                break
        return out

    last_time_sent = -1.0
    while True:
        items = await trio.to_thread.run_sync(batch)
        if not items:
            break
        for t, data, _ in items:
            while player.now() < t:
                changed = player.changed
                if player.playing:
                    with trio.move_on_at(player.wall_deadline(t)):
                        await changed.wait()
                else:
                    await changed.wait()
            await websocket.send_bytes(data)
            if trio.current_time() - last_time_sent >= TIME_EVERY:
                last_time_sent = trio.current_time()
                await websocket.send_text(json.dumps({"type": "time", "t": t, "playing": player.playing}))
    while player.now() < recording.duration:  # the end: its last marker's time
        changed = player.changed
        if player.playing:
            with trio.move_on_at(player.wall_deadline(recording.duration)):
                await changed.wait()
        else:
            await changed.wait()
    await websocket.send_text(json.dumps({"type": "end", "t": recording.duration}))
    await trio.sleep_forever()  # the page closes it (or seeks: a new websocket)


routes = [
    Route("/sessions/{session_id}/recording", recording_page, methods=["GET"], name="recording"),
    Route("/sessions/{session_id}/recording.cast", recording_cast, methods=["GET"], name="recording_cast"),
    WebSocketRoute("/ws/recordings/{session_id}", replay_socket, name="ws_recording"),
]

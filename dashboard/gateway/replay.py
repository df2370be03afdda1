"""``WS /ws/recordings/{session_id}?at=T&play=1&speed=S``: a desktop's recording replayed as RFB
to the player page's noVNC (docs/recordings.md, "Replaying a desktop"), from the keyframe at or
before T. The page's text messages ``play``, ``pause`` and ``speed`` steer it; the gateway's
``time`` and ``end`` move the page's timeline. Each websocket (a play or a seek) is one
``recording_replayed`` row with its ``position``; a refusal is a ``recording_replay_denied`` row
and the handshake's 403. Who may replay, and the check of the file against the audit log:
dashboard/services/replays.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from typing import BinaryIO

import trio
from starlette.websockets import WebSocket

from dashboard.gateway.channel import CLIENT_GONE, CLOSE_POLICY
from dashboard.security.auth import current_user
from dashboard.services import services_of
from dashboard.services.replays import DesktopReplay, opened
from engine.recording_desktop import DesktopRecording, desktop_frames, desktop_start
from engine.recordings import CorruptRecording
from protocols import rfb

log = logging.getLogger(__name__)

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
        await websocket.close(code=CLOSE_POLICY)
        return
    services = services_of(websocket)
    session_id = websocket.path_params["session_id"]
    at = max(0.0, _query_float(websocket, "at", 0.0))
    speed = _query_float(websocket, "speed", 1.0)
    speed = speed if speed in SPEEDS else 1.0
    playing = websocket.query_params.get("play", "1") != "0"

    found = await trio.to_thread.run_sync(lambda: opened(services, user, session_id, serving=False, position=at))
    if not isinstance(found, DesktopReplay):
        await websocket.close(code=CLOSE_POLICY)
        return
    try:
        await websocket.accept()
    except Exception as exc:  # noqa: BLE001 - a client that broke its own handshake
        log.debug("replay websocket not accepted: %r", exc)
        return
    try:
        f = await trio.to_thread.run_sync(lambda: open(found.path, "rb"))
    except OSError as exc:  # removed or made unreadable since it was checked
        await _fail(websocket, session_id, f"its file cannot be read: {exc.strerror or type(exc).__name__}")
        return
    try:
        await _replay(websocket, found, f, at, playing, speed)
    except CorruptRecording as exc:  # a live recording's file that went wrong while replayed
        await _fail(websocket, session_id, str(exc))
    except CLIENT_GONE:
        pass  # the page closed it (a seek opens another)
    finally:
        f.close()


async def _fail(websocket: WebSocket, session_id: str, detail: str) -> None:
    """The detail to the log and, shortly, to the player; then closed."""
    log.warning("replaying the recording of session %s: %s", session_id, detail)
    with contextlib.suppress(*CLIENT_GONE):
        await websocket.send_text(json.dumps({"type": "error", "detail": f"This recording cannot be played: {detail}."}))
        await websocket.close(code=1011)


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
                await websocket.close(code=CLOSE_POLICY)
                return
            if reply:
                await websocket.send_bytes(reply)
    if leg.state is not rfb.LegState.READY:
        await websocket.close(code=CLOSE_POLICY)
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

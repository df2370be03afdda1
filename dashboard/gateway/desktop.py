"""A graphical session's wire (VNC; RDP through its VNC path): text messages are the JSON control
messages of gateway/wire.py, binary messages are RFB 3.8 between the browser's noVNC and the
gateway, which is an RFB *server* to it (docs/protocol.md, docs/vnc.md).

- **The handshake** (`begin`, before the channel's sender starts): ProtocolVersion, security
  type None (the websocket is already signed in and authorised), ClientInit, ServerInit with
  the desktop's last known size (the keyframe that follows starts with the real one).
- **What the browser sends** is parsed by `protocols.rfb.BrowserLeg`, one instance per
  websocket: a pixel format other than the frames' RGBX, or encodings that do not include
  what the frames use, or a malformed message, is refused (audited) and the websocket closed;
  the session goes on.
- **The controller's** key, pointer and desktop-size messages go to the endpoint as `Input`
  (the RFB bytes); its clipboard only if its access profile allows clipboard upload (decided at
  each use). The desktop's clipboard reaches the controller's page only when it asks
  (`copy_clipboard`) and its profile allows clipboard download (gateway/clipboard.py).
  **A viewer's** are refused (`not_controller`), counted and audited, one refusal per websocket
  message, and never become an engine message (rule 1). Update requests, encodings,
  fences are answered by the frames the gateway pushes anyway, and go nowhere.
- **The output**: the display model's frames (engine/display.py), the same bytes for everyone,
  sent as they are; a keyframe is one more FramebufferUpdate (there is no ``reset`` message).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio

from dashboard.gateway import wire
from dashboard.gateway.channel import CLIENT_GONE, CLOSE_POLICY, Channel, Rights
from dashboard.gateway.clipboard import copy_remote
from dashboard.gateway.send_password import send_password
from engine import tell_session
from engine.access import may_upload_clipboard
from engine.messages import EndpointProtocol, Input, Joined, Keyframe, Reason, Role
from protocols import rfb
from protocols.rfb import RfbError

log = logging.getLogger(__name__)

HANDSHAKE_SECONDS = 30.0  # from the greeting to ClientInit; a browser takes milliseconds
PLACEHOLDER_SIZE = (1024, 768)  # ServerInit's size before any keyframe: corrected by the first


@dataclass(frozen=True, slots=True)
class DesktopMessages:
    """One binary websocket message of a browser's RFB stream: the client messages it completed."""

    messages: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class BrokenRfb:
    detail: str


class DesktopWire:
    """One browser's RFB stream (a new one for each websocket: the stream has state)."""

    protocols = frozenset({EndpointProtocol.VNC, EndpointProtocol.RDP})

    def __init__(self) -> None:
        self.leg = rfb.BrowserLeg()

    # the SessionWire contract

    def decode(self, message: dict[str, Any], max_bytes: int) -> Any:
        data = message.get("bytes")
        if data is None:
            return wire.decode(message, max_bytes)
        if len(data) > max_bytes:
            raise wire.WireError(Reason.TOO_LARGE, f"a message has at most {max_bytes} bytes", "input")
        try:
            _, events = self.leg.receive(bytes(data))
        except RfbError as exc:
            return BrokenRfb(str(exc))
        return DesktopMessages(tuple(e for e in events if not isinstance(e, rfb.HandshakeDone)))

    def rights(self, role: Role) -> Rights:
        return DESKTOP_RIGHTS[role]

    async def begin(self, channel: Channel) -> bool:
        """RFB's handshake with the browser, before anything else is sent. False if the
        websocket went away, broke the protocol or took too long (then it is closed)."""
        await channel.send_bytes(self.leg.greeting())
        with trio.move_on_after(HANDSHAKE_SECONDS):
            while True:
                message = await channel.receive()
                if message is None:
                    return False
                data = message.get("bytes")
                if data is None:  # a control message during the handshake (a ping, a leave)
                    request, error = channel.decode(message)
                    if error is not None:
                        channel.refuse_queued(error.reason, error.detail, error.kind, len(message.get("text") or ""))
                    else:
                        channel.handle(request, len(message.get("text") or ""))
                    continue
                try:
                    reply, events = self.leg.receive(bytes(data))
                except RfbError as exc:
                    await self._refuse_and_close(channel, str(exc), len(data))
                    return False
                if reply:
                    await channel.send_bytes(reply)
                if self.leg.state is rfb.LegState.READY:
                    live = channel.live
                    assert live is not None
                    width, height = live.desktop_size or PLACEHOLDER_SIZE
                    await channel.send_bytes(rfb.BrowserLeg.server_init(width, height, live.endpoint.name))
                    rest = tuple(e for e in events if not isinstance(e, rfb.HandshakeDone))
                    if rest:
                        channel.handle(DesktopMessages(rest), len(data))
                    return True
        await self._refuse_and_close(channel, "no RFB handshake in time", 0)
        return False

    async def send_output(self, channel: Channel, item: Any) -> None:
        if item.kind == "data":
            data = b"".join(frame.data for frame in item.value)
            for start in range(0, len(data), wire.MAX_FRAME_BYTES):
                await channel.send_bytes(data[start:start + wire.MAX_FRAME_BYTES])
        else:
            keyframe: Keyframe = item.value
            # Before the desktop's first update a keyframe is empty (0x0): a later joiner's
            # ServerInit keeps the last real size, or the placeholder, rather than no screen.
            if channel.live is not None and keyframe.cols and keyframe.rows:
                channel.live.desktop_size = (keyframe.cols, keyframe.rows)
            await channel.send_bytes(keyframe.data)

    @staticmethod
    async def _refuse_and_close(channel: Channel, detail: str, size: int) -> None:
        """Before the sender runs: refuse, close, and read until the client's close (Channel.close)."""
        try:
            await channel.send_text(channel.refuse(Reason.MALFORMED, detail, "input", size))
        except CLIENT_GONE:
            pass
        await channel.close(CLOSE_POLICY, "malformed RFB")
        await channel.linger()


def _broken(channel: Channel, request: BrokenRfb, size: int) -> None:
    """A browser that breaks RFB cannot be understood again: refused, audited, closed. The
    session goes on (a controller's closed websocket is a disconnect, rule 8)."""
    log.info("closing the websocket of %s: malformed RFB (%s)", channel.user.name, request.detail)
    channel.refuse_queued(Reason.MALFORMED, request.detail, "input", size)
    channel.close_queued(CLOSE_POLICY, "malformed RFB")


class DesktopControllerRights:
    role = Role.CONTROLLER

    def handle(self, channel: Channel, joined: Joined, request: Any, size: int) -> None:
        if isinstance(request, DesktopMessages):
            data = b"".join(rfb.pack(m) for m in request.messages
                            if isinstance(m, rfb.INPUT_MESSAGES) and not isinstance(m, rfb.ClientCutText))
            if data:
                tell_session(joined, Input(joined.participant_id, data))
            for cut in (m for m in request.messages if isinstance(m, rfb.ClientCutText)):
                channel.services.bridge.spawn(_clipboard, channel, joined, cut, size)
        elif isinstance(request, BrokenRfb):
            _broken(channel, request, size)
        elif isinstance(request, wire.SendPassword):
            assert channel.live is not None
            channel.services.bridge.spawn(send_password, channel, channel.live, size)
        elif isinstance(request, (wire.ResizeRequest, wire.StreamRequest)):
            channel.refuse_queued(Reason.NOT_PERMITTED, "a desktop is resized through RFB", wire.kind_of(request), size)
        elif isinstance(request, wire.PasteRequest):
            channel.refuse_queued(Reason.NOT_PERMITTED, "a desktop's clipboard goes through RFB", "paste", size)
        elif isinstance(request, wire.CopyClipboard):
            channel.services.bridge.spawn(copy_remote, channel, joined, size)
        else:
            channel.refuse_queued(Reason.UNKNOWN_MESSAGE, "", wire.kind_of(request), size)


async def _clipboard(channel: Channel, joined: Joined, cut: rfb.ClientCutText, size: int) -> None:
    """The controller's clipboard to the desktop, if its profile allows clipboard upload now."""
    services, user = channel.services, channel.user

    def decide() -> Any:
        live = channel.live
        facts = services.access.facts(user, live.endpoint.id) if live is not None else None
        return may_upload_clipboard(facts.profile if facts is not None else None)

    refused = await trio.to_thread.run_sync(decide)
    if channel.closed:
        return
    if refused is not None:
        channel.refuse_queued(refused.reason, refused.detail, "input", size)
        return
    # audited with its size, never its content (as a terminal's paste: gateway/clipboard.py)
    services.audit_event("clipboard_upload", user, joined.session_id, participant=joined.participant_id,
                         endpoint_id=channel.live.endpoint.id if channel.live else None, size=len(cut.text))
    tell_session(joined, Input(joined.participant_id, rfb.pack(cut)))


class DesktopViewerRights:
    """Nothing a viewer sends reaches the desktop: its key, pointer, clipboard and desktop-size
    messages are refused, counted and audited (rule 1)."""

    role = Role.VIEWER

    def handle(self, channel: Channel, joined: Joined, request: Any, size: int) -> None:
        if isinstance(request, DesktopMessages):
            if any(isinstance(m, rfb.INPUT_MESSAGES) for m in request.messages):
                channel.refuse_queued(Reason.NOT_CONTROLLER, "viewers are read-only", "input", size)
            # the rest (update requests, encodings, fences) asks for nothing a viewer may not have
        elif isinstance(request, BrokenRfb):
            _broken(channel, request, size)
        elif isinstance(request, (wire.ResizeRequest, wire.StreamRequest, wire.SendPassword, wire.PasteRequest,
                                  wire.CopyClipboard)):
            channel.refuse_queued(Reason.NOT_CONTROLLER, "viewers are read-only", wire.kind_of(request), size)
        else:
            channel.refuse_queued(Reason.UNKNOWN_MESSAGE, "", wire.kind_of(request), size)


DESKTOP_RIGHTS = {Role.CONTROLLER: DesktopControllerRights(), Role.VIEWER: DesktopViewerRights()}

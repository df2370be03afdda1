"""What each role may send on a terminal session's websocket, beyond the messages common to
every participant (gateway/channel.py): the controller's input and window size go to the
endpoint; a viewer's never do (rule 1).

The rights are chosen once, at the join, from the role the engine gave, so read-only is
structural: a viewer's channel holds `ViewerRights`, which has no path to `Input` or `Resize`
at all, besides the engine's own policy that would refuse them.
"""

from __future__ import annotations

from typing import Any

from dashboard.gateway import wire
from dashboard.gateway.channel import Channel
from dashboard.gateway.clipboard import paste
from dashboard.gateway.send_password import send_password
from dashboard.services.live_sessions import LiveSession
from engine import tell_session
from engine.messages import Input, Joined, Reason, Resize, Role
from protocols.synthetic import SyntheticConnection


class ControllerRights:
    """What the controller may send beyond the common messages: its input and its window size
    go to the endpoint; it may paste its clipboard (if its profile allows it) and ask for the
    stored password (Send Password)."""

    role = Role.CONTROLLER

    def handle(self, channel: Channel, joined: Joined, request: Any, size: int) -> None:
        live = channel.live
        assert live is not None
        if isinstance(request, wire.TerminalInput):
            if request.data:
                secret = channel.sent_password is not None and channel.sent_password in request.data
                tell_session(joined, Input(joined.participant_id, request.data, secret=secret))
        elif isinstance(request, wire.ResizeRequest):
            # the session tells every other participant (`size`), on every node
            tell_session(joined, Resize(joined.participant_id, request.cols, request.rows))
        elif isinstance(request, wire.StreamRequest):
            self._stream(channel, live, request, size)
        elif isinstance(request, wire.SendPassword):
            channel.services.bridge.spawn(send_password, channel, live, size)
        elif isinstance(request, wire.PasteRequest):
            channel.services.bridge.spawn(paste, channel, joined, request, size)
        elif isinstance(request, wire.CopyClipboard):
            # a shell's clipboard is not the terminal's (docs/session.md): its text is on screen
            channel.refuse_queued(Reason.NOT_PERMITTED, "a terminal has no remote clipboard: select its text to copy it",
                                  "copy_clipboard", size)
        else:
            channel.refuse_queued(Reason.UNKNOWN_MESSAGE, "", wire.kind_of(request), size)

    @staticmethod
    def _stream(channel: Channel, live: LiveSession, request: wire.StreamRequest, size: int) -> None:
        connection = live.connection
        if not isinstance(connection, SyntheticConnection):
            channel.refuse_queued(Reason.NOT_PERMITTED, "stream is for synthetic endpoints", "stream", size)
            return
        if request.rate > 0:
            connection.start_stream(request.rate)
        else:
            connection.stop_stream()
        channel.post({"type": "stream", "rate": request.rate, "frames_emitted": connection.frames_emitted,
                      "inputs_received": connection.inputs_received, "input_bytes": connection.input_bytes})


class ViewerRights:
    """What a viewer may send beyond the common messages: nothing. There is no path from here
    to the endpoint's input: input and resize are refused, counted and audited, and never
    become an engine message (rule 1)."""

    role = Role.VIEWER

    def handle(self, channel: Channel, joined: Joined, request: Any, size: int) -> None:
        kind = wire.kind_of(request)
        if isinstance(request, (wire.TerminalInput, wire.ResizeRequest, wire.StreamRequest, wire.SendPassword,
                                wire.PasteRequest, wire.CopyClipboard)):
            channel.refuse_queued(Reason.NOT_CONTROLLER, "viewers are read-only", kind, size)
        else:
            channel.refuse_queued(Reason.UNKNOWN_MESSAGE, "", kind, size)


TERMINAL_RIGHTS = {Role.CONTROLLER: ControllerRights(), Role.VIEWER: ViewerRights()}

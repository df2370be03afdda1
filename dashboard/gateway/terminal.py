"""The terminal session's wire (SSH, and the synthetic endpoint that stands in for it): text
messages are the JSON control messages of gateway/wire.py, binary messages are terminal bytes
in both directions, never decoded; a keyframe is a ``reset`` message and the bytes that redraw
the screen. docs/protocol.md describes it.

A graphical session's wire (RFB to a noVNC client) sits beside this one: gateway/desktop.py.
"""

from __future__ import annotations

from typing import Any

from dashboard.gateway import wire
from dashboard.gateway.channel import Channel, Rights
from dashboard.gateway.rights import TERMINAL_RIGHTS
from engine.messages import EndpointProtocol, Keyframe, Role


class TerminalWire:
    protocols = frozenset({EndpointProtocol.SSH, EndpointProtocol.SYNTHETIC})

    def decode(self, message: dict[str, Any], max_bytes: int) -> Any:
        return wire.decode(message, max_bytes)

    def rights(self, role: Role) -> Rights:
        return TERMINAL_RIGHTS[role]

    async def begin(self, channel: Channel) -> bool:
        return True

    async def send_output(self, channel: Channel, item: Any) -> None:
        if item.kind == "data":
            data = b"".join(frame.data for frame in item.value)
            for start in range(0, len(data), wire.MAX_FRAME_BYTES):
                await channel.send_bytes(data[start:start + wire.MAX_FRAME_BYTES])
        else:
            keyframe: Keyframe = item.value
            await channel.send_text({"type": "reset", "cols": keyframe.cols, "rows": keyframe.rows})
            await channel.send_bytes(keyframe.data)


TERMINAL = TerminalWire()

"""The controller's clipboard, both ways.

Upload into a terminal (`paste`): the controller's local clipboard text, typed into the
session as one paste (Clipboard in the toolbar, or the browser's own paste on the terminal).

Only the controller's rights reach here (gateway/rights.py; a viewer's paste is refused
`not_controller`). The access model decides at each use (`engine.access.may_upload_clipboard`:
the profile's clipboard upload). Each use is audited with its size, never its content: a
`clipboard_upload` row when it went in, a `message_refused` row (reason, size) when it did not.
A graphical session's clipboard goes through RFB instead (gateway/desktop.py).

Download from a desktop (`copy_remote`): the desktop's clipboard text (its ServerCutText, which
the engine tells the controller's channel only) to the controller's page, when it asks (Copy
remote clipboard) and its profile allows clipboard download now
(`engine.access.may_download_clipboard`); audited `clipboard_download` with the size, or
refused and audited as `message_refused` with the reason and the size.
"""

from __future__ import annotations

import trio

from dashboard.gateway import wire
from dashboard.gateway.channel import Channel
from engine import tell_session
from engine.access import may_download_clipboard, may_upload_clipboard
from engine.messages import Input, Joined

BRACKET_START, BRACKET_END = b"\x1b[200~", b"\x1b[201~"


def paste_bytes(text: str, bracketed: bool) -> bytes:
    """What the terminal receives for a paste, as xterm.js would send it: line ends as Enter
    (CR), and, when the program asked for bracketed paste, between the brackets. The text's own
    bracket sequences are dropped, so that a paste cannot end the bracket early and have the
    rest run as typed commands."""
    data = text.replace("\r\n", "\r").replace("\n", "\r").encode("utf-8", "replace")
    data = data.replace(BRACKET_START, b"").replace(BRACKET_END, b"")
    return BRACKET_START + data + BRACKET_END if bracketed else data


async def paste(channel: Channel, joined: Joined, request: wire.PasteRequest, size: int) -> None:
    """The paste, into the session as the controller's input, if its profile allows it now."""
    services, user, live = channel.services, channel.user, channel.live
    assert live is not None
    facts = await trio.to_thread.run_sync(services.access.facts, user, live.endpoint.id)
    if channel.closed:
        return
    refused = may_upload_clipboard(facts.profile)
    if refused is not None:
        channel.refuse_queued(refused.reason, refused.detail, "paste", size)
        return
    data = paste_bytes(request.text, request.bracketed)
    services.audit_event("clipboard_upload", user, joined.session_id, participant=joined.participant_id,
                         endpoint_id=live.endpoint.id, size=len(data), bracketed=request.bracketed)
    tell_session(joined, Input(joined.participant_id, data))
    channel.post({"type": "pasted", "size": len(data)})


async def copy_remote(channel: Channel, joined: Joined, size: int) -> None:
    """The desktop's clipboard text, to the controller's websocket only, if its profile allows
    clipboard download now."""
    services, user, live = channel.services, channel.user, channel.live
    assert live is not None
    facts = await trio.to_thread.run_sync(services.access.facts, user, live.endpoint.id)
    if channel.closed:
        return
    text = channel.remote_clipboard or ""
    refused = may_download_clipboard(facts.profile)
    if refused is not None:
        channel.refuse_queued(refused.reason, refused.detail, "copy_clipboard", len(text))
        return
    if text:
        services.audit_event("clipboard_download", user, joined.session_id, participant=joined.participant_id,
                             endpoint_id=live.endpoint.id, size=len(text))
    channel.post({"type": "clipboard", "text": text})

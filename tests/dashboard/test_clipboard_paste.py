"""Clipboard upload into a terminal (the toolbar's Paste clipboard, the browser's paste) on the real
gateway and a real OpenSSH server, on raw websockets:

- with a profile that allows clipboard upload, a paste reaches the shell as one bracketed paste
  (bash asks for it) and is one `clipboard_upload` audit row with its size, never its content;
- with a profile that forbids it, the paste is refused `clipboard_not_allowed` and audited with
  its size only, and nothing reaches the shell;
- a viewer's forged paste is refused `not_controller` and audited; nothing reaches the shell.
"""

from __future__ import annotations

import json
import secrets

import pytest

from dashboard.gateway.clipboard import paste_bytes
from tests.dashboard.test_send_password import DEADLINE, person, start, vault

pytestmark = pytest.mark.openssh


def test_paste_bytes_as_a_terminal_would_send_them():
    assert paste_bytes("a\nb\r\nc", False) == b"a\rb\rc"
    assert paste_bytes("ls", True) == b"\x1b[200~ls\x1b[201~"
    # a paste cannot close its own bracket and have the rest typed as commands
    assert paste_bytes("x\x1b[201~rm -rf ~\n", True) == b"\x1b[200~xrm -rf ~\r\x1b[201~"


async def paste_refusals(h) -> list[dict]:
    return [r for r in await h.audit("message_refused") if r["detail"]["message"] == "paste"]


async def test_a_paste_reaches_the_shell_when_the_profile_allows_clipboard_upload(harness, openssh):
    h = harness
    endpoint = vault(h, openssh)
    person(h, "carol", endpoint, "user", True)
    controller, joined = await start(h, "carol", endpoint)
    assert b"\x1b[?2004h" in controller.output  # bash asked for bracketed paste
    token = secrets.token_hex(4)
    text = f"echo pasted-{token}-$((6*7))"
    await controller.send({"type": "paste", "text": text, "bracketed": True})
    answer = await controller.control("pasted", deadline=DEADLINE)
    assert answer["size"] == len(paste_bytes(text, True))
    await controller.send(b"\r")
    await controller.output_contains(f"pasted-{token}-42".encode(), deadline=DEADLINE)

    rows = await h.audit("clipboard_upload")
    assert [(r["actor_name"], r["session_id"], r["detail"]["size"]) for r in rows] == [
        ("carol", joined["session_id"], len(paste_bytes(text, True)))]
    assert token not in json.dumps(await h.audit(None))  # the size, never the content


async def test_a_paste_is_refused_with_the_reason_when_the_profile_forbids_it(harness, openssh):
    h = harness
    endpoint = vault(h, openssh)
    person(h, "carol", endpoint, "owner", False)
    person(h, "dave", endpoint, "owner", True)
    controller, joined = await start(h, "carol", endpoint)
    viewer = await h.open("dave", f"/ws/sessions/{joined['session_id']}")
    await viewer.send({"type": "join"})
    assert (await viewer.control("joined", deadline=DEADLINE))["role"] == "viewer"

    token = secrets.token_hex(4)
    await controller.send({"type": "paste", "text": f"echo refused-{token}", "bracketed": False})
    refused = await controller.control("refused", deadline=DEADLINE, of="paste")
    assert refused["reason"] == "clipboard_not_allowed" and "clipboard upload" in refused["detail"]
    # a viewer's forged paste: refused whatever its own profile says, audited
    await viewer.send({"type": "paste", "text": f"echo viewer-{token}\n"})
    assert (await viewer.control("refused", deadline=DEADLINE, of="paste"))["reason"] == "not_controller"

    await controller.send(b"echo after-$((6*7))\r")
    await controller.output_contains(b"after-42", deadline=DEADLINE)
    assert token.encode() not in controller.output  # nothing of either paste reached the shell
    assert await h.audit("clipboard_upload") == []
    assert sorted((r["actor_name"], r["detail"]["reason"], r["detail"]["size"] > 0) for r in await paste_refusals(h)) \
        == [("carol", "clipboard_not_allowed", True), ("dave", "not_controller", True)]
    assert token not in json.dumps(await h.audit(None))


async def test_a_terminal_has_no_remote_clipboard(harness, openssh):
    """`copy_clipboard` is a desktop's: on a terminal the controller's is refused `not_permitted`
    (docs/session.md says why), a viewer's `not_controller`; both audited."""
    h = harness
    endpoint = vault(h, openssh)
    person(h, "carol", endpoint, "owner", True)
    person(h, "dave", endpoint, "owner", True)
    controller, joined = await start(h, "carol", endpoint)
    viewer = await h.open("dave", f"/ws/sessions/{joined['session_id']}")
    await viewer.send({"type": "join"})
    assert (await viewer.control("joined", deadline=DEADLINE))["role"] == "viewer"
    await controller.send({"type": "copy_clipboard"})
    refused = await controller.control("refused", deadline=DEADLINE, of="copy_clipboard")
    assert refused["reason"] == "not_permitted" and "select its text" in refused["detail"]
    await viewer.send({"type": "copy_clipboard"})
    assert (await viewer.control("refused", deadline=DEADLINE, of="copy_clipboard"))["reason"] == "not_controller"
    rows = [r for r in await h.audit("message_refused") if r["detail"]["message"] == "copy_clipboard"]
    assert sorted((r["actor_name"], r["detail"]["reason"]) for r in rows) == [
        ("carol", "not_permitted"), ("dave", "not_controller")]

"""Files (SFTP on the session's own connection) against the real gateway and a real OpenSSH
server: the controller's session is started on a raw websocket, its file requests go over HTTP
as the page sends them. The test user's home folder on this machine is the witness.

- With a profile that allows file transfer: a folder is made, a file uploaded in chunks lands
  with the same SHA-256, is listed, downloads byte for byte, is deleted; each is audited (the
  transfers with path, size and SHA-256).
- A path outside the home folder is refused; a controller whose profile forbids file transfer
  and a viewer (whatever its profile) are refused and audited, and nothing is written.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from typing import Any

import pytest
import trio

from tests.dashboard.test_send_password import DEADLINE, start, vault
from tests.fixtures.gateway import PASSWORD

pytestmark = pytest.mark.openssh

CHUNK = 200 * 1024  # under the edge's request body limit (256 KiB)


def grant(h: Any, name: str, endpoint: Any, files: bool) -> None:
    user = h.gateway.create_user(name, PASSWORD)
    profiles = h.gateway.services.profiles
    profile_name = "Files" if files else "No files"
    profile = profiles.profile(profile_name) or profiles.create_profile(profile_name, "allow", file_transfer=files)
    h.gateway.services.grants.grant(endpoint.id, user.id, "user", profile.id)


@pytest.fixture
def folder(openssh):
    """A folder name of this test's own in the shared test user's home, removed afterwards."""
    name = f"cosession-files-{secrets.token_hex(4)}"
    yield name
    shutil.rmtree(openssh.home / name, ignore_errors=True)


async def http(h: Any, name: str, method: str, url: str, **kwargs: Any) -> Any:
    """A request as `name`'s page sends it (signed in, with the CSRF header), off the test's loop.
    The clients are the gateway's (closed with it)."""
    clients = h.__dict__.setdefault("http_clients", {})
    if name not in clients:
        clients[name] = await trio.to_thread.run_sync(h.gateway.api_session, name, PASSWORD)
    client = clients[name]
    return await trio.to_thread.run_sync(lambda: client.request(method, url, **kwargs))


async def upload(h: Any, name: str, sid: str, path: str, data: bytes) -> list[dict[str, Any]]:
    answers = []
    for offset in range(0, max(1, len(data)), CHUNK):
        answer = await http(h, name, "POST", f"/sessions/{sid}/files/upload",
                            params={"path": path, "offset": offset, "total": len(data)},
                            content=data[offset:offset + CHUNK], headers={"Content-Type": "application/octet-stream"})
        assert answer.status_code == 200, answer.text
        answers.append(answer.json())
    return answers


async def test_upload_list_download_and_delete_over_sftp_are_audited(harness, openssh, folder):
    h = harness
    endpoint = vault(h, openssh)
    grant(h, "carol", endpoint, True)
    controller, joined = await start(h, "carol", endpoint)
    sid = joined["session_id"]
    data = os.urandom(3 * CHUNK + 12345)
    digest = hashlib.sha256(data).hexdigest()

    answer = await http(h, "carol", "POST", f"/sessions/{sid}/files/mkdir", params={"path": folder})
    assert answer.status_code == 200, answer.text
    answers = await upload(h, "carol", sid, f"{folder}/tool.bin", data)
    assert [a["done"] for a in answers] == [False, False, False, True]
    assert answers[-1] == {"path": f"{folder}/tool.bin", "size": len(data), "sha256": digest, "done": True}
    on_server = openssh.home / folder / "tool.bin"
    assert hashlib.sha256(on_server.read_bytes()).hexdigest() == digest

    listing = (await http(h, "carol", "GET", f"/sessions/{sid}/files", params={"path": folder})).json()
    assert listing["entries"] == [{"name": "tool.bin", "size": len(data), "is_dir": False,
                                   "modified": listing["entries"][0]["modified"]}]
    home = (await http(h, "carol", "GET", f"/sessions/{sid}/files")).json()
    assert home["path"] == "" and any(e["name"] == folder and e["is_dir"] for e in home["entries"])

    downloaded = await http(h, "carol", "GET", f"/sessions/{sid}/files/download", params={"path": f"{folder}/tool.bin"})
    assert downloaded.status_code == 200
    assert downloaded.content == data
    assert downloaded.headers["content-disposition"] == 'attachment; filename="tool.bin"'

    # the shell goes on meanwhile: the same connection carries both
    await controller.send(f"ls {folder}\r".encode())
    await controller.output_contains(b"tool.bin", deadline=DEADLINE)

    answer = await http(h, "carol", "POST", f"/sessions/{sid}/files/delete", params={"path": f"{folder}/tool.bin"})
    assert answer.status_code == 200 and not on_server.exists()
    # a folder that is not empty is not deleted: the server says why
    (openssh.home / folder / "keep").write_text("x")
    answer = await http(h, "carol", "POST", f"/sessions/{sid}/files/delete", params={"path": folder})
    assert answer.status_code == 422 and answer.json()["error"] == "file_error"

    uploads, downloads = await h.audit("file_upload"), await h.audit("file_download")
    assert [(r["actor_name"], r["session_id"], r["detail"]["path"], r["detail"]["size"], r["detail"]["sha256"])
            for r in uploads] == [("carol", sid, f"{folder}/tool.bin", len(data), digest)]
    assert [(r["detail"]["size"], r["detail"]["sha256"], r["detail"]["complete"]) for r in downloads] == [
        (len(data), digest, True)]
    assert [r["detail"]["path"] for r in await h.audit("file_mkdir")] == [folder]
    assert [r["detail"]["path"] for r in await h.audit("file_delete")] == [f"{folder}/tool.bin"]


async def test_file_transfer_is_refused_outside_home_without_the_profile_flag_and_to_viewers(harness, openssh, folder):
    h = harness
    endpoint = vault(h, openssh)
    grant(h, "carol", endpoint, False)
    grant(h, "dave", endpoint, True)
    _, joined = await start(h, "carol", endpoint)
    sid = joined["session_id"]
    viewer = await h.open("dave", f"/ws/sessions/{sid}")
    await viewer.send({"type": "join"})
    assert (await viewer.control("joined", deadline=DEADLINE))["role"] == "viewer"

    for name, expected in (("carol", "file_transfer_not_allowed"), ("dave", "not_controller")):
        answers = [
            await http(h, name, "GET", f"/sessions/{sid}/files"),
            await http(h, name, "POST", f"/sessions/{sid}/files/mkdir", params={"path": folder}),
            await http(h, name, "POST", f"/sessions/{sid}/files/upload", params={"path": f"{folder}.bin", "offset": 0,
                                                                              "total": 3}, content=b"abc"),
            await http(h, name, "GET", f"/sessions/{sid}/files/download", params={"path": ".profile"}),
        ]
        assert [(a.status_code, a.json()["error"]) for a in answers] == [(403, expected)] * 4
    # a forged file-transfer message on the viewer's websocket is not a message at all: refused
    await viewer.send({"type": "files", "op": "download", "path": ".profile"})
    assert (await viewer.control("refused", deadline=DEADLINE))["reason"] == "unknown_message"
    for bad in ("../etc", "/etc/passwd", "a/../../b"):
        answer = await http(h, "carol", "GET", f"/sessions/{sid}/files", params={"path": bad})
        assert (answer.status_code, answer.json()["error"]) == (400, "malformed")
    assert not (openssh.home / folder).exists() and not (openssh.home / f"{folder}.bin").exists()

    refused = await h.audit("file_transfer_refused")
    assert sorted((r["actor_name"], r["detail"]["reason"], r["detail"]["operation"]) for r in refused) == sorted(
        [("carol", "file_transfer_not_allowed", op) for op in ("list", "mkdir", "upload", "download")]
        + [("dave", "not_controller", op) for op in ("list", "mkdir", "upload", "download")])
    assert await h.audit("file_upload") == [] and await h.audit("file_download") == []
    assert [r["detail"]["message"] for r in await h.audit("message_refused") if r["actor_name"] == "dave"] == [
        "unknown"]


async def test_send_tool_puts_a_library_tool_into_the_home_folder(harness, openssh):
    h = harness
    endpoint = vault(h, openssh)
    grant(h, "carol", endpoint, True)
    grant(h, "dave", endpoint, True)
    h.gateway.create_user("root", PASSWORD, admin=True)
    file_name = f"cosession-tool-{secrets.token_hex(4)}.sh"
    content = b"#!/bin/sh\necho tool-ran-$((6*7))\n"
    digest = hashlib.sha256(content).hexdigest()
    try:
        # an administrator adds it (the page's form), checked against the publisher's checksum
        added = await http(h, "root", "POST", "/tools", data={"name": "Hello tool", "sha256": "0" * 64},
                           files={"file": (file_name, content, "application/octet-stream")})
        assert added.status_code == 303
        assert (await trio.to_thread.run_sync(h.gateway.services.tools.list)) == []  # wrong checksum: refused
        added = await http(h, "root", "POST", "/tools", data={"name": "Hello tool", "sha256": digest.upper()},
                           files={"file": (file_name, content, "application/octet-stream")})
        assert added.status_code == 303
        page = await http(h, "root", "GET", "/tools")
        assert "Hello tool" in page.text and digest in page.text
        assert (await http(h, "carol", "GET", "/tools")).status_code == 403  # administrators only

        controller, joined = await start(h, "carol", endpoint)
        sid = joined["session_id"]
        tools = (await http(h, "carol", "GET", f"/sessions/{sid}/tools")).json()["tools"]
        assert [(t["name"], t["file_name"], t["sha256"]) for t in tools] == [("Hello tool", file_name, digest)]
        viewer = await h.open("dave", f"/ws/sessions/{sid}")
        await viewer.send({"type": "join"})
        await viewer.control("joined", deadline=DEADLINE)
        refused = await http(h, "dave", "POST", f"/sessions/{sid}/tools/{tools[0]['id']}/send")
        assert (refused.status_code, refused.json()["error"]) == (403, "not_controller")
        assert not (openssh.home / file_name).exists()

        sent = await http(h, "carol", "POST", f"/sessions/{sid}/tools/{tools[0]['id']}/send")
        assert sent.status_code == 200 and sent.json() == {"path": file_name, "size": len(content), "sha256": digest}
        on_server = openssh.home / file_name
        assert on_server.read_bytes() == content and on_server.stat().st_mode & 0o777 == 0o755
        await controller.send(f"./{file_name}\r".encode())  # it runs
        await controller.output_contains(b"tool-ran-42", deadline=DEADLINE)

        [added_row] = await h.audit("tool_added")
        assert (added_row["actor_name"], added_row["detail"]["sha256"], added_row["detail"]["size"]) == (
            "root", digest, len(content))
        [sent_row] = await h.audit("tool_sent")
        assert (sent_row["actor_name"], sent_row["session_id"], sent_row["detail"]["tool"], sent_row["detail"]["path"],
                sent_row["detail"]["sha256"], sent_row["detail"]["matches"]) == (
            "carol", sid, "Hello tool", file_name, digest, True)
        assert [(r["actor_name"], r["detail"]["operation"]) for r in await h.audit("file_transfer_refused")] == [
            ("dave", "send_tool")]
    finally:
        (openssh.home / file_name).unlink(missing_ok=True)

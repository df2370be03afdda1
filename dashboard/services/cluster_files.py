"""Files of a session that another node runs (docs/cluster.md): its SFTP runs on the session's
own SSH connection, which only the owning node holds.

On the node that serves the page, `RemoteFiles` stands for that connection in
dashboard/gateway/files.py: each file operation (a folder's entries, one chunk read or written,
a digest...) is a request on the session's control subject (``files``), so the rights, the
paths' checks and the audit rows stay where they are for a local session. The owning node
(`serve_files`) answers only for the session's controller, as its database knows them, whose
profile allows file transfer now, and runs the operation on the session's connection; an SFTP
error comes back as the `RemoteFileError` it was. One chunk is 256 KiB (protocols/ssh.py
FILE_CHUNK), under NATS's default 1 MiB per message.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from dashboard.services.cluster_access import known_user
from engine.access import may_transfer_files
from protocols import session_bus as sb
from protocols.bus import BusError
from protocols.ssh import RemoteFile, RemoteFileError, SshConnection, home_path

log = logging.getLogger(__name__)

FILES_SECONDS = 60.0  # one operation on the owning node's SFTP (a digest reads the whole file)
OPERATIONS = frozenset({"list_folder", "make_folder", "delete", "write_chunk", "read_chunk", "file_digest",
                        "file_size", "make_executable"})


class RemoteFiles:
    """The file operations of `SshConnection`, run by the node that runs the session."""

    def __init__(self, link: Any, session_id: str, user: Any) -> None:
        self._link = link
        self._session_id = session_id
        self._user = user

    async def _call(self, operation: str, *args: Any) -> Any:
        body = {"op": "files", "by": self._user, "operation": operation, "args": list(args)}
        try:
            answer = await self._link.ask(self._session_id, body, FILES_SECONDS)
        except (BusError, sb.WireError) as exc:
            log.info("session %s: %s through its node: %s", self._session_id, operation, exc)
            raise RemoteFileError("the node that runs the session does not answer") from None
        if not isinstance(answer, dict) or "error" in answer:
            raise RemoteFileError(str(answer.get("error")) if isinstance(answer, dict) else "no answer")
        return answer.get("result")

    async def list_folder(self, path: str) -> list[RemoteFile]:
        return [RemoteFile(*entry) for entry in await self._call("list_folder", path)]

    async def make_folder(self, path: str) -> None:
        await self._call("make_folder", path)

    async def delete(self, path: str) -> None:
        await self._call("delete", path)

    async def write_chunk(self, path: str, offset: int, data: bytes) -> None:
        await self._call("write_chunk", path, offset, data)

    async def read_chunk(self, path: str, offset: int, size: int) -> bytes:
        return bytes(await self._call("read_chunk", path, offset, size))

    async def file_digest(self, path: str) -> tuple[int, str]:
        size, sha256 = await self._call("file_digest", path)
        return int(size), str(sha256)

    async def file_size(self, path: str) -> int:
        return int(await self._call("file_size", path))

    async def make_executable(self, path: str) -> None:
        await self._call("make_executable", path)


def _inside_home(path: Any) -> bool:
    """A path inside the home folder, as the serving node checked it (dashboard/gateway/files.py)."""
    try:
        return isinstance(path, str) and home_path(path) is not None
    except ValueError:
        return False


async def serve_files(link: Any, session_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """The owning node's side: one file operation for the session's controller, if allowed now."""
    services, directory = link.services, link.directory
    live = directory.sessions.get(session_id) if directory is not None else None
    user = await known_user(services, body.get("by"))
    operation, args = body.get("operation"), body.get("args")
    if live is None or live.node is not None or not isinstance(live.connection, SshConnection):
        return {"error": "file transfer is available on SSH endpoints only"}
    if user is None or user.id != live.controller.id:
        return {"error": "only the controller transfers files"}
    if operation not in OPERATIONS or not isinstance(args, list) or not args or not _inside_home(args[0]):
        return {"error": "a file operation this node cannot read"}
    facts = await trio.to_thread.run_sync(services.access.facts, user, live.endpoint.id)
    refused = may_transfer_files(facts.profile)
    if refused is not None:
        return {"error": refused.detail}
    try:
        result = await getattr(live.connection, operation)(*args)
    except (RemoteFileError, TypeError) as exc:
        return {"error": str(exc)}
    if operation == "list_folder":
        result = [(f.name, f.size, f.is_dir, f.modified) for f in result]
    return {"result": result}

"""Files: the controller of an SSH session moves files to and from the host, over SFTP on the
session's own authenticated connection (protocols/ssh.py), rooted at the user's home folder.

HTTP routes beside the session page (JSON, and the file's bytes for a download), because a
browser uploads with progress and saves a download by itself over HTTP:

- ``GET  /sessions/{id}/files?path=``: a folder's entries;
- ``GET  /sessions/{id}/files/download?path=``: a file, streamed in chunks;
- ``POST /sessions/{id}/files/upload?path=&offset=&total=``: one chunk of a file (the body; at
  most the edge's request body limit); the last one closes the transfer;
- ``POST /sessions/{id}/files/mkdir?path=`` and ``/files/delete?path=`` (a file or an empty folder);
- ``GET /sessions/{id}/tools`` and ``POST /sessions/{id}/tools/{tool_id}/send``: Send Tool, a
  file of the administrators' library (pages/tools.py) into the home folder, executable.

Every request is decided again: a signed-in user, a live session served here (or run by
another node of several, whose SSH connection then runs each operation:
dashboard/services/cluster_files.py), its controller (a viewer is refused `not_controller`), a
profile that allows file transfer now
(`engine.access.may_transfer_files`), an SSH endpoint. A refusal is audited
(`file_transfer_refused`); every finished transfer is audited with its path, size and SHA-256
(`file_upload`, `file_download`, `tool_sent`), a folder made or an entry deleted with its path.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from typing import Any, AsyncIterator

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from dashboard.security.auth import require_user
from dashboard.services import Services, services_of
from dashboard.services.cluster_files import RemoteFiles
from dashboard.services.live_sessions import LiveSession, live_sessions_of, node_of, remote_summary
from engine.access import may_transfer_files
from engine.messages import EndpointProtocol, EndpointSpec, Reason, User
from protocols.ssh import FILE_CHUNK, RemoteFileError, SshConnection, home_path

MAX_FILE_BYTES = 1 << 30  # an upload's declared total; a bigger one is refused before any byte


class FilesRefused(Exception):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.reason, "detail": self.detail}, status_code=self.status)


@dataclass(frozen=True, slots=True)
class _Allowed:
    services: Services
    user: User
    live: LiveSession
    connection: SshConnection | RemoteFiles  # RemoteFiles: the session runs on another node


# Why Files is not offered on other endpoints (docs/session.md, docs/rdp.md)
NOT_AVAILABLE = {
    EndpointProtocol.RDP: "Files is not available for this endpoint: RDP moves files by the server's drive "
                          "redirection, and cosession has no file manager for a redirected drive",
    EndpointProtocol.VNC: "Files is not available for this endpoint: VNC (RFB) carries no files",
    None: "Files is not available for this endpoint: file transfer works on SSH endpoints only",
}


def files_offer(services: Services, user: User, endpoint: EndpointSpec) -> dict[str, Any]:
    """What the controller's toolbar says of Files: allowed, or the reason it is not (decided
    again at each request). Blocking."""
    if endpoint.protocol is not EndpointProtocol.SSH:
        return {"allowed": False, "reason": NOT_AVAILABLE.get(endpoint.protocol, NOT_AVAILABLE[None])}
    refused = may_transfer_files(services.access.facts(user, endpoint.id).profile)
    if refused is not None:
        return {"allowed": False, "reason": "Your access profile does not allow file transfer"}
    return {"allowed": True, "reason": None}


def relative_path(raw: str | None) -> str:
    """A path inside the home folder (protocols.ssh.home_path), or a 400 saying why not."""
    try:
        return home_path(raw or "")
    except ValueError as exc:
        raise FilesRefused(400, Reason.MALFORMED.value, str(exc)) from None


async def _allowed(request: Request, operation: str, path: str) -> _Allowed:
    """Who may do `operation` now, or FilesRefused (audited)."""
    user = await require_user(request)
    services = services_of(request)
    session_id = request.path_params["session_id"]

    def refuse(status: int, reason: str, detail: str) -> FilesRefused:
        services.audit_event("file_transfer_refused", user, session_id, reason=reason, operation=operation,
                             path=path)
        return FilesRefused(status, reason, detail)

    live = live_sessions_of(request).sessions.get(session_id)
    summary = remote_summary(services, session_id)
    if summary is not None:  # its SSH connection is on the node that runs it: the operations go there
        live = LiveSession(session_id, summary.endpoint, summary.controller, node=node_of(services, session_id))
    if live is None:
        raise refuse(404, Reason.SESSION_ENDED.value, "this session has ended, or is not served here")
    if live.controller.id != user.id:
        raise refuse(403, Reason.NOT_CONTROLLER.value, "only the controller transfers files")
    facts = await trio.to_thread.run_sync(services.access.facts, user, live.endpoint.id)
    refused = may_transfer_files(facts.profile)
    if refused is not None:
        raise refuse(403, refused.reason.value, refused.detail)
    if summary is not None and live.endpoint.protocol is EndpointProtocol.SSH:
        return _Allowed(services, user, live, RemoteFiles(services.cluster, session_id, user))
    if not isinstance(live.connection, SshConnection):
        raise refuse(409, Reason.NOT_PERMITTED.value, "file transfer is available on SSH endpoints only")
    return _Allowed(services, user, live, live.connection)


def _audit(allowed: _Allowed, kind: str, **detail: Any) -> None:
    allowed.services.audit_event(kind, allowed.user, allowed.live.session_id, endpoint_id=allowed.live.endpoint.id,
                                 **detail)


def _failed(exc: RemoteFileError) -> JSONResponse:
    return JSONResponse({"error": "file_error", "detail": str(exc)}, status_code=422)


def _int_param(request: Request, name: str, high: int) -> int:
    raw = request.query_params.get(name, "")
    if not raw.isdigit() or int(raw) > high:
        raise FilesRefused(400, Reason.MALFORMED.value, f"{name} must be an integer from 0 to {high}")
    return int(raw)


async def list_folder(request: Request) -> Response:
    try:
        path = relative_path(request.query_params.get("path"))
        allowed = await _allowed(request, "list", path)
        entries = await allowed.connection.list_folder(path)
    except FilesRefused as exc:
        return exc.response()
    except RemoteFileError as exc:
        return _failed(exc)
    return JSONResponse({"path": path, "entries": [
        {"name": e.name, "size": e.size, "is_dir": e.is_dir, "modified": e.modified} for e in entries]})


async def download(request: Request) -> Response:
    try:
        path = relative_path(request.query_params.get("path"))
        if not path:
            raise FilesRefused(400, Reason.MALFORMED.value, "name a file to download")
        allowed = await _allowed(request, "download", path)
        size = await allowed.connection.file_size(path)
    except FilesRefused as exc:
        return exc.response()
    except RemoteFileError as exc:
        return _failed(exc)

    async def chunks() -> AsyncIterator[bytes]:
        digest, sent = hashlib.sha256(), 0
        try:
            while sent < size:
                data = await allowed.connection.read_chunk(path, sent, min(FILE_CHUNK, size - sent))
                if not data:
                    break
                digest.update(data)
                sent += len(data)
                yield data
        finally:
            # audited once, with what was sent: complete, or where it stopped
            _audit(allowed, "file_download", path=path, size=sent, sha256=digest.hexdigest(),
                   complete=sent == size)

    name = posixpath.basename(path)
    quoted = "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "download"
    return StreamingResponse(chunks(), media_type="application/octet-stream", headers={
        "Content-Length": str(size), "Content-Disposition": f'attachment; filename="{quoted}"',
        "Cache-Control": "no-store"})


async def upload(request: Request) -> Response:
    """One chunk at `offset` of a file of `total` bytes; the chunks come in order. The last
    one reads the file back from the server and audits its size and SHA-256 as stored there."""
    try:
        path = relative_path(request.query_params.get("path"))
        if not path:
            raise FilesRefused(400, Reason.MALFORMED.value, "name the file to upload")
        total = _int_param(request, "total", MAX_FILE_BYTES)
        offset = _int_param(request, "offset", total)
        allowed = await _allowed(request, "upload", path)
        data = await request.body()  # at most edge.max_request_body_bytes (dashboard/security/admission.py)
        if offset + len(data) > total or (not data and total):
            raise FilesRefused(400, Reason.MALFORMED.value, "the chunk does not fit the file's declared size")
        await allowed.connection.write_chunk(path, offset, data)
        done = offset + len(data) == total
        if done:
            size, sha256 = await allowed.connection.file_digest(path)
            _audit(allowed, "file_upload", path=path, size=size, sha256=sha256)
            return JSONResponse({"path": path, "size": size, "sha256": sha256, "done": True})
    except FilesRefused as exc:
        return exc.response()
    except RemoteFileError as exc:
        return _failed(exc)
    return JSONResponse({"path": path, "received": offset + len(data), "done": False})


async def make_folder(request: Request) -> Response:
    try:
        path = relative_path(request.query_params.get("path"))
        if not path:
            raise FilesRefused(400, Reason.MALFORMED.value, "name the folder to make")
        allowed = await _allowed(request, "mkdir", path)
        await allowed.connection.make_folder(path)
    except FilesRefused as exc:
        return exc.response()
    except RemoteFileError as exc:
        return _failed(exc)
    _audit(allowed, "file_mkdir", path=path)
    return JSONResponse({"path": path})


async def delete(request: Request) -> Response:
    try:
        path = relative_path(request.query_params.get("path"))
        if not path:
            raise FilesRefused(400, Reason.MALFORMED.value, "the home folder itself cannot be deleted")
        allowed = await _allowed(request, "delete", path)
        await allowed.connection.delete(path)
    except FilesRefused as exc:
        return exc.response()
    except RemoteFileError as exc:
        return _failed(exc)
    _audit(allowed, "file_delete", path=path)
    return JSONResponse({"path": path})


async def list_tools(request: Request) -> Response:
    """The tool library, for Send Tool (the same rights as Files)."""
    try:
        allowed = await _allowed(request, "list_tools", "")
    except FilesRefused as exc:
        return exc.response()
    tools = await trio.to_thread.run_sync(allowed.services.tools.list)
    return JSONResponse({"tools": [{"id": t.id, "name": t.name, "file_name": t.file_name, "size": t.size,
                                    "sha256": t.sha256} for t in tools]})


async def send_tool(request: Request) -> Response:
    """Send Tool: the library's file into the home folder under its file name (replacing a file
    of that name), executable; checked against the library's SHA-256 as the server stores it."""
    services = services_of(request)
    tool_id = request.path_params["tool_id"]
    tool = await trio.to_thread.run_sync(services.tools.get, tool_id)
    try:
        if tool is None:
            raise FilesRefused(404, "unknown_tool", "there is no such tool in the library")
        path = relative_path(tool.file_name)
        allowed = await _allowed(request, "send_tool", path)
        content = await trio.to_thread.run_sync(services.tools.content, tool_id)
        if content is None:
            raise FilesRefused(404, "unknown_tool", "the tool was deleted meanwhile")
        for offset in range(0, len(content), FILE_CHUNK):
            await allowed.connection.write_chunk(path, offset, content[offset:offset + FILE_CHUNK])
        await allowed.connection.make_executable(path)
        size, sha256 = await allowed.connection.file_digest(path)
    except FilesRefused as exc:
        return exc.response()
    except RemoteFileError as exc:
        return _failed(exc)
    _audit(allowed, "tool_sent", tool_id=tool.id, tool=tool.name, path=path, size=size, sha256=sha256,
           matches=sha256 == tool.sha256)
    if sha256 != tool.sha256:
        return JSONResponse({"error": "file_error", "detail": "the file on the host does not match the tool's "
                             "SHA-256"}, status_code=422)
    return JSONResponse({"path": path, "size": size, "sha256": sha256})


routes: list[BaseRoute] = [
    Route("/sessions/{session_id}/files", list_folder, methods=["GET"], name="session_files"),
    Route("/sessions/{session_id}/files/download", download, methods=["GET"], name="session_files_download"),
    Route("/sessions/{session_id}/files/upload", upload, methods=["POST"], name="session_files_upload"),
    Route("/sessions/{session_id}/files/mkdir", make_folder, methods=["POST"], name="session_files_mkdir"),
    Route("/sessions/{session_id}/files/delete", delete, methods=["POST"], name="session_files_delete"),
    Route("/sessions/{session_id}/tools", list_tools, methods=["GET"], name="session_tools"),
    Route("/sessions/{session_id}/tools/{tool_id}/send", send_tool, methods=["POST"], name="session_tool_send"),
]

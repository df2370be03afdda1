"""The tool library (administrators): ``GET /tools`` lists the tools and has the upload form,
``POST /tools`` adds one (a name, the file, and optionally the publisher's SHA-256, which the
file must match), ``POST /tools/{id}/delete`` removes one. Each change is audited
(`tool_added`, `tool_deleted`: name, file name, size, SHA-256). Controllers deploy a tool into
their home folder with Send Tool (dashboard/gateway/files.py, docs/session.md)."""

from __future__ import annotations

import trio
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from dashboard.pages.admin import admin_services
from dashboard.repositories.model import AccessError
from dashboard.repositories.tools import MAX_TOOL_BYTES
from dashboard.web.http import flash
from dashboard.web.templating import render


async def tools_page(request: Request) -> Response:
    services, _ = await admin_services(request)
    tools = await trio.to_thread.run_sync(services.tools.list)
    return await render(request, "tools.html", {"tools": tools, "max_kib": MAX_TOOL_BYTES // 1024})


async def add_tool(request: Request) -> Response:
    services, admin = await admin_services(request)
    form = await request.form()
    upload = form.get("file")
    try:
        if not isinstance(upload, UploadFile):
            raise AccessError("choose the tool's file")
        content = await upload.read(MAX_TOOL_BYTES + 1)
        name = str(form.get("name") or "") or (upload.filename or "")
        tool = await trio.to_thread.run_sync(
            services.tools.add, name, upload.filename or "", content, str(form.get("sha256") or ""), admin.name,
            services.now())
    except AccessError as exc:
        flash(request, f"Tool not added: {exc}.")
        return RedirectResponse(request.url_for("tools"), status_code=303)
    finally:
        await form.close()
    services.audit_event("tool_added", admin, tool_id=tool.id, tool=tool.name, file_name=tool.file_name,
                         size=tool.size, sha256=tool.sha256)
    flash(request, f"Tool {tool.name} added (SHA-256 {tool.sha256}).")
    return RedirectResponse(request.url_for("tools"), status_code=303)


async def delete_tool(request: Request) -> Response:
    services, admin = await admin_services(request)
    tool = await trio.to_thread.run_sync(services.tools.delete, request.path_params["tool_id"])
    if tool is not None:
        services.audit_event("tool_deleted", admin, tool_id=tool.id, tool=tool.name, file_name=tool.file_name,
                             size=tool.size, sha256=tool.sha256)
        flash(request, f"Tool {tool.name} deleted.")
    return RedirectResponse(request.url_for("tools"), status_code=303)


routes = [
    Route("/tools", tools_page, methods=["GET"], name="tools"),
    Route("/tools", add_tool, methods=["POST"], name="tool_add"),
    Route("/tools/{tool_id}/delete", delete_tool, methods=["POST"], name="tool_delete"),
]

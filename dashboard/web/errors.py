"""The application's answers to `LoginRequired` and `Forbidden` (security/auth.py), on every
route: a websocket is closed with 1008; ``/api/...`` gets JSON (401, 403); a page redirects to
the sign-in page or shows why not (403)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse, Response

from dashboard.security.auth import Forbidden, LoginRequired
from dashboard.web.http import is_api
from dashboard.web.templating import render


async def on_login_required(conn: HTTPConnection, exc: Exception) -> Response | None:
    if conn.scope["type"] == "websocket":
        await conn.close(code=1008)  # type: ignore[attr-defined]
        return None
    if is_api(conn):
        return JSONResponse({"error": "login_required", "detail": "sign in first"}, status_code=401)
    target = conn.url.path + (f"?{conn.url.query}" if conn.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)


async def on_forbidden(conn: HTTPConnection, exc: Exception) -> Response | None:
    detail = getattr(exc, "detail", "You are not allowed to do this.")
    if conn.scope["type"] == "websocket":
        await conn.close(code=1008)  # type: ignore[attr-defined]
        return None
    if is_api(conn):
        return JSONResponse({"error": "forbidden", "detail": detail}, status_code=403)
    return await render(conn, "error.html", {"title": "Not allowed", "message": detail}, status_code=403)


exception_handlers: dict[Any, Any] = {LoginRequired: on_login_required, Forbidden: on_forbidden}

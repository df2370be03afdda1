"""The application's answers to `LoginRequired` and `Forbidden` (security/auth.py), on every
route: a websocket is closed with 1008; ``/api/...`` gets JSON (401, 403); a page redirects to
the sign-in page or shows why not (403). A database that cannot be reached (SQLAlchemy's
`OperationalError`: a PostgreSQL server down, docs/cluster.md) is ``503`` with that reason,
JSON ``database_unavailable`` for the API, instead of an internal error."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

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


log = logging.getLogger(__name__)

DATABASE_UNAVAILABLE = ("The database is unreachable: this cannot be done now; sessions already running go on. "
                        "Try again later.")


async def on_database_unavailable(conn: HTTPConnection, exc: Exception) -> Response | None:
    # No page template: rendering one may need the database too.
    log.warning("%s %s: the database is unreachable: %s", conn.scope.get("method", "WEBSOCKET"), conn.url.path,
                (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0])
    if conn.scope["type"] == "websocket":
        await conn.close(code=1011)  # type: ignore[attr-defined]
        return None
    if is_api(conn):
        return JSONResponse({"error": "database_unavailable", "detail": DATABASE_UNAVAILABLE}, status_code=503)
    return PlainTextResponse(DATABASE_UNAVAILABLE + "\n", status_code=503)


exception_handlers: dict[Any, Any] = {LoginRequired: on_login_required, Forbidden: on_forbidden,
                                      sa.exc.OperationalError: on_database_unavailable}

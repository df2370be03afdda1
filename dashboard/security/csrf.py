"""Cross-site request forgery protection for every unsafe HTTP request.

One random token per browser session (kept in the signed session cookie). Every POST, PUT,
PATCH or DELETE must carry it:

- an HTML form: a hidden ``csrf_token`` field; templates write it with ``{{ csrf_field() }}``;
- a script or ``fetch``: an ``X-CSRF-Token`` header (pages expose the token in
  ``<meta name="csrf-token">``; ``POST /api/login`` and ``GET /api/me`` return it as JSON).

``/api/login`` is the one exemption (there is no session yet); that route accepts only
``application/json``, which a cross-site form cannot send without a CORS preflight that this
server never answers. In addition, a request whose ``Origin`` header names another origin is
refused before anything else.

Websockets are not HTTP requests: the gateway checks them with ``origin.check_origin``.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Callable
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboard.security.origin import same_origin

SESSION_KEY = "csrf"
FIELD = "csrf_token"
HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
EXEMPT_PATHS = frozenset({"/api/login"})
MAX_FORM_BYTES = 1 << 20
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def csrf_token(conn: HTTPConnection) -> str:
    """This session's token, created on first use (which sets the session cookie)."""
    token = conn.session.get(SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        conn.session[SESSION_KEY] = token
    return token


def rotate_csrf_token(conn: HTTPConnection) -> str:
    """A fresh token (at login: a token seen before signing in is not trusted after)."""
    token = secrets.token_urlsafe(32)
    conn.session[SESSION_KEY] = token
    return token


def token_matches(conn: HTTPConnection, candidate: str | None) -> bool:
    expected = conn.session.get(SESSION_KEY)
    if not isinstance(expected, str) or not expected or not candidate:
        return False
    return hmac.compare_digest(expected.encode(), candidate.encode())


class CsrfMiddleware:
    """Refuses (403) an unsafe request without the session's token or from another origin.
    Must run inside SessionMiddleware. `origin_ok(conn)` decides whether an Origin header
    names this server (origin.same_origin)."""

    def __init__(self, app: ASGIApp, *, origin_ok: Callable[[HTTPConnection], bool] = same_origin,
                 exempt: frozenset[str] = EXEMPT_PATHS) -> None:
        self.app = app
        self.origin_ok = origin_ok
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        if "origin" in conn.headers and not self.origin_ok(conn):
            await _refuse(scope, "cross_origin", "This request came from another site.")(scope, receive, send)
            return
        if scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        header = conn.headers.get(HEADER)
        if header is not None:
            if token_matches(conn, header):
                await self.app(scope, receive, send)
            else:
                await _refuse(scope, "csrf", "The request's CSRF token is wrong.")(scope, receive, send)
            return
        media_type = conn.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type not in _FORM_TYPES:
            await _refuse(scope, "csrf", "The request has no CSRF token.")(scope, receive, send)
            return
        body = await _read_body(receive, MAX_FORM_BYTES)
        if body is None:
            await PlainTextResponse("Request body too large", status_code=413)(scope, receive, send)
            return
        replay = _replay(body, receive)
        if media_type == "application/x-www-form-urlencoded":
            values = parse_qs(body.decode("latin-1"), keep_blank_values=True).get(FIELD, [])
            token = values[0] if values else None
        else:
            form = await Request(scope, _replay(body, receive)).form()
            value = form.get(FIELD)
            token = value if isinstance(value, str) else None
            await form.close()
        if not token_matches(conn, token):
            await _refuse(scope, "csrf", "This form has expired or did not come from this site: "
                                         "reload the page and try again.")(scope, receive, send)
            return
        await self.app(scope, replay, send)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # the client's disconnect, later

    return replay


def _refuse(scope: Scope, error: str, message: str) -> Response:
    if scope["path"].startswith("/api/") or "application/json" in Headers(scope=scope).get("accept", ""):
        return JSONResponse({"error": error, "detail": message}, status_code=403)
    return HTMLResponse(
        "<!doctype html><meta charset='utf-8'><title>Refused</title>"
        f"<p>{message}</p><p><a href='/'>Back to cosession</a></p>", status_code=403)

"""Sign-in, sign-out, and who is asking.

The session is Starlette's ``SessionMiddleware``: a cookie signed with ``secret_key`` (see
docs/security.md for its flags). It holds the user's id under ``uid`` and the CSRF token.

For routes (HTTP and websocket alike)::

    user = await current_user(conn)        # User | None; looks the id up on each request
    user = await require_user(request)     # pages: 303 to /login; /api/...: 401 JSON
    user = await require_admin(request)    # as above, then 403 for a non-administrator
    if not check_origin(websocket): ...    # the Origin header must be this server's own

Routes: ``GET/POST /login``, ``POST /logout``, ``POST /api/login`` (JSON only),
``POST /api/logout``, ``GET /api/me``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import Any
from urllib.parse import quote, urlsplit

import trio
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from dashboard.security.csrf import csrf_token, rotate_csrf_token
from engine.messages import User

log = logging.getLogger(__name__)

SESSION_USER = "uid"
SESSION_COOKIE = "cosession"
SESSION_MAX_AGE = 12 * 60 * 60  # a signed-in browser signs in again after 12 hours
SAME_SITE = "lax"  # see docs/security.md: share links opened from other sites must work
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class LoginRequired(Exception):
    """Raised by require_user: pages redirect to /login, API calls get 401."""


class Forbidden(Exception):
    """Raised by require_admin (and by routes): 403."""

    def __init__(self, detail: str = "You are not allowed to do this.") -> None:
        super().__init__(detail)
        self.detail = detail


# --- who is asking ------------------------------------------------------------------------


async def current_user(conn: HTTPConnection) -> User | None:
    """The signed-in user of a Request or WebSocket, or None. Looked up once per connection
    (a deleted user is signed out at once; a changed admin flag applies at once)."""
    cached = conn.scope.get("cosession.user", False)
    if cached is not False:
        return cached
    uid = conn.session.get(SESSION_USER)
    user = None
    if isinstance(uid, str) and uid:
        services = conn.app.state.services
        user = await trio.to_thread.run_sync(services.users.get, uid)
        if user is None:
            conn.session.pop(SESSION_USER, None)
    conn.scope["cosession.user"] = user
    return user


async def require_user(conn: HTTPConnection) -> User:
    user = await current_user(conn)
    if user is None:
        raise LoginRequired()
    return user


async def require_admin(conn: HTTPConnection) -> User:
    user = await require_user(conn)
    if not user.is_admin:
        raise Forbidden("This page is for administrators.")
    return user


def is_api(conn: HTTPConnection) -> bool:
    return conn.url.path.startswith("/api/")


# --- origins ------------------------------------------------------------------------------


def _origin(url: str) -> str | None:
    """scheme://host:port, lower case, with the default port written out; None if malformed."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
        host = (parts.hostname or "").lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if scheme not in ("http", "https") or not host or port is None:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def own_origins(conn: HTTPConnection) -> set[str]:
    """This server's origins: the configured public URL's, and the one the client addressed
    (its scheme and Host header; a browser cannot forge the Host of another site's request)."""
    origins: set[str] = set()
    services = getattr(conn.app.state, "services", None)
    if services is not None and services.public_url:
        public = _origin(services.public_url)
        if public:
            origins.add(public)
    host = conn.headers.get("host")
    if host:
        addressed = _origin(f"{conn.url.scheme}://{host}")
        if addressed:
            origins.add(addressed)
    return origins


def same_origin(conn: HTTPConnection) -> bool:
    """True if the request's Origin header names this server (False if there is none)."""
    origin = conn.headers.get("origin")
    if not origin or origin == "null":
        return False
    normalised = _origin(origin)
    return normalised is not None and normalised in own_origins(conn)


def check_origin(websocket: HTTPConnection) -> bool:
    """For websockets, before `accept()`: the Origin must equal this server's own origin.
    Browsers always send Origin on a websocket handshake; a missing one is refused too."""
    return same_origin(websocket)


# --- failed sign-ins ----------------------------------------------------------------------


class LoginThrottle:
    """At most `limit` failed sign-ins per (client address, name) and 5×`limit` per client
    address within `window` seconds; past that, sign-in is refused without checking."""

    def __init__(self, limit: int = 10, window: float = 900.0) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def blocked(self, client: str, name: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return (len(self._recent((client, name), now)) >= self.limit
                or len(self._recent((client, ""), now)) >= 5 * self.limit)

    def failed(self, client: str, name: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._recent((client, name), now).append(now)
        self._recent((client, ""), now).append(now)
        if len(self._failures) > 10_000:  # forget idle keys
            for key in [k for k, v in self._failures.items() if not v or v[-1] <= now - self.window]:
                del self._failures[key]

    def succeeded(self, client: str, name: str) -> None:
        self._failures.pop((client, name), None)


def _client(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "?"


async def _sign_in(conn: Request, name: str, password: str) -> User | None | str:
    """The user, or None for wrong credentials, or "throttled". Audits failures."""
    services = conn.app.state.services
    throttle: LoginThrottle = conn.app.state.login_throttle
    client = _client(conn)
    name = name.strip()[:64]
    if throttle.blocked(client, name):
        services.audit_event("login_failed", None, name=name, remote=client, reason="throttled")
        return "throttled"
    # argon2 takes 64 MiB and tens of ms per check: a few at a time, so that a flood of sign-in
    # attempts queues up instead of taking every worker thread and the memory with it.
    user = await trio.to_thread.run_sync(services.users.authenticate, name, password,
                                         limiter=conn.app.state.password_limiter)
    if user is None:
        throttle.failed(client, name)
        services.audit_event("login_failed", None, name=name, remote=client, reason="invalid_credentials")
        return None
    throttle.succeeded(client, name)
    conn.session.clear()  # nothing from before the sign-in carries over
    conn.session[SESSION_USER] = user.id
    conn.scope["cosession.user"] = user
    rotate_csrf_token(conn)
    services.audit_event("login", user, remote=client)
    return user


def _safe_next(target: str | None) -> str:
    """Only a path on this server (no open redirect to another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "is_admin": user.is_admin}


# --- routes -------------------------------------------------------------------------------


async def login_page(request: Request) -> Response:
    from dashboard.app import render

    target = _safe_next(request.query_params.get("next"))
    if await current_user(request) is not None:
        return RedirectResponse(target, status_code=303)
    return await render(request, "login.html", {"next": target, "name": "", "error": None})


async def login_submit(request: Request) -> Response:
    from dashboard.app import render

    form = await request.form()
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    target = _safe_next(str(form.get("next", "")))
    result = await _sign_in(request, name, password)
    if isinstance(result, User):
        return RedirectResponse(target, status_code=303)
    error = ("Too many failed attempts. Wait a few minutes and try again." if result == "throttled"
             else "Wrong name or password.")
    return await render(request, "login.html", {"next": target, "name": name.strip()[:64], "error": error},
                        status_code=429 if result == "throttled" else 401)


async def logout(request: Request) -> Response:
    user = await current_user(request)
    request.session.clear()
    if user is not None:
        request.app.state.services.audit_event("logout", user)
    return RedirectResponse("/login", status_code=303)


async def api_login(request: Request) -> Response:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        return JSONResponse({"error": "unsupported_media_type", "detail": "send application/json"},
                            status_code=415)
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) \
            or not isinstance(body.get("password"), str):
        return JSONResponse({"error": "malformed", "detail": 'send {"name": ..., "password": ...}'},
                            status_code=400)
    result = await _sign_in(request, body["name"], body["password"])
    if result == "throttled":
        return JSONResponse({"error": "throttled", "detail": "too many failed attempts"}, status_code=429)
    if not isinstance(result, User):
        return JSONResponse({"error": "invalid_credentials", "detail": "wrong name or password"},
                            status_code=401)
    return JSONResponse({"user": user_json(result), "csrf_token": csrf_token(request)})


async def api_logout(request: Request) -> Response:
    user = await current_user(request)
    request.session.clear()
    if user is not None:
        request.app.state.services.audit_event("logout", user)
    return Response(status_code=204)


async def api_me(request: Request) -> Response:
    user = await require_user(request)
    return JSONResponse({"user": user_json(user), "csrf_token": csrf_token(request)})


routes = [
    Route("/login", login_page, methods=["GET"], name="login"),
    Route("/login", login_submit, methods=["POST"], name="login_submit"),
    Route("/logout", logout, methods=["POST"], name="logout"),
    Route("/api/login", api_login, methods=["POST"], name="api_login"),
    Route("/api/logout", api_logout, methods=["POST"], name="api_logout"),
    Route("/api/me", api_me, methods=["GET"], name="api_me"),
]


# --- middleware and error handlers (assembled by dashboard.app.create_app) ------------------


def session_middleware(secret_key: str, *, https_only: bool) -> Middleware:
    return Middleware(SessionMiddleware, secret_key=secret_key, session_cookie=SESSION_COOKIE,
                      max_age=SESSION_MAX_AGE, same_site=SAME_SITE, https_only=https_only)


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
    from dashboard.app import render

    return await render(conn, "error.html", {"title": "Not allowed", "message": detail},  # type: ignore[arg-type]
                        status_code=403)


exception_handlers = {LoginRequired: on_login_required, Forbidden: on_forbidden}

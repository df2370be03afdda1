"""The Starlette application: every route, mount and middleware, assembled in `create_app`.

Pages render with the shared ``templates`` (dashboard/templates; every page extends
``base.html``). ``await render(request, "page.html", {...})`` resolves the signed-in user
first so the navigation shows it; templates also get ``csrf_field()`` (a hidden input for
every form), ``csrf_token()``, ``user``, ``nav`` and ``url_for``.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

import jinja2
import trio
from markupsafe import Markup, escape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, NoMatchFound, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
VENDOR_DIR = HERE / "frontend" / "node_modules"  # npm packages (xterm.js), from `npm ci`

PASSWORD_CHECKS = 2  # argon2 verifications at once (each takes 64 MiB); the others wait

# (route name, label, administrators only). An entry shows only when a route of that name
# exists, so a page that is not built yet never shows as a broken link.
NAV = (
    ("home", "Dashboard", False),
    ("connections", "Connections", False),
    ("access_requests", "Requests", False),
    ("approvals", "Approvals", False),
    ("endpoints", "Endpoints", True),
    ("profiles", "Profiles", True),
    ("groups", "Groups", True),
    ("audit", "Audit", True),
    ("account", "Account", False),
)


@jinja2.pass_context
def _csrf_field(context: Any) -> Markup:
    from dashboard.security.csrf import FIELD, csrf_token

    return Markup(f'<input type="hidden" name="{FIELD}" value="{escape(csrf_token(context["request"]))}">')


@jinja2.pass_context
def _csrf_token(context: Any) -> str:
    from dashboard.security.csrf import csrf_token

    return csrf_token(context["request"])


@jinja2.pass_context
def _url_if_exists(context: Any, name: str, /, **params: Any) -> str | None:
    """The URL of a named route, or None while no such route exists (a page not built yet)."""
    try:
        return str(context["request"].url_for(name, **params))
    except NoMatchFound:
        return None


def _datetime(value: float | None) -> str:
    if not value:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def _context(request: Request) -> dict[str, Any]:
    user = request.scope.get("cosession.user") or None
    nav = []
    for name, label, admin_only in NAV:
        if admin_only and not (user and user.is_admin):
            continue
        try:
            url = request.url_for(name).path  # a path: base.html marks the current page by it
        except NoMatchFound:
            continue
        nav.append({"name": name, "label": label, "url": url})
    return {"user": user, "nav": nav}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
                             autoescape=jinja2.select_autoescape(default=True))
    env.globals["csrf_field"] = _csrf_field
    env.globals["csrf_token"] = _csrf_token
    env.globals["url_if_exists"] = _url_if_exists
    env.filters["datetime"] = _datetime
    return env


templates = Jinja2Templates(env=_environment(), context_processors=[_context])


async def render(conn: HTTPConnection, name: str, context: dict[str, Any] | None = None, *,
                 status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A page from `templates`, with the signed-in user resolved for the navigation."""
    from dashboard.security.auth import current_user

    await current_user(conn)
    return templates.TemplateResponse(conn, name, context or {}, status_code=status_code,  # type: ignore[arg-type]
                                       headers=headers)


# --- security headers -----------------------------------------------------------------------


class SecurityHeaders:
    """Headers on every HTTP response: no framing, no MIME sniffing, no referrer to others."""

    HEADERS = [
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (b"content-security-policy", b"frame-ancestors 'none'; object-src 'none'; base-uri 'self'"),
    ]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in self.HEADERS if k not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- the application ------------------------------------------------------------------------


def _routes_of(module_name: str) -> list[BaseRoute]:
    """The `routes` of a page module; none while that module is not written yet."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return []
    return list(getattr(module, "routes", []))


def create_app(services: Any) -> Starlette:
    """The whole web application for `services` (dashboard.services.Services)."""
    from dashboard.pages import dashboard as pages
    from dashboard.repositories import endpoints
    from dashboard.security import auth
    from dashboard.security.csrf import CsrfMiddleware

    routes: list[BaseRoute] = [
        *auth.routes,                   # /login, /logout, /api/login, /api/logout, /api/me
        *endpoints.routes,              # /endpoints... (administrators)
        *pages.routes,                  # /, /connections, /endpoints/{id}, terminate, /events/sessions
        *importlib.import_module("dashboard.pages.audit").routes,  # /audit, its exports (administrators)
        *importlib.import_module("dashboard.api").routes,  # /api/sessions, /api/endpoints, /api/audit...
        *_routes_of("dashboard.gateway"),  # session websockets, session pages, share links
        *_routes_of("dashboard.pages.launcher"),  # the Session Launcher, Quick Access
        *_routes_of("dashboard.pages.requests"),  # requests for access, approvals, extensions
        *_routes_of("dashboard.pages.access"),  # roles, profiles, groups, approvers (administrators)
        *_routes_of("dashboard.pages.account"),     # /account: the TOTP authenticator
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        Mount("/vendor", StaticFiles(directory=VENDOR_DIR, check_dir=False), name="vendor"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        auth.session_middleware(services.secrets.secret_key,
                                https_only=services.public_url.startswith("https://")),
        Middleware(CsrfMiddleware, origin_ok=auth.same_origin),  # inside the session
    ]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=auth.exception_handlers)
    app.state.services = services
    app.state.templates = templates
    app.state.login_throttle = auth.LoginThrottle()
    app.state.password_limiter = trio.CapacityLimiter(PASSWORD_CHECKS)
    return app

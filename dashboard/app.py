"""The Starlette application: every route, mount, middleware and per-application singleton,
assembled in `create_app`, in one place. docs/architecture.md draws the floors below it.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboard import api, gateway, operations
from dashboard.pages import account, audit, endpoints, extensions, launcher, live, recordings, requests, signin, tools
from dashboard.pages import access as access_pages
from dashboard.pages import dashboard as dashboard_pages
from dashboard.security.admission import Admission
from dashboard.security.auth import SignIn, session_middleware
from dashboard.security.csrf import CsrfMiddleware
from dashboard.services import Services
from dashboard.services.audit_log import AuditChain
from dashboard.services.live_sessions import LiveSessions
from dashboard.services.starts import Launches
from dashboard.web.errors import exception_handlers
from dashboard.web.request_log import RequestLog
from dashboard.web.templating import STATIC_DIR, VENDOR_DIR


class SecurityHeaders:
    """Headers on every HTTP response: no framing, no MIME sniffing, no referrer to others, and
    scripts only from this server's own files (dashboard/static and the pinned npm packages
    under /vendor): no inline script, no eval (docs/security.md). On a connection that came
    over TLS, HSTS too: browsers then refuse plain HTTP to this host for a year."""

    HEADERS = [
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (b"content-security-policy",
         b"script-src 'self'; frame-ancestors 'none'; object-src 'none'; base-uri 'self'; form-action 'self'"),
    ]
    HSTS = (b"strict-transport-security", b"max-age=31536000")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = self.HEADERS + [self.HSTS] if scope.get("scheme") == "https" else self.HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in headers if k not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(services: Services) -> Starlette:
    """The whole web application for `services`."""
    routes: list[BaseRoute] = [  # matched in this order: /endpoints/new before /endpoints/{id}
        *operations.routes,             # /healthz, /readyz, /metrics: no sign-in
        *signin.routes,                 # /login, /logout
        *endpoints.routes,              # /endpoints... (administrators)
        *dashboard_pages.routes,        # /, /connections, /endpoints/{id}, terminate
        *live.routes,                   # /events/sessions: the live list's updates
        *audit.routes,                  # /audit, its exports (administrators)
        *api.routes,                    # /api/login, /api/sessions, /api/endpoints, /api/audit...
        *gateway.routes,                # session websockets, session pages
        *launcher.routes,               # the Session Launcher, Quick Access
        *requests.routes,               # requests for access, approvals
        *extensions.routes,             # extensions of an approval, from a live session
        *access_pages.routes,           # roles, profiles, groups, approvers (administrators)
        *account.routes,                # /account: the TOTP authenticator
        *recordings.routes,             # /sessions/{id}/recording: the player, and the .cast it plays
        *tools.routes,                  # /tools: the tool library for Send Tool (administrators)
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        Mount("/vendor", StaticFiles(directory=VENDOR_DIR, check_dir=False), name="vendor"),
    ]
    middleware = [
        Middleware(RequestLog, access=services.settings.log.access),  # outermost: the request id for every line
        Middleware(SecurityHeaders),
        session_middleware(services.secrets.secret_key, https_only=services.public_url.startswith("https://")
                           or services.settings.server.tls),
        Middleware(Admission, max_request_body_bytes=services.settings.edge.max_request_body_bytes,
                   max_handshakes_in_flight=services.settings.edge.max_handshakes_in_flight),  # inside the session
        Middleware(CsrfMiddleware),  # inside the session, whose token it checks
    ]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=exception_handlers)
    # The application's singletons, each made once, here; routes reach them through the
    # accessor next to each class (services_of, sign_in_of, launches_of, ...).
    app.state.services = services
    app.state.sign_in = SignIn(services.users, services)
    app.state.launches = Launches()
    app.state.live_sessions = LiveSessions(services)
    if services.cluster is not None:  # the other nodes ask this node about the sessions it runs
        services.cluster.directory = app.state.live_sessions
    app.state.live_hub = live.LiveHub(services)
    app.state.audit_chain = AuditChain(services.settings.database_url, services.settings.recordings_path)
    app.state.live_row_paths = live.row_paths(app)
    app.state.readiness = operations.Readiness(operations.default_checks(services), services.now)
    return app

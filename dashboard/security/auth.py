"""Sign-in, and who is asking.

The session is Starlette's ``SessionMiddleware``: a cookie signed with ``secret_key`` (see
docs/security.md for its flags). It holds the user's id under ``uid`` and the CSRF token.

For routes (HTTP and websocket alike)::

    user = await current_user(conn)        # User | None; looks the id up on each request
    user = await require_user(request)     # pages: 303 to /login; /api/...: 401 JSON
    user = await require_admin(request)    # as above, then 403 for a non-administrator

`SignIn` checks a name and a password (a few argon2 checks at a time, failures throttled and
audited) and starts the browser session; the sign-in routes are pages/signin.py's (HTML) and
api/account.py's (JSON). Web/errors.py answers `LoginRequired` and `Forbidden`.

This floor sits below the repositories: it reaches the accounts and the audit log through the
two small interfaces below (`Accounts`, `Auditor`), which `dashboard.services.Services`
provides, on ``app.state.services``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Protocol

import trio
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection

from dashboard.security.csrf import rotate_csrf_token
from engine.messages import User

SESSION_USER = "uid"
SESSION_COOKIE = "cosession"
SESSION_MAX_AGE = 12 * 60 * 60  # a signed-in browser signs in again after 12 hours
SAME_SITE = "lax"  # see docs/security.md: share links opened from other sites must work
SCOPE_USER = "cosession.user"  # where a connection's user is kept once looked up
PASSWORD_CHECKS = 2  # argon2 verifications at once (each takes 64 MiB); the others wait


class Accounts(Protocol):
    """What sign-in needs of the user repository (repositories.accounts.Users)."""

    def get(self, user_id: str) -> User | None: ...

    def authenticate(self, name: str, password: str) -> User | None: ...


class Auditor(Protocol):
    """What sign-in needs of the audit log (services.Services.audit_event)."""

    def audit_event(self, kind: str, actor: User | None = None, session_id: str | None = None,
                    **detail: Any) -> None: ...


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
    cached = conn.scope.get(SCOPE_USER, False)
    if cached is not False:
        return cached
    uid = conn.session.get(SESSION_USER)
    user = None
    if isinstance(uid, str) and uid:
        accounts: Accounts = conn.app.state.services.users
        user = await trio.to_thread.run_sync(accounts.get, uid)
        if user is None:
            conn.session.pop(SESSION_USER, None)
    conn.scope[SCOPE_USER] = user
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


def session_middleware(secret_key: str, *, https_only: bool) -> Middleware:
    return Middleware(SessionMiddleware, secret_key=secret_key, session_cookie=SESSION_COOKIE,
                      max_age=SESSION_MAX_AGE, same_site=SAME_SITE, https_only=https_only)


# --- signing in ---------------------------------------------------------------------------


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


class SignIn:
    """Signing in and out of the browser session, for the HTML and the JSON routes alike."""

    def __init__(self, accounts: Accounts, auditor: Auditor, throttle: LoginThrottle | None = None,
                 checks: int = PASSWORD_CHECKS) -> None:
        self._accounts = accounts
        self._auditor = auditor
        self.throttle = throttle or LoginThrottle()
        # argon2 takes 64 MiB and tens of ms per check: a few at a time, so that a flood of sign-in
        # attempts queues up instead of taking every worker thread and the memory with it.
        self._checks = trio.CapacityLimiter(checks)

    async def sign_in(self, conn: HTTPConnection, name: str, password: str) -> User | None | str:
        """The user, or None for wrong credentials, or "throttled". Audits failures."""
        client = _client(conn)
        name = name.strip()[:64]
        if self.throttle.blocked(client, name):
            self._auditor.audit_event("login_failed", None, name=name, remote=client, reason="throttled")
            return "throttled"
        user = await trio.to_thread.run_sync(self._accounts.authenticate, name, password, limiter=self._checks)
        if user is None:
            self.throttle.failed(client, name)
            self._auditor.audit_event("login_failed", None, name=name, remote=client, reason="invalid_credentials")
            return None
        self.throttle.succeeded(client, name)
        conn.session.clear()  # nothing from before the sign-in carries over
        conn.session[SESSION_USER] = user.id
        conn.scope[SCOPE_USER] = user
        rotate_csrf_token(conn)
        self._auditor.audit_event("login", user, remote=client)
        return user

    async def sign_out(self, conn: HTTPConnection) -> None:
        """End the browser session (audited if someone was signed in)."""
        user = await current_user(conn)
        conn.session.clear()
        if user is not None:
            self._auditor.audit_event("logout", user)


def sign_in_of(conn: HTTPConnection) -> SignIn:
    return conn.app.state.sign_in

"""Pages render with the shared ``templates`` (dashboard/templates; every page extends
``base.html``). ``await render(request, "page.html", {...})`` resolves the signed-in user
first so the navigation shows it; templates also get ``csrf_field()`` (a hidden input for
every form), ``csrf_token()``, ``user``, ``nav``, ``url_for`` and ``url_if_exists``, and the
filters ``datetime`` and ``duration``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import NoMatchFound
from starlette.templating import Jinja2Templates

from dashboard.security.auth import SCOPE_USER, current_user
from dashboard.security.csrf import FIELD, csrf_token

DASHBOARD = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = DASHBOARD / "templates"
STATIC_DIR = DASHBOARD / "static"
VENDOR_DIR = DASHBOARD / "frontend" / "node_modules"  # npm packages (xterm.js), from `npm ci`

# (route name, label, administrators only). An entry shows only when a route of that name
# exists, so that an application assembled without some pages shows no broken link.
NAV = (
    ("home", "Dashboard", False),
    ("connections", "Connections", False),
    ("access_requests", "Requests", False),
    ("approvals", "Approvals", False),
    ("endpoints", "Endpoints", True),
    ("profiles", "Profiles", True),
    ("groups", "Groups", True),
    ("tools", "Tools", True),
    ("audit", "Audit", True),
    ("account", "Account", False),
)


@jinja2.pass_context
def _csrf_field(context: Any) -> Markup:
    return Markup(f'<input type="hidden" name="{FIELD}" value="{escape(csrf_token(context["request"]))}">')


@jinja2.pass_context
def _csrf_token(context: Any) -> str:
    return csrf_token(context["request"])


@jinja2.pass_context
def _url_if_exists(context: Any, name: str, /, **params: Any) -> str | None:
    """The URL of a named route, or None when the application has no such route."""
    try:
        return str(context["request"].url_for(name, **params))
    except NoMatchFound:
        return None


def _datetime(value: float | None) -> str:
    if not value:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def duration(seconds: float | None) -> str:
    """``M:SS``, or ``H:MM:SS`` from an hour on (static/dashboard.js writes the same)."""
    total = max(0, int(seconds or 0))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _context(request: Request) -> dict[str, Any]:
    user = request.scope.get(SCOPE_USER) or None
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
    env.filters["duration"] = duration
    return env


templates = Jinja2Templates(env=_environment(), context_processors=[_context])


async def render(conn: HTTPConnection, name: str, context: dict[str, Any] | None = None, *,
                 status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A page from `templates`, with the signed-in user resolved for the navigation."""
    await current_user(conn)
    return templates.TemplateResponse(conn, name, context or {}, status_code=status_code,  # type: ignore[arg-type]
                                       headers=headers)

"""Small HTTP helpers that every page family shares: the flash message, safe redirect targets,
what a client accepts and sends, and the "no such thing" page."""

from __future__ import annotations

from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from dashboard.web.templating import render

FLASH = "flash"  # the session key of the one-shot message the next page shows


def flash(request: Request, message: str) -> None:
    """A message for the next page this browser shows (after a redirect)."""
    request.session[FLASH] = message


def take_flash(request: Request) -> str | None:
    return request.session.pop(FLASH, None) if FLASH in request.session else None


def safe_path(target: Any, default: str = "/") -> str:
    """Only a path on this server (never an open redirect to another site)."""
    target = str(target or "")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def is_api(conn: HTTPConnection) -> bool:
    return conn.url.path.startswith("/api/")


async def read_input(request: Request) -> dict[str, Any]:
    """The body as a dict: a JSON object, or the form's fields as strings."""
    if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() == "application/json":
        try:
            body = await request.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


def page_number(value: str | None) -> int:
    """A 1-based page number from a query string; 1 for anything else."""
    try:
        return max(1, int(value or 1))
    except ValueError:
        return 1


async def not_found(conn: HTTPConnection, what: str = "endpoint") -> Response:
    """One answer whether the thing does not exist or the user may not see it."""
    return await render(conn, "error.html", {
        "title": f"No such {what}",
        "message": f"This {what} does not exist, or you have no access to it. Ask an administrator "
                   "if you think you should."}, status_code=404)

"""The sign-in page: ``GET/POST /login``, ``POST /logout``. The checks are security/auth.py's
`SignIn`; the JSON API signs in at ``POST /api/login`` (api/account.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from dashboard.security.auth import current_user, sign_in_of
from dashboard.web.http import safe_path
from dashboard.web.templating import render
from engine.messages import User


async def login_page(request: Request) -> Response:
    target = safe_path(request.query_params.get("next"))
    if await current_user(request) is not None:
        return RedirectResponse(target, status_code=303)
    return await render(request, "login.html", {"next": target, "name": "", "error": None})


async def login_submit(request: Request) -> Response:
    form = await request.form()
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    target = safe_path(str(form.get("next", "")))
    result = await sign_in_of(request).sign_in(request, name, password)
    if isinstance(result, User):
        return RedirectResponse(target, status_code=303)
    error = ("Too many failed attempts. Wait a few minutes and try again." if result == "throttled"
             else "Wrong name or password.")
    return await render(request, "login.html", {"next": target, "name": name.strip()[:64], "error": error},
                        status_code=429 if result == "throttled" else 401)


async def logout(request: Request) -> Response:
    await sign_in_of(request).sign_out(request)
    return RedirectResponse("/login", status_code=303)


routes = [
    Route("/login", login_page, methods=["GET"], name="login"),
    Route("/login", login_submit, methods=["POST"], name="login_submit"),
    Route("/logout", logout, methods=["POST"], name="logout"),
]

"""Signing in from a script: ``POST /api/login`` (JSON only; answers the user and the CSRF token
of the new session), ``POST /api/logout``, ``GET /api/me``. The checks are security/auth.py's
`SignIn`, as for the sign-in page."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dashboard.security.auth import require_user, sign_in_of
from dashboard.security.csrf import csrf_token
from engine.messages import User


def user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "is_admin": user.is_admin}


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
    result = await sign_in_of(request).sign_in(request, body["name"], body["password"])
    if result == "throttled":
        return JSONResponse({"error": "throttled", "detail": "too many failed attempts"}, status_code=429)
    if not isinstance(result, User):
        return JSONResponse({"error": "invalid_credentials", "detail": "wrong name or password"},
                            status_code=401)
    return JSONResponse({"user": user_json(result), "csrf_token": csrf_token(request)})


async def api_logout(request: Request) -> Response:
    await sign_in_of(request).sign_out(request)
    return Response(status_code=204)


async def api_me(request: Request) -> Response:
    user = await require_user(request)
    return JSONResponse({"user": user_json(user), "csrf_token": csrf_token(request)})

"""What every route of the JSON API shares: its errors (``{"error": REASON, "detail": TEXT}``)
and the checks of its input (query parameters, JSON bodies)."""

from __future__ import annotations

import json
import re
from contextlib import aclosing
from typing import Any, Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dashboard.web.params import BadInput, parse_int
from engine import EngineNotRunning
from engine.messages import User

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
MAX_OFFSET = 10**9
MAX_BODY = 64 * 1024
SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.extra = extra

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "detail": self.detail, **self.extra}, status_code=self.status)


def bad_request(exc: BadInput) -> ApiError:
    return ApiError(400, "bad_request", str(exc), parameter=exc.name)


Handler = Callable[[Request], Awaitable[Response]]


def api_route(handler: Handler) -> Handler:
    """Turns ApiError and BadInput into their JSON answers (LoginRequired and Forbidden are
    answered by the application's handlers, as JSON under /api/)."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except BadInput as exc:
            return bad_request(exc).response()
        except EngineNotRunning:
            return ApiError(503, "engine_not_running", "the session engine is not running").response()

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


# --- input -----------------------------------------------------------------------------------


def query(request: Request, allowed: tuple[str, ...]) -> Mapping[str, str]:
    """The query parameters, refusing unknown or repeated ones (a typo is an error, not a
    filter silently ignored)."""
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if key not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise ApiError(400, "unknown_parameter", f"unknown parameter {key!r} (known: {known})", parameter=key)
        if key in seen:
            raise ApiError(400, "bad_request", f"parameter {key!r} given twice", parameter=key)
        seen.add(key)
    return request.query_params


def page_params(params: Mapping[str, str]) -> tuple[int, int]:
    return (parse_int(params, "limit", DEFAULT_LIMIT, 0, MAX_LIMIT),
            parse_int(params, "offset", 0, 0, MAX_OFFSET))


async def json_body(request: Request, fields: Mapping[str, tuple[type, ...]],
                    required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object whose keys are among `fields` (name → accepted types; `type(None)` for
    null), with every `required` one."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send application/json")
    too_large = ApiError(413, "too_large", f"the body is larger than {MAX_BODY} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise too_large
    raw = b""
    async with aclosing(request.stream()) as chunks:
        async for chunk in chunks:
            raw += chunk
            if len(raw) > MAX_BODY:
                raise too_large
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "malformed", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "malformed", "send a JSON object")
    for key, value in body.items():
        if key not in fields:
            raise ApiError(400, "unknown_field", f"unknown field {key!r} (known: {', '.join(fields)})", field=key)
        types = fields[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else {"str": "a string", "int": "an integer",
                                                                   "bool": "true or false"}.get(t.__name__, t.__name__)
                                for t in types)
            raise ApiError(400, "bad_field", f"{key} must be {names}", field=key)
    for key in required:
        if key not in body:
            raise ApiError(400, "missing_field", f"{key} is required", field=key)
    return body


def session_id_of(request: Request) -> str:
    session_id = request.path_params["session_id"]
    if not SESSION_ID.match(session_id):
        raise ApiError(404, "not_found", "no such session")
    return session_id


def who(user: User) -> dict[str, str]:
    return {"id": user.id, "name": user.name}

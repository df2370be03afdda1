"""The JSON API under ``/api/``: the dashboard's data and actions for scripts (docs/api.md).

Same authorisation as the pages: the session cookie from ``POST /api/login`` (dashboard/auth.py),
``X-CSRF-Token`` on every unsafe method (dashboard/csrf.py). Errors are JSON,
``{"error": REASON, "detail": TEXT}``, with 400 (bad input), 401 (not signed in), 403 (not
allowed), 404 (no such thing), 409 (not in a state for it), 415 (not JSON), 503/504 (the engine
is not running / did not answer).

On the loop: the database through ``trio.to_thread.run_sync``; the engine only through its
non-blocking calls (``live_sessions``, ``session``, ``route``), its answers bridged back with
``services.bridge.reply_to``.
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import aclosing
from typing import Any, Awaitable, Callable, Mapping

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dashboard.pages import audit as audit_pages
from dashboard.pages.audit import BadInput, iso_utc, parse_int, parse_time
from dashboard.security.auth import Forbidden, require_admin, require_user
from dashboard.repositories.endpoints import ADMIN_PROTOCOLS, EndpointError, EndpointRecord
from engine.errors import EngineNotRunning
from engine.messages import Accepted, EndReason, Flush, Reason, Refused, SessionSummary, Terminate, User

log = logging.getLogger(__name__)

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
MAX_OFFSET = 10**9
MAX_BODY = 64 * 1024
ENGINE_REPLY_SECONDS = 10.0
FLUSH_SECONDS = 2.0  # a bound on waiting for the audit store's commit after a terminate
_SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


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


def _session_id(request: Request) -> str:
    session_id = request.path_params["session_id"]
    if not _SESSION_ID.match(session_id):
        raise ApiError(404, "not_found", "no such session")
    return session_id


# --- the engine ------------------------------------------------------------------------------


# --- visibility ------------------------------------------------------------------------------


async def _accessible_ids(services: Any, user: User) -> set[str]:
    records = await trio.to_thread.run_sync(services.endpoints.accessible, user)
    return {r.id for r in records}


def _in_live(summary: SessionSummary, user: User) -> bool:
    return summary.controller.id == user.id or any(m.user.id == user.id for m in summary.members)


def _who(user: User) -> dict[str, str]:
    return {"id": user.id, "name": user.name}


def _live_json(summary: SessionSummary, max_viewers: int) -> dict[str, Any]:
    viewers = summary.viewers
    return {
        "id": summary.session_id, "live": True, "state": summary.state.value,
        "endpoint": {"id": summary.endpoint.id, "name": summary.endpoint.name,
                     "protocol": summary.endpoint.protocol.value},
        "joint_session": summary.endpoint.joint_session,
        "controller": _who(summary.controller),
        "viewers": [_who(m.user) for m in viewers], "viewer_count": len(viewers), "max_viewers": max_viewers,
        "started_at": summary.started_at, "started": iso_utc(summary.started_at),
        "deadline": summary.deadline, "grace_until": summary.grace_until, "record": summary.record,
        "url": f"/sessions/{summary.session_id}",
    }


def _stored_json(row: Mapping[str, Any], summary: SessionSummary | None, max_viewers: int) -> dict[str, Any]:
    live = bool(row["live"])
    # not live and not ended: its node stopped running it without ending it (engine/nodes.py)
    state = "ended" if row["ended_at"] is not None else "unknown" if live else "not_running"
    data = {
        "id": row["id"], "live": live, "state": state,
        "endpoint": {"id": row["endpoint_id"], "name": row["endpoint_name"], "protocol": row["protocol"]},
        "controller": {"id": row["controller_id"], "name": row["controller_name"]},
        "started_at": row["started_at"], "started": iso_utc(row["started_at"]),
        "ended_at": row["ended_at"], "ended": iso_utc(row["ended_at"]),
        "end_reason": row["end_reason"], "ended_by": row["ended_by"], "record": bool(row["record"]),
    }
    if summary is not None:
        live_data = _live_json(summary, max_viewers)
        data.update({k: live_data[k] for k in ("state", "viewers", "viewer_count", "max_viewers", "deadline",
                                               "grace_until", "url", "joint_session")})
    return data


def _max_viewers(services: Any) -> int:
    from engine.policy import viewer_cap

    return viewer_cap(services.settings.engine.max_viewers)


# --- sessions --------------------------------------------------------------------------------


@api_route
async def list_sessions(request: Request) -> Response:
    """Live sessions the user may see: every one for an administrator; for a user, those on
    endpoints they have access to and those they take part in."""
    user = await require_user(request)
    query(request, ())
    services = request.app.state.services
    live = sorted(services.engine.live_sessions(), key=lambda s: s.started_at, reverse=True)
    if not user.is_admin:
        mine = await _accessible_ids(services, user)
        live = [s for s in live if s.endpoint.id in mine or _in_live(s, user)]
    cap = _max_viewers(services)
    return JSONResponse({"sessions": [_live_json(s, cap) for s in live], "total": len(live)})


async def _may_see(services: Any, user: User, endpoint_id: str, session: Mapping[str, Any] | None,
                   summary: SessionSummary | None) -> bool:
    if user.is_admin:
        return True
    if summary is not None and _in_live(summary, user):
        return True
    if session is not None and (session["controller_id"] == user.id
                                or any(p["actor_id"] == user.id for p in session.get("participants", []))):
        return True
    return await trio.to_thread.run_sync(services.access.may_see, user, endpoint_id)


@api_route
async def session_detail(request: Request) -> Response:
    """One session, live or ended: the stored row, everyone who took part, and the live state."""
    user = await require_user(request)
    query(request, ())
    services = request.app.state.services
    session_id = _session_id(request)
    summary = services.engine.session(session_id)
    stored = await trio.to_thread.run_sync(services.audit_reader.session, session_id)
    if stored is None and summary is None:
        raise ApiError(404, "not_found", "no such session")
    endpoint_id = summary.endpoint.id if summary is not None else stored["endpoint_id"]
    if not await _may_see(services, user, endpoint_id, stored, summary):
        raise Forbidden("You have no access to this session's endpoint.")
    cap = _max_viewers(services)
    if stored is None:  # started a moment ago: the audit store has not written it yet
        data = _live_json(summary, cap)
        data.update({"ended_at": None, "ended": None, "end_reason": None, "ended_by": None})
        participants = []
    else:
        data = _stored_json(stored, summary, cap)  # state "unknown": live in the log, not in the engine
        # the controller first (starting is not a join), then everyone who joined, once each
        participants = [{"id": stored["controller_id"], "name": stored["controller_name"], "role": "controller"}]
        participants += [{"id": p["actor_id"], "name": p["actor_name"], "role": p["role"]}
                         for p in stored["participants"] if p["actor_id"] != stored["controller_id"]]
    data["participants"] = participants
    data["members"] = ([{"id": m.user.id, "name": m.user.name, "role": m.role.value} for m in summary.members]
                       if summary is not None else [])
    return JSONResponse({"session": data})


@api_route
async def terminate_session(request: Request) -> Response:
    """End a live session for every participant (administrators). Answers once the engine has."""
    user = await require_user(request)
    query(request, ())
    services = request.app.state.services
    session_id = request.path_params["session_id"]
    if not user.is_admin:
        services.audit_event("terminate_refused", user, session_id if _SESSION_ID.match(session_id) else None,
                             reason=Reason.NOT_ADMINISTRATOR.value, via="api")
        raise Forbidden("Only an administrator may terminate a session.")
    session_id = _session_id(request)
    reply = await services.bridge.request(
        lambda reply_to: services.engine.route(session_id, Terminate(user, reply_to)), ENGINE_REPLY_SECONDS)
    if reply is None:
        raise ApiError(504, "engine_timeout", f"the engine did not answer within {ENGINE_REPLY_SECONDS:.0f} s")
    if isinstance(reply, Accepted):
        # the engine wrote the terminate row before it answered: once the store has committed
        # it, a script that reads the audit log next finds it there
        await services.bridge.request(lambda reply_to: services.audit(Flush(reply_to)), FLUSH_SECONDS)
        return JSONResponse({"terminated": True, "session_id": session_id, "by": _who(user)})
    if not isinstance(reply, Refused):
        log.error("unexpected answer to Terminate: %r", reply)
        raise ApiError(500, "internal_error", "unexpected answer from the engine")
    if reply.reason is Reason.SESSION_ENDED:
        raise ApiError(409, "session_ended", "the session has already ended")
    if reply.reason is Reason.UNKNOWN_SESSION:
        stored = await trio.to_thread.run_sync(services.audit_reader.session, session_id)
        if stored is None:
            raise ApiError(404, "not_found", "no such session")
        if not stored["live"]:
            raise ApiError(409, "session_ended", f"the session ended ({stored['end_reason']})",
                           end_reason=stored["end_reason"])
        raise ApiError(409, "not_running", "the session is not running in this gateway "
                                           "(it was left open when the gateway stopped)")
    raise ApiError(409, reply.reason.value, reply.detail or "the engine refused")


# --- connections (live and ended) -----------------------------------------------------------

CONNECTION_PARAMS = ("endpoint", "user", "since", "until", "end_reason", "live", "limit", "offset")


def _bool_param(params: Mapping[str, str], name: str) -> bool | None:
    raw = (params.get(name) or "").strip().lower()
    if not raw:
        return None
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise BadInput(name, "true or false")


@api_route
async def list_connections(request: Request) -> Response:
    """Live and ended sessions, newest first, filtered as the Connections page filters them."""
    viewer = await require_user(request)
    params = query(request, CONNECTION_PARAMS)
    services = request.app.state.services
    limit, offset = page_params(params)
    since = parse_time(params.get("since"), "since")
    until = parse_time(params.get("until"), "until", end_of_day=True)
    if since is not None and until is not None and until <= since:
        raise BadInput("until", "must be after since")
    end_reason = (params.get("end_reason") or "").strip() or None
    if end_reason is not None and end_reason not in {r.value for r in EndReason}:
        raise BadInput("end_reason", f"one of {', '.join(r.value for r in EndReason)}")
    live = _bool_param(params, "live")
    user = (params.get("user") or "").strip() or None
    endpoint = (params.get("endpoint") or "").strip() or None
    for name, value in (("user", user), ("endpoint", endpoint)):
        if value is not None and len(value) > audit_pages.MAX_TEXT:
            raise BadInput(name, f"at most {audit_pages.MAX_TEXT} characters")

    def load() -> tuple[list[dict[str, Any]], int]:
        endpoint_id = endpoint
        if endpoint is not None and services.endpoints.get(endpoint) is None:
            by_name = services.endpoints.get_by_name(endpoint)  # a name works too
            if by_name is not None:
                endpoint_id = by_name.id
        filters = dict(live=live, endpoint_id=endpoint_id, user=user, since=since, until=until,
                       end_reason=end_reason, limit=limit, offset=offset)
        if not viewer.is_admin:
            filters["visible_to"] = (viewer.id, [r.id for r in services.endpoints.accessible(viewer)])
        return services.audit_reader.sessions(**filters)

    rows, total = await trio.to_thread.run_sync(load)
    cap = _max_viewers(services)
    items = [_stored_json(row, services.engine.session(row["id"]) if row["live"] else None, cap) for row in rows]
    return JSONResponse({"connections": items, "total": total, "limit": limit, "offset": offset})


# --- endpoints -------------------------------------------------------------------------------

_STR, _NULLABLE_STR = (str,), (str, type(None))
CREATE_FIELDS: dict[str, tuple[type, ...]] = {
    "name": _STR, "protocol": _STR, "host": _STR, "port": (int, type(None)), "username": _STR,
    "password": _NULLABLE_STR, "private_key": _NULLABLE_STR, "passphrase": _NULLABLE_STR,
    "joint_session": (bool,), "host_key": _NULLABLE_STR,
}
UPDATE_FIELDS: dict[str, tuple[type, ...]] = {
    **{k: v for k, v in CREATE_FIELDS.items() if k != "host_key"}, "clear_credentials": (bool,),
}


def endpoint_json(record: EndpointRecord, *, admin: bool, live: int = 0,
                  roles: list[Any] | None = None) -> dict[str, Any]:
    """An endpoint without its credential: only whether one is stored (administrators)."""
    data: dict[str, Any] = {"id": record.id, "name": record.name, "protocol": record.protocol.value,
                            "host": record.host, "port": record.port, "address": record.address,
                            "joint_session": record.joint_session, "live_sessions": live}
    if admin:
        data.update({
            "username": record.username, "credentials": record.secret_kind,
            "host_key_fingerprint": record.host_key_fingerprint,
            "pending_host_key_fingerprint": record.pending_host_key_fingerprint,
            "created_at": record.created_at, "created": iso_utc(record.created_at),
        })
        if roles is not None:  # dashboard.access.RoleEntry: users and groups with a role here
            data["access"] = [{"kind": e.principal.kind, "id": e.principal.id, "name": e.principal.name,
                               "role": e.role.value} for e in roles]
    return data


def _live_counts(services: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for summary in services.engine.live_sessions():
        counts[summary.endpoint.id] = counts.get(summary.endpoint.id, 0) + 1
    return counts


def _check_protocol(body: Mapping[str, Any]) -> None:
    if "protocol" in body and body["protocol"].lower() not in {p.value for p in ADMIN_PROTOCOLS}:
        raise ApiError(400, "bad_field", f"protocol must be one of {', '.join(p.value for p in ADMIN_PROTOCOLS)}",
                       field="protocol")


async def _endpoint_or_404(services: Any, endpoint_id: str) -> EndpointRecord:
    record = await trio.to_thread.run_sync(services.endpoints.get, endpoint_id)
    if record is None:
        raise ApiError(404, "not_found", "no such endpoint")
    return record


async def _endpoint_error(services: Any, exc: EndpointError, name: str | None) -> ApiError:
    if name is not None and "already exists" in str(exc):
        return ApiError(409, "name_taken", str(exc), field="name")
    return ApiError(400, "bad_request", str(exc))


@api_route
async def list_endpoints(request: Request) -> Response:
    user = await require_user(request)
    query(request, ())
    services = request.app.state.services

    def load() -> list[tuple[EndpointRecord, list[Any] | None]]:
        records = services.endpoints.accessible(user)
        return [(r, services.access.roles_on(r.id) if user.is_admin else None) for r in records]

    rows = await trio.to_thread.run_sync(load)
    counts = _live_counts(services)
    return JSONResponse({"endpoints": [endpoint_json(r, admin=user.is_admin, live=counts.get(r.id, 0),
                                                     roles=roles) for r, roles in rows]})


@api_route
async def get_endpoint(request: Request) -> Response:
    user = await require_user(request)
    query(request, ())
    services = request.app.state.services
    endpoint_id = request.path_params["endpoint_id"]

    def load() -> tuple[EndpointRecord | None, bool, list[Any] | None]:
        record = services.endpoints.get(endpoint_id)
        if record is None:
            return None, False, None
        allowed = services.access.may_see(user, endpoint_id)
        return record, allowed, services.access.roles_on(endpoint_id) if user.is_admin else None

    record, allowed, roles = await trio.to_thread.run_sync(load)
    if record is None or not allowed:  # one answer for both: an id says nothing without access
        raise ApiError(404, "not_found", "no such endpoint")
    return JSONResponse({"endpoint": endpoint_json(record, admin=user.is_admin,
                                                   live=_live_counts(services).get(record.id, 0), roles=roles)})


@api_route
async def create_endpoint(request: Request) -> Response:
    admin = await require_admin(request)
    query(request, ())
    services = request.app.state.services
    body = await json_body(request, CREATE_FIELDS, required=("name", "protocol"))
    _check_protocol(body)
    try:
        record = await trio.to_thread.run_sync(lambda: services.endpoints.create(
            body["name"], body["protocol"], body.get("host", ""), body.get("port"),
            username=body.get("username", ""), password=body.get("password") or None,
            private_key=body.get("private_key") or None, passphrase=body.get("passphrase") or None,
            joint_session=body.get("joint_session", True), host_key=body.get("host_key") or None))
    except EndpointError as exc:
        raise await _endpoint_error(services, exc, body["name"]) from None
    services.audit_event("endpoint_created", admin, endpoint_id=record.id, endpoint_name=record.name,
                         protocol=record.protocol.value, credentials=record.secret_kind or "none",
                         joint_session=record.joint_session, via="api")
    return JSONResponse({"endpoint": endpoint_json(record, admin=True, roles=[])}, status_code=201,
                        headers={"Location": f"/api/endpoints/{record.id}"})


@api_route
async def update_endpoint(request: Request) -> Response:
    """Change the fields given; the others are kept (a stored credential too, unless a new one
    or ``clear_credentials`` is given)."""
    admin = await require_admin(request)
    query(request, ())
    services = request.app.state.services
    body = await json_body(request, UPDATE_FIELDS)
    _check_protocol(body)
    record = await _endpoint_or_404(services, request.path_params["endpoint_id"])
    changes = {k: body[k] for k in ("name", "protocol", "host", "port", "username", "joint_session") if k in body}
    password, private_key = body.get("password") or None, body.get("private_key") or None
    clear = bool(body.get("clear_credentials", False))
    try:
        updated = await trio.to_thread.run_sync(lambda: services.endpoints.update(
            record.id, **changes, password=password, private_key=private_key,
            passphrase=body.get("passphrase") or None, clear_credentials=clear))
    except EndpointError as exc:
        raise await _endpoint_error(services, exc, body.get("name")) from None
    changed = sorted(k for k in ("name", "protocol", "host", "port", "username", "joint_session", "host_key",
                                 "pending_host_key") if getattr(updated, k) != getattr(record, k))
    credentials = "replaced" if (password or private_key) else ("cleared" if clear and record.secret_kind else "kept")
    services.audit_event("endpoint_updated", admin, endpoint_id=record.id, endpoint_name=updated.name,
                         changed=changed, credentials=credentials, via="api")
    if updated.joint_session != record.joint_session:
        services.audit_event("joint_session_changed", admin, endpoint_id=record.id, endpoint_name=updated.name,
                             enabled=updated.joint_session, via="api")
    roles = await trio.to_thread.run_sync(services.access.roles_on, record.id)
    return JSONResponse({"endpoint": endpoint_json(updated, admin=True, live=_live_counts(services).get(record.id, 0),
                                                   roles=roles)})


@api_route
async def delete_endpoint(request: Request) -> Response:
    """Remove an endpoint (its live sessions go on until they end; nobody can start a new one)."""
    admin = await require_admin(request)
    query(request, ())
    services = request.app.state.services
    record = await _endpoint_or_404(services, request.path_params["endpoint_id"])
    await trio.to_thread.run_sync(services.endpoints.delete, record.id)
    services.audit_event("endpoint_deleted", admin, endpoint_id=record.id, endpoint_name=record.name, via="api")
    return JSONResponse({"deleted": True, "id": record.id, "name": record.name})


@api_route
async def set_joint_session(request: Request) -> Response:
    """Turn joint sessions on or off; live sessions apply it to their next join."""
    admin = await require_admin(request)
    query(request, ())
    services = request.app.state.services
    body = await json_body(request, {"enabled": (bool,)}, required=("enabled",))
    record = await _endpoint_or_404(services, request.path_params["endpoint_id"])
    enabled = body["enabled"]
    if enabled != record.joint_session:
        try:
            await trio.to_thread.run_sync(services.endpoints.set_joint_session, record.id, enabled)
        except EndpointError:  # removed meanwhile
            raise ApiError(404, "not_found", "no such endpoint") from None
        services.audit_event("joint_session_changed", admin, endpoint_id=record.id, endpoint_name=record.name,
                             enabled=enabled, via="api")
    updated = await _endpoint_or_404(services, record.id)
    return JSONResponse({"endpoint": endpoint_json(updated, admin=True,
                                                   live=_live_counts(services).get(record.id, 0)),
                         "changed": enabled != record.joint_session})


# --- the audit log ---------------------------------------------------------------------------

AUDIT_PARAMS = (*audit_pages.FILTER_FIELDS, "limit", "offset", "order")


@api_route
async def list_audit(request: Request) -> Response:
    """Audit events, newest first (``order=oldest`` for the chain's order), filtered as the page."""
    await require_admin(request)
    params = query(request, AUDIT_PARAMS)
    filters = audit_pages.parse_audit_filters(params)
    limit, offset = page_params(params)
    order = (params.get("order") or "newest").strip()
    if order not in ("newest", "oldest"):
        raise BadInput("order", "newest or oldest")
    reader = request.app.state.services.audit_reader
    rows, total = await trio.to_thread.run_sync(lambda: reader.events(
        **filters.reader_kwargs(), limit=limit, offset=offset, newest_first=order == "newest"))
    return JSONResponse({"events": [audit_pages.event_json(r) for r in rows], "total": total, "limit": limit,
                         "offset": offset, "order": order, "filters": filters.as_json()})


@api_route
async def export_audit(request: Request) -> Response:
    """The filtered set as one download: ``format=csv`` (the default) or ``json``."""
    await require_admin(request)
    params = query(request, (*audit_pages.FILTER_FIELDS, "format"))
    fmt = (params.get("format") or "csv").strip().lower()
    if fmt not in ("csv", "json"):
        raise BadInput("format", "csv or json")
    return await audit_pages.export_response(request, fmt, api=True)


@api_route
async def verify_audit(request: Request) -> Response:
    """Walk the whole hash chain now (in a worker thread, one check at a time)."""
    await require_admin(request)
    query(request, ())
    status = await audit_pages.check_chain(request.app)
    return JSONResponse(audit_pages.chain_json(status))


routes = [
    Route("/api/sessions", list_sessions, methods=["GET"], name="api_sessions"),
    Route("/api/sessions/{session_id}", session_detail, methods=["GET"], name="api_session"),
    Route("/api/sessions/{session_id}/terminate", terminate_session, methods=["POST"], name="api_session_terminate"),
    Route("/api/connections", list_connections, methods=["GET"], name="api_connections"),
    Route("/api/endpoints", list_endpoints, methods=["GET"], name="api_endpoints"),
    Route("/api/endpoints", create_endpoint, methods=["POST"], name="api_endpoint_create"),
    Route("/api/endpoints/{endpoint_id}", get_endpoint, methods=["GET"], name="api_endpoint"),
    Route("/api/endpoints/{endpoint_id}", update_endpoint, methods=["PUT", "PATCH"], name="api_endpoint_update"),
    Route("/api/endpoints/{endpoint_id}", delete_endpoint, methods=["DELETE"], name="api_endpoint_delete"),
    Route("/api/endpoints/{endpoint_id}/joint-session", set_joint_session, methods=["POST"],
          name="api_endpoint_joint_session"),
    Route("/api/audit", list_audit, methods=["GET"], name="api_audit"),
    Route("/api/audit/export", export_audit, methods=["GET"], name="api_audit_export"),
    Route("/api/audit/verify", verify_audit, methods=["GET"], name="api_audit_verify"),
]

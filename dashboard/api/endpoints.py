"""``/api/endpoints``: the endpoints a user may see (never a credential: administrators see
only whether one is stored), and the administrators' changes, each audited."""

from __future__ import annotations

from typing import Any, Mapping

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dashboard.api.common import ApiError, api_route, json_body, query
from dashboard.repositories.endpoints import ADMIN_PROTOCOLS, EndpointError, Endpoint
from dashboard.repositories.grants import RoleEntry
from dashboard.security.auth import require_admin, require_user
from dashboard.services import Services, services_of
from dashboard.services.live_sessions import all_live_sessions
from dashboard.web.params import iso_utc


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


def endpoint_json(endpoint: Endpoint, *, admin: bool, live: int = 0,
                  roles: list[RoleEntry] | None = None) -> dict[str, Any]:
    """An endpoint without its credential: only whether one is stored (administrators)."""
    data: dict[str, Any] = {"id": endpoint.id, "name": endpoint.name, "protocol": endpoint.protocol.value,
                            "host": endpoint.host, "port": endpoint.port, "address": endpoint.address,
                            "joint_session": endpoint.joint_session, "live_sessions": live}
    if admin:
        data.update({
            "username": endpoint.username, "credentials": endpoint.secret_kind,
            "host_key_fingerprint": endpoint.host_key_fingerprint,
            "pending_host_key_fingerprint": endpoint.pending_host_key_fingerprint,
            "created_at": endpoint.created_at, "created": iso_utc(endpoint.created_at),
        })
        if roles is not None:  # users and groups with a role here
            data["access"] = [{"kind": e.principal.kind, "id": e.principal.id, "name": e.principal.name,
                               "role": e.role.value} for e in roles]
    return data


def _live_counts(services: Services) -> dict[str, int]:
    counts: dict[str, int] = {}
    for summary in all_live_sessions(services):
        counts[summary.endpoint.id] = counts.get(summary.endpoint.id, 0) + 1
    return counts


def _check_protocol(body: Mapping[str, Any]) -> None:
    if "protocol" in body and body["protocol"].lower() not in {p.value for p in ADMIN_PROTOCOLS}:
        raise ApiError(400, "bad_field", f"protocol must be one of {', '.join(p.value for p in ADMIN_PROTOCOLS)}",
                       field="protocol")


async def _endpoint_or_404(services: Services, endpoint_id: str) -> Endpoint:
    endpoint = await trio.to_thread.run_sync(services.endpoints.get, endpoint_id)
    if endpoint is None:
        raise ApiError(404, "not_found", "no such endpoint")
    return endpoint


async def _endpoint_error(services: Services, exc: EndpointError, name: str | None) -> ApiError:
    if name is not None and "already exists" in str(exc):
        return ApiError(409, "name_taken", str(exc), field="name")
    return ApiError(400, "bad_request", str(exc))


@api_route
async def list_endpoints(request: Request) -> Response:
    user = await require_user(request)
    query(request, ())
    services = services_of(request)

    def load() -> list[tuple[Endpoint, list[Any] | None]]:
        records = services.endpoints.accessible(user)
        return [(r, services.grants.roles_on(r.id) if user.is_admin else None) for r in records]

    rows = await trio.to_thread.run_sync(load)
    counts = _live_counts(services)
    return JSONResponse({"endpoints": [endpoint_json(r, admin=user.is_admin, live=counts.get(r.id, 0),
                                                     roles=roles) for r, roles in rows]})


@api_route
async def get_endpoint(request: Request) -> Response:
    user = await require_user(request)
    query(request, ())
    services = services_of(request)
    endpoint_id = request.path_params["endpoint_id"]

    def load() -> tuple[Endpoint | None, bool, list[Any] | None]:
        endpoint = services.endpoints.get(endpoint_id)
        if endpoint is None:
            return None, False, None
        allowed = services.access.may_see(user, endpoint_id)
        return endpoint, allowed, services.grants.roles_on(endpoint_id) if user.is_admin else None

    endpoint, allowed, roles = await trio.to_thread.run_sync(load)
    if endpoint is None or not allowed:  # one answer for both: an id says nothing without access
        raise ApiError(404, "not_found", "no such endpoint")
    return JSONResponse({"endpoint": endpoint_json(endpoint, admin=user.is_admin,
                                                   live=_live_counts(services).get(endpoint.id, 0), roles=roles)})


@api_route
async def create_endpoint(request: Request) -> Response:
    admin = await require_admin(request)
    query(request, ())
    services = services_of(request)
    body = await json_body(request, CREATE_FIELDS, required=("name", "protocol"))
    _check_protocol(body)
    try:
        endpoint = await trio.to_thread.run_sync(lambda: services.endpoints.create(
            body["name"], body["protocol"], body.get("host", ""), body.get("port"),
            username=body.get("username", ""), password=body.get("password") or None,
            private_key=body.get("private_key") or None, passphrase=body.get("passphrase") or None,
            joint_session=body.get("joint_session", True), host_key=body.get("host_key") or None))
    except EndpointError as exc:
        raise await _endpoint_error(services, exc, body["name"]) from None
    services.audit_event("endpoint_created", admin, endpoint_id=endpoint.id, endpoint_name=endpoint.name,
                         protocol=endpoint.protocol.value, credentials=endpoint.secret_kind or "none",
                         joint_session=endpoint.joint_session, via="api")
    return JSONResponse({"endpoint": endpoint_json(endpoint, admin=True, roles=[])}, status_code=201,
                        headers={"Location": f"/api/endpoints/{endpoint.id}"})


@api_route
async def update_endpoint(request: Request) -> Response:
    """Change the fields given; the others are kept (a stored credential too, unless a new one
    or ``clear_credentials`` is given)."""
    admin = await require_admin(request)
    query(request, ())
    services = services_of(request)
    body = await json_body(request, UPDATE_FIELDS)
    _check_protocol(body)
    endpoint = await _endpoint_or_404(services, request.path_params["endpoint_id"])
    changes = {k: body[k] for k in ("name", "protocol", "host", "port", "username", "joint_session") if k in body}
    password, private_key = body.get("password") or None, body.get("private_key") or None
    clear = bool(body.get("clear_credentials", False))
    try:
        updated = await trio.to_thread.run_sync(lambda: services.endpoints.update(
            endpoint.id, **changes, password=password, private_key=private_key,
            passphrase=body.get("passphrase") or None, clear_credentials=clear))
    except EndpointError as exc:
        raise await _endpoint_error(services, exc, body.get("name")) from None
    changed = sorted(k for k in ("name", "protocol", "host", "port", "username", "joint_session", "host_key",
                                 "pending_host_key") if getattr(updated, k) != getattr(endpoint, k))
    credentials = "replaced" if (password or private_key) else ("cleared" if clear and endpoint.secret_kind else "kept")
    services.audit_event("endpoint_updated", admin, endpoint_id=endpoint.id, endpoint_name=updated.name,
                         changed=changed, credentials=credentials, via="api")
    if updated.joint_session != endpoint.joint_session:
        services.audit_event("joint_session_changed", admin, endpoint_id=endpoint.id, endpoint_name=updated.name,
                             enabled=updated.joint_session, via="api")
    roles = await trio.to_thread.run_sync(services.grants.roles_on, endpoint.id)
    return JSONResponse({"endpoint": endpoint_json(updated, admin=True, live=_live_counts(services).get(endpoint.id, 0),
                                                   roles=roles)})


@api_route
async def delete_endpoint(request: Request) -> Response:
    """Remove an endpoint (its live sessions go on until they end; nobody can start a new one)."""
    admin = await require_admin(request)
    query(request, ())
    services = services_of(request)
    endpoint = await _endpoint_or_404(services, request.path_params["endpoint_id"])
    await trio.to_thread.run_sync(services.endpoints.delete, endpoint.id)
    services.audit_event("endpoint_deleted", admin, endpoint_id=endpoint.id, endpoint_name=endpoint.name, via="api")
    return JSONResponse({"deleted": True, "id": endpoint.id, "name": endpoint.name})


@api_route
async def set_joint_session(request: Request) -> Response:
    """Turn joint sessions on or off; live sessions apply it to their next join."""
    admin = await require_admin(request)
    query(request, ())
    services = services_of(request)
    body = await json_body(request, {"enabled": (bool,)}, required=("enabled",))
    endpoint = await _endpoint_or_404(services, request.path_params["endpoint_id"])
    enabled = body["enabled"]
    if enabled != endpoint.joint_session:
        try:
            await trio.to_thread.run_sync(services.endpoints.set_joint_session, endpoint.id, enabled)
        except EndpointError:  # removed meanwhile
            raise ApiError(404, "not_found", "no such endpoint") from None
        services.audit_event("joint_session_changed", admin, endpoint_id=endpoint.id, endpoint_name=endpoint.name,
                             enabled=enabled, via="api")
    updated = await _endpoint_or_404(services, endpoint.id)
    return JSONResponse({"endpoint": endpoint_json(updated, admin=True,
                                                   live=_live_counts(services).get(endpoint.id, 0)),
                         "changed": enabled != endpoint.joint_session})

"""The administrators' endpoint pages: the list (with the Joint Session toggle), create, edit
(with the access card of pages/access.py), delete, and accepting a changed SSH host key. Every
handler requires an administrator and audits what it changed (never a credential).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from dashboard.pages.access import endpoint_access
from dashboard.pages.admin import admin_services, endpoint_or_404
from dashboard.repositories.endpoints import ADMIN_PROTOCOLS, EndpointError, Endpoint
from dashboard.services import Services
from dashboard.services.live_sessions import all_live_sessions
from dashboard.web.http import flash, take_flash
from dashboard.web.templating import render


def _form_values(form: Any) -> dict[str, Any]:
    return {
        "name": str(form.get("name", "")),
        "protocol": str(form.get("protocol", "ssh")),
        "host": str(form.get("host", "")),
        "port": str(form.get("port", "")).strip(),
        "username": str(form.get("username", "")),
        "joint_session": form.get("joint_session") == "on",
    }


def _empty_form() -> dict[str, Any]:
    return {"name": "", "protocol": "ssh", "host": "", "port": "", "username": "", "joint_session": True}


async def list_page(request: Request) -> Response:
    services, _ = await admin_services(request)

    def load() -> list[tuple[Endpoint, list[Any]]]:  # each endpoint with its RoleEntry list
        return [(e, services.grants.roles_on(e.id)) for e in services.endpoints.list()]

    rows = await trio.to_thread.run_sync(load)
    live: dict[str, int] = {}
    for summary in all_live_sessions(services):
        live[summary.endpoint.id] = live.get(summary.endpoint.id, 0) + 1
    return await render(request, "endpoints.html",
                        {"rows": rows, "live": live, "flash": take_flash(request)})


async def new_page(request: Request) -> Response:
    await admin_services(request)
    return await render(request, "endpoints_form.html", {
        "endpoint": None, "form": _empty_form(), "error": None, "protocols": ADMIN_PROTOCOLS})


async def create(request: Request) -> Response:
    services, admin = await admin_services(request)
    form = await request.form()
    values = _form_values(form)
    try:
        endpoint = await trio.to_thread.run_sync(lambda: services.endpoints.create(
            values["name"], values["protocol"], values["host"], values["port"] or None,
            username=values["username"], password=str(form.get("password", "")) or None,
            private_key=str(form.get("private_key", "")) or None,
            passphrase=str(form.get("passphrase", "")) or None, joint_session=values["joint_session"]))
    except EndpointError as exc:
        return await render(request, "endpoints_form.html", {
            "endpoint": None, "form": values, "error": str(exc), "protocols": ADMIN_PROTOCOLS},
            status_code=400)
    services.audit_event("endpoint_created", admin, endpoint_id=endpoint.id, endpoint_name=endpoint.name,
                         protocol=endpoint.protocol.value, credentials=endpoint.secret_kind or "none",
                         joint_session=endpoint.joint_session)
    flash(request, f"Endpoint {endpoint.name} created.")
    return RedirectResponse(request.url_for("endpoints"), status_code=303)


async def _edit_context(services: Services, endpoint: Endpoint) -> dict[str, Any]:
    access = await trio.to_thread.run_sync(endpoint_access, services, endpoint.id)
    return {"endpoint": endpoint, "protocols": ADMIN_PROTOCOLS, "access": access}


async def edit_page(request: Request) -> Response:
    services, _ = await admin_services(request)
    endpoint = await endpoint_or_404(services, request.path_params["endpoint_id"])
    form = {"name": endpoint.name, "protocol": endpoint.protocol.value, "host": endpoint.host,
            "port": str(endpoint.port), "username": endpoint.username, "joint_session": endpoint.joint_session}
    return await render(request, "endpoints_form.html", {
        **await _edit_context(services, endpoint), "form": form, "error": None,
        "flash": take_flash(request)})


async def update(request: Request) -> Response:
    services, admin = await admin_services(request)
    endpoint = await endpoint_or_404(services, request.path_params["endpoint_id"])
    form = await request.form()
    values = _form_values(form)
    password = str(form.get("password", "")) or None
    private_key = str(form.get("private_key", "")) or None
    clear = form.get("clear_credentials") == "on"
    try:
        updated = await trio.to_thread.run_sync(lambda: services.endpoints.update(
            endpoint.id, name=values["name"], protocol=values["protocol"], host=values["host"],
            port=values["port"] or None, username=values["username"], joint_session=values["joint_session"],
            password=password, private_key=private_key, passphrase=str(form.get("passphrase", "")) or None,
            clear_credentials=clear))
    except EndpointError as exc:
        return await render(request, "endpoints_form.html", {
            **await _edit_context(services, endpoint), "form": values, "error": str(exc)}, status_code=400)
    changed = sorted(f.name for f in dataclasses.fields(Endpoint)
                     if f.name not in ("secret_kind", "created_at")
                     and getattr(updated, f.name) != getattr(endpoint, f.name))
    credentials = "replaced" if (password or private_key) else ("cleared" if clear and endpoint.secret_kind
                                                                  else "kept")
    services.audit_event("endpoint_updated", admin, endpoint_id=endpoint.id, endpoint_name=updated.name,
                         changed=changed, credentials=credentials)
    if updated.joint_session != endpoint.joint_session:
        services.audit_event("joint_session_changed", admin, endpoint_id=endpoint.id,
                             endpoint_name=updated.name, enabled=updated.joint_session)
    flash(request, f"Endpoint {updated.name} saved.")
    return RedirectResponse(request.url_for("endpoints"), status_code=303)


async def delete_page(request: Request) -> Response:
    services, _ = await admin_services(request)
    endpoint = await endpoint_or_404(services, request.path_params["endpoint_id"])
    live = sum(1 for s in all_live_sessions(services) if s.endpoint.id == endpoint.id)
    return await render(request, "endpoints_delete.html", {"endpoint": endpoint, "live": live})


async def delete(request: Request) -> Response:
    services, admin = await admin_services(request)
    endpoint = await endpoint_or_404(services, request.path_params["endpoint_id"])
    await trio.to_thread.run_sync(services.endpoints.delete, endpoint.id)
    services.audit_event("endpoint_deleted", admin, endpoint_id=endpoint.id, endpoint_name=endpoint.name)
    flash(request, f"Endpoint {endpoint.name} removed.")
    return RedirectResponse(request.url_for("endpoints"), status_code=303)


async def toggle_joint_session(request: Request) -> Response:
    services, admin = await admin_services(request)
    endpoint = await endpoint_or_404(services, request.path_params["endpoint_id"])
    form = await request.form()
    enabled = form.get("enabled") == "on"
    if enabled != endpoint.joint_session:
        await trio.to_thread.run_sync(services.endpoints.set_joint_session, endpoint.id, enabled)
        services.audit_event("joint_session_changed", admin, endpoint_id=endpoint.id,
                             endpoint_name=endpoint.name, enabled=enabled)
    flash(request, f"Joint sessions {'on' if enabled else 'off'} for {endpoint.name}.")
    return RedirectResponse(request.url_for("endpoints"), status_code=303)


async def accept_host_key(request: Request) -> Response:
    services, admin = await admin_services(request)
    endpoint = await endpoint_or_404(services, request.path_params["endpoint_id"])
    if await trio.to_thread.run_sync(services.endpoints.accept_pending_host_key, endpoint.id):
        services.audit_event("host_key_accepted", admin, endpoint_id=endpoint.id, endpoint_name=endpoint.name,
                             fingerprint=endpoint.pending_host_key_fingerprint,
                             previous=endpoint.host_key_fingerprint)
        flash(request, f"New host key accepted for {endpoint.name}.")
    else:
        flash(request, f"No new host key was waiting for {endpoint.name}.")
    return RedirectResponse(request.url_for("endpoints"), status_code=303)


routes = [
    Route("/endpoints", list_page, methods=["GET"], name="endpoints"),
    Route("/endpoints", create, methods=["POST"], name="endpoint_create"),
    Route("/endpoints/new", new_page, methods=["GET"], name="endpoint_new"),
    Route("/endpoints/{endpoint_id}/edit", edit_page, methods=["GET"], name="endpoint_edit"),
    Route("/endpoints/{endpoint_id}/edit", update, methods=["POST"], name="endpoint_update"),
    Route("/endpoints/{endpoint_id}/delete", delete_page, methods=["GET"], name="endpoint_delete_confirm"),
    Route("/endpoints/{endpoint_id}/delete", delete, methods=["POST"], name="endpoint_delete"),
    Route("/endpoints/{endpoint_id}/joint-session", toggle_joint_session, methods=["POST"],
          name="endpoint_joint_session"),
    Route("/endpoints/{endpoint_id}/host-key/accept", accept_host_key, methods=["POST"],
          name="endpoint_accept_host_key"),
]

"""The administrators' access pages (issue 6): access profiles, groups, and, on each endpoint's
edit page, who holds which role and profile there, whether starting needs an approval, and
who approves.

Every handler requires an administrator, calls the repositories (grants, profiles, groups,
approvers) off the trio loop, audits what changed (names and ids, never a secret) and answers with a 303 back to
its page, with a flash saying what happened or why nothing did: bad input (an unknown name or
role, an empty or taken name) is a message, never an error page. docs/access.md describes the
model these pages edit.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import trio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from dashboard.pages.admin import admin_services, endpoint_or_404
from dashboard.repositories.endpoints import Endpoint
from dashboard.repositories.groups import Group
from dashboard.repositories.model import GROUP, USER, AccessError, Principal
from dashboard.services import Services
from dashboard.web.http import flash, take_flash
from dashboard.web.templating import render
from engine.access import AssetRole, Profile, WebSession
from engine.messages import User

FLAGS = ("clipboard_upload", "clipboard_download", "file_transfer", "mfa_required")  # a profile's switches
KINDS = (USER, GROUP)


async def _run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A blocking repository call, off the loop."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def _back(request: Request, name: str, **params: Any) -> Response:
    return RedirectResponse(request.url_for(name, **params), status_code=303)


def _settings(profile: Profile) -> dict[str, Any]:
    """A profile's settings, as audited."""
    return {"web_session": profile.web_session.value, **{flag: getattr(profile, flag) for flag in FLAGS}}


def _principal_detail(principal: Principal) -> dict[str, str]:
    return {"principal_kind": principal.kind, "principal_id": principal.id, "principal_name": principal.name}


def _endpoint_detail(endpoint: Endpoint) -> dict[str, str]:
    return {"endpoint_id": endpoint.id, "endpoint_name": endpoint.name}


# --- profiles -----------------------------------------------------------------------------------


def _profile_form(form: Any) -> dict[str, Any]:
    return {"name": str(form.get("name", "")), "web_session": str(form.get("web_session", "")),
            **{flag: form.get(flag) == "on" for flag in FLAGS}}


async def _profile_or_404(services: Services, profile_id: str) -> Profile:
    profile = await _run(services.profiles.profile, profile_id)
    if profile is None or profile.id != profile_id:  # profile() also finds by name: only ids here
        raise HTTPException(404, "No such profile")
    return profile


async def _render_profile_form(request: Request, profile: Profile | None, form: dict[str, Any],
                               error: str | None = None) -> Response:
    return await render(request, "profile_form.html", {
        "profile": profile, "form": form, "error": error, "web_sessions": list(WebSession)},
        status_code=400 if error else 200)


async def profiles_page(request: Request) -> Response:
    services, _ = await admin_services(request)
    profiles = await _run(services.profiles.profiles)
    return await render(request, "profiles.html", {"profiles": profiles, "flash": take_flash(request)})


async def profile_new(request: Request) -> Response:
    await admin_services(request)
    return await _render_profile_form(request, None, {"name": "", "web_session": WebSession.ALLOW.value,
                                                      **{flag: False for flag in FLAGS}})


async def profile_create(request: Request) -> Response:
    services, admin = await admin_services(request)
    form = _profile_form(await request.form())
    try:
        profile = await _run(services.profiles.create_profile, **form)
    except AccessError as exc:
        return await _render_profile_form(request, None, form, str(exc))
    services.audit_event("profile_created", admin, profile_id=profile.id, profile_name=profile.name,
                         **_settings(profile))
    flash(request, f"Profile {profile.name} created.")
    return _back(request, "profiles")


async def profile_edit(request: Request) -> Response:
    services, _ = await admin_services(request)
    profile = await _profile_or_404(services, request.path_params["profile_id"])
    return await _render_profile_form(request, profile, {"name": profile.name, **_settings(profile)})


async def profile_update(request: Request) -> Response:
    services, admin = await admin_services(request)
    profile = await _profile_or_404(services, request.path_params["profile_id"])
    form = _profile_form(await request.form())
    try:
        updated = await _run(services.profiles.update_profile, profile.id, **form)
    except AccessError as exc:
        return await _render_profile_form(request, profile, form, str(exc))
    before, after = {"name": profile.name, **_settings(profile)}, {"name": updated.name, **_settings(updated)}
    changed = sorted(key for key in after if after[key] != before[key])
    if changed:
        services.audit_event("profile_updated", admin, profile_id=updated.id, profile_name=updated.name,
                             previous_name=profile.name, changed=changed, **_settings(updated))
        flash(request, f"Profile {updated.name} saved.")
    else:
        flash(request, f"Profile {updated.name} unchanged.")
    return _back(request, "profiles")


def _uses_of_profile(services: Services, profile_id: str) -> list[tuple[Endpoint, str]]:
    """Where a profile is assigned: what deleting it takes away."""
    return [(endpoint, f"assigned to {entry.principal.kind} {entry.principal.name}")
            for endpoint in services.endpoints.list()
            for entry in services.grants.assignments_on(endpoint.id) if entry.profile.id == profile_id]


async def profile_delete_page(request: Request) -> Response:
    services, _ = await admin_services(request)
    profile = await _profile_or_404(services, request.path_params["profile_id"])
    uses = await _run(_uses_of_profile, services, profile.id)
    return await render(request, "access_delete.html", {
        "what": f"profile {profile.name}", "uses": uses,
        "consequence": "It is unassigned everywhere; whoever relied on it alone can no longer start sessions there.",
        "action": request.url_for("profile_delete", profile_id=profile.id),
        "cancel": request.url_for("profiles")})


async def profile_delete(request: Request) -> Response:
    services, admin = await admin_services(request)
    profile = await _profile_or_404(services, request.path_params["profile_id"])
    uses = await _run(_uses_of_profile, services, profile.id)
    if await _run(services.profiles.delete_profile, profile.id):
        services.audit_event("profile_deleted", admin, profile_id=profile.id, profile_name=profile.name,
                             assignments_removed=len(uses))
    flash(request, f"Profile {profile.name} deleted.")
    return _back(request, "profiles")


# --- groups ---------------------------------------------------------------------------------------


async def _group_or_404(services: Services, group_id: str) -> Group:
    group = await _run(services.groups.group, group_id)
    if group is None:
        raise HTTPException(404, "No such group")
    return group


async def groups_page(request: Request) -> Response:
    services, _ = await admin_services(request)
    groups, users = await _run(lambda: (services.groups.groups(), services.users.list()))
    return await render(request, "groups.html", {"groups": groups, "users": users, "flash": take_flash(request)})


async def group_create(request: Request) -> Response:
    services, admin = await admin_services(request)
    name = str((await request.form()).get("name", ""))
    try:
        group = await _run(services.groups.create_group, name)
    except AccessError as exc:
        flash(request, f"Group not created: {exc}.")
        return _back(request, "groups")
    services.audit_event("group_created", admin, group_id=group.id, group_name=group.name)
    flash(request, f"Group {group.name} created.")
    return _back(request, "groups")


def _uses_of_group(services: Services, group_id: str) -> list[tuple[Endpoint, str]]:
    """The endpoints where a group holds a role, a profile or the approver right."""
    def ours(principal: Principal) -> bool:
        return (principal.kind, principal.id) == (GROUP, group_id)

    uses = []
    for endpoint in services.endpoints.list():
        held = [f"role {e.role.value}" for e in services.grants.roles_on(endpoint.id) if ours(e.principal)]
        held += [f"profile {e.profile.name}" for e in services.grants.assignments_on(endpoint.id) if ours(e.principal)]
        held += ["approver" for p in services.approvers.approvers_on(endpoint.id) if ours(p)]
        if held:
            uses.append((endpoint, ", ".join(held)))
    return uses


async def group_delete_page(request: Request) -> Response:
    services, _ = await admin_services(request)
    group = await _group_or_404(services, request.path_params["group_id"])
    uses = await _run(_uses_of_group, services, group.id)
    return await render(request, "access_delete.html", {
        "what": f"group {group.name}", "uses": uses,
        "consequence": (f"Its {len(group.members)} member(s) lose what the group gave them there "
                        "(their own roles and profiles stay)."),
        "action": request.url_for("group_delete", group_id=group.id),
        "cancel": request.url_for("groups")})


async def group_delete(request: Request) -> Response:
    services, admin = await admin_services(request)
    group = await _group_or_404(services, request.path_params["group_id"])
    if await _run(services.groups.delete_group, group.id):
        services.audit_event("group_deleted", admin, group_id=group.id, group_name=group.name,
                             members=[u.name for u in group.members])
    flash(request, f"Group {group.name} deleted.")
    return _back(request, "groups")


async def group_member_add(request: Request) -> Response:
    services, admin = await admin_services(request)
    group = await _group_or_404(services, request.path_params["group_id"])
    name = str((await request.form()).get("user", "")).strip()
    user = await _run(services.users.get_by_name, name) if name else None
    if user is None:
        flash(request, f"No user named {name!r}." if name else "Give a user name.")
    elif await _run(services.groups.add_member, group.id, user.id):
        services.audit_event("group_member_added", admin, group_id=group.id, group_name=group.name,
                             user_id=user.id, user_name=user.name)
        flash(request, f"{user.name} joined {group.name}.")
    else:
        flash(request, f"{user.name} is already in {group.name}.")
    return _back(request, "groups")


async def group_member_remove(request: Request) -> Response:
    services, admin = await admin_services(request)
    group = await _group_or_404(services, request.path_params["group_id"])
    user = next((u for u in group.members if u.id == request.path_params["user_id"]), None)
    if user is not None and await _run(services.groups.remove_member, group.id, user.id):
        services.audit_event("group_member_removed", admin, group_id=group.id, group_name=group.name,
                             user_id=user.id, user_name=user.name)
        flash(request, f"{user.name} left {group.name}.")
    else:
        flash(request, f"That user is not in {group.name}.")
    return _back(request, "groups")


# --- one endpoint's access (a card on its edit page) ----------------------------------------------


def endpoint_access(services: Services, endpoint_id: str) -> dict[str, Any]:
    """What the access card of an endpoint's edit page shows (blocking: call it off the loop)."""
    return {
        "roles": services.grants.roles_on(endpoint_id),
        "assignments": services.grants.assignments_on(endpoint_id),
        "requires_approval": services.approvers.requires_approval(endpoint_id),
        "approvers": services.approvers.approvers_on(endpoint_id),
        "profiles": services.profiles.profiles(),
        "user_names": [u.name for u in services.users.list()],
        "group_names": [g.name for g in services.groups.groups()],
        "asset_roles": list(AssetRole),
    }


async def _endpoint_form(request: Request) -> tuple[Services, User, Endpoint, Any]:
    services, admin = await admin_services(request)
    endpoint = await endpoint_or_404(services, request.path_params["endpoint_id"])
    return services, admin, endpoint, await request.form()


async def _principal(services: Services, form: Any, field: str = "name") -> Principal | str:
    """The user or group a form names (by name, or by id from the card's own buttons), or why not."""
    kind, name = str(form.get("kind", "")), str(form.get(field, "")).strip()
    if kind not in KINDS:
        return "Choose a user or a group."
    if not name:
        return f"Give a {kind} name."
    found = await _run(services.grants.principal, kind, name)
    return found if found is not None else f"No {kind} named {name!r}."


def _to_edit(request: Request, endpoint: Endpoint) -> Response:
    return _back(request, "endpoint_edit", endpoint_id=endpoint.id)


async def role_set(request: Request) -> Response:
    services, admin, endpoint, form = await _endpoint_form(request)
    principal = await _principal(services, form)
    try:
        role = AssetRole(str(form.get("role", "")))
    except ValueError:
        role = None
    if isinstance(principal, str):
        flash(request, principal)
        return _to_edit(request, endpoint)
    if role is None:
        flash(request, f"Unknown role: choose one of {', '.join(r.value for r in AssetRole)}.")
        return _to_edit(request, endpoint)
    previous = next((e.role for e in await _run(services.grants.roles_on, endpoint.id)
                     if (e.principal.kind, e.principal.id) == (principal.kind, principal.id)), None)
    if previous == role:
        flash(request, f"{principal.name} is already {role.value} on {endpoint.name}.")
        return _to_edit(request, endpoint)
    await _run(services.grants.set_role, endpoint.id, principal, role)
    services.audit_event("role_set", admin, **_endpoint_detail(endpoint), **_principal_detail(principal),
                         role=role.value, previous=previous.value if previous else None)
    flash(request, f"{principal.name} is now {role.value} on {endpoint.name}.")
    return _to_edit(request, endpoint)


async def role_remove(request: Request) -> Response:
    services, admin, endpoint, form = await _endpoint_form(request)
    principal = await _principal(services, form)
    previous = None
    if not isinstance(principal, str):
        previous = next((e.role for e in await _run(services.grants.roles_on, endpoint.id)
                         if (e.principal.kind, e.principal.id) == (principal.kind, principal.id)), None)
    if isinstance(principal, str) or previous is None:
        flash(request, principal if isinstance(principal, str) else f"{principal.name} had no role here.")
        return _to_edit(request, endpoint)
    await _run(services.grants.set_role, endpoint.id, principal, None)
    services.audit_event("role_removed", admin, **_endpoint_detail(endpoint), **_principal_detail(principal),
                         role=previous.value)
    flash(request, f"{principal.name} no longer has a role on {endpoint.name}.")
    return _to_edit(request, endpoint)


async def _form_profile(services: Services, form: Any) -> Profile | None:
    profile_id = str(form.get("profile", ""))
    profile = await _run(services.profiles.profile, profile_id) if profile_id else None
    return profile if profile is not None and profile.id == profile_id else None


async def profile_assign(request: Request) -> Response:
    services, admin, endpoint, form = await _endpoint_form(request)
    principal, profile = await _principal(services, form), await _form_profile(services, form)
    if isinstance(principal, str) or profile is None:
        flash(request, principal if isinstance(principal, str) else "No such profile.")
    elif await _run(services.grants.assign, endpoint.id, principal, profile.id):
        services.audit_event("profile_assigned", admin, **_endpoint_detail(endpoint), **_principal_detail(principal),
                             profile_id=profile.id, profile_name=profile.name)
        flash(request, f"{principal.name} has profile {profile.name} on {endpoint.name}.")
    else:
        flash(request, f"{principal.name} already has profile {profile.name} on {endpoint.name}.")
    return _to_edit(request, endpoint)


async def profile_unassign(request: Request) -> Response:
    services, admin, endpoint, form = await _endpoint_form(request)
    principal, profile = await _principal(services, form), await _form_profile(services, form)
    if isinstance(principal, str) or profile is None:
        flash(request, principal if isinstance(principal, str) else "No such profile.")
    elif await _run(services.grants.unassign, endpoint.id, principal, profile.id):
        services.audit_event("profile_unassigned", admin, **_endpoint_detail(endpoint),
                             **_principal_detail(principal), profile_id=profile.id, profile_name=profile.name)
        flash(request, f"{principal.name} no longer has profile {profile.name} on {endpoint.name}.")
    else:
        flash(request, f"{principal.name} did not have profile {profile.name} on {endpoint.name}.")
    return _to_edit(request, endpoint)


async def approval_set(request: Request) -> Response:
    services, admin, endpoint, form = await _endpoint_form(request)
    required = form.get("required") == "on"
    if required != await _run(services.approvers.requires_approval, endpoint.id):
        await _run(services.approvers.set_requires_approval, endpoint.id, required)
        services.audit_event("approval_policy_changed", admin, **_endpoint_detail(endpoint),
                             requires_approval=required)
    flash(request, f"Starting a session on {endpoint.name} {'requires' if required else 'needs no'} approval.")
    return _to_edit(request, endpoint)


async def approver_add(request: Request) -> Response:
    services, admin, endpoint, form = await _endpoint_form(request)
    principal = await _principal(services, form)
    if isinstance(principal, str):
        flash(request, principal)
    elif await _run(services.approvers.add_approver, endpoint.id, principal):
        services.audit_event("approver_added", admin, **_endpoint_detail(endpoint), **_principal_detail(principal))
        flash(request, f"{principal.name} now approves requests for {endpoint.name}.")
    else:
        flash(request, f"{principal.name} already approves requests for {endpoint.name}.")
    return _to_edit(request, endpoint)


async def approver_remove(request: Request) -> Response:
    services, admin, endpoint, form = await _endpoint_form(request)
    principal = await _principal(services, form)
    if isinstance(principal, str):
        flash(request, principal)
    elif await _run(services.approvers.remove_approver, endpoint.id, principal):
        services.audit_event("approver_removed", admin, **_endpoint_detail(endpoint), **_principal_detail(principal))
        flash(request, f"{principal.name} no longer approves requests for {endpoint.name}.")
    else:
        flash(request, f"{principal.name} was not an approver of {endpoint.name}.")
    return _to_edit(request, endpoint)


routes = [
    Route("/profiles", profiles_page, methods=["GET"], name="profiles"),
    Route("/profiles", profile_create, methods=["POST"], name="profile_create"),
    Route("/profiles/new", profile_new, methods=["GET"], name="profile_new"),
    Route("/profiles/{profile_id}/edit", profile_edit, methods=["GET"], name="profile_edit"),
    Route("/profiles/{profile_id}/edit", profile_update, methods=["POST"], name="profile_update"),
    Route("/profiles/{profile_id}/delete", profile_delete_page, methods=["GET"], name="profile_delete_confirm"),
    Route("/profiles/{profile_id}/delete", profile_delete, methods=["POST"], name="profile_delete"),
    Route("/groups", groups_page, methods=["GET"], name="groups"),
    Route("/groups", group_create, methods=["POST"], name="group_create"),
    Route("/groups/{group_id}/delete", group_delete_page, methods=["GET"], name="group_delete_confirm"),
    Route("/groups/{group_id}/delete", group_delete, methods=["POST"], name="group_delete"),
    Route("/groups/{group_id}/members", group_member_add, methods=["POST"], name="group_member_add"),
    Route("/groups/{group_id}/members/{user_id}/remove", group_member_remove, methods=["POST"],
          name="group_member_remove"),
    Route("/endpoints/{endpoint_id}/roles", role_set, methods=["POST"], name="endpoint_role_set"),
    Route("/endpoints/{endpoint_id}/roles/remove", role_remove, methods=["POST"], name="endpoint_role_remove"),
    Route("/endpoints/{endpoint_id}/profiles", profile_assign, methods=["POST"], name="endpoint_profile_assign"),
    Route("/endpoints/{endpoint_id}/profiles/remove", profile_unassign, methods=["POST"],
          name="endpoint_profile_unassign"),
    Route("/endpoints/{endpoint_id}/approval", approval_set, methods=["POST"], name="endpoint_approval"),
    Route("/endpoints/{endpoint_id}/approvers", approver_add, methods=["POST"], name="endpoint_approver_add"),
    Route("/endpoints/{endpoint_id}/approvers/remove", approver_remove, methods=["POST"],
          name="endpoint_approver_remove"),
]

"""Endpoints: where sessions go and their stored credentials; and the administrators' pages
that manage them. Who may use an endpoint is dashboard/access.py's; its edit page shows that in
an access card whose forms are dashboard/access_pages.py's.

``Endpoints`` is the repository (sync SQLAlchemy Core; on the trio loop call it through
``trio.to_thread.run_sync``). Stored credentials are AES-GCM blobs (dashboard/secrets.py),
bound to their endpoint's id. They are write-only: no page renders them, no log line or audit
row holds them; ``stored_credentials(id)`` decrypts them only to hand them to a protocol
connection.

SSH host keys: the first key seen is trusted (``record_host_key``); a different key later is
kept aside as pending (``note_changed_host_key``) and refused until an administrator accepts it
on the endpoints page (``accept_pending_host_key``). Changing an endpoint's host or port
forgets its keys.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import trio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from dashboard.security.secrets import Secrets
from engine.db import endpoints as t_endpoints
from engine.db import users as t_users
from engine.messages import EndpointSpec, EndpointProtocol, User
from engine.connection import Credentials

log = logging.getLogger(__name__)

DEFAULT_PORTS = {EndpointProtocol.SSH: 22, EndpointProtocol.VNC: 5900, EndpointProtocol.RDP: 3389, EndpointProtocol.TELNET: 23}
ADMIN_PROTOCOLS = (EndpointProtocol.SSH, EndpointProtocol.VNC, EndpointProtocol.RDP)  # offered on the admin pages
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")
_KEEP: Any = object()


class EndpointError(ValueError):
    """An endpoint cannot be saved as asked; the message says why, for an administrator."""


def host_key_fingerprint(key: str | None) -> str | None:
    """OpenSSH's SHA256 fingerprint of a public key line ("ssh-ed25519 AAAA... [comment]")."""
    if not key:
        return None
    parts = key.split()
    if len(parts) < 2:
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"{parts[0]} SHA256:{digest}"


def _normalise_host_key(key: str) -> str:
    """The key type and base64 blob of an OpenSSH public key line, without its comment."""
    parts = key.strip().split()
    if len(parts) < 2 or host_key_fingerprint(key) is None:
        raise EndpointError("not an OpenSSH public key line")
    return f"{parts[0]} {parts[1]}"


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """An endpoint as stored, without its credential (only whether one is stored)."""

    id: str
    name: str
    protocol: EndpointProtocol
    host: str
    port: int
    username: str
    secret_kind: str | None  # 'password' | 'private_key' | None
    joint_session: bool
    host_key: str | None
    pending_host_key: str | None
    created_at: float

    @property
    def spec(self) -> EndpointSpec:
        return EndpointSpec(self.id, self.name, self.protocol, self.joint_session, self.host, self.port)

    @property
    def has_credentials(self) -> bool:
        return self.secret_kind is not None

    @property
    def host_key_fingerprint(self) -> str | None:
        return host_key_fingerprint(self.host_key)

    @property
    def pending_host_key_fingerprint(self) -> str | None:
        return host_key_fingerprint(self.pending_host_key)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if host else ""


def _record(row: sa.Row) -> EndpointRecord:
    return EndpointRecord(row.id, row.name, EndpointProtocol(row.protocol), row.host, row.port, row.username,
                          row.secret_kind, bool(row.joint_session), row.host_key, row.pending_host_key,
                          row.created_at)


_COLUMNS = [c for c in t_endpoints.c if c.name != "secret"]  # the blob is read in one place only


class Endpoints:
    """The endpoint repository. `engine` (optional) is told joint-session changes, so live
    sessions apply them to their next join."""

    def __init__(self, db: sa.Engine, secrets: Secrets, engine: Any = None, access: Any = None) -> None:
        self._db = db
        self._secrets = secrets
        self._engine = engine
        self._access = access  # dashboard.access.Access

    # --- reads ----------------------------------------------------------------------------

    def get(self, endpoint_id: str) -> EndpointRecord | None:
        with self._db.connect() as db:
            row = db.execute(sa.select(*_COLUMNS).where(t_endpoints.c.id == endpoint_id)).first()
        return _record(row) if row is not None else None

    def get_by_name(self, name: str) -> EndpointRecord | None:
        with self._db.connect() as db:
            row = db.execute(sa.select(*_COLUMNS).where(t_endpoints.c.name == name)).first()
        return _record(row) if row is not None else None

    def list(self) -> list[EndpointRecord]:
        with self._db.connect() as db:
            rows = db.execute(sa.select(*_COLUMNS).order_by(t_endpoints.c.name)).all()
        return [_record(row) for row in rows]

    def accessible(self, user: User) -> list[EndpointRecord]:
        """The endpoints `user` holds a role on (every one for an administrator): the ones their
        lists show. Who may start or join there is dashboard/access.py's to say."""
        if self._access is None:
            return self.list() if user.is_admin else []
        visible = self._access.visible_endpoint_ids(user)
        return [record for record in self.list() if record.id in visible]

    # --- writes ---------------------------------------------------------------------------

    def create(self, name: str, protocol: EndpointProtocol | str, host: str = "", port: int | None = None, *,
               username: str = "", password: str | None = None, private_key: str | None = None,
               passphrase: str | None = None, joint_session: bool = True,
               host_key: str | None = None) -> EndpointRecord:
        endpoint_id = str(uuid.uuid4())
        values = self._validated(name=name, protocol=protocol, host=host, port=port, username=username)
        values.update(id=endpoint_id, joint_session=bool(joint_session), created_at=time.time(),
                      host_key=_normalise_host_key(host_key) if host_key else None, pending_host_key=None)
        values.update(self._secret_values(endpoint_id, password, private_key, passphrase))
        try:
            with self._db.begin() as db:
                db.execute(t_endpoints.insert().values(**values))
        except sa.exc.IntegrityError as exc:
            raise EndpointError(f"an endpoint named {values['name']!r} already exists") from exc
        record = self.get(endpoint_id)
        assert record is not None
        return record

    def update(self, endpoint_id: str, *, name: Any = _KEEP, protocol: Any = _KEEP, host: Any = _KEEP,
               port: Any = _KEEP, username: Any = _KEEP, joint_session: Any = _KEEP,
               password: str | None = None, private_key: str | None = None, passphrase: str | None = None,
               clear_credentials: bool = False) -> EndpointRecord:
        """Change what is given. A new `password` or `private_key` replaces the stored credential;
        `clear_credentials` removes it; neither keeps it. A new host or port forgets the host keys."""
        current = self.get(endpoint_id)
        if current is None:
            raise EndpointError("no such endpoint")
        values = self._validated(
            name=current.name if name is _KEEP else name,
            protocol=current.protocol if protocol is _KEEP else protocol,
            host=current.host if host is _KEEP else host,
            port=current.port if port is _KEEP else port,
            username=current.username if username is _KEEP else username)
        if (values["host"], values["port"]) != (current.host, current.port):
            values.update(host_key=None, pending_host_key=None)
        if joint_session is not _KEEP:
            values["joint_session"] = bool(joint_session)
        if password or private_key:
            values.update(self._secret_values(endpoint_id, password, private_key, passphrase))
        elif clear_credentials:
            values.update(secret=None, secret_kind=None)
        try:
            with self._db.begin() as db:
                db.execute(t_endpoints.update().where(t_endpoints.c.id == endpoint_id).values(**values))
        except sa.exc.IntegrityError as exc:
            raise EndpointError(f"an endpoint named {values['name']!r} already exists") from exc
        if "joint_session" in values and values["joint_session"] != current.joint_session:
            self._tell_engine(endpoint_id, values["joint_session"])
        record = self.get(endpoint_id)
        assert record is not None
        return record

    def delete(self, endpoint_id: str) -> bool:
        with self._db.begin() as db:
            return db.execute(t_endpoints.delete().where(t_endpoints.c.id == endpoint_id)).rowcount > 0

    def set_joint_session(self, endpoint_id: str, enabled: bool) -> None:
        """Store the toggle and tell the engine, so live sessions apply it to their next join."""
        with self._db.begin() as db:
            if db.execute(t_endpoints.update().where(t_endpoints.c.id == endpoint_id)
                          .values(joint_session=bool(enabled))).rowcount == 0:
                raise EndpointError("no such endpoint")
        self._tell_engine(endpoint_id, bool(enabled))

    # --- credentials ----------------------------------------------------------------------

    def stored_credentials(self, endpoint_id: str) -> Credentials | None:
        """The decrypted credential, only to hand to a protocol connection; None if none is
        stored. Never log it, render it, audit it or send it anywhere else."""
        with self._db.connect() as db:
            row = db.execute(sa.select(t_endpoints.c.username, t_endpoints.c.secret, t_endpoints.c.secret_kind)
                             .where(t_endpoints.c.id == endpoint_id)).first()
        if row is None or row.secret is None:
            return None
        secret = json.loads(self._secrets.decrypt(row.secret, context=_context(endpoint_id)))
        return Credentials(username=row.username, password=secret.get("password"),
                           private_key=secret.get("private_key"), passphrase=secret.get("passphrase"))

    def _secret_values(self, endpoint_id: str, password: str | None, private_key: str | None,
                       passphrase: str | None) -> dict[str, Any]:
        if password and private_key:
            raise EndpointError("give a password or a private key, not both")
        if password:
            payload, kind = {"password": password}, "password"
        elif private_key:
            if "PRIVATE KEY" not in private_key:
                raise EndpointError("the private key must be in OpenSSH or PEM format")
            payload, kind = {"private_key": private_key.strip() + "\n"}, "private_key"
            if passphrase:
                payload["passphrase"] = passphrase
        else:
            return {"secret": None, "secret_kind": None}
        return {"secret": self._secrets.encrypt(json.dumps(payload), context=_context(endpoint_id)),
                "secret_kind": kind}

    # --- host keys ------------------------------------------------------------------------

    def record_host_key(self, endpoint_id: str, key: str) -> bool:
        """Trust `key` if the endpoint has no host key yet (first use). True if recorded."""
        key = _normalise_host_key(key)
        with self._db.begin() as db:
            return db.execute(t_endpoints.update().where(
                t_endpoints.c.id == endpoint_id, t_endpoints.c.host_key.is_(None))
                .values(host_key=key, pending_host_key=None)).rowcount > 0

    def trust_host_key(self, endpoint_id: str, key: str | None) -> None:
        """Replace the trusted key outright (for an endpoint whose key is known in advance, such
        as the demo server this process starts). None forgets it (trust on next first use)."""
        value = _normalise_host_key(key) if key else None
        with self._db.begin() as db:
            db.execute(t_endpoints.update().where(t_endpoints.c.id == endpoint_id)
                       .values(host_key=value, pending_host_key=None))

    def note_changed_host_key(self, endpoint_id: str, key: str) -> None:
        """The endpoint showed a key other than the trusted one: keep it for an administrator."""
        key = _normalise_host_key(key)
        with self._db.begin() as db:
            db.execute(t_endpoints.update().where(t_endpoints.c.id == endpoint_id)
                       .values(pending_host_key=key))

    def accept_pending_host_key(self, endpoint_id: str) -> bool:
        """The pending key becomes the trusted one. False if none was pending."""
        with self._db.begin() as db:
            return db.execute(t_endpoints.update().where(
                t_endpoints.c.id == endpoint_id, t_endpoints.c.pending_host_key.is_not(None))
                .values(host_key=t_endpoints.c.pending_host_key, pending_host_key=None)).rowcount > 0

    # --- internals ------------------------------------------------------------------------

    def _tell_engine(self, endpoint_id: str, enabled: bool) -> None:
        if self._engine is None:
            return
        try:
            self._engine.set_joint_session(endpoint_id, enabled)
        except Exception:  # the engine not running: nothing live to tell
            log.debug("engine not told of joint session change for %s", endpoint_id, exc_info=True)

    @staticmethod
    def _validated(*, name: str, protocol: EndpointProtocol | str, host: str, port: int | str | None,
                   username: str) -> dict[str, Any]:
        name = (name or "").strip()
        if not _NAME.match(name):
            raise EndpointError("a name has 1 to 128 characters")
        try:
            protocol = EndpointProtocol(str(protocol).lower())
        except ValueError:
            raise EndpointError(f"unknown protocol {protocol!r}") from None
        host = (host or "").strip()
        if protocol is not EndpointProtocol.SYNTHETIC:
            if not host or len(host) > 255 or any(c.isspace() for c in host):
                raise EndpointError("a host is a name or an address, without spaces")
        if port in (None, "", 0, "0"):
            port = DEFAULT_PORTS.get(protocol, 0)
        try:
            port = int(port)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise EndpointError("the port is a number") from None
        if protocol is not EndpointProtocol.SYNTHETIC and not 1 <= port <= 65535:
            raise EndpointError("the port is between 1 and 65535")
        username = (username or "").strip()
        if len(username) > 255:
            raise EndpointError("the user name is too long")
        return {"name": name, "protocol": protocol.value, "host": host, "port": port, "username": username}


def _context(endpoint_id: str) -> str:
    return f"endpoint:{endpoint_id}"


# --- administrators' pages ------------------------------------------------------------------


def _flash(request: Request, message: str) -> None:
    request.session["flash"] = message


def _take_flash(request: Request) -> str | None:
    return request.session.pop("flash", None) if "flash" in request.session else None


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


async def _services_and_admin(request: Request) -> tuple[Any, User]:
    from dashboard.security.auth import require_admin

    admin = await require_admin(request)
    return request.app.state.services, admin


async def _get_or_404(services: Any, endpoint_id: str) -> EndpointRecord:
    from starlette.exceptions import HTTPException

    record = await trio.to_thread.run_sync(services.endpoints.get, endpoint_id)
    if record is None:
        raise HTTPException(404, "No such endpoint")
    return record


async def list_page(request: Request) -> Response:
    from dashboard.app import render

    services, _ = await _services_and_admin(request)

    def load() -> list[tuple[EndpointRecord, list[Any]]]:  # each endpoint with its RoleEntry list
        return [(e, services.access.roles_on(e.id)) for e in services.endpoints.list()]

    rows = await trio.to_thread.run_sync(load)
    live: dict[str, int] = {}
    for summary in services.engine.live_sessions():
        live[summary.endpoint.id] = live.get(summary.endpoint.id, 0) + 1
    return await render(request, "endpoints.html",
                        {"rows": rows, "live": live, "flash": _take_flash(request)})


async def new_page(request: Request) -> Response:
    from dashboard.app import render

    await _services_and_admin(request)
    return await render(request, "endpoints_form.html", {
        "record": None, "form": _empty_form(), "error": None, "protocols": ADMIN_PROTOCOLS})


async def create(request: Request) -> Response:
    from dashboard.app import render

    services, admin = await _services_and_admin(request)
    form = await request.form()
    values = _form_values(form)
    try:
        record = await trio.to_thread.run_sync(lambda: services.endpoints.create(
            values["name"], values["protocol"], values["host"], values["port"] or None,
            username=values["username"], password=str(form.get("password", "")) or None,
            private_key=str(form.get("private_key", "")) or None,
            passphrase=str(form.get("passphrase", "")) or None, joint_session=values["joint_session"]))
    except EndpointError as exc:
        return await render(request, "endpoints_form.html", {
            "record": None, "form": values, "error": str(exc), "protocols": ADMIN_PROTOCOLS},
            status_code=400)
    services.audit_event("endpoint_created", admin, endpoint_id=record.id, endpoint_name=record.name,
                         protocol=record.protocol.value, credentials=record.secret_kind or "none",
                         joint_session=record.joint_session)
    _flash(request, f"Endpoint {record.name} created.")
    return RedirectResponse(request.url_for("endpoints"), status_code=303)


async def _edit_context(services: Any, record: EndpointRecord) -> dict[str, Any]:
    from dashboard.pages.access import endpoint_access

    access = await trio.to_thread.run_sync(endpoint_access, services, record.id)
    return {"record": record, "protocols": ADMIN_PROTOCOLS, "access": access}


async def edit_page(request: Request) -> Response:
    from dashboard.app import render

    services, _ = await _services_and_admin(request)
    record = await _get_or_404(services, request.path_params["endpoint_id"])
    form = {"name": record.name, "protocol": record.protocol.value, "host": record.host,
            "port": str(record.port), "username": record.username, "joint_session": record.joint_session}
    return await render(request, "endpoints_form.html", {
        **await _edit_context(services, record), "form": form, "error": None,
        "flash": _take_flash(request)})


async def update(request: Request) -> Response:
    from dashboard.app import render

    services, admin = await _services_and_admin(request)
    record = await _get_or_404(services, request.path_params["endpoint_id"])
    form = await request.form()
    values = _form_values(form)
    password = str(form.get("password", "")) or None
    private_key = str(form.get("private_key", "")) or None
    clear = form.get("clear_credentials") == "on"
    try:
        updated = await trio.to_thread.run_sync(lambda: services.endpoints.update(
            record.id, name=values["name"], protocol=values["protocol"], host=values["host"],
            port=values["port"] or None, username=values["username"], joint_session=values["joint_session"],
            password=password, private_key=private_key, passphrase=str(form.get("passphrase", "")) or None,
            clear_credentials=clear))
    except EndpointError as exc:
        return await render(request, "endpoints_form.html", {
            **await _edit_context(services, record), "form": values, "error": str(exc)}, status_code=400)
    changed = sorted(f.name for f in dataclasses.fields(EndpointRecord)
                     if f.name not in ("secret_kind", "created_at")
                     and getattr(updated, f.name) != getattr(record, f.name))
    credentials = "replaced" if (password or private_key) else ("cleared" if clear and record.secret_kind
                                                                  else "kept")
    services.audit_event("endpoint_updated", admin, endpoint_id=record.id, endpoint_name=updated.name,
                         changed=changed, credentials=credentials)
    if updated.joint_session != record.joint_session:
        services.audit_event("joint_session_changed", admin, endpoint_id=record.id,
                             endpoint_name=updated.name, enabled=updated.joint_session)
    _flash(request, f"Endpoint {updated.name} saved.")
    return RedirectResponse(request.url_for("endpoints"), status_code=303)


async def delete_page(request: Request) -> Response:
    from dashboard.app import render

    services, _ = await _services_and_admin(request)
    record = await _get_or_404(services, request.path_params["endpoint_id"])
    live = sum(1 for s in services.engine.live_sessions() if s.endpoint.id == record.id)
    return await render(request, "endpoints_delete.html", {"record": record, "live": live})


async def delete(request: Request) -> Response:
    services, admin = await _services_and_admin(request)
    record = await _get_or_404(services, request.path_params["endpoint_id"])
    await trio.to_thread.run_sync(services.endpoints.delete, record.id)
    services.audit_event("endpoint_deleted", admin, endpoint_id=record.id, endpoint_name=record.name)
    _flash(request, f"Endpoint {record.name} removed.")
    return RedirectResponse(request.url_for("endpoints"), status_code=303)


async def toggle_joint_session(request: Request) -> Response:
    services, admin = await _services_and_admin(request)
    record = await _get_or_404(services, request.path_params["endpoint_id"])
    form = await request.form()
    enabled = form.get("enabled") == "on"
    if enabled != record.joint_session:
        await trio.to_thread.run_sync(services.endpoints.set_joint_session, record.id, enabled)
        services.audit_event("joint_session_changed", admin, endpoint_id=record.id,
                             endpoint_name=record.name, enabled=enabled)
    _flash(request, f"Joint sessions {'on' if enabled else 'off'} for {record.name}.")
    return RedirectResponse(request.url_for("endpoints"), status_code=303)


async def accept_host_key(request: Request) -> Response:
    services, admin = await _services_and_admin(request)
    record = await _get_or_404(services, request.path_params["endpoint_id"])
    if await trio.to_thread.run_sync(services.endpoints.accept_pending_host_key, record.id):
        services.audit_event("host_key_accepted", admin, endpoint_id=record.id, endpoint_name=record.name,
                             fingerprint=record.pending_host_key_fingerprint,
                             previous=record.host_key_fingerprint)
        _flash(request, f"New host key accepted for {record.name}.")
    else:
        _flash(request, f"No new host key was waiting for {record.name}.")
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

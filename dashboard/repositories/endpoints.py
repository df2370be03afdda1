"""Endpoints: where sessions go and their stored credentials. Who may use an endpoint is the
access model's (repositories/access.py and the repositories it names); the administrators'
pages are dashboard/pages/endpoints.py.

``Endpoints`` is the repository (sync SQLAlchemy Core; on the trio loop call it through
``trio.to_thread.run_sync``). Stored credentials are AES-GCM blobs (security/secrets.py),
bound to their endpoint's id. They are write-only: no page renders them, no log line or audit
row holds them; ``stored_credentials(id)`` decrypts them only to hand them to a protocol
connection.

SSH host keys and RDP certificates (their SHA-256 fingerprints, in the same columns): the first
seen is trusted (``trust_first_host_key``); a different one later is kept aside as pending
(``note_changed_host_key``) and refused until an administrator accepts it on the endpoints page
(``accept_pending_host_key``). Changing an endpoint's host or port forgets them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from dashboard.repositories.access import Access
from dashboard.repositories.tables import endpoints as t_endpoints
from dashboard.security.secrets import Secrets, reencrypt
from engine import Credentials
from engine.messages import EndpointProtocol, EndpointSpec, User

log = logging.getLogger(__name__)

DEFAULT_PORTS = {EndpointProtocol.SSH: 22, EndpointProtocol.VNC: 5900, EndpointProtocol.RDP: 3389, EndpointProtocol.TELNET: 23}
ADMIN_PROTOCOLS = (EndpointProtocol.SSH, EndpointProtocol.VNC, EndpointProtocol.RDP)  # offered on the admin pages
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")
_KEEP: Any = object()


class EndpointError(ValueError):
    """An endpoint cannot be saved as asked; the message says why, for an administrator."""


# An RDP server's pinned identity is its certificate's SHA-256 fingerprint, as FreeRDP writes it
# (protocols/freerdp.py): it is kept where an SSH server's host key is, and told apart by its form.
_CERTIFICATE_FINGERPRINT = re.compile(r"^(?:[0-9a-f]{2}:){31}[0-9a-f]{2}$")


def host_key_fingerprint(key: str | None) -> str | None:
    """OpenSSH's SHA256 fingerprint of a public key line ("ssh-ed25519 AAAA... [comment]"), or
    an RDP server's certificate fingerprint as it is shown ("SHA-256 aa:bb:...")."""
    if not key:
        return None
    if _CERTIFICATE_FINGERPRINT.match(key):
        return f"SHA-256 {key}"
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
    """The key type and base64 blob of an OpenSSH public key line, without its comment; or an
    RDP certificate's SHA-256 fingerprint, in lowercase."""
    if _CERTIFICATE_FINGERPRINT.match(key.strip().lower()):
        return key.strip().lower()
    parts = key.strip().split()
    if len(parts) < 2 or host_key_fingerprint(key) is None:
        raise EndpointError("not an OpenSSH public key line, nor an RDP certificate's SHA-256 fingerprint "
                            "(32 hex pairs separated by colons)")
    return f"{parts[0]} {parts[1]}"


@dataclass(frozen=True, slots=True)
class Endpoint:
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


def _record(row: sa.Row) -> Endpoint:
    return Endpoint(row.id, row.name, EndpointProtocol(row.protocol), row.host, row.port, row.username,
                          row.secret_kind, bool(row.joint_session), row.host_key, row.pending_host_key,
                          row.created_at)


_COLUMNS = [c for c in t_endpoints.c if c.name != "secret"]  # the blob is read in one place only


class JointSessionListener(Protocol):
    """Who hears of joint-session changes (the engine: live sessions apply them to their next join)."""

    def set_joint_session(self, endpoint_id: str, enabled: bool) -> None: ...


class Endpoints:
    """The endpoint repository. `engine` (optional) is told joint-session changes, so live
    sessions apply them to their next join; `access` says which endpoints a user sees."""

    def __init__(self, db: sa.Engine, secrets: Secrets, engine: JointSessionListener | None = None,
                 access: Access | None = None) -> None:
        self._db = db
        self._secrets = secrets
        self._engine = engine
        self._access = access

    # --- reads ----------------------------------------------------------------------------

    def get(self, endpoint_id: str) -> Endpoint | None:
        with self._db.connect() as db:
            row = db.execute(sa.select(*_COLUMNS).where(t_endpoints.c.id == endpoint_id)).first()
        return _record(row) if row is not None else None

    def get_by_name(self, name: str) -> Endpoint | None:
        with self._db.connect() as db:
            row = db.execute(sa.select(*_COLUMNS).where(t_endpoints.c.name == name)).first()
        return _record(row) if row is not None else None

    def list(self) -> list[Endpoint]:
        with self._db.connect() as db:
            rows = db.execute(sa.select(*_COLUMNS).order_by(t_endpoints.c.name)).all()
        return [_record(row) for row in rows]

    def accessible(self, user: User) -> list[Endpoint]:
        """The endpoints `user` holds a role on (every one for an administrator): the ones their
        lists show. Who may start or join there is the access model's to say."""
        if self._access is None:
            return self.list() if user.is_admin else []
        visible = self._access.visible_endpoint_ids(user)
        return [endpoint for endpoint in self.list() if endpoint.id in visible]

    # --- writes ---------------------------------------------------------------------------

    def create(self, name: str, protocol: EndpointProtocol | str, host: str = "", port: int | None = None, *,
               username: str = "", password: str | None = None, private_key: str | None = None,
               passphrase: str | None = None, joint_session: bool = True,
               host_key: str | None = None) -> Endpoint:
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
        endpoint = self.get(endpoint_id)
        assert endpoint is not None
        return endpoint

    def update(self, endpoint_id: str, *, name: Any = _KEEP, protocol: Any = _KEEP, host: Any = _KEEP,
               port: Any = _KEEP, username: Any = _KEEP, joint_session: Any = _KEEP,
               password: str | None = None, private_key: str | None = None, passphrase: str | None = None,
               clear_credentials: bool = False) -> Endpoint:
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
        endpoint = self.get(endpoint_id)
        assert endpoint is not None
        return endpoint

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

    def reencrypt(self, conn: sa.Connection, old: Secrets, new: Secrets) -> int:
        """Every stored credential, decrypted with `old` and encrypted again with `new`, in the
        caller's transaction (`Repositories.reencrypt`). Raises DecryptionFailed, naming the
        endpoint, if one does not decrypt with `old`. The number of credentials."""
        rows = conn.execute(sa.select(t_endpoints.c.id, t_endpoints.c.name, t_endpoints.c.secret)
                            .where(t_endpoints.c.secret.is_not(None))).all()
        for row in rows:
            blob = reencrypt(row.secret, old, new, context=_context(row.id), what=f"endpoint {row.name}")
            conn.execute(t_endpoints.update().where(t_endpoints.c.id == row.id).values(secret=blob))
        return len(rows)

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

    def trust_first_host_key(self, endpoint_id: str, key: str) -> bool:
        """Trust `key` if the endpoint has no host key yet (first use). True if it is now trusted."""
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

"""`Services`: everything a route needs, built once and put on ``app.state.services``.

    services = request.app.state.services      # or websocket.app.state.services

Database methods (``users``, ``endpoints``, ``audit_reader``) are blocking: on the trio loop
call them through ``trio.to_thread.run_sync``. ``engine`` is the actor system's facade: only
its non-blocking methods (``submit_start``, ``route``, ``watch``, ``set_joint_session``,
``live_sessions``, ``session``) belong on the loop. ``audit`` never blocks.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from itsdangerous import URLSafeTimedSerializer

from config.settings import Settings
from dashboard.repositories.access import Access
from dashboard.repositories.accounts import Users
from dashboard.repositories.endpoints import Endpoints
from dashboard.security.secrets import Secrets, ensure_data_dir
from engine.bridge import LoopBridge
from engine.db import make_engine
from engine.messages import AuditEvent, User

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Services:
    settings: Settings
    engine: Any  # engine.runtime.Engine
    bridge: LoopBridge
    db: sa.Engine
    users: Users
    endpoints: Endpoints
    access: Access
    secrets: Secrets = field(repr=False)
    audit_reader: Any = None  # engine.audit.AuditReader once that module exists, else None
    public_url: str = ""  # "http://host:port" without a trailing slash; set once the port is bound

    @classmethod
    def build(cls, settings: Settings, engine: Any, bridge: LoopBridge, *,
              secrets: Secrets | None = None, hasher: PasswordHasher | None = None,
              public_url: str | None = None) -> "Services":
        """Keys (generated into the data directory on first use), the database and its tables,
        the repositories. Blocking: call it before the loop starts, or in a thread."""
        if settings.database_url.startswith("sqlite:///") or not settings.security.secret_key \
                or not settings.security.credential_key:
            ensure_data_dir(settings.data_path)
        secrets = secrets or Secrets.from_settings(settings)
        db = make_engine(settings.database_url)  # creates every missing table
        access = Access(db, secrets)
        access.migrate_legacy_grants()
        services = cls(
            settings=settings, engine=engine, bridge=bridge, db=db, access=access,
            users=Users(db, hasher), endpoints=Endpoints(db, secrets, engine, access),
            secrets=secrets, audit_reader=_audit_reader(settings.database_url),
            public_url=(public_url if public_url is not None else default_public_url(settings)),
        )
        return services

    # --- signing ---------------------------------------------------------------------------

    def signer(self, salt: str) -> URLSafeTimedSerializer:
        """A serializer for signed, timestamped tokens (share links, ...). Give each use its own
        `salt`, so that a token made for one purpose is refused by every other."""
        if not salt:
            raise ValueError("a signer needs a salt naming its purpose")
        return URLSafeTimedSerializer(self.secrets.secret_key, salt=f"cosession.{salt}")

    # --- audit -----------------------------------------------------------------------------

    def now(self) -> float:
        """Wall-clock seconds from the engine's clock (a ManualClock in tests)."""
        clock = getattr(self.engine, "clock", None)
        return clock.now() if clock is not None else time.time()

    def audit(self, event: Any) -> None:
        """Tell the audit store an `AuditEvent` (or any store message). Never blocks; dropped
        with a log line if the engine is not running."""
        store = getattr(self.engine, "_store", None)  # Engine keeps its StoreActor there
        if store is None:
            log.warning("audit event %s dropped: the engine is not running", getattr(event, "kind", event))
            return
        store.tell(event)

    def audit_event(self, kind: str, actor: User | None = None, session_id: str | None = None,
                    **detail: Any) -> None:
        """`audit(AuditEvent.make(kind, now, session_id, actor, **detail))`. `detail` holds plain
        JSON values and never a credential."""
        self.audit(AuditEvent.make(kind, self.now(), session_id, actor, **detail))

    def close(self) -> None:
        if self.audit_reader is not None and hasattr(self.audit_reader, "close"):
            self.audit_reader.close()
        self.db.dispose()


def default_public_url(settings: Settings, port: int | None = None) -> str:
    """`server.public_url`, or http://HOST:PORT from the settings (IPv6 hosts bracketed)."""
    if settings.server.public_url:
        return settings.server.public_url.rstrip("/")
    host = settings.server.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port if port is not None else settings.server.port}"


def _audit_reader(url: str) -> Any:
    """engine's AuditReader (in engine.audit or engine.store), or None while neither has one."""
    for module_name in ("engine.audit", "engine.store"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # not built yet
            if exc.name != module_name:
                raise
            continue
        reader = getattr(module, "AuditReader", None)
        if reader is not None:
            return reader(url)
    return None

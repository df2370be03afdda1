"""`Services`: everything a route needs, built once per process and put on
``app.state.services`` by dashboard/app.py:

    services = services_of(request)       # or of a websocket

The repositories (`users`, `endpoints`, `access`, `grants`, ...; dashboard/repositories) are
blocking: on the trio loop call them through ``trio.to_thread.run_sync``; so is
``audit_reader``. ``engine`` is the actor system: only its non-blocking methods (``submit_start``,
``route``, ``watch``, ``set_joint_session``, ``live_sessions``, ``session``, ``audit``) belong on
the loop. ``audit`` and ``audit_event`` never block.

The other modules of this floor hold what the pages, the API and the gateway share: starting a
session (`starts`), the live sessions this process serves and terminating one
(`live_sessions`), and the audit log as they show it (`audit_log`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from starlette.requests import HTTPConnection

from config.settings import Settings
from dashboard.repositories import Repositories
from dashboard.security.secrets import Secrets, ensure_data_dir
from dashboard.services.metrics import GatewayMetrics
from engine import Engine, EngineNotRunning, LoopBridge
from engine.audit import AuditReader
from engine.messages import AuditEvent, User

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Services(Repositories):
    settings: Settings
    engine: Engine
    bridge: LoopBridge
    audit_reader: AuditReader
    metrics: GatewayMetrics  # on the engine's registry: /metrics exports both
    public_url: str = ""  # "http://host:port" without a trailing slash; set once the port is bound
    cluster: Any = None  # dashboard.services.cluster.ClusterLink when a bus joins this node to others

    @classmethod
    def build(cls, settings: Settings, engine: Engine, bridge: LoopBridge, *,
              secrets: Secrets | None = None, hasher: PasswordHasher | None = None,
              public_url: str | None = None) -> "Services":
        """Keys (generated into the data directory on first use), the database and its tables,
        the repositories. Blocking: call it before the loop starts, or in a thread."""
        if settings.database_url.startswith("sqlite:///") or not settings.security.secret_key \
                or not settings.security.credential_key:
            ensure_data_dir(settings.data_path)
        secrets = secrets or Secrets.from_settings(settings)
        return cls.open(settings.database_url, secrets, hasher=hasher, joint_sessions=engine,
                        settings=settings, engine=engine, bridge=bridge,
                        audit_reader=AuditReader(settings.database_url),
                        metrics=GatewayMetrics(engine.metrics.registry if engine is not None else None, engine),
                        public_url=public_url if public_url is not None else default_public_url(settings))

    # --- audit -----------------------------------------------------------------------------

    def now(self) -> float:
        """Wall-clock seconds from the engine's clock (a ManualClock in tests)."""
        clock = getattr(self.engine, "clock", None)
        return clock.now() if clock is not None else time.time()

    def audit(self, message: Any) -> None:
        """Tell the audit store an `AuditEvent` (or a `Flush`). Never blocks; dropped with a
        log line if the engine is not running."""
        try:
            self.engine.audit(message)
        except EngineNotRunning:
            log.warning("audit event %s dropped: the engine is not running", getattr(message, "kind", message))

    def audit_event(self, kind: str, actor: User | None = None, session_id: str | None = None,
                    **detail: Any) -> None:
        """`audit(AuditEvent.make(kind, now, session_id, actor, **detail))`. `detail` holds plain
        JSON values and never a credential."""
        self.audit(AuditEvent.make(kind, self.now(), session_id, actor, **detail))

    def close(self) -> None:
        self.audit_reader.close()
        super().close()


def services_of(conn: HTTPConnection) -> Services:
    return conn.app.state.services


def default_public_url(settings: Settings, port: int | None = None) -> str:
    """`server.public_url`, or http://HOST:PORT from the settings (https:// when the gateway serves
    TLS itself; IPv6 hosts bracketed)."""
    if settings.server.public_url:
        return settings.server.public_url.rstrip("/")
    host = settings.server.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.server.tls else "http"
    return f"{scheme}://{host}:{port if port is not None else settings.server.port}"

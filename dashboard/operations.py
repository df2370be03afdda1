"""What operators and their machines ask of a running gateway (docs/operations.md):

- ``GET /healthz``: the process serves HTTP. Always ``200 ok``.
- ``GET /readyz``: the gateway can take sessions: every check of `Readiness` passes (the
  database answers a query on our tables; the engine's supervisor and audit store run). ``200
  ready`` or ``503 not ready``, nothing more: which check failed goes to the log, not to whoever
  asks. A cluster's bus is one more `ReadinessCheck` in the list.
- ``GET /metrics``: the Prometheus text format of the application's registry (the engine's and
  the gateway's metrics, and the web server's connection counts), when ``[metrics] enabled``.
  With ``[metrics] token`` set, only with ``Authorization: Bearer TOKEN``; without one, only to a
  loopback client that did not come through a proxy (no ``X-Forwarded-For``, ``Forwarded`` or
  ``X-Real-IP``), which the settings allow only while the gateway listens on loopback.

None asks for a sign-in. The probes' connections (``/healthz``, ``/readyz``) are admitted
anonymously and stop counting against the anonymous-connection limits
(dashboard/security/admission.py, `PROBE_PATHS`), so that a load balancer's keep-alive probes
are not counted with an anonymous flood; a readiness check runs at most
once per `CACHE_SECONDS` however often it is asked, in one worker thread at most, bounded by
`CHECK_SECONDS`.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

import sqlalchemy as sa
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from config.settings import is_loopback
from dashboard.repositories.tables import users
from dashboard.services import Services, services_of

log = logging.getLogger(__name__)

CACHE_SECONDS = 1.0  # a flood of probes costs at most one check a second
CHECK_SECONDS = 2.0  # a check that takes longer has failed
PROXY_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")
_NO_STORE = {"cache-control": "no-store"}


@dataclass(frozen=True, slots=True)
class ReadinessCheck:
    name: str
    check: Callable[[], Awaitable[bool]]  # True when ready; may raise (then not ready)


class Readiness:
    """The checks of ``/readyz``, in order, and the last answer (kept `CACHE_SECONDS` of `now`,
    the engine's clock: tests drive it)."""

    def __init__(self, checks: list[ReadinessCheck], now: Callable[[], float]) -> None:
        self.checks = list(checks)
        self._now = now
        self._lock = trio.Lock()
        self._answer: tuple[float, bool] | None = None
        self._failing: tuple[str, ...] = ()

    def add(self, check: ReadinessCheck) -> None:
        self.checks.append(check)

    async def ready(self) -> bool:
        async with self._lock:  # concurrent probes wait for one check
            now = self._now()
            if self._answer is not None and now - self._answer[0] < CACHE_SECONDS:
                return self._answer[1]
            failing = tuple([check.name for check in self.checks if not await _passes(check)])
            if failing != self._failing:  # a line when it changes, not one per probe
                if failing:
                    log.warning("not ready: %s", ", ".join(failing), extra={"reason": ",".join(failing)})
                else:
                    log.info("ready again")
                self._failing = failing
            self._answer = (self._now(), not failing)
            return not failing


async def _passes(check: ReadinessCheck) -> bool:
    with trio.move_on_after(CHECK_SECONDS):
        try:
            return bool(await check.check())
        except Exception as exc:  # the detail to the log, once per change (Readiness.ready)
            log.debug("readiness check %s failed: %r", check.name, exc)
            return False
    return False


def default_checks(services: Services) -> list[ReadinessCheck]:
    """The database answers a query on our tables; the engine and its audit store run."""
    limiter = trio.CapacityLimiter(1)  # a database that hangs holds one thread, not one per probe

    def query() -> bool:
        with services.db.connect() as conn:
            conn.execute(sa.select(users.c.id).limit(1)).all()
        return True

    async def database() -> bool:
        return await trio.to_thread.run_sync(query, limiter=limiter, abandon_on_cancel=True)

    async def engine() -> bool:
        return services.engine.alive()

    return [ReadinessCheck("database", database), ReadinessCheck("engine", engine)]


def readiness_of(request: Request) -> Readiness:
    return request.app.state.readiness


# --- routes ----------------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok\n", headers=_NO_STORE)


async def readyz(request: Request) -> Response:
    if await readiness_of(request).ready():
        return PlainTextResponse("ready\n", headers=_NO_STORE)
    return PlainTextResponse("not ready\n", status_code=503, headers=_NO_STORE)


async def metrics(request: Request) -> Response:
    services = services_of(request)
    settings = services.settings.metrics
    if not settings.enabled:
        return PlainTextResponse("Not Found\n", status_code=404)
    if settings.token:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.token.encode()):
            return PlainTextResponse("A bearer token is required.\n", status_code=401,
                                     headers={"www-authenticate": 'Bearer realm="metrics"'})
    elif not (services.settings.server.loopback and request.client is not None and is_loopback(request.client.host)
              and not any(name in request.headers for name in PROXY_HEADERS)):
        return PlainTextResponse("Metrics answer loopback clients only: set [metrics] token.\n", status_code=403)
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST, headers=_NO_STORE)


routes: list[BaseRoute] = [
    Route("/healthz", healthz, methods=["GET"], name="healthz"),
    Route("/readyz", readyz, methods=["GET"], name="readyz"),
    Route("/metrics", metrics, methods=["GET"], name="metrics"),
]

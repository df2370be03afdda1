"""Request ids and the access log.

Every HTTP request and websocket gets a request id: the ``X-Request-ID`` a proxy in front sent
(when it looks like one: 8 to 64 letters, digits, ``.``, ``_``, ``-``), else a new random one.
It is in a context variable for as long as the request (or the websocket) is served, so every
log line written meanwhile carries it (`RequestIdFilter`, installed on the log handler by
cosession/logs.py), including those of the worker threads the request calls; and it goes back
in the response's ``X-Request-ID`` header, so a user's report of a failed page leads to its
lines.

`RequestLog` writes one access line per request, and per websocket when it ends: the method
(``WS`` for a websocket), the path (never the query string: a share link's token is there), the
status (``101`` for an accepted websocket, ``403`` for a refused handshake) and the duration.
The probes of load balancers and Prometheus (`QUIET_PATHS`) are not logged: they come every few
seconds from every balancer.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboard.security.admission import PROBE_PATHS

REQUEST_ID: ContextVar[str] = ContextVar("cosession_request_id", default="")
REQUEST_ID_HEADER = b"x-request-id"
QUIET_PATHS = PROBE_PATHS | {"/metrics"}
_WELL_FORMED = re.compile(rb"[A-Za-z0-9._-]{8,64}")

access_log = logging.getLogger("cosession.access")


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id of the request being served (empty outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = REQUEST_ID.get()
        return True


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER and _WELL_FORMED.fullmatch(value):
            return value.decode("ascii")
    return secrets.token_hex(8)


class RequestLog:
    """ASGI middleware, outermost: the request id, and the access line if `access`."""

    def __init__(self, app: ASGIApp, *, access: bool = True) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            match message["type"]:
                case "http.response.start" | "websocket.http.response.start":
                    status = message["status"]
                    message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id.encode())]
                case "websocket.accept":
                    status = 101
                    message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id.encode())]
                case "websocket.close" if not status:
                    status = 403  # closed before accept: Hypercorn answers the handshake with 403
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope.get("path", "")
            if self.access and path not in QUIET_PATHS:
                method = scope.get("method", "GET") if kind == "http" else "WS"
                client = scope.get("client")
                access_log.info("%s %s %s", method, path, status or "-", extra={
                    "method": method, "path": path, "status": status or None,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                    "client": client[0] if client else None})
            REQUEST_ID.reset(token)

"""What the application admits before any route runs (`Admission`, inside the session middleware).

- **Websocket handshakes** are decided before the websocket is accepted: the ``Origin`` must be
  this server's own (``origin.check_origin``) and the session cookie must name a user; otherwise
  the handshake gets a plain ``403`` and the refusal is audited (``websocket_refused`` with
  ``bad_origin`` or ``not_signed_in``). So an anonymous client never has an open websocket, and
  Hypercorn never buffers or decodes a websocket message of one. At most
  ``edge.max_handshakes_in_flight`` handshakes are being decided at once; past it, ``503``.
  When the database cannot be reached (a PostgreSQL server down, docs/cluster.md), the user
  cannot be looked up: the handshake gets ``503`` saying so, audited as ``websocket_refused``
  with ``database_unavailable`` (the audit store holds the row until the database is back). No
  new session starts and no one joins meanwhile; the sessions already running go on.
- **Request bodies**: a body must declare its ``Content-Length``, at most
  ``edge.max_request_body_bytes``, and at most `ANONYMOUS_BODY_BYTES` without a signed-in
  session (a sign-in form is a few hundred bytes); else ``411`` / ``413`` before a byte of it
  is read.
- **An answer before the body** (a 415, a 403, a 400 decided on the headers alone): the rest of
  the declared body is read and dropped before the answer starts, for at most `DRAIN_SECONDS`,
  so the client keeps its connection for the next request; a body that does not come in that
  time, or one past its limit, gets its answer with ``Connection: close``. (Hypercorn closes a
  connection whose response ended before its request did, without saying so: a client's next
  request on it would find it closed, "server disconnected without sending a response".)
- **Signed-in connections**: a request or handshake that carries a signed-in session marks its
  TCP connection as such for the web server's anonymous-connection limits
  (cosession/web_server.py), through the ASGI connection state under
  `CONNECTION_STATE_KEY`. A server that does not provide it (a test client) changes nothing.
- **Probes**: a request for ``/healthz`` or ``/readyz`` (`PROBE_PATHS`, dashboard/operations.py)
  is admitted without a session and marks its connection the same way: a load balancer that
  probes on a kept-alive connection is not counted as part of an anonymous flood. Such a
  connection still counts against ``max_connections`` and ``max_connections_per_client``.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
import trio
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from dashboard.security.auth import SESSION_USER, Auditor, current_user
from dashboard.security.origin import check_origin

log = logging.getLogger(__name__)

DATABASE_UNAVAILABLE = "database_unavailable"

CONNECTION_STATE_KEY = "cosession.connection"  # in scope["state"]: has mark_signed_in() and abort()
CLOSE_POLICY = 1008  # a websocket.close before accept: Hypercorn answers the handshake with 403
ANONYMOUS_BODY_BYTES = 16 << 10
DRAIN_SECONDS = 1.0  # a client sends its body right after the head: this is generous
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
_DECIDED = frozenset({"websocket.accept", "websocket.close", "websocket.http.response.start"})


class Admission:
    """ASGI middleware; must run inside SessionMiddleware (it reads ``scope["session"]``)."""

    def __init__(self, app: ASGIApp, *, max_request_body_bytes: int, max_handshakes_in_flight: int) -> None:
        self.app = app
        self.max_request_body_bytes = max_request_body_bytes
        self.max_handshakes_in_flight = max_handshakes_in_flight
        self.handshakes_in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            signed_in = _mark_if_signed_in(scope)
            if scope.get("path") in PROBE_PATHS:
                _mark_if_signed_in(scope, signed_in=True)  # not a user's, but not anonymous either
            headers = Headers(scope=scope)
            refusal = self._refuse_body(headers, self.max_request_body_bytes if signed_in
                                        else min(self.max_request_body_bytes, ANONYMOUS_BODY_BYTES))
            if _declares_body(headers):
                body = _BodyBeforeAnswer(receive, send, drain=refusal is None)
                receive, send = body.receive, body.send
            await (refusal or self.app)(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._handshake(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    @staticmethod
    def _refuse_body(headers: Headers, limit: int) -> PlainTextResponse | None:
        length = headers.get("content-length")
        if length is None:
            if "transfer-encoding" in headers:
                return PlainTextResponse("Send the request body with a Content-Length.\n", status_code=411)
            return None
        if not length.strip().isdigit():
            return PlainTextResponse("Malformed Content-Length.\n", status_code=400)
        if int(length) > limit:
            return PlainTextResponse("Request body too large.\n", status_code=413)
        return None

    async def _handshake(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.max_handshakes_in_flight and self.handshakes_in_flight >= self.max_handshakes_in_flight:
            await _refuse(WebSocket(scope, receive, send), status=503)
            return
        self.handshakes_in_flight += 1
        decided = False

        async def send_deciding(message: Message) -> None:
            nonlocal decided
            if not decided and message["type"] in _DECIDED:
                decided = True
                self.handshakes_in_flight -= 1
            await send(message)

        try:
            websocket = WebSocket(scope, receive, send_deciding)
            reason = await self._refusal(websocket)
            if reason is not None:
                await _refuse(websocket, status=503 if reason == DATABASE_UNAVAILABLE else 403, reason=reason)
                return
            await self.app(scope, receive, send_deciding)
        finally:
            if not decided:
                self.handshakes_in_flight -= 1

    async def _refusal(self, websocket: WebSocket) -> str | None:
        """None if the handshake may go on to its route; else the reason, audited."""
        services: Auditor = websocket.app.state.services
        if not check_origin(websocket):
            services.audit_event("websocket_refused", None, None, reason="bad_origin",
                                 origin=(websocket.headers.get("origin") or "")[:200], path=websocket.url.path[:200])
            return "bad_origin"
        try:
            user = await current_user(websocket)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:  # not a verdict on the user
            log.warning("websocket refused: the database is unreachable: %s", (str(exc).splitlines() or [""])[0])
            services.audit_event("websocket_refused", None, None, reason=DATABASE_UNAVAILABLE,
                                 path=websocket.url.path[:200])
            return DATABASE_UNAVAILABLE
        if user is None:
            services.audit_event("websocket_refused", None, None, reason="not_signed_in",
                                 path=websocket.url.path[:200])
            return "not_signed_in"
        _mark_if_signed_in(websocket.scope, signed_in=True)
        return None


def _declares_body(headers: Headers) -> bool:
    length = headers.get("content-length", "").strip()
    return "transfer-encoding" in headers or (length.isdigit() and int(length) > 0)


class _BodyBeforeAnswer:
    """The ASGI receive and send of one request that declares a body, such that its answer
    starts only once that body has arrived (read and dropped if the application did not read
    it), or says ``Connection: close`` when it cannot wait for it (`drain` False: a refused
    body, or past `DRAIN_SECONDS`)."""

    def __init__(self, receive: Receive, send: Send, *, drain: bool) -> None:
        self._receive = receive
        self._send = send
        self._drain = drain
        self._body_pending = True

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._body_pending = False
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and self._body_pending:
            if self._drain:
                with trio.move_on_after(DRAIN_SECONDS):
                    while self._body_pending:
                        await self.receive()
            if self._body_pending:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await self._send(message)


def _mark_if_signed_in(scope: Scope, *, signed_in: bool | None = None) -> bool:
    """Tell the web server that this connection is a signed-in user's (a signed session cookie
    naming a user; for a websocket, the user looked up). Returns whether it is."""
    if signed_in is None:
        signed_in = bool((scope.get("session") or {}).get(SESSION_USER))
    connection: Any = (scope.get("state") or {}).get(CONNECTION_STATE_KEY)
    if signed_in and connection is not None:
        connection.mark_signed_in()
    return signed_in


_REFUSAL_TEXT = {
    503: "Too many websocket handshakes at once: try again later.\n",
    DATABASE_UNAVAILABLE: "The database is unreachable: no session can start or be joined now; sessions "
                          "already running go on. Try again later.\n",
}


async def _refuse(websocket: WebSocket, *, status: int = 403, reason: str = "") -> None:
    """Refuse a handshake before accepting it. The client may already have broken the handshake
    (bytes after its request: Hypercorn may answer 400 itself meanwhile), in which case the
    server refuses to send a second answer; the connection is closed either way."""
    try:
        if status == 403:
            await websocket.close(code=CLOSE_POLICY)
        else:
            await websocket.send_denial_response(PlainTextResponse(_REFUSAL_TEXT.get(reason, _REFUSAL_TEXT[503]),
                                                                   status_code=status))
    except Exception as exc:  # h11's LocalProtocolError, an OSError ...: nothing left to answer
        log.debug("refusing a websocket handshake: %r", exc)

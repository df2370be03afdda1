"""Live updates of the session list: server-sent events at ``GET /events/sessions``.

One `LiveHub` per application watches the engine (a single ``engine.watch`` for the process,
bridged onto the trio loop) and fans every change out to its subscribers, one bounded trio
memory channel each. The hub never waits for a subscriber: when a subscriber's channel is full
(its browser reads too slowly), the hub drops it and closes its channel; its stream ends and the
browser's ``EventSource`` reconnects a second later to a fresh snapshot. Nothing a subscriber
does can slow the engine, the loop or the other subscribers.

The stream (``text/event-stream``) sends, as JSON in each event's ``data``:

- ``snapshot``: ``{"now", "rows": [{"id", "html", "state", ...}]}``, first, and after each
  reconnect: the whole list as this user may see it;
- ``upsert``: ``{"now", "row": {...}}``: a session appeared or changed;
- ``remove``: ``{"now", "id", "reason", "by"}``: a session ended (or left this user's view).

Rows carry their rendered ``<tr>`` (the same template as the page's first render, so the page
and its updates never disagree) plus the plain values the Connections page patches in place.
Changes that arrive together are coalesced: one message per session per flush, the latest
state only. A comment line every `HEARTBEAT_SECONDS` keeps proxies from closing an idle stream
and lets the server notice a browser that has gone.

Each stream lives at most `STREAM_SECONDS`; the reconnect re-checks the user (signed out,
deleted, demoted) and their endpoint access, so a revoked grant stops showing its sessions.

The row model (`Audience`, `row_model`, `render_row`) lives here too: the dashboard, the
endpoint page and the Connections page render live rows with it.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator

import trio
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from dashboard.security.auth import current_user
from dashboard.security.csrf import FIELD, csrf_token
from dashboard.services import Services, services_of
from dashboard.services.live_sessions import all_live_sessions, node_of
from dashboard.web.http import safe_path
from dashboard.web.templating import templates
from engine import EngineNotRunning, LoopClosed, policy
from engine.messages import Describe, SessionFinished, SessionState, SessionSummary, SessionUpdated, User

log = logging.getLogger(__name__)

QUEUE_SIZE = 256  # engine changes waiting for one subscriber; one more and it is dropped
HEARTBEAT_SECONDS = 15.0
STREAM_SECONDS = 300.0  # then the browser reconnects: a fresh snapshot and a fresh access check
RETRY_MS = 1000  # EventSource's reconnection delay
READY_SECONDS = 5.0  # bound on waiting for the engine to confirm the watch
_NO_SESSION = "-"  # a session id that never exists (see LiveHub.start)


# --- who is looking, and what a row shows them --------------------------------------------------


@dataclass(frozen=True)
class Audience:
    """One user's view of the live sessions: which they see, which they may join."""

    user: User
    endpoints: frozenset[str] | None  # endpoint ids the user has access to; None: all (administrator)
    endpoint_filter: str | None = None  # only this endpoint's sessions (the endpoint page)
    replay_role: str = "none"  # recordings.replay_role: who besides administrators may replay

    def may_replay(self, record: bool) -> bool:
        """Whether a recorded session's row offers Replay: to administrators, and to users when
        the setting lets anyone but them replay (the player checks their role on the endpoint)."""
        return record and (self.user.is_admin or self.replay_role != "none")

    def may_use(self, endpoint_id: str) -> bool:
        return self.endpoints is None or endpoint_id in self.endpoints

    def sees(self, summary: SessionSummary) -> bool:
        """Administrators see every session; a user sees those of the endpoints they have
        access to, and any session they take part in."""
        if self.endpoint_filter is not None and summary.endpoint.id != self.endpoint_filter:
            return False
        return self.may_use(summary.endpoint.id) or any(m.user.id == self.user.id for m in summary.members)


async def audience_for(services: Services, user: User, endpoint_filter: str | None = None) -> Audience:
    """The user's `Audience` (their grants are read in a worker thread)."""
    if user.is_admin:
        return Audience(user, None, endpoint_filter, services.settings.recordings.replay_role)
    records = await trio.to_thread.run_sync(services.endpoints.accessible, user)
    return Audience(user, frozenset(r.id for r in records), endpoint_filter, services.settings.recordings.replay_role)


def _join(summary: SessionSummary, audience: Audience, cap: int) -> dict[str, Any] | None:
    """The Join button for this user: None (no button), or its label, whether it is enabled,
    and why not. The decision is the engine's own rule (`policy.check_join`); the engine still
    decides the actual join."""
    user = audience.user
    view = policy.SessionView.of(summary, cap)
    if summary.controller.id == user.id:
        if policy.is_controller_return(view, user):
            return {"label": "Return", "enabled": True, "why": "Come back to your session as its controller"}
        return None  # it is open in the controller's own window
    refused = policy.check_join(view, user, audience.may_use(summary.endpoint.id))
    if refused is None:
        return {"label": "Join", "enabled": True, "why": "Watch this session, read-only, in a new window"}
    if refused.reason.value in ("no_access", "session_ended", "protocol_not_shareable"):
        return None
    return {"label": "Join", "enabled": False, "why": refused.detail or refused.reason.value}


def row_model(summary: SessionSummary, audience: Audience, cap: int, node: str | None = None) -> dict[str, Any]:
    """Plain values for one live row (also what the event stream sends as JSON). `node`: the
    node that runs it, when several nodes share a bus (docs/cluster.md)."""
    viewers = [m.user.name for m in summary.viewers]
    state = summary.state.value
    expiring = summary.deadline is not None and summary.state is not SessionState.ENDED
    return {
        "id": summary.session_id,
        "endpoint": {"id": summary.endpoint.id, "name": summary.endpoint.name,
                     "protocol": summary.endpoint.protocol.value},
        "controller": summary.controller.name,
        "viewers": viewers,
        "viewer_count": len(viewers),
        "max_viewers": cap,
        "state": state,
        "expiring": expiring,
        "started_at": summary.started_at,
        "deadline": summary.deadline,
        "grace_until": summary.grace_until,
        "join": _join(summary, audience, cap),
        "can_terminate": audience.user.is_admin,
        "replay": audience.may_replay(summary.record),
        "node": node,
    }


_ID = "__ID__"


def row_paths(app: Starlette) -> dict[str, str]:
    """The paths a row links to: the endpoint page, the session window and Terminate, with a
    placeholder id. Worked out once, by dashboard/app.py (Starlette's url_for costs
    milliseconds, tried against every route)."""
    return {
        "endpoint": str(app.url_path_for("endpoint_page", endpoint_id=_ID)),
        "session": str(app.url_path_for("session", session_id=_ID)),
        "terminate": str(app.url_path_for("session_terminate", session_id=_ID)),
        "recording": str(app.url_path_for("recording", session_id=_ID)),
    }


def row_context(conn: HTTPConnection) -> dict[str, Any]:
    """What `_live_row.html` and `_connection_row.html` need besides the row: the paths of
    `row_paths` (``app.state.live_row_paths``) and the CSRF token of the forms."""
    paths: dict[str, str] = conn.app.state.live_row_paths
    root = conn.scope.get("root_path", "")
    return {"paths": {k: root + v for k, v in paths.items()}, "csrf_field_name": FIELD, "csrf": csrf_token(conn),
            "path_id": _ID}


def render_row(conn: HTTPConnection, row: dict[str, Any], now: float, *, back: str = "/",
               context: dict[str, Any] | None = None) -> str:
    """The row's ``<tr>``, from the template the pages include (templates/_live_row.html)."""
    return templates.env.get_template("_live_row.html").render(
        row=row, now=now, back=back, **(context if context is not None else row_context(conn)))


def live_rows(services: Services, audience: Audience) -> list[dict[str, Any]]:
    """The live sessions this audience sees, newest first, as row models."""
    cap = policy.viewer_cap(services.settings.engine.max_viewers)
    summaries = [s for s in all_live_sessions(services) if audience.sees(s)]
    summaries.sort(key=lambda s: (-s.started_at, s.session_id))
    return [row_model(s, audience, cap, node_of(services, s.session_id)) for s in summaries]


# --- the hub -----------------------------------------------------------------------------------


class Subscriber:
    """One stream's inbox: a bounded memory channel that the hub fills without waiting."""

    def __init__(self, size: int) -> None:
        self.send, self.receive = trio.open_memory_channel[Any](size)
        self.dropped = False


class LiveHub:
    """The engine's session changes, fanned out to every open event stream (one per app)."""

    def __init__(self, services: Services, queue_size: int = QUEUE_SIZE) -> None:
        self.services = services
        self.queue_size = queue_size
        self.subscribers: set[Subscriber] = set()
        self.dropped = 0  # subscribers dropped for being slow, since the start (for tests)
        self._ready: trio.Event | None = None

    async def start(self) -> None:
        """Watch the engine (once). Returns when the watch is in place, so that a snapshot taken
        afterwards misses no change: the supervisor handles its messages in order, so once it
        has answered a `Describe` of a session that does not exist, it holds the watcher."""
        if self._ready is None:
            ready = self._ready = trio.Event()
            bridge = self.services.bridge
            try:
                self.services.engine.watch(bridge.reply_to(self._on_change))
                if getattr(self.services, "cluster", None) is not None:  # the other nodes' sessions, already on the loop
                    self.services.cluster.sessions.watch(self._on_change)
                self.services.engine.route(_NO_SESSION, Describe(bridge.reply_to(lambda _answer: ready.set())))
            except (EngineNotRunning, LoopClosed):
                self._ready = None
                raise
        with trio.move_on_after(READY_SECONDS):
            await self._ready.wait()

    def _on_change(self, change: Any) -> None:
        """On the loop, for every change of the live list: never waits."""
        for subscriber in list(self.subscribers):
            try:
                subscriber.send.send_nowait(change)
            except trio.WouldBlock:
                self.drop(subscriber)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.subscribers.discard(subscriber)

    def drop(self, subscriber: Subscriber) -> None:
        """Stop feeding a subscriber; it reads what it has, then the end of its channel."""
        if subscriber in self.subscribers:
            self.subscribers.discard(subscriber)
            subscriber.dropped = True
            self.dropped += 1
            subscriber.send.close()
            log.info("live updates: a subscriber fell %d changes behind and was dropped", self.queue_size)

    @contextmanager
    def subscribe(self) -> Iterator[Subscriber]:
        subscriber = Subscriber(self.queue_size)
        self.subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self.subscribers.discard(subscriber)
            subscriber.send.close()
            subscriber.receive.close()


def live_hub_of(conn: HTTPConnection) -> LiveHub:
    return conn.app.state.live_hub


# --- the event stream --------------------------------------------------------------------------


def sse(event: str, data: Any) -> str:
    """One server-sent event (JSON never contains a raw newline, so one data line)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class _Stream:
    """What one browser is sent: its audience, and the sessions it has been shown."""

    def __init__(self, request: Request, audience: Audience, back: str) -> None:
        self.request = request
        self.audience = audience
        self.back = back
        self.services = services_of(request)
        self.cap = policy.viewer_cap(self.services.settings.engine.max_viewers)
        self.shown: set[str] = set()
        self.context = row_context(request)

    def row(self, model: dict[str, Any], now: float) -> dict[str, Any]:
        return {**model, "html": render_row(self.request, model, now, back=self.back, context=self.context)}

    def snapshot(self) -> str:
        now = self.services.now()
        rows = [self.row(m, now) for m in live_rows(self.services, self.audience)]
        self.shown = {r["id"] for r in rows}
        return sse("snapshot", {"now": now, "rows": rows})

    def changes(self, batch: list[Any]) -> str:
        """One chunk for a batch of changes: the latest state of each session only."""
        latest: dict[str, Any] = {}
        for change in batch:
            sid = change.summary.session_id if isinstance(change, SessionUpdated) else \
                getattr(change, "session_id", None)
            if sid is not None:
                latest.pop(sid, None)  # keep the order of the last change
                latest[sid] = change
        out = []
        now = self.services.now()
        for sid, change in latest.items():
            if isinstance(change, SessionUpdated) and self.audience.sees(change.summary):
                self.shown.add(sid)
                model = row_model(change.summary, self.audience, self.cap, node_of(self.services, sid))
                out.append(sse("upsert", {"now": now, "row": self.row(model, now)}))
            elif sid in self.shown:
                self.shown.discard(sid)
                finished = change if isinstance(change, SessionFinished) else None
                out.append(sse("remove", {
                    "now": now, "id": sid, "reason": finished.reason.value if finished else "hidden",
                    "by": finished.by.name if finished and finished.by else None}))
        return "".join(out)


async def _events(stream: _Stream, hub: LiveHub) -> AsyncIterator[str]:
    # Never yield inside a cancel scope: the consumer (Starlette's send) runs while this
    # generator is suspended, and the scope's deadline would cancel the consumer instead.
    with hub.subscribe() as subscriber:
        yield f"retry: {RETRY_MS}\n\n" + stream.snapshot()
        ends_at = trio.current_time() + STREAM_SECONDS
        while trio.current_time() < ends_at:
            chunk = ": ping\n\n"  # unless a change comes within the heartbeat
            with trio.move_on_after(min(HEARTBEAT_SECONDS, max(0.0, ends_at - trio.current_time()))):
                try:
                    batch = [await subscriber.receive.receive()]
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return  # dropped: the browser reconnects to a fresh snapshot
                while True:
                    try:
                        batch.append(subscriber.receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                        break
                chunk = stream.changes(batch)
            if chunk:
                yield chunk


class EventStreamResponse(StreamingResponse):
    """A StreamingResponse that always closes its generator in its own task. When the browser
    goes away, Starlette cancels the response while the generator waits at a ``yield`` (the
    send was in progress); left alone, the generator would keep its subscription until the
    garbage collector finalises it (trio warns about exactly that)."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with trio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def session_events(request: Request) -> Response:
    """``GET /events/sessions[?endpoint=ID]``: the live list as server-sent events."""
    user = await current_user(request)
    if user is None:  # an EventSource cannot follow a redirect to a sign-in page usefully
        return PlainTextResponse("sign in first", status_code=401)
    services = services_of(request)
    endpoint_filter = request.query_params.get("endpoint") or None
    audience = await audience_for(services, user, endpoint_filter)
    hub = live_hub_of(request)
    try:
        await hub.start()
    except (EngineNotRunning, LoopClosed):
        return PlainTextResponse("the engine is not running", status_code=503)
    back = safe_path(request.query_params.get("back"))
    return EventStreamResponse(_events(_Stream(request, audience, back), hub),
                               headers={"cache-control": "no-store", "x-accel-buffering": "no"})


routes = [
    Route("/events/sessions", session_events, methods=["GET"], name="session_events"),
]

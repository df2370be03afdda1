"""``/api/sessions`` (live sessions, one session, Terminate) and ``/api/connections`` (live
and ended sessions, filtered as the Connections page filters them)."""

from __future__ import annotations

import logging
from typing import Any, Mapping

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dashboard.api.common import SESSION_ID, ApiError, api_route, page_params, query, session_id_of, who
from dashboard.security.auth import Forbidden, require_user
from dashboard.services import Services, live_sessions, services_of
from dashboard.web.params import MAX_TEXT, BadInput, iso_utc, parse_time
from engine import policy
from engine.messages import Accepted, EndReason, Reason, Refused, SessionSummary, User

log = logging.getLogger(__name__)


# --- visibility ------------------------------------------------------------------------------


async def _accessible_ids(services: Services, user: User) -> set[str]:
    records = await trio.to_thread.run_sync(services.endpoints.accessible, user)
    return {r.id for r in records}


def _in_live(summary: SessionSummary, user: User) -> bool:
    return summary.controller.id == user.id or any(m.user.id == user.id for m in summary.members)


def _live_json(summary: SessionSummary, max_viewers: int, node: str | None = None) -> dict[str, Any]:
    viewers = summary.viewers
    return {
        "id": summary.session_id, "live": True, "state": summary.state.value,
        "endpoint": {"id": summary.endpoint.id, "name": summary.endpoint.name,
                     "protocol": summary.endpoint.protocol.value},
        "joint_session": summary.endpoint.joint_session,
        "controller": who(summary.controller),
        "viewers": [who(m.user) for m in viewers], "viewer_count": len(viewers), "max_viewers": max_viewers,
        "started_at": summary.started_at, "started": iso_utc(summary.started_at),
        "deadline": summary.deadline, "grace_until": summary.grace_until, "record": summary.record,
        "url": f"/sessions/{summary.session_id}",
        "node": node,  # the node that runs it, on a gateway of several (docs/cluster.md)
    }


def _stored_json(row: Mapping[str, Any], summary: SessionSummary | None, max_viewers: int) -> dict[str, Any]:
    live = bool(row["live"])
    # not live and not ended: its node stopped running it without ending it (engine/nodes.py)
    state = "ended" if row["ended_at"] is not None else "unknown" if live else "not_running"
    data = {
        "id": row["id"], "live": live, "state": state,
        "endpoint": {"id": row["endpoint_id"], "name": row["endpoint_name"], "protocol": row["protocol"]},
        "controller": {"id": row["controller_id"], "name": row["controller_name"]},
        "started_at": row["started_at"], "started": iso_utc(row["started_at"]),
        "ended_at": row["ended_at"], "ended": iso_utc(row["ended_at"]),
        "end_reason": row["end_reason"], "ended_by": row["ended_by"], "record": bool(row["record"]),
    }
    if summary is not None:
        live_data = _live_json(summary, max_viewers)
        data.update({k: live_data[k] for k in ("state", "viewers", "viewer_count", "max_viewers", "deadline",
                                               "grace_until", "url", "joint_session")})
    return data


def _max_viewers(services: Services) -> int:
    return policy.viewer_cap(services.settings.engine.max_viewers)


# --- sessions --------------------------------------------------------------------------------


@api_route
async def list_sessions(request: Request) -> Response:
    """Live sessions the user may see: every one for an administrator; for a user, those on
    endpoints they have access to and those they take part in."""
    user = await require_user(request)
    query(request, ())
    services = services_of(request)
    live = sorted(live_sessions.all_live_sessions(services), key=lambda s: s.started_at, reverse=True)
    if not user.is_admin:
        mine = await _accessible_ids(services, user)
        live = [s for s in live if s.endpoint.id in mine or _in_live(s, user)]
    cap = _max_viewers(services)
    return JSONResponse({"sessions": [_live_json(s, cap, live_sessions.node_of(services, s.session_id))
                                      for s in live], "total": len(live)})


async def _may_see(services: Services, user: User, endpoint_id: str, session: Mapping[str, Any] | None,
                   summary: SessionSummary | None) -> bool:
    if user.is_admin:
        return True
    if summary is not None and _in_live(summary, user):
        return True
    if session is not None and (session["controller_id"] == user.id
                                or any(p["actor_id"] == user.id for p in session.get("participants", []))):
        return True
    return await trio.to_thread.run_sync(services.access.may_see, user, endpoint_id)


@api_route
async def session_detail(request: Request) -> Response:
    """One session, live or ended: the stored row, everyone who took part, and the live state."""
    user = await require_user(request)
    query(request, ())
    services = services_of(request)
    session_id = session_id_of(request)
    summary = live_sessions.live_summary(services, session_id)
    stored = await trio.to_thread.run_sync(services.audit_reader.session, session_id)
    if stored is None and summary is None:
        raise ApiError(404, "not_found", "no such session")
    endpoint_id = summary.endpoint.id if summary is not None else stored["endpoint_id"]
    if not await _may_see(services, user, endpoint_id, stored, summary):
        raise Forbidden("You have no access to this session's endpoint.")
    cap = _max_viewers(services)
    if stored is None:  # started a moment ago: the audit store has not written it yet
        data = _live_json(summary, cap)
        data.update({"ended_at": None, "ended": None, "end_reason": None, "ended_by": None})
        participants = []
    else:
        data = _stored_json(stored, summary, cap)  # state "unknown": live in the log, not in the engine
        # the controller first (starting is not a join), then everyone who joined, once each
        participants = [{"id": stored["controller_id"], "name": stored["controller_name"], "role": "controller"}]
        participants += [{"id": p["actor_id"], "name": p["actor_name"], "role": p["role"]}
                         for p in stored["participants"] if p["actor_id"] != stored["controller_id"]]
    data["participants"] = participants
    data["members"] = ([{"id": m.user.id, "name": m.user.name, "role": m.role.value} for m in summary.members]
                       if summary is not None else [])
    return JSONResponse({"session": data})


@api_route
async def terminate_session(request: Request) -> Response:
    """End a live session for every participant (administrators). Answers once the engine has."""
    user = await require_user(request)
    query(request, ())
    services = services_of(request)
    session_id = request.path_params["session_id"]
    live_sessions.check_terminate(services, user, session_id if SESSION_ID.match(session_id) else None, via="api")
    session_id = session_id_of(request)
    reply = await live_sessions.terminate(services, session_id, user)
    if reply is None:
        raise ApiError(504, "engine_timeout",
                       f"the engine did not answer within {live_sessions.TERMINATE_REPLY_SECONDS:.0f} s")
    if isinstance(reply, Accepted):  # and committed: a script that reads the audit log next finds it
        return JSONResponse({"terminated": True, "session_id": session_id, "by": who(user)})
    if not isinstance(reply, Refused):
        log.error("unexpected answer to Terminate: %r", reply)
        raise ApiError(500, "internal_error", "unexpected answer from the engine")
    if reply.reason is Reason.SESSION_ENDED:
        raise ApiError(409, "session_ended", "the session has already ended")
    if reply.reason is Reason.UNKNOWN_SESSION:
        stored = await trio.to_thread.run_sync(services.audit_reader.session, session_id)
        if stored is None:
            raise ApiError(404, "not_found", "no such session")
        if not stored["live"]:
            raise ApiError(409, "session_ended", f"the session ended ({stored['end_reason']})",
                           end_reason=stored["end_reason"])
        raise ApiError(409, "not_running", "the session is not running in this gateway "
                                           "(it was left open when the gateway stopped)")
    raise ApiError(409, reply.reason.value, reply.detail or "the engine refused")


# --- connections (live and ended) -----------------------------------------------------------

CONNECTION_PARAMS = ("endpoint", "user", "since", "until", "end_reason", "live", "limit", "offset")


def _bool_param(params: Mapping[str, str], name: str) -> bool | None:
    raw = (params.get(name) or "").strip().lower()
    if not raw:
        return None
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise BadInput(name, "true or false")


@api_route
async def list_connections(request: Request) -> Response:
    """Live and ended sessions, newest first, filtered as the Connections page filters them."""
    viewer = await require_user(request)
    params = query(request, CONNECTION_PARAMS)
    services = services_of(request)
    limit, offset = page_params(params)
    since = parse_time(params.get("since"), "since")
    until = parse_time(params.get("until"), "until", end_of_day=True)
    if since is not None and until is not None and until <= since:
        raise BadInput("until", "must be after since")
    end_reason = (params.get("end_reason") or "").strip() or None
    if end_reason is not None and end_reason not in {r.value for r in EndReason}:
        raise BadInput("end_reason", f"one of {', '.join(r.value for r in EndReason)}")
    live = _bool_param(params, "live")
    user = (params.get("user") or "").strip() or None
    endpoint = (params.get("endpoint") or "").strip() or None
    for name, value in (("user", user), ("endpoint", endpoint)):
        if value is not None and len(value) > MAX_TEXT:
            raise BadInput(name, f"at most {MAX_TEXT} characters")

    def load() -> tuple[list[dict[str, Any]], int]:
        endpoint_id = endpoint
        if endpoint is not None and services.endpoints.get(endpoint) is None:
            by_name = services.endpoints.get_by_name(endpoint)  # a name works too
            if by_name is not None:
                endpoint_id = by_name.id
        filters = dict(live=live, endpoint_id=endpoint_id, user=user, since=since, until=until,
                       end_reason=end_reason, limit=limit, offset=offset)
        if not viewer.is_admin:
            filters["visible_to"] = (viewer.id, [r.id for r in services.endpoints.accessible(viewer)])
        return services.audit_reader.sessions(**filters)

    rows, total = await trio.to_thread.run_sync(load)
    cap = _max_viewers(services)
    items = [_stored_json(row, live_sessions.live_summary(services, row["id"]) if row["live"] else None, cap)
             for row in rows]
    return JSONResponse({"connections": items, "total": total, "limit": limit, "offset": offset})

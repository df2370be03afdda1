"""``/api/audit``: the audit log's events, its export and the chain check (administrators),
with the filters of the Audit page (services/audit_log.py)."""

from __future__ import annotations

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dashboard.api.common import api_route, page_params, query
from dashboard.security.auth import require_admin
from dashboard.services import services_of
from dashboard.services.audit_log import (
    FILTER_FIELDS, audit_chain_of, chain_json, event_json, export_response, parse_audit_filters,
)
from dashboard.web.params import BadInput


# --- the audit log ---------------------------------------------------------------------------

AUDIT_PARAMS = (*FILTER_FIELDS, "limit", "offset", "order")


@api_route
async def list_audit(request: Request) -> Response:
    """Audit events, newest first (``order=oldest`` for the chain's order), filtered as the page."""
    await require_admin(request)
    params = query(request, AUDIT_PARAMS)
    filters = parse_audit_filters(params)
    limit, offset = page_params(params)
    order = (params.get("order") or "newest").strip()
    if order not in ("newest", "oldest"):
        raise BadInput("order", "newest or oldest")
    reader = services_of(request).audit_reader
    rows, total = await trio.to_thread.run_sync(lambda: reader.events(
        **filters.reader_kwargs(), limit=limit, offset=offset, newest_first=order == "newest"))
    return JSONResponse({"events": [event_json(r) for r in rows], "total": total, "limit": limit,
                         "offset": offset, "order": order, "filters": filters.as_json()})


@api_route
async def export_audit(request: Request) -> Response:
    """The filtered set as one download: ``format=csv`` (the default) or ``json``."""
    await require_admin(request)
    params = query(request, (*FILTER_FIELDS, "format"))
    fmt = (params.get("format") or "csv").strip().lower()
    if fmt not in ("csv", "json"):
        raise BadInput("format", "csv or json")
    return await export_response(request, fmt, api=True)


@api_route
async def verify_audit(request: Request) -> Response:
    """Walk the whole hash chain now (in a worker thread, one check at a time)."""
    await require_admin(request)
    query(request, ())
    status = await audit_chain_of(request).check()
    return JSONResponse(chain_json(status))

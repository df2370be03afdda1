"""The audit log page (administrators), its CSV and JSON export, and the chain check.

Routes:

- ``GET /audit``: every event of the audit log, newest first, 50 a page, filtered by
  ``session``, ``kind``, ``actor`` (a user's name or id), ``since`` and ``until``; ``page`` is
  1-based. The chain's status is shown: checked on every view while the log is small
  (`AUTO_VERIFY_ROWS`), otherwise the last result and a *Verify now* button.
- ``POST /audit/verify``: the button: run `engine.audit.verify` (in a worker thread, one at a
  time) and come back to the page.
- ``GET /audit/export.csv``, ``GET /audit/export.json`` (and ``GET /api/audit/export?format=``,
  api/audit.py): the filtered set as a download, in the chain's order (oldest first), streamed
  a page at a time from the reader in a worker thread, never built in memory.

The filters, the rows, the exports and the chain check are services/audit_log.py's, shared with
the API; times are read by web/params.py.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import parse_qsl, urlencode

import trio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import NoMatchFound, Route

from dashboard.security.auth import require_admin
from dashboard.services import services_of
from dashboard.services.audit_log import (
    FILTER_FIELDS, AuditFilters, audit_chain_of, detail_text, export_response, parse_audit_filters,
)
from dashboard.web.params import BadInput, iso_utc, parse_int, utc_text
from dashboard.web.templating import render

PAGE_SIZE = 50  # rows on one page of /audit
AUTO_VERIFY_ROWS = 5000  # up to this many rows, the chain is checked on every view (~40 ms)
MAX_PAGE = 1_000_000


# --- the page --------------------------------------------------------------------------------


def _session_links(request: Request, session_id: str | None, filters: AuditFilters) -> dict[str, Any] | None:
    if not session_id:
        return None
    connection = None
    for name in ("connection", "connection_detail"):  # the Connections page's entry, if it has one
        try:
            connection = str(request.url_for(name, session_id=session_id))
            break
        except NoMatchFound:
            continue
    return {"id": session_id, "short": session_id[:8], "connection": connection,
            "filter": "?" + urlencode({"session": session_id})}


async def audit_page(request: Request) -> Response:
    await require_admin(request)
    services = services_of(request)
    reader = services.audit_reader
    chain_check = audit_chain_of(request)
    error = None
    try:
        filters = parse_audit_filters(request.query_params)
        page = parse_int(request.query_params, "page", 1, 1, MAX_PAGE)
    except BadInput as exc:
        error, filters, page = str(exc), AuditFilters(text={k: "" for k in FILTER_FIELDS}), 1

    def load() -> tuple[list[dict[str, Any]], int, int, list[str], list[str]]:
        rows, total = reader.events(**filters.reader_kwargs(), limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE,
                                    newest_first=True)
        everything = reader.events(limit=0)[1] if filters.active else total
        return rows, total, everything, reader.kinds(), [u.name for u in services.users.list()]

    rows, total, everything, kinds, user_names = await trio.to_thread.run_sync(load)
    if filters.kind and filters.kind not in kinds:
        kinds = sorted([*kinds, filters.kind])
    chain = chain_check.last
    if everything <= AUTO_VERIFY_ROWS:
        chain = await chain_check.check()
    pages = max(1, math.ceil(total / PAGE_SIZE))
    shown = [{
        "id": r["id"], "time": utc_text(r["at"]), "iso": iso_utc(r["at"]), "kind": r["kind"],
        "actor": r["actor_name"] or r["actor_id"], "actor_id": r["actor_id"],
        "session": _session_links(request, r["session_id"], filters),
        "detail": detail_text(r["detail"]) if isinstance(r["detail"], dict) else str(r["detail"]),
        "hash": r["hash"],
    } for r in rows]
    first = (page - 1) * PAGE_SIZE + 1 if rows else 0
    return await render(request, "audit.html", {
        "rows": shown, "total": total, "everything": everything, "filters": filters, "kinds": kinds,
        "user_names": user_names, "page": page, "pages": pages, "first": first, "last": first + len(rows) - 1,
        "prev_url": f"?{filters.query(page=page - 1 if page > 2 else None)}" if page > 1 else None,
        "next_url": f"?{filters.query(page=page + 1)}" if page < pages else None,
        "export_csv": f"{request.url_for('audit_export_csv')}?{filters.query()}".rstrip("?"),
        "export_json": f"{request.url_for('audit_export_json')}?{filters.query()}".rstrip("?"),
        "back_query": filters.query(page=page if page > 1 else None),
        "chain": chain, "chain_checked": utc_text(chain["checked_at"]) if chain else None,
        "auto_verify": everything <= AUTO_VERIFY_ROWS, "auto_verify_rows": AUTO_VERIFY_ROWS,
        "error": error,
    }, status_code=400 if error else 200, headers={"Cache-Control": "no-store"})


async def verify_now(request: Request) -> Response:
    await require_admin(request)
    form = await request.form()
    await audit_chain_of(request).check()
    # back to the same view: only the page's own parameters, re-encoded
    kept = [(k, v) for k, v in parse_qsl(str(form.get("back", "")))[:10] if k in (*FILTER_FIELDS, "page")]
    target = str(request.url_for("audit")) + (f"?{urlencode(kept)}" if kept else "")
    return RedirectResponse(target, status_code=303)


# --- export ----------------------------------------------------------------------------------


async def export_csv(request: Request) -> Response:
    await require_admin(request)
    return await export_response(request, "csv", api=False)


async def export_json(request: Request) -> Response:
    await require_admin(request)
    return await export_response(request, "json", api=False)


routes = [
    Route("/audit", audit_page, methods=["GET"], name="audit"),
    Route("/audit/verify", verify_now, methods=["POST"], name="audit_verify"),
    Route("/audit/export.csv", export_csv, methods=["GET"], name="audit_export_csv"),
    Route("/audit/export.json", export_json, methods=["GET"], name="audit_export_json"),
]

"""The audit log as the pages and the API show it: its filters (parsed once, here, for the
page, the exports and ``GET /api/audit``), an event for people and for programs, the CSV and
JSON exports (streamed a page at a time, in the chain's order), and the chain check.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlencode

import trio
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from dashboard.security.auth import current_user
from dashboard.services import services_of
from dashboard.web.params import BadInput, iso_utc, parse_time, text_param
from engine.audit import AuditLogMissing, canonical_json, verify

EXPORT_PAGE = 1000  # rows read from the database at a time while exporting
FILTER_FIELDS = ("session", "kind", "actor", "since", "until")
_KIND = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = ("id", "time", "at", "kind", "session_id", "actor_id", "actor_name", "detail", "prev_hash", "hash")


# --- filters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilters:
    session: str | None = None
    kind: str | None = None
    actor: str | None = None
    since: float | None = None
    until: float | None = None
    text: dict[str, str] = field(default_factory=dict)  # as given, to fill the form and links again

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.session, self.kind, self.actor, self.since, self.until))

    def reader_kwargs(self) -> dict[str, Any]:
        return {"session_id": self.session, "kind": self.kind, "actor": self.actor,
                "since": self.since, "until": self.until}

    def query(self, **extra: Any) -> str:
        """The filters as a query string (empty ones left out), plus `extra`."""
        pairs = [(k, v) for k, v in self.text.items() if v]
        pairs += [(k, str(v)) for k, v in extra.items() if v is not None]
        return urlencode(pairs)

    def as_json(self) -> dict[str, Any]:
        return {"session": self.session, "kind": self.kind, "actor": self.actor,
                "since": iso_utc(self.since), "until": iso_utc(self.until)}


def parse_audit_filters(params: Mapping[str, str]) -> AuditFilters:
    session = text_param(params, "session")
    kind = text_param(params, "kind")
    if kind is not None and not _KIND.match(kind):
        raise BadInput("kind", "an event kind is letters, digits and '_' (such as terminate)")
    actor = text_param(params, "actor")
    since = parse_time(params.get("since"), "since")
    until = parse_time(params.get("until"), "until", end_of_day=True)
    if since is not None and until is not None and until <= since:
        raise BadInput("until", "must be after since")
    text = {k: (params.get(k) or "").strip() for k in FILTER_FIELDS}
    return AuditFilters(session, kind, actor, since, until, text)


# --- rows ------------------------------------------------------------------------------------


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        text = ",".join(str(v) for v in value) or "[]"
    else:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    if text == "" or any(c.isspace() or c in "\"=" for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _pairs(detail: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    for key in sorted(detail):
        value = detail[key]
        if isinstance(value, dict) and value:
            pairs += [(k, v) for k, v in _pairs(value, f"{prefix}{key}.") if v is not None]
        else:
            pairs.append((f"{prefix}{key}", value))
    return pairs


def detail_text(detail: Mapping[str, Any]) -> str:
    """``by=root reason=terminated``: a row's detail for people, sorted by key; values with
    spaces quoted; nested objects flattened (``filters.kind=login``, their empty values left out)."""
    return " ".join(f"{key}={_value_text(value)}" for key, value in _pairs(detail))


def event_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """An audit row for programs: every stored column, plus ``time`` (ISO 8601, UTC).
    ``id``, ``prev_hash`` and ``hash`` tie it to ``cosession audit verify``."""
    return {"id": row["id"], "at": row["at"], "time": iso_utc(row["at"]), "kind": row["kind"],
            "session_id": row["session_id"], "actor_id": row["actor_id"], "actor_name": row["actor_name"],
            "detail": row["detail"], "prev_hash": row["prev_hash"], "hash": row["hash"]}


def _csv_cell(value: Any) -> Any:
    """A cell that a spreadsheet would run as a formula is written with a leading apostrophe."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_row(row: Mapping[str, Any]) -> list[Any]:
    detail = row["detail"]
    return [row["id"], iso_utc(row["at"]), repr(float(row["at"])), row["kind"],
            *(_csv_cell(row[k]) for k in ("session_id", "actor_id", "actor_name")),
            canonical_json(detail) if isinstance(detail, dict) else _csv_cell(str(detail)),
            row["prev_hash"], row["hash"]]


# --- the chain's status ------------------------------------------------------------------------


class AuditChain:
    """The chain check of this application: one at a time (a second caller waits, then runs its
    own), and the last result, for the audit page."""

    def __init__(self, database_url: str, recordings: Path | None = None) -> None:
        self._url = database_url
        self._recordings = recordings  # the recordings directory, checked against the chain too
        self._one_at_a_time = trio.CapacityLimiter(1)
        self.last: dict[str, Any] | None = None

    async def check(self) -> dict[str, Any]:
        """Run `engine.audit.verify` in a worker thread and remember the result."""
        url, recordings = self._url, self._recordings

        def run() -> dict[str, Any]:
            started = time.monotonic()
            try:
                report = verify(url, recordings=recordings)
            except AuditLogMissing as exc:
                return {"ok": False, "rows": 0, "first_bad_id": None, "problem": str(exc), "missing": True,
                        "head": None, "session_id": None}
            return {"ok": report.ok, "rows": report.rows, "first_bad_id": report.first_bad_id,
                    "problem": report.problem, "missing": False, "session_id": report.session_id,
                    "head": ({"id": report.head_id, "hash": report.head_hash} if report.head_id is not None
                             else None),
                    "seconds": round(time.monotonic() - started, 3)}

        status = await trio.to_thread.run_sync(run, limiter=self._one_at_a_time)
        status["checked_at"] = time.time()
        self.last = status
        return status


def audit_chain_of(conn: HTTPConnection) -> AuditChain:
    return conn.app.state.audit_chain


def chain_json(status: Mapping[str, Any]) -> dict[str, Any]:
    return {"ok": status["ok"], "rows": status["rows"], "first_bad_id": status["first_bad_id"],
            "session_id": status.get("session_id"), "problem": status["problem"], "head": status["head"],
            "checked_at": iso_utc(status["checked_at"])}


# --- export ----------------------------------------------------------------------------------


class ExportStream:
    """The text of an export, one chunk per page of rows, each page read from the reader in a
    worker thread when the previous chunk has been sent. At most `total` rows (the count when
    the export started), in the reader's order (oldest first), as CSV or JSON.

    A plain async iterator rather than an async generator: a client that goes away in the
    middle of a download leaves no half-run generator for the garbage collector to finalise."""

    def __init__(self, fmt: str, reader: Any, filters: dict[str, Any], first: list[dict[str, Any]], total: int,
                 head: dict[str, Any]) -> None:
        self._fmt = fmt
        self._reader = reader
        self._filters = filters
        self._rows: list[dict[str, Any]] | None = first
        self._total = total
        self._offset = 0
        self._state = "head"  # head, rows, tail, done
        self._head = head
        self._first_row = True

    def __aiter__(self) -> "ExportStream":
        return self

    async def __anext__(self) -> str:
        if self._state == "head":
            self._state = "rows"
            return self._render_head()
        if self._state == "rows":
            if self._rows is None and self._offset < self._total:
                offset = self._offset
                self._rows, _ = await trio.to_thread.run_sync(
                    lambda: self._reader.events(**self._filters, limit=EXPORT_PAGE, offset=offset))
            rows = (self._rows or [])[: max(0, self._total - self._offset)]
            self._rows = None
            if rows:
                self._offset += len(rows)
                return self._render(rows)
            self._state = "tail"
        if self._state == "tail":
            self._state = "done"
            if self._fmt == "json":
                return "\n]}\n"
        raise StopAsyncIteration

    def _render_head(self) -> str:
        if self._fmt == "csv":
            return _csv_text([list(CSV_COLUMNS)])
        return json.dumps(self._head, ensure_ascii=False)[:-1] + ', "events": ['

    def _render(self, rows: list[dict[str, Any]]) -> str:
        if self._fmt == "csv":
            return _csv_text([csv_row(row) for row in rows])
        chunk = []
        for row in rows:
            chunk.append(("\n" if self._first_row else ",\n") + json.dumps(event_json(row), ensure_ascii=False))
            self._first_row = False
        return "".join(chunk)


def _csv_text(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()


async def export_response(request: Request, fmt: str, *, api: bool) -> Response:
    """The filtered set as a CSV or JSON download, oldest first (the chain's order). The number
    of rows is fixed when the export starts: rows written meanwhile are not part of it."""
    services = services_of(request)
    reader = services.audit_reader
    try:
        filters = parse_audit_filters(request.query_params)
    except BadInput as exc:
        if api:
            return JSONResponse({"error": "bad_request", "detail": str(exc), "parameter": exc.name}, status_code=400)
        return PlainTextResponse(f"Bad filter: {exc}", status_code=400)
    kwargs = filters.reader_kwargs()
    first, total = await trio.to_thread.run_sync(lambda: reader.events(**kwargs, limit=EXPORT_PAGE, offset=0))
    admin = await current_user(request)
    services.audit_event("audit_exported", admin, format=fmt, rows=total, filters=filters.as_json())
    exported_at = time.time()

    head = {"exported_at": iso_utc(exported_at), "order": "oldest_first", "filters": filters.as_json(),
            "total": total}
    stream = ExportStream(fmt, reader, kwargs, first, total, head)
    stamp = datetime.fromtimestamp(exported_at, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    headers = {"Content-Disposition": f'attachment; filename="cosession-audit-{stamp}.{fmt}"',
               "Cache-Control": "no-store", "X-Total-Count": str(total)}
    if fmt == "csv":
        return StreamingResponse(stream, media_type="text/csv; charset=utf-8", headers=headers)
    return StreamingResponse(stream, media_type="application/json", headers=headers)

"""The audit log page (administrators), its CSV and JSON export, and the chain check.

Routes:

- ``GET /audit``: every event of the audit log, newest first, 50 a page, filtered by
  ``session``, ``kind``, ``actor`` (a user's name or id), ``since`` and ``until``; ``page`` is
  1-based. The chain's status is shown: checked on every view while the log is small
  (`AUTO_VERIFY_ROWS`), otherwise the last result and a *Verify now* button.
- ``POST /audit/verify``: the button: run `engine.audit.verify` (in a worker thread, one at a
  time) and come back to the page.
- ``GET /audit/export.csv``, ``GET /audit/export.json`` (and ``GET /api/audit/export?format=``,
  routed from dashboard/api.py): the filtered set as a download, in the chain's order (oldest
  first), streamed a page at a time from the reader in a worker thread, never built in memory.

Filters are parsed once, here, for the page, the exports and ``GET /api/audit``
(`parse_audit_filters`); times are ISO 8601 (``2024-05-01``, ``2024-05-01T12:30``, with an
optional ``Z`` or offset; a time without a zone is UTC) or seconds since the epoch. A date
alone as ``until`` covers the whole of that day.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlencode

import sqlalchemy as sa
import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import NoMatchFound, Route

from engine.db import audit_events, canonical_json

PAGE_SIZE = 50  # rows on one page of /audit
EXPORT_PAGE = 1000  # rows read from the database at a time while exporting
AUTO_VERIFY_ROWS = 5000  # up to this many rows, the chain is checked on every view (~40 ms)
FILTER_FIELDS = ("session", "kind", "actor", "since", "until")
MAX_TEXT = 128
MAX_PAGE = 1_000_000
_KIND = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_NUMBER = re.compile(r"^[0-9]+(\.[0-9]+)?$")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = ("id", "time", "at", "kind", "session_id", "actor_id", "actor_name", "detail", "prev_hash", "hash")


class BadInput(ValueError):
    """A parameter that cannot be used; the message says which and why, for the person asking."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


# --- times -----------------------------------------------------------------------------------


def parse_time(text: str | None, name: str, *, end_of_day: bool = False) -> float | None:
    """Seconds since the epoch from an ISO 8601 date or date-time (UTC unless it says
    otherwise) or a number of seconds; None for an empty value. `end_of_day`: a date alone
    means the end of that day (for an exclusive upper bound)."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    if len(text) > 40:
        raise BadInput(name, "not a date or time")
    if _NUMBER.match(text):
        value = float(text)
        if not math.isfinite(value) or value > 253402300799:  # 9999-12-31T23:59:59Z
            raise BadInput(name, "out of range")
        return value
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            if end_of_day:
                moment += timedelta(days=1)
            return moment.timestamp()
        # "...T12:00 02:00": a "+" that a query string turned into a space
        text = re.sub(r"(T[0-9:.]+) ([0-9]{2}:?[0-9]{2})$", r"\1+\2", text)
        moment = datetime.fromisoformat(text.replace(" ", "T", 1))
    except (ValueError, OverflowError):
        raise BadInput(name, f"{text!r} is not a date (YYYY-MM-DD), a date and time "
                             "(YYYY-MM-DDTHH:MM[:SS][Z|+HH:MM]) or seconds since 1970") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def utc_text(at: float | None) -> str:
    """``2024-05-01 12:30:05 UTC``: for people."""
    if at is None:
        return ""
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso_utc(at: float | None) -> str | None:
    """``2024-05-01T12:30:05.123456Z``: for programs."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _date_field(at: float | None, end: bool = False) -> str:
    """The value of a date input for a bound (an exclusive end shows as the day before)."""
    if at is None:
        return ""
    moment = datetime.fromtimestamp(at, timezone.utc)
    if end and moment.time() == datetime.min.time():
        moment -= timedelta(days=1)
    return moment.strftime("%Y-%m-%d")


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


def _text_param(params: Mapping[str, str], name: str) -> str | None:
    value = (params.get(name) or "").strip()
    if not value:
        return None
    if len(value) > MAX_TEXT or any(ord(c) < 32 for c in value):
        raise BadInput(name, f"at most {MAX_TEXT} printable characters")
    return value


def parse_audit_filters(params: Mapping[str, str]) -> AuditFilters:
    session = _text_param(params, "session")
    kind = _text_param(params, "kind")
    if kind is not None and not _KIND.match(kind):
        raise BadInput("kind", "an event kind is letters, digits and '_' (such as terminate)")
    actor = _text_param(params, "actor")
    since = parse_time(params.get("since"), "since")
    until = parse_time(params.get("until"), "until", end_of_day=True)
    if since is not None and until is not None and until <= since:
        raise BadInput("until", "must be after since")
    text = {k: (params.get(k) or "").strip() for k in FILTER_FIELDS}
    return AuditFilters(session, kind, actor, since, until, text)


def parse_int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw.strip() == "":
        return default
    raw = raw.strip()
    if not re.fullmatch(r"-?[0-9]{1,12}", raw):
        raise BadInput(name, "a whole number")
    value = int(raw)
    if not low <= value <= high:
        raise BadInput(name, f"between {low} and {high}")
    return value


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


def present_kinds(db: sa.Engine) -> list[str]:
    """The distinct event kinds in the log, sorted, in one index walk per kind (a loose index
    scan: a few milliseconds whatever the size of the log). Blocking."""
    kind = audit_events.c.kind
    seed = sa.select(sa.func.min(kind).label("kind")).cte("present_kinds", recursive=True)
    following = sa.select(sa.func.min(kind)).where(kind > seed.c.kind).scalar_subquery()
    kinds = seed.union_all(sa.select(following.label("kind")).where(seed.c.kind.is_not(None)))
    with db.connect() as conn:
        return [k for k in conn.execute(sa.select(kinds.c.kind).where(kinds.c.kind.is_not(None))).scalars()]


# --- the chain's status ------------------------------------------------------------------------


def _verify_limiter(app: Any) -> trio.CapacityLimiter:
    limiter = getattr(app.state, "audit_verify_limiter", None)
    if limiter is None:
        limiter = app.state.audit_verify_limiter = trio.CapacityLimiter(1)
    return limiter


def last_chain_status(app: Any) -> dict[str, Any] | None:
    return getattr(app.state, "audit_chain", None)


async def check_chain(app: Any) -> dict[str, Any]:
    """Run `engine.audit.verify` in a worker thread (one check at a time: a second caller waits
    and then runs its own) and remember the result for the page."""
    from engine.audit import AuditLogMissing, verify

    services = app.state.services
    url = services.settings.database_url

    def run() -> dict[str, Any]:
        started = time.monotonic()
        try:
            report = verify(url)
        except AuditLogMissing as exc:
            return {"ok": False, "rows": 0, "first_bad_id": None, "problem": str(exc), "missing": True,
                    "head": None, "session_id": None}
        return {"ok": report.ok, "rows": report.rows, "first_bad_id": report.first_bad_id,
                "problem": report.problem, "missing": False, "session_id": report.session_id,
                "head": ({"id": report.head_id, "hash": report.head_hash} if report.head_id is not None else None),
                "seconds": round(time.monotonic() - started, 3)}

    status = await trio.to_thread.run_sync(run, limiter=_verify_limiter(app))
    status["checked_at"] = time.time()
    app.state.audit_chain = status
    return status


def chain_json(status: Mapping[str, Any]) -> dict[str, Any]:
    return {"ok": status["ok"], "rows": status["rows"], "first_bad_id": status["first_bad_id"],
            "session_id": status.get("session_id"), "problem": status["problem"], "head": status["head"], "checked_at": iso_utc(status["checked_at"])}


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
    from dashboard.app import render
    from dashboard.security.auth import require_admin

    await require_admin(request)
    services = request.app.state.services
    reader = services.audit_reader
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
        return rows, total, everything, present_kinds(services.db), [u.name for u in services.users.list()]

    rows, total, everything, kinds, user_names = await trio.to_thread.run_sync(load)
    if filters.kind and filters.kind not in kinds:
        kinds = sorted([*kinds, filters.kind])
    chain = last_chain_status(request.app)
    if everything <= AUTO_VERIFY_ROWS:
        chain = await check_chain(request.app)
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
    from dashboard.security.auth import require_admin

    await require_admin(request)
    form = await request.form()
    await check_chain(request.app)
    # back to the same view: only the page's own parameters, re-encoded
    kept = [(k, v) for k, v in parse_qsl(str(form.get("back", "")))[:10] if k in (*FILTER_FIELDS, "page")]
    target = str(request.url_for("audit")) + (f"?{urlencode(kept)}" if kept else "")
    return RedirectResponse(target, status_code=303)


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
    from dashboard.security.auth import current_user

    services = request.app.state.services
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


async def export_csv(request: Request) -> Response:
    from dashboard.security.auth import require_admin

    await require_admin(request)
    return await export_response(request, "csv", api=False)


async def export_json(request: Request) -> Response:
    from dashboard.security.auth import require_admin

    await require_admin(request)
    return await export_response(request, "json", api=False)


routes = [
    Route("/audit", audit_page, methods=["GET"], name="audit"),
    Route("/audit/verify", verify_now, methods=["POST"], name="audit_verify"),
    Route("/audit/export.csv", export_csv, methods=["GET"], name="audit_export_csv"),
    Route("/audit/export.json", export_json, methods=["GET"], name="audit_export_json"),
]

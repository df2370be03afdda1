"""Checking the audit log's hash chain, and the read queries (`AuditReader`, from engine.store).

`verify(url)` walks ``audit_events`` in id order, one row at a time (streamed, so a log of
millions of rows takes constant memory), and reports the first thing wrong:

- a row whose ``hash`` is not the hash of its own contents: that row was **altered**;
- a row whose ``prev_hash`` is not the previous row's ``hash``: rows were **removed** before
  it (or the previous row was rewritten together with its hash);
- a chain that ends before the head (``audit_head``) says: the **last rows were removed**;
- an anchor (a row id and hash kept outside the database) that the log no longer has;
- once the chain is intact, a ``sessions`` row that is not what the chained ``session_started``
  and ``session_ended`` events say (altered, invented or removed): that table is a checked
  projection of the chain (`_check_sessions`);
- given the recordings directory, a recording file that is not what its chained
  ``recording_closed`` row says (altered, removed) or that no row names
  (`engine.recording_log.verify_recordings`).

What it cannot see: someone who can write the database can rewrite the whole chain from the
first changed row onwards, head included, and it verifies again. Only an anchor kept elsewhere
(see docs/audit.md) tells that apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

import json
from typing import Any

from engine.db import (
    GENESIS_HASH, HEAD_ID, audit_events, audit_head, canonical_json, event_hash, is_sqlite, make_engine, sessions,
    sqlite_path,
)
from engine.recording_log import verify_recordings
from engine.store import AuditReader

__all__ = ["AuditLogMissing", "AuditReader", "VerifyReport", "canonical_json", "open_log", "verify"]

_STREAM_ROWS = 2000


class AuditLogMissing(Exception):
    """There is no audit log to verify at this URL (no database file, or no audit tables)."""


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    rows: int  # event rows checked (the rows before the first bad one, if any)
    first_bad_id: int | None
    problem: str  # "" when ok
    head_id: int | None = None  # the last row's id and hash: what to anchor elsewhere
    head_hash: str | None = None
    session_id: str | None = None  # a session whose sessions row is not what the chain says


def open_log(url: str) -> sa.Engine:
    """The database of the audit log at `url`, to read; never creates anything. Raises
    `AuditLogMissing` if there is no log there."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise AuditLogMissing(f"no audit database at {path}")
    engine = make_engine(url, create=False)
    missing = [t for t in (audit_events.name, audit_head.name) if not sa.inspect(engine).has_table(t)]
    if missing:
        where = path if path is not None else engine.url.render_as_string(hide_password=True)
        engine.dispose()
        raise AuditLogMissing(f"{where} holds no audit log (no {', '.join(missing)} table)")
    return engine


def verify(url: str, anchors: dict[int, str] | None = None, recordings: Path | None = None) -> VerifyReport:
    """Check the chain of the audit log at `url`. `anchors` maps row ids to the hashes they had
    when they were recorded outside the database; each must still be there, unchanged.
    `recordings`: the recordings directory, whose files are checked against the chain.

    Raises `AuditLogMissing` if there is no log at all (nothing is created)."""
    engine = open_log(url)
    try:
        with engine.connect() as conn:
            # The head and the rows from one snapshot: the store may be writing meanwhile.
            if is_sqlite(url):
                conn.exec_driver_sql("BEGIN")
            else:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            report = _walk(conn, dict(anchors or {}))
            if report.ok and sa.inspect(conn).has_table(sessions.name):
                bad = _check_sessions(conn)
                if bad is not None:
                    session_id, problem = bad
                    return VerifyReport(False, report.rows, None, problem, report.head_id, report.head_hash,
                                        session_id)
            if report.ok and recordings is not None:
                for found in verify_recordings(conn, recordings):
                    return VerifyReport(False, report.rows, None, f"recording of session {found.session_id}: "
                                        f"{found.problem}", report.head_id, report.head_hash, found.session_id)
            return report
    finally:
        engine.dispose()


def _walk(conn: sa.Connection, anchors: dict[int, str]) -> VerifyReport:
    e = audit_events.c
    head = conn.execute(sa.select(audit_head).where(audit_head.c.id == HEAD_ID)).first()
    result = conn.execution_options(stream_results=True, yield_per=_STREAM_ROWS).execute(
        sa.select(e.id, e.at, e.session_id, e.kind, e.actor_id, e.actor_name, e.detail, e.prev_hash, e.hash)
        .order_by(e.id))
    prev_hash, prev_id, rows = GENESIS_HASH, None, 0

    def bad(row_id: int | None, problem: str) -> VerifyReport:
        result.close()
        return VerifyReport(False, rows, row_id, problem, prev_id, prev_hash if prev_id is not None else None)

    for row in result:
        digest = event_hash(row.prev_hash, row.at, row.session_id, row.kind, row.actor_id, row.actor_name,
                            row.detail)
        if digest != row.hash:
            return bad(row.id, f"row {row.id} was altered: its hash does not match its contents")
        if row.prev_hash != prev_hash:
            if prev_id is None:
                return bad(row.id, f"rows before row {row.id} were removed: it is the first row, "
                                   "but it does not start the chain")
            return bad(row.id, f"rows between row {prev_id} and row {row.id} were removed, or row {prev_id} "
                               f"was rewritten: row {row.id} does not follow row {prev_id}")
        expected = anchors.pop(row.id, None)
        if expected is not None and expected != row.hash:
            return bad(row.id, f"row {row.id} is not the row anchored with hash {expected[:16]}...: "
                               "the chain was rewritten from this row or before")
        skipped = [i for i in anchors if i < row.id]
        if skipped:
            return bad(min(skipped), f"anchored row {min(skipped)} is missing")
        prev_hash, prev_id, rows = row.hash, row.id, rows + 1

    if anchors:
        return bad(min(anchors), f"anchored row {min(anchors)} is missing: the log ends "
                                 f"{f'at row {prev_id}' if prev_id is not None else 'before any row'}")
    if head is None:
        if rows == 0:
            return VerifyReport(True, 0, None, "")
        return bad(None, f"the head record is missing: the last rows may have been removed after row {prev_id}")
    if head.rows > rows and head.last_hash != prev_hash:
        after = f"after row {prev_id}" if prev_id is not None else "(all of them)"
        first = prev_id + 1 if prev_id is not None else 1
        return bad(first, f"the last {head.rows - rows} rows {after} were removed "
                          f"(the head names row {head.last_id})")
    if head.last_hash != prev_hash or head.last_id != prev_id or head.rows != rows:
        return bad(prev_id, f"the chain ends at row {prev_id} with {rows} rows, but the head names row "
                            f"{head.last_id} with {head.rows} rows: the log or its head was altered")
    return VerifyReport(True, rows, None, "", prev_id, prev_hash if prev_id is not None else None)


# --- the sessions table, a checked projection of the chain --------------------------------------

# sessions column -> where the session_started event keeps it: ("detail", key) or the event's own column
_STARTED = {
    "endpoint_id": ("detail", "endpoint_id"), "endpoint_name": ("detail", "endpoint_name"),
    "protocol": ("detail", "protocol"), "record": ("detail", "record"), "node_id": ("detail", "node"),
    "node_incarnation": ("detail", "node_incarnation"), "controller_id": ("event", "actor_id"),
    "controller_name": ("event", "actor_name"), "started_at": ("event", "at"),
}


def _check_sessions(conn: sa.Connection) -> tuple[str, str] | None:
    """The first session whose ``sessions`` row differs from what the chain says, and how.

    The store writes the row from the same message as the chained events (engine/store.py):
    the last ``session_started`` of a session sets its start columns, and the first
    ``session_ended`` after its first start sets ``ended_at`` (the detail's ``last_seen_at`` if
    there is one, else the event's ``at``), ``end_reason`` and ``ended_by``; a session never
    ended has none. Streamed in id order of the sessions, then the other way round: every
    ``session_started`` must have its row."""
    present = {c["name"] for c in sa.inspect(conn).get_columns(sessions.name)}
    s, e = sessions.c, audit_events.c
    started, ended = audit_events.alias("started"), audit_events.alias("ended")

    def event_id(function: Any, kind: str, after: Any = None) -> Any:
        other = audit_events.alias()  # each subquery its own, so that only `sessions` correlates
        where = [other.c.session_id == s.id, other.c.kind == kind]
        if after is not None:
            where.append(other.c.id > after)
        return sa.select(function(other.c.id)).where(*where).correlate(sessions).scalar_subquery()

    columns = [c for c in sessions.columns if c.name in present]
    query = (sa.select(*columns, started.c.id.label("start_id"), started.c.at.label("start_at"),
                       started.c.actor_id.label("start_actor_id"), started.c.actor_name.label("start_actor_name"),
                       started.c.detail.label("start_detail"), ended.c.id.label("end_id"),
                       ended.c.at.label("end_at"), ended.c.detail.label("end_detail"))
             .select_from(sessions
                          .outerjoin(started, started.c.id == event_id(sa.func.max, "session_started"))
                          .outerjoin(ended, ended.c.id == event_id(sa.func.min, "session_ended",
                                                                     event_id(sa.func.min, "session_started"))))
             .order_by(s.id))
    result = conn.execution_options(stream_results=True, yield_per=_STREAM_ROWS).execute(query)
    try:
        for row in result:
            problem = _row_problem(row, present)
            if problem:
                return row.id, f"session {row.id}: {problem}"
    finally:
        result.close()
    removed = conn.execute(
        sa.select(sa.func.min(e.id).label("first"), e.session_id)
        .where(e.kind == "session_started", e.session_id.is_not(None),
               ~sa.exists().where(s.id == e.session_id))
        .group_by(e.session_id).order_by(sa.func.min(e.id)).limit(1)).first()
    if removed is not None:
        return removed.session_id, (f"session {removed.session_id}: its sessions row was removed "
                                    f"(its session_started is row {removed.first})")
    return None


_ENDED = ("ended_at", "end_reason", "ended_by")


def _row_problem(row: Any, present: set[str]) -> str:
    if row.start_id is None:
        return "its sessions row is not in the chain: no session_started event names it"
    start = _detail(row.start_detail)
    event = {"actor_id": row.start_actor_id, "actor_name": row.start_actor_name, "at": row.start_at}
    expected = {column: start.get(key) if where == "detail" else event[key]
                for column, (where, key) in _STARTED.items()}
    expected["record"] = bool(expected["record"])
    if row.end_id is None:
        expected.update(dict.fromkeys(_ENDED))
    else:
        end = _detail(row.end_detail)
        expected.update(ended_at=end.get("last_seen_at", row.end_at), end_reason=end.get("reason"),
                        ended_by=end.get("by"))
    for column, value in expected.items():
        if column not in present:  # an older database, before nodes were recorded
            continue
        actual = bool(getattr(row, column)) if column == "record" else getattr(row, column)
        if actual != value:
            source = row.end_id if column in _ENDED and row.end_id is not None else row.start_id
            return f"its sessions row was altered: {column} is {actual!r}, but the chain says {value!r} (row {source})"
    return ""


def _detail(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}

"""Checking the audit log's hash chain, and the read queries (`AuditReader`, from engine.store).

`verify(url)` walks ``audit_events`` in id order, one row at a time (streamed, so a log of
millions of rows takes constant memory), and reports the first thing wrong:

- a row whose ``hash`` is not the hash of its own contents: that row was **altered**;
- a row whose ``prev_hash`` is not the previous row's ``hash``: rows were **removed** before
  it (or the previous row was rewritten together with its hash);
- a chain that ends before the head (``audit_head``) says: the **last rows were removed**;
- an anchor (a row id and hash kept outside the database) that the log no longer has.

What it cannot see: someone who can write the database can rewrite the whole chain from the
first changed row onwards, head included, and it verifies again. Only an anchor kept elsewhere
(see docs/audit.md) tells that apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from engine.db import (
    GENESIS_HASH, HEAD_ID, audit_events, audit_head, event_hash, is_sqlite, make_engine, sqlite_path,
)
from engine.store import AuditReader

__all__ = ["AuditLogMissing", "AuditReader", "VerifyReport", "verify"]

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


def verify(url: str, anchors: dict[int, str] | None = None) -> VerifyReport:
    """Check the chain of the audit log at `url`. `anchors` maps row ids to the hashes they had
    when they were recorded outside the database; each must still be there, unchanged.

    Raises `AuditLogMissing` if there is no log at all (nothing is created)."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise AuditLogMissing(f"no audit database at {path}")
    engine = make_engine(url, create=False)
    try:
        missing = [t for t in (audit_events.name, audit_head.name) if not sa.inspect(engine).has_table(t)]
        if missing:
            where = path if path is not None else engine.url.render_as_string(hide_password=True)
            raise AuditLogMissing(f"{where} holds no audit log (no {', '.join(missing)} table)")
        with engine.connect() as conn:
            # The head and the rows from one snapshot: the store may be writing meanwhile.
            if is_sqlite(url):
                conn.exec_driver_sql("BEGIN")
            else:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            return _walk(conn, dict(anchors or {}))
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
